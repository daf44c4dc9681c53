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

from specllm.config import GridConfig, LoraConfig, PatchConfig, TrainConfig
from specllm.errors import SpecllmError
from specllm.train import TrainOptions, run_train

from .llmfactory import tiny_llama3_dir, tiny_llama_dir, write_qa

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
        lora=kw.pop("lora", LoraConfig(r=4, alpha=8, dropout=0.0)),
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


def _resume_recipe(**changes) -> TrainConfig:
    """A few steps with a checkpoint every 2 (the resume tests)."""
    fields = dict(lr=1e-3, epochs=2, batch_size=3, grad_accum=1, bf16=False, gradient_checkpointing=False)
    return TrainConfig(**(fields | dict(save_every=2, warmup_fraction=0.0) | changes))


def _killed_after_step_4(monkeypatch, start) -> None:
    """Run `start()` as if killed right after its step-4 checkpoint."""
    import specllm.train as train_mod

    real_save = train_mod.save_checkpoint

    def save_then_die(model, spec, optimizer, scheduler, step, out, **kw):
        real_save(model, spec, optimizer, scheduler, step, out, **kw)
        if step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        start()
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)


def test_resume_continues_exactly(tmp_path, tiny, monkeypatch):
    data = write_qa(tmp_path / "qa", "patch", n=12)
    recipe = _resume_recipe()
    run_train(options(data, tmp_path / "straight", tiny, recipe=recipe, max_steps=5))
    _killed_after_step_4(
        monkeypatch, lambda: run_train(options(data, tmp_path / "interrupted", tiny, recipe=recipe, max_steps=5))
    )
    assert not (tmp_path / "interrupted" / "model").exists()
    run_train(options(data, tmp_path / "interrupted", tiny, recipe=recipe, max_steps=5, resume=True))

    a, b = _weights(tmp_path / "straight" / "model"), _weights(tmp_path / "interrupted" / "model")
    assert a.keys() == b.keys() and any(k.startswith("lora.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_weight_average_is_the_mean_of_its_snapshots_and_resumes_exactly(tmp_path, tiny, monkeypatch):
    """average_from 0.5 of 6 steps, a snapshot every 2: the model is the mean of steps 4 and 6's weights (3 is not a
    snapshot step), the last step's weights in OUT/last; a run killed after step 4 resumes to the same two."""
    data = write_qa(tmp_path / "qa", "patch", n=12)
    recipe = _resume_recipe(lr=1e-2, epochs=3, average_from=0.5)
    straight = tmp_path / "straight"
    run_train(options(data, straight, tiny, recipe=recipe, max_steps=6, keep_checkpoints=10))
    steps = sorted(p.name for p in (straight / "checkpoints").glob("step-*"))
    assert steps == ["step-0000002", "step-0000004"]  # both kept (keep_checkpoints)
    step4, last, model = (
        _weights(p) for p in (straight / "checkpoints" / steps[1] / "model", straight / "last", straight / "model")
    )
    assert model.keys() == last.keys() == step4.keys()
    for k in model:
        torch.testing.assert_close(model[k], (step4[k] + last[k]) / 2, rtol=0, atol=1e-6)
    assert any(not torch.equal(model[k], last[k]) for k in model if k.startswith("lora."))
    manifest = json.loads((straight / "model" / "spec.json").read_text())["manifest"]
    assert manifest["weight_average"] == {"from_step": 3, "every": 2, "snapshots": 2}
    assert json.loads((straight / "last" / "spec.json").read_text())["manifest"]["weight_average"] is None
    from specllm.runs import write_model_card

    card = write_model_card(straight / "model", "make model").read_text()
    assert "the average of 2 snapshots, one every 2 steps from step 3" in card

    _killed_after_step_4(
        monkeypatch, lambda: run_train(options(data, tmp_path / "cut", tiny, recipe=recipe, max_steps=6))
    )
    assert (tmp_path / "cut" / "checkpoints" / "step-0000004" / "average.safetensors").exists()
    run_train(options(data, tmp_path / "cut", tiny, recipe=recipe, max_steps=6, resume=True))
    for name in ("model", "last"):
        a, b = _weights(straight / name), _weights(tmp_path / "cut" / name)
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


def test_qlora_nf4_trains_on_cpu_and_its_saved_model_predicts_the_same(tmp_path, tiny, monkeypatch):
    """--quantize nf4 on the CPU (bitsandbytes' CPU backend): 4-bit base layers, the loss falls, spec.json records
    nf4, and the model loaded from disk (as infer loads it) predicts what the trained model predicted."""
    import bitsandbytes as bnb  # noqa: F401  (a dev dependency)

    import specllm.train as train_mod
    from specllm.predict import predict
    from specllm.runs import load_model_dir

    trained = {}
    real_save = train_mod.save_model_dir

    def keep_model(model, spec, path, **kw):
        trained["model"] = model
        return real_save(model, spec, path, **kw)

    monkeypatch.setattr(train_mod, "save_model_dir", keep_model)
    data = write_qa(tmp_path / "qa", "patch", n=12, test_every=4)
    lora = LoraConfig(r=4, alpha=8, dropout=0.0, quantize="nf4")
    base = tiny_llama_dir(tmp_path, hidden=64)
    result = run_train(options(data, tmp_path / "q", base, lora=lora, max_steps=8, validation=False))
    hist = result["history"]
    assert hist[-1]["value"] < hist[0]["value"]
    model = trained["model"]
    assert any(type(m).__name__ == "Linear4bit" for m in model.lm.modules())
    spec = json.loads((tmp_path / "q" / "model" / "spec.json").read_text())
    assert spec["quantize"] == "nf4"

    from specllm.prompting import PromptBuilder
    from specllm.train import load_qa

    qa = load_qa(str(data), 1)
    test = qa.take(np.flatnonzero(qa.split == "test"))
    loaded, lspec, tokenizer = load_model_dir(tmp_path / "q")
    assert lspec.quantize == "nf4" and any(type(m).__name__ == "Linear4bit" for m in loaded.lm.modules())
    builder = PromptBuilder(tokenizer, 4)
    cpu = torch.device("cpu")
    before = predict(model, result["spec"], builder, test.question, test.flux, test.mask, cpu)
    after = predict(loaded, lspec, builder, test.question, test.flux, test.mask, cpu)
    # In standardised units: bitsandbytes' CPU 4-bit kernels compute in bf16, and the trained and the reloaded model
    # differ by ~1e-3 sigma (not bit for bit; the LoRA model without 4-bit is exact, see test_resume_continues_exactly).
    std = np.asarray(lspec.value_std)
    np.testing.assert_allclose(before.values / std, after.values / std, rtol=0, atol=5e-3)
    assert before.classes == after.classes


def test_qlora_refuses_layers_the_cpu_kernels_cannot_take(tmp_path, tiny):
    data = write_qa(tmp_path / "qa", "patch", n=8)
    with pytest.raises(SpecllmError, match="multiples of 64"):
        run_train(options(data, tmp_path / "r", tiny, lora=LoraConfig(r=4, alpha=8, quantize="nf4")))


def test_quantize_choice_is_checked(tmp_path, tiny):
    data = write_qa(tmp_path / "qa", "patch", n=8)
    with pytest.raises(SpecllmError, match="--quantize"):
        run_train(options(data, tmp_path / "r", tiny, lora=LoraConfig(r=4, alpha=8, quantize="int3")))


# ---------------------------------------------------------------- data parallel (2 CPU ranks, gloo)


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _launch(launcher: str, args: list[str], tmp_path: Path, extra_env: dict | None = None, ranks: int = 2):
    """`specllm train ARGS` through tests/distprobe.py under torchrun or the deepspeed launcher, `ranks` CPU ranks."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(extra_env or {}))
    probe = str(ROOT / "tests" / "distprobe.py") if extra_env else "specllm"  # the module form users launch
    module = [] if extra_env else ["--module"]
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
               "--master-port", _free_port(), *module, probe]  # fmt: skip
    else:
        cmd = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", str(ranks),
               "--master_port", _free_port(), *module, probe]  # fmt: skip
    return subprocess.run(cmd + ["train", *args], capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)


def _cli_args(data, out, base, batch, epochs=1, **kw) -> list[str]:
    args = ["--stage", "1", "--data", str(data), "--out", str(out), "--base-model", str(base), "--lora-r", "4",
            "--lora-alpha", "8", "--lora-dropout", "0", "--lr", "1e-3", "--epochs", str(epochs), "--batch-size",
            str(batch), "--grad-accum", "1", "--no-bf16", "--no-gradient-checkpointing", "--warmup", "0",
            "--no-validation"]  # fmt: skip
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return args


def test_two_ranks_share_the_epoch(tmp_path, tiny):
    """torchrun, 2 ranks: half the optimizer steps of 1 rank at the same per-device batch, disjoint halves of the
    train split, and the weights of 1 rank at twice the per-device batch."""
    data = write_qa(tmp_path / "qa", "patch", n=20, test_every=5)  # 16 train, 4 test
    seen = tmp_path / "seen"
    seen.mkdir()
    proc = _launch("torchrun", _cli_args(data, tmp_path / "two", tiny, 2), tmp_path, {"SPECLLM_PROBE_SEEN": str(seen)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    recipe = dict(lr=1e-3, epochs=1, grad_accum=1, bf16=False, gradient_checkpointing=False, warmup_fraction=0.0)
    run_train(options(data, tmp_path / "one-b2", tiny, recipe=TrainConfig(batch_size=2, **recipe), validation=False))
    run_train(options(data, tmp_path / "one-b4", tiny, recipe=TrainConfig(batch_size=4, **recipe), validation=False))

    hist = {name: json.loads((tmp_path / name / "history.json").read_text()) for name in ("two", "one-b2", "one-b4")}
    assert len(hist["one-b2"]) == 8 and len(hist["two"]) == 4 == len(hist["one-b4"])
    parts = [np.loadtxt(seen / f"rank-{r}.txt", dtype=int).ravel() for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 8
    assert not set(parts[0]) & set(parts[1]) and sorted([*parts[0], *parts[1]]) == list(range(16))
    spec = json.loads((tmp_path / "two" / "model" / "spec.json").read_text())["manifest"]["parallel"]
    assert spec["ranks"] == 2 and spec["global_batch"] == 4 and spec["samples_per_rank"] == [8, 8]
    assert "global batch 4" in proc.stderr and proc.stderr.count("optimizer steps") == 1  # rank 0 alone reports
    for a, b in zip(hist["two"], hist["one-b4"]):
        assert a["text"] == pytest.approx(b["text"], rel=1e-4) and a["value"] == pytest.approx(b["value"], rel=1e-4)
    two, one = _weights(tmp_path / "two" / "model"), _weights(tmp_path / "one-b4" / "model")
    assert two.keys() == one.keys()
    for k in two:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)


def test_two_rank_zero3_resumes_through_engine_checkpoints(tmp_path, tiny):
    """deepspeed launcher, 2 ranks, ZeRO-3: killed right after the step-2 checkpoint and resumed, the run ends with
    the weights of one run through."""
    import deepspeed  # noqa: F401  (a dev dependency: the launcher is its console script)

    data = write_qa(tmp_path / "qa", "patch", n=20, test_every=5)
    zero3 = ["--deepspeed", str(ROOT / "specllm" / "recipes" / "zero3.json"), "--save-every", "2"]
    straight = _launch("deepspeed", _cli_args(data, tmp_path / "straight", tiny, 2, epochs=2) + zero3, tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _launch(
        "deepspeed", _cli_args(data, tmp_path / "run", tiny, 2, epochs=2) + zero3, tmp_path,
        {"SPECLLM_PROBE_DIE_AFTER": "4"},
    )  # fmt: skip
    assert killed.returncode != 0 and not (tmp_path / "run" / "model").exists()
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000004"
    assert any(ckpt.glob("*optim_states.pt")), sorted(p.name for p in ckpt.iterdir())  # the engine's own, sharded
    resumed = _launch("deepspeed", _cli_args(data, tmp_path / "run", tiny, 2, epochs=2, resume=True) + zero3, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 4" in resumed.stderr
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["step"] for h in hist] == [5, 6, 7, 8]
    a, b = _weights(tmp_path / "straight" / "model"), _weights(tmp_path / "run" / "model")
    assert a.keys() == b.keys() and all(v.numel() for v in a.values())  # gathered, not empty ZeRO-3 shards
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_qlora_with_zero3_on_two_cpu_ranks(tmp_path):
    """The paper's combination: a 4-bit (nf4, stored in bf16) base partitioned by ZeRO-3 over 2 ranks, gradient
    checkpointing on; the gathered adapter is saved whole and the model loads with its 4-bit base."""
    import bitsandbytes as bnb  # noqa: F401  (dev dependencies)
    import deepspeed  # noqa: F401

    from specllm.runs import load_model_dir

    base = tiny_llama_dir(tmp_path, hidden=64)
    data = write_qa(tmp_path / "qa", "patch", n=20, test_every=5)
    args = _cli_args(data, tmp_path / "q3", base, 2, max_steps=2, quantize="nf4", report_test=True) + [
        "--gradient-checkpointing", "--deepspeed", str(ROOT / "specllm" / "recipes" / "zero3.json"),
    ]  # fmt: skip
    counts = tmp_path / "counts"
    counts.mkdir()
    proc = _launch("deepspeed", args, tmp_path, {"SPECLLM_PROBE_EVAL": str(counts)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # ZeRO-3: the ranks share the 4 test examples in lock-step, 2 each
    assert [(counts / f"eval-rank-{r}.txt").read_text().split() for r in (0, 1)] == [["2"], ["2"]]
    assert "4-bit nf4" in proc.stderr
    spec = json.loads((tmp_path / "q3" / "model" / "spec.json").read_text())
    assert spec["quantize"] == "nf4" and spec["manifest"]["parallel"]["deepspeed_zero_stage"] == 3
    weights = _weights(tmp_path / "q3" / "model")
    lora = [v for k, v in weights.items() if k.startswith("lora.")]
    assert lora and all(v.ndim == 2 and v.numel() > 0 and torch.isfinite(v).all() for v in lora)
    model, _, _ = load_model_dir(tmp_path / "q3")
    assert any(type(m).__name__ == "Linear4bit" for m in model.lm.modules())


def test_paper_format_end_to_end_with_the_llama3_tokenizer(tmp_path, shared_data):
    """The paper's text format with the real Llama-3 tokenizer: serialize counts ~24,600 tokens per spectrum with it,
    a long-context Llama (random weights, Llama-3 tokenizer and chat template) trains on real DR10 spectra with
    gradient checkpointing, and `infer --decode text` parses its generated answers."""
    import csv
    import io

    from typer.testing import CliRunner

    from specllm.cli import app
    from specllm.config import IngestConfig
    from specllm.ingest import run_ingest
    from specllm.serialize import run_serialize

    dr10 = shared_data / "lamost" / "dr10"
    files = [str(p) for p in sorted((dr10 / "spectra").glob("*.fits.gz"))[:3]]
    run_ingest(files, str(tmp_path / "shards"), str(dr10 / "labels.csv"), IngestConfig())
    result = run_serialize(str(tmp_path / "shards"), 1, "paper", str(tmp_path / "qa"), tokenizer_from="llama3")
    assert result.tokens["tokenizer"] == "llama3" and result.tokens["context"] == 131072
    assert 24000 < result.tokens["max"] < 26000  # ~5 tokens per flux value (paper: 4901 values)

    base = tiny_llama3_dir(tmp_path)
    recipe = TrainConfig(lr=1e-3, epochs=1, batch_size=1, grad_accum=1, bf16=False, gradient_checkpointing=True)
    opts = TrainOptions(
        data=str(tmp_path / "qa"), out=str(tmp_path / "run"), base_model=str(base), recipe=recipe,
        lora=LoraConfig(r=4, alpha=8, dropout=0.0), max_steps=2, max_train=2,
    )  # fmt: skip
    hist = run_train(opts)["history"]
    assert len(hist) == 2 and all(np.isfinite(h["text"]) for h in hist)

    out = CliRunner().invoke(
        app, ["infer", str(tmp_path / "shards"), "--model", str(tmp_path / "run"), "--decode", "text"]
    )
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == len(files)
    # Answers are generated under the paper grammar; an answer that a barely trained model does not finish within
    # infer's max_new_tokens (the grammar allows any number of integer digits) is flagged, never misread.
    assert {r["status"] for r in rows} <= {"ok", "unparseable answer"}
    parsed = [r for r in rows if r["status"] == "ok"]
    assert parsed and all(r["class"] in "AFGKM" and np.isfinite(float(r["teff"])) for r in parsed), rows


def test_llama3_names_a_tokenizer_not_weights(tmp_path):
    data = write_qa(tmp_path / "qa", "patch", n=8)
    with pytest.raises(SpecllmError, match="tokenizer only"):
        run_train(options(data, tmp_path / "r", "llama3"))


def test_max_train_draws_a_fixed_random_subset_in_order():
    from specllm.train import train_subset

    rows = np.arange(100, 300)
    a, b = train_subset(rows, 20, seed=2), train_subset(rows, 20, seed=2)
    assert np.array_equal(a, b) and len(np.unique(a)) == 20 and np.all(np.diff(a) > 0)
    assert np.isin(a, rows).all() and a.max() > rows[40]  # not the first rows in shard order
    assert not np.array_equal(a, train_subset(rows, 20, seed=3))
    assert np.array_equal(train_subset(rows, 500, seed=2), rows)


def test_density_weights_favour_rare_labels():
    from specllm.train import density_weights

    teff = np.concatenate([np.full(90, 6000.0), np.full(10, 10000.0), [np.nan]])
    w = density_weights(teff, 1.0)
    assert w[-1] == 1.0 and w[:100].mean() == pytest.approx(1.0)
    assert w[95] > 3 * w[0]
    assert np.all(density_weights(teff, 0.0) == 1.0)
    assert density_weights(teff, 1.0, clip=2.0)[:100].max() <= 2.0 / np.mean(np.minimum(w[:100], 2.0)) + 1e-9


def test_validation_split_is_held_out_and_test_read_only_when_asked(tmp_path, tiny):
    import json

    from specllm.config import SplitConfig
    from specllm.splits import is_validation

    data = write_qa(tmp_path / "qa", "patch", n=40, grid=GridConfig().size, test_every=4)
    result = run_train(options(data, tmp_path / "run", tiny, max_steps=2))
    manifest = result["spec"].manifest
    held = sum(is_validation(f"s{i}", SplitConfig()) for i in range(40) if i % 4 != 3)
    assert manifest["validation_examples"] == held > 0
    assert manifest["train_examples"] == 30 - held
    assert manifest["metrics"] == {} and manifest["validation_metrics"]["teff"]["all"]["n"] == held
    assert set(result["spec"].error_scale) == {"teff", "logg", "feh"}
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["test"] == {} and written["validation"]
    reported = run_train(options(data, tmp_path / "run2", tiny, max_steps=2, report_test=True, validation=False))
    assert reported["spec"].manifest["metrics"]["teff"]["all"]["n"] == 10
    assert reported["spec"].manifest["train_examples"] == 30 and reported["spec"].error_scale is None


def test_zero3_bf16_step_under_cuda_autocast_semantics(tmp_path):
    """The paper's recipe (QLoRA, ZeRO-3) in the dtype regime of a GPU run, emulated on one CPU rank
    (tests/distprobe.py, SPECLLM_PROBE_CUDA_BF16): DeepSpeed's bf16 engine casts every parameter of a model it did not
    partition while loading (a 4-bit base is partitioned by deepspeed.initialize), the patch projector and read-out
    heads included, to bf16, and runs the module with autocast off; training steps through the read-out, the closing
    evaluation and the save all go through."""
    import bitsandbytes as bnb  # noqa: F401  (dev dependencies)
    import deepspeed  # noqa: F401

    base = tiny_llama_dir(tmp_path, hidden=64)
    data = write_qa(tmp_path / "qa", "patch", n=12, test_every=4)
    args = _cli_args(data, tmp_path / "bf16", base, 2, max_steps=2, report_test=True, quantize="nf4") + [
        "--bf16", "--deepspeed", str(ROOT / "specllm" / "recipes" / "zero3.json"),
    ]  # fmt: skip
    proc = _launch("deepspeed", args, tmp_path, {"SPECLLM_PROBE_CUDA_BF16": "1"}, ranks=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "bf16" / "model" / "spec.json").read_text())["manifest"]
    assert manifest["parallel"]["deepspeed_zero_stage"] == 3 and manifest["parallel"]["deepspeed_bf16"] is True
    hist = json.loads((tmp_path / "bf16" / "history.json").read_text())
    assert len(hist) == 2 and all(np.isfinite(h["value"]) and np.isfinite(h["text"]) for h in hist)
    assert manifest["metrics"]["teff"]["all"]["n"] == 3


def test_two_ranks_share_the_evaluation(tmp_path, tiny):
    """torchrun, 2 ranks: each rank predicts an equal block of the test split (3 examples: 2 + 1 padded with a
    duplicate that is dropped), and the metrics are those of 1 rank trained on the same global batch."""
    data = write_qa(tmp_path / "qa", "patch", n=15, test_every=5)  # 12 train, 3 test
    counts = tmp_path / "counts"
    counts.mkdir()
    args = _cli_args(data, tmp_path / "two", tiny, 2, max_steps=2, report_test=True, dist_timeout=5)
    proc = _launch("torchrun", args, tmp_path, {"SPECLLM_PROBE_EVAL": str(counts)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(counts / f"eval-rank-{r}.txt").read_text().split() for r in (0, 1)] == [["2"], ["2"]]
    assert proc.stderr.count("test class accuracy") == 1  # rank 0 alone scores and reports
    recipe = TrainConfig(
        lr=1e-3, epochs=1, batch_size=4, grad_accum=1, bf16=False, gradient_checkpointing=False, warmup_fraction=0.0
    )
    one = run_train(
        options(data, tmp_path / "one", tiny, recipe=recipe, max_steps=2, report_test=True, validation=False)
    )
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())["test"]
    assert two["teff"]["all"]["n"] == one["metrics"]["teff"]["all"]["n"] == 3
    for label in ("teff", "logg", "feh"):
        for key in ("mu", "sigma", "within_1sigma"):
            assert two[label]["all"][key] == pytest.approx(one["metrics"][label]["all"][key], rel=1e-3, abs=1e-6)
    assert two["class_accuracy"] == one["metrics"]["class_accuracy"]


def test_rank_share_is_equal_and_covers_every_example():
    from specllm.train import Ranks, rank_share

    for n in (0, 1, 2, 3, 7, 8):
        for world in (1, 2, 3):
            parts = [rank_share(n, Ranks(r, world)) for r in range(world)]
            assert len({len(p) for p in parts}) == 1
            if n:
                assert np.concatenate(parts)[:n].tolist() == list(range(n))


def test_synthetic_rows_are_trained_on_but_never_validated():
    from specllm.train import QAData, held_out, training_rows

    ids = np.array([f"s{i}" for i in range(400)] + [f"synth-{i}" for i in range(100)])
    split = np.array(["train"] * 300 + ["test"] * 100 + ["synthetic"] * 100)
    n = len(ids)
    data = QAData(ids, split, [""] * n, [""] * n, np.zeros(n, int), np.zeros((n, 1)), ["teff"], None, None, "compact")
    val = held_out(data, True)
    rows = training_rows(data, val)
    assert 30 < val.sum() < 90 and not val[300:].any()  # the validation split: real train-split rows only
    assert rows[400:].all() and not rows[300:400].any()  # every synthetic row is trained on, no test row
    assert not (rows & val).any() and (rows | val)[:300].all()


def test_param_groups_put_heads_at_their_own_rate(tmp_path, tiny):
    from dataclasses import asdict

    from specllm.runs import ModelSpec, build_model

    spec = ModelSpec(stage=1, format="compact", base_model=str(tiny), base_fingerprint="", value_names=["teff"],
                     value_mean=[0.0], value_std=[1.0], classes=["A"], lora=asdict(LoraConfig(r=4, alpha=8)))  # fmt: skip
    model, _ = build_model(spec)
    adapter, heads = model.param_groups(1e-3, 3.0)
    assert adapter["lr"] == 1e-3 and heads["lr"] == 3e-3
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in adapter["params"] + heads["params"]} == trainable
    assert (
        adapter["params"]
        and heads["params"]
        and not {id(p) for p in adapter["params"]} & {id(p) for p in heads["params"]}
    )


def test_log_teff_standardises_the_log_and_comes_back_in_kelvin():
    from specllm.runs import ModelSpec

    spec = ModelSpec(stage=1, format="patch", base_model="embedded", base_fingerprint="x", value_names=["teff", "logg"],
                     value_mean=[3.8, 4.0], value_std=[0.1, 0.5], classes=[], log_values=["teff"])  # fmt: skip
    labels = np.array([[6000.0, 4.2], [12000.0, 3.9]])
    z = spec.standardise(labels)
    assert np.allclose(z[:, 0], (np.log10(labels[:, 0]) - 3.8) / 0.1) and np.allclose(z[:, 1], [0.4, -0.2])
    values, errors = spec.unstandardise(z, np.full_like(z, 0.1))
    assert np.allclose(values, labels)
    assert np.allclose(errors[:, 0], np.log(10) * labels[:, 0] * 0.01)  # 1-sigma of log10 Teff: 0.1 x 0.1
    assert np.allclose(errors[:, 1], 0.05)
    plain = ModelSpec(**{**spec.__dict__, "log_values": [], "value_mean": [6500.0, 4.0], "value_std": [1000.0, 0.5]})
    assert np.allclose(plain.unstandardise(plain.standardise(labels), np.ones_like(z))[0], labels)


def test_conv_stem_run_records_it_and_reloads_its_trained_weights(tmp_path, tiny):
    from specllm.predict import load_for_inference
    from specllm.runs import write_model_card

    data = write_qa(tmp_path / "qa", "patch", n=8, grid=GridConfig().size, test_every=8)
    run = tmp_path / "run"
    spec = run_train(options(data, run, tiny, max_steps=3, validation=False, patch=PatchConfig(64, "conv")))["spec"]
    assert spec.patch_stem == "conv" and json.loads((run / "model" / "spec.json").read_text())["patch_stem"] == "conv"
    assert "convolutional stem under the patches" in write_model_card(run / "model", "test").read_text()
    saved = _weights(run / "model")
    assert saved["patcher.conv_proj.weight"].abs().sum() > 0  # trained off its zero start
    loaded = load_for_inference(run, torch.device("cpu"))[0]
    for name, tensor in loaded.model.patcher.state_dict().items():
        torch.testing.assert_close(tensor, saved[f"patcher.{name}"].to(tensor.dtype))
    with pytest.raises(SpecllmError, match="multiple of 16"):
        run_train(options(data, tmp_path / "bad", tiny, max_steps=1, patch=PatchConfig(40, "conv")))


def test_log_teff_run_records_it_and_predicts_in_kelvin(tmp_path, tiny):
    from specllm.predict import load_for_inference, predict, questions_for
    from specllm.train import load_qa

    data = write_qa(tmp_path / "qa", "patch", n=8, grid=GridConfig().size, test_every=8)
    spec = run_train(options(data, tmp_path / "run", tiny, max_steps=2, log_teff=True, validation=False))["spec"]
    qa = load_qa(str(data), 1)
    teff = qa.values[:, spec.value_names.index("teff")]
    assert spec.log_values == ["teff"]
    assert spec.value_mean[0] == pytest.approx(np.mean(np.log10(teff[qa.split == "train"])))
    loaded = load_for_inference(tmp_path / "run", torch.device("cpu"))[0]
    assert loaded.spec.log_values == ["teff"]
    preds = predict(loaded.model, loaded.spec, loaded.builder, questions_for(loaded.spec, qa.flux), qa.flux, qa.mask,
                    torch.device("cpu"))  # fmt: skip
    assert np.all((preds.values[:, 0] > 1000) & (preds.values[:, 0] < 100000)) and np.all(preds.errors[:, 0] > 0)


def test_calibration_from_held_out_runs_scales_a_run_without_validation(tmp_path, tiny):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from transfer_calibration import transferred

    from specllm.runs import read_error_scale

    data = write_qa(tmp_path / "qa", "patch", n=40, grid=GridConfig().size, test_every=4)
    held = [run_train(options(data, tmp_path / f"held{s}", tiny, max_steps=2))["spec"] for s in (0, 1)]
    assert all(spec.error_scale for spec in held)  # each fitted on its own validation split
    # Two "seeds" of a recipe (here the same one, with the second's factors changed): the geometric mean per label
    spec1 = json.loads((tmp_path / "held1" / "model" / "spec.json").read_text())
    spec1["error_scale"] = {n: {g: 4 * v for g, v in groups.items()} for n, groups in spec1["error_scale"].items()}
    (tmp_path / "held1" / "model" / "spec.json").write_text(json.dumps(spec1))
    result = transferred([str(tmp_path / "held0"), str(tmp_path / "held1")])
    for name, groups in result["error_scale"].items():
        assert groups["all"] == pytest.approx(2 * held[0].error_scale[name]["all"])
    (tmp_path / "cal.json").write_text(json.dumps(result))

    # A run on train + validation takes them (read before training) and its test figures use them
    plain = run_train(options(data, tmp_path / "plain", tiny, max_steps=2, report_test=True, validation=False))
    scaled = run_train(
        options(
            data,
            tmp_path / "tv",
            tiny,
            max_steps=2,
            report_test=True,
            validation=False,
            calibration_from=str(tmp_path / "cal.json"),
        )  # fmt: skip
    )["spec"]
    assert scaled.error_scale == read_error_scale(str(tmp_path / "cal.json"), scaled.value_names)
    assert plain["spec"].error_scale is None
    assert scaled.manifest["metrics"]["teff"]["all"]["mu"] == pytest.approx(
        plain["spec"].manifest["metrics"]["teff"]["all"]["mu"], abs=1e-6
    )  # same seed, same weights: only the sigma changed
    # Its card says where the factors came from, and that it held out no validation spectra
    from specllm.runs import write_model_card

    card = write_model_card(tmp_path / "tv" / "model", "make model").read_text()
    assert (
        "no validation hold-out" in card
        and f"held-out runs of this recipe on their validation spectra (`{tmp_path / 'cal.json'}`" in card
    )
    assert "sigmas there are smaller than on unseen spectra" not in card  # no domain check fitted in this run
    assert card.count("## Validation split of a held-out run of this recipe (seed 0") == 2  # the two runs' figures
    # A run with its own validation split fits its own factors and ignores the source
    own = run_train(options(data, tmp_path / "own", tiny, max_steps=2, calibration_from=str(tmp_path / "cal.json")))
    assert own["spec"].error_scale == held[0].error_scale
    # A bad source fails before training, in one line naming it
    (tmp_path / "bad.json").write_text(json.dumps({"error_scale": {"teff": {"all": -1}}}))
    with pytest.raises(SpecllmError, match="bad.json"):
        run_train(options(data, tmp_path / "bad", tiny, max_steps=2, validation=False,
                          calibration_from=str(tmp_path / "bad.json")))  # fmt: skip
    assert not (tmp_path / "bad" / "model").exists()


def test_shipped_recipe_names_a_calibration_that_exists():
    from specllm.config import RECIPES
    from specllm.runs import read_error_scale

    for recipe in RECIPES.glob("*.json"):
        source = json.loads(recipe.read_text()).get("calibration_from")
        if source:
            assert read_error_scale(source, ["teff", "logg", "feh"])
