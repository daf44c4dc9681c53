"""Shell completions (specllm.completions): the committed scripts are current, and bash completion works."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from specllm.completions import SHELLS, completion_script, main, subcommands

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "completions"


@pytest.mark.parametrize("shell", SHELLS)
def test_committed_scripts_are_current(shell):
    committed = (COMMITTED / f"specllm.{shell}").read_text()
    assert committed == completion_script(shell), "stale completions: run `make completions` and commit the result"


def test_scripts_name_every_subcommand_and_zsh_header_first():
    names = subcommands()
    assert "ingest" in names
    for shell in SHELLS:
        assert f"# Subcommands: {' '.join(names)}\n" in completion_script(shell)
        assert "_SPECLLM_COMPLETE=complete_" + shell in completion_script(shell)
    assert completion_script("zsh").startswith("#compdef specllm\n")
    with pytest.raises(ValueError, match="unsupported shell"):
        completion_script("tcsh")


def test_module_entry_writes_the_three_files(tmp_path):
    assert main([str(tmp_path)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["specllm.bash", "specllm.fish", "specllm.zsh"]
    for shell in SHELLS:
        assert (tmp_path / f"specllm.{shell}").read_text() == completion_script(shell)
    assert main(["--help"]) == 2


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_completion_end_to_end(tmp_path):
    """Source the committed bash script and complete `specllm ing<TAB>` and `specllm ingest --snr<TAB>`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = bin_dir / "specllm"
    launcher.write_text(
        f'#!/bin/sh\nexec {sys.executable} -c "import sys; sys.argv[0] = \'specllm\'; from specllm.cli import main; main()" "$@"\n'
    )
    launcher.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT))
    script = (
        f"source {COMMITTED / 'specllm.bash'}\n"
        'COMP_WORDS=(specllm ing); COMP_CWORD=1; _specllm_completion specllm; echo "1:${COMPREPLY[*]}"\n'
        'COMP_WORDS=(specllm ingest --snr); COMP_CWORD=2; _specllm_completion specllm; echo "2:${COMPREPLY[*]}"\n'
    )
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=120)
    lines = dict(line.split(":", 1) for line in proc.stdout.splitlines())
    assert lines["1"].split() == ["ingest"], proc.stderr
    assert sorted(lines["2"].split()) == ["--snr-min-i", "--snr-min-r"], proc.stderr
