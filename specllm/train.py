"""`specllm train --stage 1|2`: fine-tune the spectral LM on QA shards (the paper's QLoRA recipe by default).

A short loop in the manner of nanoGPT: batches -> loss -> backward -> (every `grad_accum` micro-batches) clip, step,
schedule. The same loop runs on the CPU (LoRA, bf16 autocast where the CPU has it), on one GPU (QLoRA: 4-bit NF4
base through bitsandbytes) and under the DeepSpeed launcher (`--deepspeed recipe.json`, ZeRO-3), where DeepSpeed's
engine does the backward, step and accumulation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from . import __version__
from .config import CLASSES, STAGE1_LABELS, AugmentConfig, PatchConfig, TrainOptions
from .device import autocast, bf16_supported, pick_device
from .errors import SpecllmError
from .models import base_fingerprint, resolve_base
from .predict import evaluate_split
from .progress import progress_bar, say
from .prompting import PromptBuilder
from .runs import (
    ModelSpec,
    bitsandbytes_available,
    build_model,
    load_trainable,
    model_dir,
    read_json,
    read_safetensors,
    read_weights,
    save_model_dir,
    trainable_state,
)
from .shards import (
    arrow_to_vectors,
    atomic_write,
    atomic_write_json,
    check_output,
    read_manifest,
    read_table,
    verified_shard_paths,
)

QA_COLUMNS = ("spec_id", "split", "question", "answer", "format", "stage")
CHECKPOINTS = "checkpoints"
LATEST = "latest"


@dataclass
class QAData:
    spec_id: np.ndarray
    split: np.ndarray
    question: list[str]
    answer: list[str]
    classes: np.ndarray  # index into CLASSES, -100 where unknown
    values: np.ndarray  # (N, K) raw labels, NaN where missing
    value_names: list[str]
    flux: np.ndarray | None
    mask: np.ndarray | None
    fmt: str

    def take(self, idx: np.ndarray) -> QAData:
        return dataclasses.replace(
            self,
            spec_id=self.spec_id[idx],
            split=self.split[idx],
            question=[self.question[i] for i in idx],
            answer=[self.answer[i] for i in idx],
            classes=self.classes[idx],
            values=self.values[idx],
            flux=self.flux[idx] if self.flux is not None else None,
            mask=self.mask[idx] if self.mask is not None else None,
        )


def value_columns(table: pa.Table, stage: int) -> list[str]:
    if stage == 1:
        return [name for name, _ in STAGE1_LABELS if name in table.column_names]
    return [c for c in table.column_names if c.endswith("_fe") and c != "fe_h"]


def load_qa(source: str, stage: int, verify: bool = True) -> QAData:
    table = read_table(verified_shard_paths(source, verify))
    missing = [c for c in QA_COLUMNS if c not in table.column_names]
    if missing:
        raise SpecllmError(f"{source}: not QA shards (missing column(s) {', '.join(missing)}); run `specllm serialize`")
    fmts = set(table.column("format").to_pylist())
    stages = set(table.column("stage").to_pylist())
    if len(fmts) != 1:
        raise SpecllmError(f"{source}: mixes formats {sorted(fmts)}")
    if stages != {stage}:
        raise SpecllmError(f"{source}: holds stage {sorted(stages)} examples, not stage {stage}")
    fmt = fmts.pop()
    names = value_columns(table, stage)
    if not names:
        raise SpecllmError(f"{source}: no label column for stage {stage}")
    values = np.stack([np.asarray(table.column(n).to_numpy(zero_copy_only=False), dtype=np.float64) for n in names], 1)
    if np.isnan(values).all():
        raise SpecllmError(f"{source}: every label is missing")
    cls = table.column("class").to_pylist() if "class" in table.column_names else [None] * table.num_rows
    classes = np.array([CLASSES.index(c) if c in CLASSES else -100 for c in cls])
    flux = mask = None
    if fmt == "patch":
        if "flux" not in table.column_names or "mask" not in table.column_names:
            raise SpecllmError(f"{source}: patch-format QA shards need flux and mask columns")
        flux = arrow_to_vectors(table.column("flux"), np.float32)
        mask = arrow_to_vectors(table.column("mask"), bool)
    return QAData(
        spec_id=np.asarray(table.column("spec_id").to_pylist()),
        split=np.asarray(table.column("split").to_pylist()),
        question=table.column("question").to_pylist(),
        answer=table.column("answer").to_pylist(),
        classes=classes,
        values=values,
        value_names=names,
        flux=flux,
        mask=mask,
        fmt=fmt,
    )


def augment(flux: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig):
    """Noise, flux scaling and masked spans (the model then tolerates partial wavelength coverage)."""
    flux, mask = flux.copy(), mask.copy()
    n, g = flux.shape
    if cfg.noise > 0:
        flux += np.abs(rng.normal(0.0, cfg.noise, (n, 1))) * rng.normal(0.0, 1.0, flux.shape)
    if cfg.scale > 0:
        flux *= rng.uniform(1 - cfg.scale, 1 + cfg.scale, (n, 1))
    for i in np.flatnonzero(rng.random(n) < cfg.span_probability):
        width = int(rng.uniform(cfg.span_min, cfg.span_max) * g)
        if rng.random() < 0.5:  # an edge cut, as a survey with shorter coverage
            lo, hi = (0, width) if rng.random() < 0.5 else (g - width, g)
            fill = flux[i, hi] if lo == 0 else flux[i, lo - 1]
        else:
            lo = int(rng.integers(0, g - width))
            hi = lo + width
            fill = np.linspace(flux[i, max(lo - 1, 0)], flux[i, min(hi, g - 1)], hi - lo)
        flux[i, lo:hi] = fill
        mask[i, lo:hi] = True
    return flux.astype(np.float32), mask


def _checkpoint_dirs(out: Path) -> list[Path]:
    return sorted((out / CHECKPOINTS).glob("step-*"))


def save_checkpoint(model, spec, optimizer, scheduler, step: int, out: Path, keep: int = 2) -> None:
    from safetensors.torch import save_file

    ckpt = out / CHECKPOINTS / f"step-{step:07d}"
    save_model_dir(model, spec, ckpt)
    state, meta = {}, {"step": step, "param_groups": [], "scheduler": scheduler.state_dict()}
    for gi, group in enumerate(optimizer.param_groups):
        meta["param_groups"].append({k: v for k, v in group.items() if k != "params"})
        for pi, p in enumerate(group["params"]):
            for key, value in optimizer.state.get(p, {}).items():
                state[f"{gi}.{pi}.{key}"] = value.detach().cpu() if torch.is_tensor(value) else torch.tensor(value)
    state["rng.torch"] = torch.get_rng_state()
    atomic_write(ckpt / "optimizer.safetensors", lambda tmp: save_file(state, tmp))
    atomic_write_json(ckpt / "trainer.json", meta)
    atomic_write_json(out / CHECKPOINTS / LATEST, {"checkpoint": ckpt.name, "step": step})
    for old in _checkpoint_dirs(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def restore_checkpoint(model, optimizer, scheduler, out: Path) -> int:
    latest = out / CHECKPOINTS / LATEST
    if not latest.exists():
        raise SpecllmError(f"{out}: no checkpoint to resume from")
    ckpt = latest_checkpoint(out)
    load_trainable(model, read_weights(ckpt))
    meta = read_json(ckpt / "trainer.json")
    state = read_safetensors(ckpt / "optimizer.safetensors")
    for gi, group in enumerate(optimizer.param_groups):
        group.update(meta["param_groups"][gi])
        for pi, p in enumerate(group["params"]):
            prefix = f"{gi}.{pi}."
            entry = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if entry:
                optimizer.state[p] = {k: v.to(p.device) if k != "step" else v for k, v in entry.items()}
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(state["rng.torch"])
    return int(meta["step"])


def latest_checkpoint(out: Path) -> Path:
    """The checkpoint directory `OUT/checkpoints/latest` names; a garbled pointer is one SpecllmError line."""
    latest = out / CHECKPOINTS / LATEST
    record = read_json(latest)
    name = record.get("checkpoint") if isinstance(record, dict) else None
    if not isinstance(name, str) or not (out / CHECKPOINTS / name).is_dir():
        raise SpecllmError(f"{latest}: names no checkpoint directory of {out / CHECKPOINTS}")
    return out / CHECKPOINTS / name


def _spec_for(opts: TrainOptions, data: QAData, grid_size: int | None) -> tuple[ModelSpec, dict | None]:
    train = data.split == "train"
    mean = np.nanmean(data.values[train], axis=0)
    std = np.nanstd(data.values[train], axis=0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    init_state = None
    if opts.init:
        init_dir = model_dir(opts.init)
        if not (init_dir / "spec.json").exists():
            raise SpecllmError(f"--init {opts.init}: not a specllm model or run directory")
        parent = ModelSpec.from_json(init_dir / "spec.json")
        if parent.format != data.fmt:
            raise SpecllmError(f"--init {opts.init}: trained on format {parent.format!r}, data are {data.fmt!r}")
        base, layers, lora, width = parent.base_model, parent.layers, parent.lora, parent.patch_width
        init_state = read_weights(init_dir)
    else:
        if opts.stage == 2:
            raise SpecllmError("stage 2 continues from stage 1: give --init RUN (a stage-1 run directory)")
        base, layers, lora = opts.base_model or "embedded", opts.layers, asdict(opts.lora)
        width = PatchConfig().width if data.fmt == "patch" else None
    spec = ModelSpec(
        stage=opts.stage,
        format=data.fmt,
        base_model=base,
        base_fingerprint=base_fingerprint(resolve_base(base)),
        value_names=data.value_names,
        value_mean=mean.tolist(),
        value_std=std.tolist(),
        classes=list(CLASSES) if opts.stage == 1 else [],
        lora=lora,
        patch_width=width,
        grid_size=grid_size,
        layers=layers,
    )
    return spec, init_state


def run_train(opts: TrainOptions) -> dict:
    from transformers import get_cosine_schedule_with_warmup  # heavy: loaded when training starts, not on import

    out = Path(opts.out)
    recipe = opts.recipe
    check_output(out)
    data = load_qa(opts.data, opts.stage, opts.verify)
    grid_size = data.flux.shape[1] if data.flux is not None else None
    spec, init_state = _spec_for(opts, data, grid_size)
    if opts.resume and (out / CHECKPOINTS / LATEST).exists():
        spec = ModelSpec.from_json(latest_checkpoint(out) / "spec.json")
    elif (out / "model").exists() and not opts.resume:
        raise SpecllmError(f"{out}: already holds a trained model; use --resume or another --out")

    torch.manual_seed(recipe.seed)
    device = pick_device()
    quantize = bool(opts.lora.quantize_4bit and device.type == "cuda" and bitsandbytes_available())
    if device.type == "cpu":
        say("train: no CUDA device: LoRA without 4-bit quantisation (QLoRA needs CUDA + bitsandbytes)")
    model, tokenizer = build_model(spec, quantize=quantize, gradient_checkpointing=recipe.gradient_checkpointing)
    if init_state is not None:
        load_trainable(model, init_state, heads=False)
    model.to(device)

    train_idx = np.flatnonzero(data.split == "train")
    if opts.max_train:
        train_idx = train_idx[: opts.max_train]
    if train_idx.size == 0:
        raise SpecllmError(f"{opts.data}: no example in the train split")
    train = data.take(train_idx)
    test = data.take(np.flatnonzero(data.split == "test"))
    builder = PromptBuilder(tokenizer, PatchConfig(spec.patch_width).count(grid_size) if spec.patch_width else None)
    encoded = [builder.encode(q, a) for q, a in zip(train.question, train.answer)]
    context = getattr(model.lm.config, "max_position_embeddings", None)
    longest = max(builder.length(e) for e in encoded)
    if context and longest > context:
        raise SpecllmError(f"{opts.data}: examples reach {longest} tokens, over the model's context of {context}")
    z = (train.values - np.asarray(spec.value_mean)) / np.asarray(spec.value_std)

    head_params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("lm.")]
    lora_params = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("lm.")]
    groups = [{"params": lora_params, "lr": recipe.lr}, {"params": head_params, "lr": recipe.lr * opts.head_lr_mult}]
    optimizer = torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    micro_per_epoch = math.ceil(len(train_idx) / recipe.batch_size)
    total_steps = max(1, math.ceil(micro_per_epoch * recipe.epochs / recipe.grad_accum))
    if opts.max_steps:
        total_steps = min(total_steps, opts.max_steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(recipe.warmup_fraction * total_steps), total_steps)

    engine = None
    if opts.deepspeed:
        engine = _deepspeed_engine(model, optimizer, scheduler, opts)
    step = (
        restore_checkpoint(model, optimizer, scheduler, out)
        if opts.resume and (out / CHECKPOINTS / LATEST).exists()
        else 0
    )
    if step:
        say(f"train: resumed from step {step}")

    order = np.concatenate(
        [
            np.random.default_rng(recipe.seed + e).permutation(len(train_idx))
            for e in range(math.ceil(recipe.epochs) + 1)
        ]
    )
    model.train()
    history, t0, seen = [], time.time(), 0
    cursor = step * recipe.grad_accum * recipe.batch_size
    with progress_bar(f"train stage {opts.stage}", total=total_steps, loss="", rate="") as advance:
        advance(step)
        while step < total_steps:
            losses = []
            for _ in range(recipe.grad_accum):
                idx = order[cursor : cursor + recipe.batch_size]
                cursor += recipe.batch_size
                flux = mask = None
                if train.flux is not None:
                    arng = np.random.default_rng([recipe.seed, step, cursor])
                    flux, mask = augment(train.flux[idx], train.mask[idx], arng, opts.augment)
                batch = builder.collate([encoded[i] for i in idx], flux, mask, z[idx], train.classes[idx], device)
                with autocast(device, recipe.bf16):
                    loss, parts, _ = (engine or model)(batch, opts.text_weight, opts.value_weight, opts.class_weight)
                if engine is not None:
                    engine.backward(loss)
                    engine.step()
                else:
                    (loss / recipe.grad_accum).backward()
                losses.append(parts)
                seen += len(idx)
            if engine is None:
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], recipe.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            mean_parts = {k: float(np.mean([p[k] for p in losses if k in p])) for k in losses[0]}
            history.append({"step": step, **mean_parts})
            rate = seen / max(1e-9, time.time() - t0)
            advance(1, loss=" ".join(f"{k} {v:.3f}" for k, v in mean_parts.items()), rate=f"{rate:.2f}/s")
            if step % recipe.save_every == 0 and step < total_steps:
                save_checkpoint(model, spec, optimizer, scheduler, step, out)
    elapsed = time.time() - t0
    say(f"train: {step} steps, {seen} samples in {elapsed:.0f} s ({seen / max(elapsed, 1e-9):.2f} samples/s)")

    model.eval()
    metrics = evaluate_split(model, spec, builder, test, device) if len(test.spec_id) else {}
    data_manifest = read_manifest(opts.data) or {}
    spec.manifest = {
        "specllm": __version__,
        "data": os.path.abspath(opts.data),
        "data_content_hash": data_manifest.get("content_hash"),
        "recipe": asdict(recipe),
        "options": {k: v for k, v in asdict(opts).items() if k not in ("recipe", "lora", "augment")},
        "augment": asdict(opts.augment),
        "train_examples": int(len(train_idx)),
        "test_examples": int(len(test.spec_id)),
        "steps": step,
        "samples_per_second": seen / max(elapsed, 1e-9),
        "final_loss": history[-1] if history else None,
        "metrics": metrics,
    }
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[opts.save_dtype]
    parent = model_dir(opts.init) if opts.init else None
    save_model_dir(model, spec, out / "model", dtype=dtype, parent=parent)
    atomic_write_json(out / "history.json", history)
    atomic_write_json(out / "metrics.json", metrics)
    return {"spec": spec, "metrics": metrics, "history": history}


def _deepspeed_engine(model, optimizer, scheduler, opts: TrainOptions):
    import deepspeed  # optional (the gpu extra), and slow to import

    config = json.loads(Path(opts.deepspeed).read_text())
    config["train_micro_batch_size_per_gpu"] = opts.recipe.batch_size
    config["gradient_accumulation_steps"] = opts.recipe.grad_accum  # the engine steps at accumulation boundaries
    config["gradient_clipping"] = opts.recipe.max_grad_norm
    device = pick_device()
    config.setdefault("bf16", {})["enabled"] = bool(
        opts.recipe.bf16 and device.type == "cuda" and bf16_supported(device)
    )
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


__all__ = ["TrainOptions", "run_train", "load_qa", "trainable_state"]
