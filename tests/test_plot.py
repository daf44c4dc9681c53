"""`specllm plot`: the Kiel diagram from every format infer writes, flagged rows apart per keyword, reference
panels, figure formats by extension, one-line errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from specllm.cli import app
from specllm.config import ExternalConfig, PlotConfig
from specllm.errors import SpecllmError
from specllm.outputs import FORMATS, RowWriter, run_metadata
from specllm.plot import plot_predictions

COLS = ["file", "spec_id", "obsid", "ra", "dec", "class", "teff", "logg", "feh", "teff_err", "logg_err", "feh_err",
        "coverage", "partial", "status", "flag", "flag_reason"]  # fmt: skip
META = run_metadata({"model": "default", "modelsha": "a" * 64}, "specllm infer x -o y")
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF", "svg": b"<?xml"}


def _rows(n: int = 30) -> list[dict]:
    rows = []
    for i in range(n):
        flag = {0: 0, 1: 0, 2: 0, 3: 16, 4: 8 | 16, 5: 4}[i % 6]  # domain; class+domain; partial only (usable)
        reason = {0: "", 4: "partial", 8: "class", 16: "domain", 24: "class;domain"}[flag]
        rows.append({"file": f"s{i}.fits", "spec_id": str(100 + i), "obsid": 100 + i, "ra": 10.0 + 0.001 * i,
                     "dec": 5.0, "class": "G", "teff": 4000.0 + 100 * i, "logg": 4.5 - 0.05 * i, "feh": -1 + 0.05 * i,
                     "teff_err": 50.0, "logg_err": 0.1, "feh_err": 0.05, "coverage": 1.0, "partial": flag == 4,
                     "status": "ok", "flag": flag, "flag_reason": reason})  # fmt: skip
    rows.append({"file": "broken.fits", "status": "unreadable"})
    return rows


def _write(path, rows) -> str:
    w = RowWriter(str(path), COLS, META)
    for r in rows:
        w.write(r)
    w.close()
    return str(path)


@pytest.mark.parametrize("ext", sorted(set(FORMATS) - {".xml"}))
def test_kiel_png_from_every_output_format(tmp_path, ext):
    pred = _write(tmp_path / f"p{ext}", _rows())
    out = tmp_path / "kiel.png"
    result = plot_predictions(pred, str(out))
    assert out.read_bytes().startswith(MAGIC["png"]) and out.stat().st_size > 5000
    assert result.rows == 31 and result.plotted == 30
    assert result.usable == 20  # flag 0 and `partial` alone are usable
    assert result.flagged == {"class": 5, "domain": 10}  # a row under each of its keywords


def test_figure_format_by_extension_colour_and_reference_panels(tmp_path):
    rows = _rows()
    pred = _write(tmp_path / "p.parquet", rows)
    for fmt in ("pdf", "svg"):
        out = tmp_path / f"k.{fmt}"
        plot_predictions(pred, str(out), PlotConfig(color="teff"))
        assert out.read_bytes().startswith(MAGIC[fmt])
    cat = tmp_path / "ref.csv"
    lines = ["obsid,teff,logg,feh"] + [f"{r['obsid']},{r['teff'] + 50},{r['logg']},{r['feh']}" for r in rows[:-1]]
    cat.write_text("\n".join(lines) + "\n")
    one = tmp_path / "one.png"
    plot_predictions(pred, str(one))
    both = tmp_path / "both.png"
    result = plot_predictions(pred, str(both), reference=str(cat), external=ExternalConfig(survey="lamost"))
    assert result.matched == 30
    from PIL import Image

    assert Image.open(both).size[0] > 3 * Image.open(one).size[0]  # Kiel + Teff, log g, [Fe/H] panels
    with pytest.raises(SpecllmError, match="unknown figure format"):
        plot_predictions(pred, str(tmp_path / "k.jpeg"))
    assert not (tmp_path / "k.jpeg").exists()


def test_cli_writes_the_figure_and_refuses_bad_input_in_one_line(tmp_path):
    pred = _write(tmp_path / "p.fits", _rows())
    runner = CliRunner()
    res = runner.invoke(app, ["plot", pred, "-o", str(tmp_path / "k.png"), "--color", "teff"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "k.png").stat().st_size > 5000 and "30 of 31 rows drawn" in res.output
    res = runner.invoke(app, ["plot", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "m.png")])
    assert res.exit_code == 2 and "missing.csv: no such file" in res.output and "Traceback" not in res.output
    assert runner.invoke(app, ["plot", "-h"]).exit_code == 0
