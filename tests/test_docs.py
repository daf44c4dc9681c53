"""README's generated blocks (`specllm.docs`): they equal what the code says now, and the generator rewrites only them."""

from __future__ import annotations

import pytest

from specllm import docs, flags
from specllm.cli import app
from specllm.outputs import COLUMNS

README = docs.README


def test_readme_blocks_match_the_code():
    """Fails when flags.py, outputs.py or an option changed without `python -m specllm.docs` being run."""
    if not README.exists():
        pytest.skip("no README.md beside the package (an installed wheel)")
    _, changed = docs.render(README.read_text(encoding="utf-8"))
    assert not changed, f"README.md blocks out of date: {changed}; run `python -m specllm.docs`"


def test_blocks_name_every_flag_column_and_command():
    table = docs.flags_block()
    assert all(f"`{f.keyword}`" in table and f"| {f.value} |" in table for f in flags.FLAGS)
    columns = docs.columns_block()
    assert all(f"| `{name}` |" in columns for name in COLUMNS)
    assert "| `teff` | double | K | 1 |" in columns and "| `ra` | double | deg | 1e-07 |" in columns
    cli = docs.cli_block()
    import typer

    for name in typer.main.get_command(app).commands:
        assert f"#### `specllm {name}`" in cli
    assert "| `-o, --out PATH` |" in cli and "`--decode <head\\|text>`" in cli  # `|` escaped in a table cell
    assert "--output" not in cli and "`--help`" not in cli  # hidden options and --help are left out
    assert "[default: 16; x>=1]" in cli  # defaults (and the declared range) as --help prints them


def test_render_rewrites_only_marked_blocks_and_reports_drift(tmp_path):
    blocks = {"a": lambda: "A1", "b": lambda: "B | 2"}
    text = "intro\n<!-- BEGIN a -->\nold\n<!-- END a -->\nmiddle\n<!-- BEGIN b -->\n<!-- END b -->\nend\n"
    new, changed = docs.render(text, blocks)
    assert changed == ["a", "b"]
    assert new == (
        f"intro\n<!-- BEGIN a -->\n{docs.NOTE}\nA1\n<!-- END a -->\nmiddle\n"
        f"<!-- BEGIN b -->\n{docs.NOTE}\nB | 2\n<!-- END b -->\nend\n"
    )
    assert docs.render(new, blocks) == (new, [])
    with pytest.raises(ValueError, match="BEGIN c"):
        docs.render(new, {**blocks, "c": lambda: "C"})


def test_main_check_and_rewrite(tmp_path, capsys):
    path = tmp_path / "README.md"
    path.write_text("x\n" + "".join(f"<!-- BEGIN {n} -->\n<!-- END {n} -->\n" for n in docs.BLOCKS), encoding="utf-8")
    assert docs.main(["--check", str(path)]) == 1
    assert "out of date: flags, columns, cli" in capsys.readouterr().err
    assert docs.main([str(path)]) == 0
    assert docs.main(["--check", str(path)]) == 0
    assert flags.DOMAIN.meaning in path.read_text(encoding="utf-8")
    assert docs.main(["--check", str(tmp_path / "missing.md")]) == 2
