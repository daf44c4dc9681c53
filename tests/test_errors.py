"""`specllm.errors`: an optional package (an extra) that is missing is one line with the install command."""

from __future__ import annotations

import sys

from typer.testing import CliRunner

from specllm.cli import app
from specllm.cliopts import RECIPES
from specllm.errors import missing_extra

from .llmfactory import write_qa


def test_missing_extra_names_the_extra():
    error = missing_extra(ModuleNotFoundError("No module named 'deepspeed'", name="deepspeed"))
    assert str(error) == "deepspeed is not installed (optional): pip install 'specllm[gpu]'" and error.exit_code == 2
    assert "specllm[ray]" in str(missing_extra(ModuleNotFoundError(name="ray.data")))
    assert missing_extra(ModuleNotFoundError(name="numpy")) is None  # not an extra: a real fault, left as it is
    assert missing_extra(ModuleNotFoundError()) is None


def test_train_deepspeed_without_the_gpu_extra_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` now fails as where it is not installed
    qa = write_qa(tmp_path / "qa", "patch", n=4)
    args = [
        "train",
        "--stage",
        "1",
        "--data",
        qa,
        "--out",
        tmp_path / "run",
        "--deepspeed",
        RECIPES / "zero3.json",
        "--max-steps",
        "1",
    ]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "specllm: error: deepspeed is not installed (optional): pip install 'specllm[gpu]'"
    ]
