"""Training: loss falls in every format, checkpoints resume exactly, stage 1 -> stage 2 chains, DeepSpeed ZeRO-3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from specllm.config import LoraConfig, TrainConfig
from specllm.errors import SpecllmError
from specllm.train import TrainOptions, run_train

from .llmfactory import tiny_llama_dir, write_qa

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_llama_dir(tmp_path_factory.mktemp("models"))


def options(data, out, base, **kw) -> TrainOptions:
    recipe = kw.pop(
        "recipe",
        TrainConfig(
            lr=1e-2,
            epochs=40,
            batch_size=4,
            grad_accum=1,
            bf16=False,
            gradient_checkpointing=False,
            save_every=1000,
            warmup_fraction=0.0,
        ),
    )
    return TrainOptions(
        data=str(data),
        out=str(out),
        base_model=str(base),
        lora=LoraConfig(r=4, alpha=8, dropout=0.0),
        recipe=recipe,
        **kw,
    )


@pytest.mark.parametrize("fmt", ["patch", "compact", "paper"])
def test_loss_falls_in_every_format(tmp_path, tiny, fmt):
    grid = 256 if fmt == "patch" else 24  # text formats write every value into the question
    data = write_qa(tmp_path / "qa", fmt, n=8, grid=grid, test_every=8)
    result = run_train(options(data, tmp_path / "run", tiny, max_steps=12))
    hist = result["history"]
    first = np.mean([h["text"] + h["value"] for h in hist[:3]])
    last = np.mean([h["text"] + h["value"] for h in hist[-3:]])
    assert last < first * 0.9, (first, last)
    assert (tmp_path / "run" / "model" / "weights.safetensors").exists()


def _weights(path: Path) -> dict:
    return load_file(str(path / "weights.safetensors"))


def test_resume_continues_exactly(tmp_path, tiny, monkeypatch):
    data = write_qa(tmp_path / "qa", "patch", n=12)
    recipe = TrainConfig(
        lr=1e-3,
        epochs=2,
        batch_size=3,
        grad_accum=1,
        bf16=False,
        gradient_checkpointing=False,
        save_every=2,
        warmup_fraction=0.0,
    )
    run_train(options(data, tmp_path / "straight", tiny, recipe=recipe, max_steps=5))

    import specllm.train as train_mod

    real_save = train_mod.save_checkpoint

    def save_then_die(model, spec, optimizer, scheduler, step, out, keep=2):
        real_save(model, spec, optimizer, scheduler, step, out, keep)
        if step == 4:
            raise KeyboardInterrupt  # as if killed right after the step-4 checkpoint

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_train(options(data, tmp_path / "interrupted", tiny, recipe=recipe, max_steps=5))
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    assert not (tmp_path / "interrupted" / "model").exists()
    run_train(options(data, tmp_path / "interrupted", tiny, recipe=recipe, max_steps=5, resume=True))

    a, b = _weights(tmp_path / "straight" / "model"), _weights(tmp_path / "interrupted" / "model")
    assert a.keys() == b.keys() and any(k.startswith("lora.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_stage_two_starts_from_stage_one(tmp_path, tiny):
    data1 = write_qa(tmp_path / "qa1", "patch", n=8)
    run_train(options(data1, tmp_path / "s1", tiny, max_steps=3))
    data2 = _stage2_qa(tmp_path / "qa2", data1)
    frozen = TrainConfig(
        lr=0.0, epochs=1, batch_size=4, grad_accum=1, bf16=False, gradient_checkpointing=False, warmup_fraction=0.0
    )
    run_train(options(data2, tmp_path / "s2", tiny, stage=2, init=str(tmp_path / "s1"), recipe=frozen, max_steps=1))
    s1, s2 = _weights(tmp_path / "s1" / "model"), _weights(tmp_path / "s2" / "model")
    shared = [k for k in s1 if k.startswith(("lora.", "patcher."))]
    assert shared
    for k in shared:
        torch.testing.assert_close(s1[k], s2[k], rtol=0, atol=0)
    spec2 = json.loads((tmp_path / "s2" / "model" / "spec.json").read_text())
    assert spec2["stage"] == 2 and spec2["value_names"] == ["c_fe", "mg_fe"]


def _stage2_qa(out: Path, stage1: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from specllm.qa import answer, question
    from specllm.shards import seal_shards, write_table

    t = pq.read_table(stage1 / "part-00000.parquet")
    rng = np.random.default_rng(1)
    c = rng.normal(0, 0.1, t.num_rows)
    mg = rng.normal(0.1, 0.1, t.num_rows)
    mg[0] = np.nan  # a missing label stays missing
    qs, ans = [], []
    for i in range(t.num_rows):
        labels = {"c_fe": float(c[i]), "mg_fe": None if np.isnan(mg[i]) else float(mg[i])}
        present = [k for k, v in labels.items() if v is not None]
        qs.append(question("patch", 2, None, present))
        ans.append(answer("patch", 2, labels))
    t2 = pa.table({
        "spec_id": t["spec_id"], "split": t["split"], "class": t["class"], "c_fe": pa.array(c, pa.float32()),
        "mg_fe": pa.array(mg, pa.float32(), from_pandas=True), "question": qs, "answer": ans,
        "format": t["format"], "stage": pa.array([2] * t.num_rows, pa.int32()), "flux": t["flux"], "mask": t["mask"],
    })  # fmt: skip
    out.mkdir()
    write_table(out / "part-00000.parquet", t2)
    seal_shards(out, {"kind": "qa"})
    return out


def test_stage_two_needs_init(tmp_path, tiny):
    data1 = write_qa(tmp_path / "qa1", "patch", n=8)
    data2 = _stage2_qa(tmp_path / "qa2", data1)
    with pytest.raises(SpecllmError, match="--init"):
        run_train(options(data2, tmp_path / "s2", tiny, stage=2))


def test_bad_qa_input_is_one_clear_line(tmp_path, tiny):
    import pyarrow as pa

    from specllm.shards import seal_shards, write_table

    bad = tmp_path / "bad"
    bad.mkdir()
    write_table(bad / "part-00000.parquet", pa.table({"spec_id": ["a"], "teff": [5000.0]}))
    seal_shards(bad, {"kind": "qa"})
    proc = subprocess.run(
        [sys.executable, "-m", "specllm", "train", "--stage", "1", "--data", str(bad), "--out", str(tmp_path / "r"), "--base-model", str(tiny)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "missing column" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "model").exists()


def test_deepspeed_zero3_launcher_one_cpu_process(tmp_path, tiny):
    import deepspeed  # noqa: F401  (a dev dependency: the launcher below is its console script)

    data = write_qa(tmp_path / "qa", "patch", n=8, test_every=8)
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT))
    cmd = [
        str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "1", "--master_port", "29517", "--module", "specllm",
        "train", "--stage", "1", "--data", str(data), "--out", str(tmp_path / "ds"), "--base-model", str(tiny),
        "--lora-r", "4", "--lora-alpha", "8", "--max-steps", "2", "--batch-size", "2", "--grad-accum", "2",
        "--no-gradient-checkpointing", "--deepspeed", str(ROOT / "specllm" / "recipes" / "zero3.json"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = _weights(tmp_path / "ds" / "model")
    lora = [v for k, v in weights.items() if k.startswith("lora.")]
    assert lora and all(v.ndim == 2 and v.numel() > 0 for v in lora)  # gathered, not empty ZeRO-3 shards


@pytest.mark.slow
def test_real_smollm2_patch_steps_on_real_spectra(tmp_path):
    """The embedded SmolLM2-135M-Instruct, a few patch-mode steps on real DR10 spectra: the loss falls."""
    shared = ROOT.parent / "shared" / "data" / "lamost" / "dr10"
    if not shared.is_dir():
        pytest.skip("../shared/data not present")
    from specllm.config import IngestConfig
    from specllm.ingest import run_ingest
    from specllm.serialize import run_serialize

    files = [str(p) for p in sorted((shared / "spectra").glob("*.fits.gz"))[:12]]
    run_ingest(files, str(tmp_path / "shards"), str(shared / "labels.csv"), IngestConfig())
    run_serialize(str(tmp_path / "shards"), 1, "patch", str(tmp_path / "qa"), count=False)
    recipe = TrainConfig(
        lr=1e-3, epochs=10, batch_size=2, grad_accum=1, gradient_checkpointing=False, warmup_fraction=0.0
    )
    opts = TrainOptions(
        data=str(tmp_path / "qa"),
        out=str(tmp_path / "run"),
        base_model="embedded",
        recipe=recipe,
        lora=LoraConfig(r=8, alpha=16),
        max_steps=6,
        max_train=4,
    )
    hist = run_train(opts)["history"]
    first = np.mean([h["text"] for h in hist[:2]])
    last = np.mean([h["text"] for h in hist[-2:]])
    assert last < first, (first, last)
