"""`specllm train --stage 1|2`: fine-tune the spectral LM on QA shards (the paper's QLoRA recipe by default).

A short loop in the manner of nanoGPT: batches -> loss -> backward -> (every `grad_accum` micro-batches) clip, step,
schedule. The same loop runs on the CPU (LoRA, bf16 autocast where the CPU has it), on one GPU (QLoRA: 4-bit NF4
base through bitsandbytes) and under the DeepSpeed launcher (`--deepspeed recipe.json`, ZeRO-3), where DeepSpeed's
engine does the backward, step and accumulation.

Data parallel (`torchrun --nproc-per-node N` or `deepspeed --num_gpus N`, CUDA/nccl or CPU/gloo): every rank walks the
same seeded order of the train split and takes its own disjoint slice of each global micro-batch (`rank_batch`), so
N ranks share an epoch. `--batch-size` is per device, as in DeepSpeed: one optimizer step consumes the global batch
batch_size x grad_accum x ranks, which the log and spec.json report. Without DeepSpeed the trainable gradients are
averaged over the ranks with one all-reduce per optimizer step (what DDP does, without wrapping the module, whose
construction would broadcast the frozen, possibly 4-bit, base). The closing evaluation is shared: every rank
predicts an equal block of each split (the last padded; under ZeRO-3 the ranks' forwards gather the partitioned
weights in lock-step), rank 0 scores the gathered predictions and writes while the others wait; collectives time out
after --dist-timeout minutes. Checkpoints: torch state (safetensors) without DeepSpeed, the engine's own checkpoint
under it, and each rank's CPU (and CUDA) RNG state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
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

from ._version import __version__
from .config import CLASSES, STAGE1_LABELS, AugmentConfig, PatchConfig, SplitConfig, TrainOptions
from .device import autocast, bf16_supported, pick_device
from .errors import SpecllmError
from .files import atomic_write, atomic_write_json
from .labels import element_columns
from .models import base_fingerprint, resolve_base
from .predict import Predictions, calibrate_errors, error_factors, predict, prompt_record, split_metrics
from .progress import console, progress_bar, say
from .prompting import PromptBuilder
from .runs import (
    ModelSpec,
    build_model,
    load_trainable,
    log_columns,
    model_dir,
    read_error_scale,
    read_json,
    read_safetensors,
    read_weights,
    regressed,
    resolve_quantize,
    save_model_dir,
    trainable_state,
)
from .shards import (
    arrow_to_vectors,
    check_output,
    exclusive_output,
    read_manifest,
    read_table,
    shards_sha256,
    verified_shard_paths,
)
from .spectral import conv_stem_pools
from .splits import is_validation

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
    return element_columns(table.column_names)  # the [X/Fe] rule of specllm.labels


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


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run: rank 0 of 1 without a launcher."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def init_ranks(deepspeed: bool = False, timeout_minutes: float = TrainOptions.dist_timeout) -> Ranks:
    """Join the process group a launcher (torchrun, deepspeed) set up through RANK/WORLD_SIZE: nccl on CUDA, gloo
    on the CPU, with `timeout_minutes` for every collective (barriers included). DeepSpeed needs its group even for
    one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ranks = Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if (world > 1 or deepspeed) and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if deepspeed:
            import deepspeed as ds

            ds.init_distributed(dist_backend=backend, timeout=timeout)
        else:
            torch.distributed.init_process_group(backend, timeout=timeout)
    if torch.cuda.is_available():
        torch.cuda.set_device(ranks.local)
    return ranks


def rank_batch(order: np.ndarray, step: int, micro: int, batch_size: int, grad_accum: int, ranks: Ranks) -> np.ndarray:
    """This rank's examples for micro-batch `micro` of optimizer step `step`: global micro-batch k is
    order[k*B*W : (k+1)*B*W] (B the per-device batch, W the ranks), and rank r takes its r-th block of B. Every rank
    draws the same `order`, so the ranks' parts are disjoint and together are exactly what one rank with batch B*W
    would take."""
    start = ((step * grad_accum + micro) * ranks.world + ranks.rank) * batch_size
    return order[start : start + batch_size]


def rank_share(n: int, ranks: Ranks) -> np.ndarray:
    """This rank's indices of an n-example evaluation: the r-th contiguous block of ceil(n / W), the last block(s)
    padded with the final example, so that every rank runs the same number of forward passes (under ZeRO-3 each one
    gathers the partitioned weights, in lock-step). Blocks in rank order, cut at n, are 0..n-1."""
    per = -(-n // ranks.world)
    return np.minimum(np.arange(ranks.rank * per, (ranks.rank + 1) * per), max(n - 1, 0))


def predict_shared(model, spec, builder, data: QAData, device, ranks: Ranks) -> Predictions:
    """`predict` over `data` with the ranks sharing the work (`rank_share`): every rank returns the predictions of
    all n examples, in order, the padding dropped (each rank's part gathered to all)."""
    n = len(data.spec_id)
    part = data.take(rank_share(n, ranks))
    preds = predict(model, spec, builder, part.question, part.flux, part.mask, device)
    if ranks.world == 1:
        return preds
    parts: list = [None] * ranks.world
    torch.distributed.all_gather_object(parts, preds)  # this run's own processes: nothing untrusted is unpickled

    def joined(name: str):
        values = [getattr(p, name) for p in parts]
        if values[0] is None:
            return None
        if isinstance(values[0], np.ndarray):
            return np.concatenate(values)[:n]
        return [v for part_values in values for v in part_values][:n]

    return Predictions(**{f.name: joined(f.name) for f in dataclasses.fields(Predictions)})


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Mean of the trainable gradients over the ranks, in one all-reduce (a parameter without a gradient on a rank
    counts as zero there, as in DDP)."""
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat)
    flat /= world
    for p, g in zip(params, _unflatten_dense_tensors(flat, grads)):
        p.grad = g


def _checkpoint_dirs(out: Path) -> list[Path]:
    return sorted((out / CHECKPOINTS).glob("step-*"))


def save_checkpoint(
    model,
    spec,
    optimizer,
    scheduler,
    step: int,
    out: Path,
    keep: int = TrainOptions.keep_checkpoints,
    engine=None,
    ranks: Ranks = Ranks(),
    average: WeightAverage | None = None,
) -> None:
    """A checkpoint every rank takes part in: CHECKPOINTS/step-N holds the model directory (`model/`), the optimizer
    (torch state as safetensors, or the DeepSpeed engine's own checkpoint, which shards ZeRO state per rank), the
    weight average so far (if any) and each rank's RNG state; `latest` names it only once it is complete."""
    from safetensors.torch import save_file

    ckpt = out / CHECKPOINTS / f"step-{step:07d}"
    state = trainable_state(model)  # a collective under ZeRO-3
    if engine is not None:
        engine.save_checkpoint(str(out / CHECKPOINTS), tag=ckpt.name, client_state={"step": step}, save_latest=False)
    if ranks.main:
        save_model_dir(model, spec, ckpt / "model", state=state)
        if engine is None:
            opt_state, meta = {}, {"step": step, "param_groups": [], "scheduler": scheduler.state_dict()}
            for gi, group in enumerate(optimizer.param_groups):
                meta["param_groups"].append({k: v for k, v in group.items() if k != "params"})
                for pi, p in enumerate(group["params"]):
                    for key, value in optimizer.state.get(p, {}).items():
                        v = value.detach().cpu() if torch.is_tensor(value) else torch.tensor(value)
                        opt_state[f"{gi}.{pi}.{key}"] = v
            atomic_write(ckpt / "optimizer.safetensors", lambda tmp: save_file(opt_state, tmp))
            atomic_write_json(ckpt / "trainer.json", meta)
        if average is not None and average.count:
            atomic_write(ckpt / AVERAGE, lambda tmp: save_file(average.state_dict(), tmp))
    ranks.barrier()
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # LoRA dropout on a GPU draws from this rank's CUDA generator
        rng["cuda"] = torch.cuda.get_rng_state()
    atomic_write(ckpt / f"rng-rank{ranks.rank:05d}.safetensors", lambda tmp: save_file(rng, tmp))
    ranks.barrier()
    if ranks.main:
        atomic_write_json(out / CHECKPOINTS / LATEST, {"checkpoint": ckpt.name, "step": step})
        for old in _checkpoint_dirs(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def restore_checkpoint(
    model, optimizer, scheduler, out: Path, engine=None, ranks: Ranks = Ranks(), average: WeightAverage | None = None
) -> int:
    if not (out / CHECKPOINTS / LATEST).exists():
        raise SpecllmError(f"{out}: no checkpoint to resume from")
    ckpt = latest_checkpoint(out)
    if engine is not None:
        path, client = engine.load_checkpoint(str(out / CHECKPOINTS), tag=ckpt.name)
        if path is None:
            raise SpecllmError(
                f"{ckpt}: no DeepSpeed engine checkpoint to resume from (was it run without --deepspeed?)"
            )
        step = int(client["step"])
    else:
        if not (ckpt / "trainer.json").exists():
            raise SpecllmError(f"{ckpt}: a DeepSpeed checkpoint; resume it with the same --deepspeed config")
        load_trainable(model, read_weights(model_dir(ckpt)))
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
        step = int(meta["step"])
    if average is not None and (ckpt / AVERAGE).exists():
        average.load_state_dict(read_safetensors(ckpt / AVERAGE))
    rng = ckpt / f"rng-rank{ranks.rank:05d}.safetensors"
    if rng.exists():
        state = read_safetensors(rng)
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
    return step


def latest_checkpoint(out: Path) -> Path:
    """The checkpoint directory `OUT/checkpoints/latest` names; a garbled pointer is one SpecllmError line."""
    latest = out / CHECKPOINTS / LATEST
    record = read_json(latest)
    name = record.get("checkpoint") if isinstance(record, dict) else None
    if not isinstance(name, str) or not (out / CHECKPOINTS / name).is_dir():
        raise SpecllmError(f"{latest}: names no checkpoint directory of {out / CHECKPOINTS}")
    return out / CHECKPOINTS / name


def _spec_for(
    opts: TrainOptions, data: QAData, grid_size: int | None, train: np.ndarray
) -> tuple[ModelSpec, dict | None]:
    log_values = ["teff"] if opts.log_teff and "teff" in data.value_names else []
    # the statistics of what the read-out regresses (ModelSpec.standardise)
    targets = regressed(data.values[train], log_columns(data.value_names, log_values))
    mean = np.nanmean(targets, axis=0)
    std = np.nanstd(targets, axis=0)
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
        stem = parent.patch_stem
        init_state = read_weights(init_dir)
    else:
        if opts.stage == 2:
            raise SpecllmError("stage 2 continues from stage 1: give --init RUN (a stage-1 run directory)")
        base, layers, lora = opts.base_model or "embedded", opts.layers, asdict(opts.lora)
        width = opts.patch.width if data.fmt == "patch" else None
        stem = opts.patch.stem
        if width and stem == "conv":
            try:
                conv_stem_pools(width)
            except ValueError as e:
                raise SpecllmError(f"--patch-stem conv, --patch-width {width}: {e}") from None
    spec = ModelSpec(
        stage=opts.stage,
        format=data.fmt,
        base_model=base,
        base_fingerprint=base_fingerprint(resolve_base(base, weights=True)),
        value_names=data.value_names,
        value_mean=mean.tolist(),
        value_std=std.tolist(),
        classes=list(CLASSES) if opts.stage == 1 else [],
        lora=lora,
        patch_width=width,
        patch_stem=stem if width else "mlp",
        grid_size=grid_size,
        layers=layers,
        log_values=log_values,
    )
    return spec, init_state


def held_out(data: QAData, validation: bool, split: SplitConfig = SplitConfig()) -> np.ndarray:
    """(N,) bool: the train-split examples of the validation split (none when `validation` is off)."""
    if not validation:
        return np.zeros(len(data.spec_id), dtype=bool)
    return np.array([s == "train" and is_validation(str(i), split) for i, s in zip(data.spec_id, data.split)])


def train_subset(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` of the training rows (`TrainOptions.max_train`), drawn at random by the recipe's seed (the same draw on
    every rank) and kept in their order: a smaller training set with the mix of real and synthetic rows of the whole
    (the first `n` rows in shard order would be one kind). All of them when `n` is not smaller."""
    if n >= rows.size:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def density_weights(teff: np.ndarray, power: float, bins: int = 20, clip: float = 5.0) -> np.ndarray:
    """Per-example loss weights (mean 1): the density of the Teff label (a histogram of `bins` bins over its range)
    to the power -`power`, clipped at `clip` times the mean. All 1 for power 0 or without labels."""
    weights = np.ones(len(teff))
    known = np.isfinite(teff)
    if power <= 0 or known.sum() < 2 or np.ptp(teff[known]) == 0:
        return weights
    counts, edges = np.histogram(teff[known], bins=bins)
    where = np.clip(np.searchsorted(edges, teff[known], side="right") - 1, 0, bins - 1)
    raw = counts[where].astype(float) ** -power
    raw /= raw.mean()
    raw = np.minimum(raw, clip)
    weights[known] = raw / raw.mean()
    return weights


@dataclass
class WeightAverage:
    """Stochastic weight averaging (`TrainConfig.average_from`): the running fp32 sum of the trainable weights'
    snapshots, one every `every` optimizer steps from step `start` on, and the last step's."""

    start: int  # the first optimizer step whose snapshot counts
    every: int
    total: int  # the run's last step, whose snapshot always counts
    sums: dict = dataclasses.field(default_factory=dict)
    count: int = 0

    @classmethod
    def for_run(cls, average_from: float, every: int, total: int) -> WeightAverage | None:
        """None where averaging is off (average_from 1: the last step's weights)."""
        if average_from >= 1:
            return None
        return cls(start=max(1, math.ceil(average_from * total)), every=every, total=total)

    def due(self, step: int) -> bool:
        return step >= self.start and (step % self.every == 0 or step == self.total)

    def add(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            value = value.detach().to("cpu", torch.float32)
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        self.count += 1

    def mean(self) -> dict[str, torch.Tensor]:
        return {name: total / self.count for name, total in self.sums.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.sums, AVERAGE_COUNT: torch.tensor(self.count)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.count = int(state[AVERAGE_COUNT])
        self.sums = {k: v.to(torch.float32) for k, v in state.items() if k != AVERAGE_COUNT}


AVERAGE_COUNT = "__snapshots__"  # the count of snapshots in a checkpoint's average.safetensors
AVERAGE = "average.safetensors"
LAST = "last"  # OUT/last: the last step's weights of a run whose model is a weight average


@dataclass
class Run:
    """What `setup` prepares and `fit` and `finish` share: one training run's data, model and optimizer."""

    opts: TrainOptions
    out: Path
    ranks: Ranks
    device: torch.device
    spec: ModelSpec
    model: torch.nn.Module  # a SpectralLM
    builder: PromptBuilder
    train: QAData  # the examples stepped on (train split outside validation, plus any synthetic ones)
    val: QAData  # the validation split: the run's figures and its uncertainty calibration
    test: QAData  # read only with --report-test
    encoded: list  # the prompts (and answers, with the text objective) of `train`, tokenised
    z: np.ndarray  # (N, K) standardised labels of `train`
    weights: np.ndarray  # (N,) per-example read-out loss weights (density, synthetic)
    trainable: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    engine: object  # the DeepSpeed engine, or None
    total_steps: int
    global_batch: int
    step: int = 0  # optimizer steps done (a resumed run starts from its checkpoint's)
    average: WeightAverage | None = None  # stochastic weight averaging, where the recipe asks for it
    hf_ds: object = None  # transformers holds a ZeRO-3 config by a weak reference: kept alive for the run


@dataclass
class Fitted:
    """What the training loop reports to `finish`."""

    history: list  # one entry per optimizer step: mean loss parts and seconds since the loop began
    samples: int  # examples seen by all ranks together
    per_rank: list  # examples seen by each rank
    elapsed: float  # seconds in the loop
    first_step_s: float | None  # the first step apart (kernel selection, ZeRO-3's first gathers)
    steady: float | None  # samples/s after the first step


def training_rows(data: QAData, val_mask: np.ndarray) -> np.ndarray:
    """(N,) bool: the examples stepped on: the train split outside the validation split, and synthetic examples
    (split "synthetic", never in validation or test: every figure stays one of real spectra)."""
    return ((data.split == "train") & ~val_mask) | (data.split == "synthetic")


@exclusive_output(lambda args: args["opts"].out if int(os.environ.get("RANK", "0")) == 0 else None)  # rank 0 writes
def run_train(opts: TrainOptions) -> dict:
    """`specllm train`: set up, fit, then evaluate and write the model (each its own function below)."""
    run = setup(opts)
    fitted = fit(run)
    return finish(run, fitted)


def setup(opts: TrainOptions) -> Run:
    """Join the ranks, read the QA shards and split them, build the model (and restore a checkpoint with --resume),
    the optimizer and its schedule."""
    from transformers import get_cosine_schedule_with_warmup  # heavy: loaded when training starts, not on import

    out = Path(opts.out)
    recipe = opts.recipe
    ranks = init_ranks(bool(opts.deepspeed), opts.dist_timeout)
    if ranks.main:
        check_output(out)
    data = load_qa(opts.data, opts.stage, opts.verify)
    grid_size = data.flux.shape[1] if data.flux is not None else None
    val_mask = held_out(data, opts.validation)
    in_training = training_rows(data, val_mask)
    spec, init_state = _spec_for(opts, data, grid_size, in_training)
    resume_from = latest_checkpoint(out) if opts.resume and (out / CHECKPOINTS / LATEST).exists() else None
    if resume_from is not None:
        spec = ModelSpec.from_json(model_dir(resume_from) / "spec.json")
    elif (out / "model").exists() and not opts.resume:
        raise SpecllmError(f"{out}: already holds a trained model; use --resume or another --out")
    if opts.calibration_from and opts.calibrate:
        if val_mask.any():  # a validation split of its own: `finish` fits the factors on it
            if ranks.main:
                say(
                    f"train: --calibration-from {opts.calibration_from} ignored: this run calibrates on its validation split"
                )
        else:  # read before training, so that a bad source fails now: the factors held-out runs fitted on theirs
            spec.error_scale = read_error_scale(opts.calibration_from, spec.value_names)
            if ranks.main:
                say(f"train: uncertainties scaled as {opts.calibration_from} says (no validation split in this run)")

    torch.manual_seed(recipe.seed)  # the same on every rank: identical fresh adapters and heads
    device = pick_device()
    if resume_from is None:
        spec.quantize = resolve_quantize(opts.lora.quantize)
    if ranks.main:
        say(
            f"train: base weights {'4-bit nf4 (QLoRA)' if spec.quantize == 'nf4' else 'not quantised (LoRA)'} on {device}"
        )
    ds_config = _deepspeed_config(opts) if opts.deepspeed else None
    # ZeRO-3 as PEFT documents it for (Q)LoRA: the base is created under the DeepSpeed config, so transformers
    # partitions it while loading (zero.Init; a 4-bit base, stored in bf16, is partitioned by deepspeed.initialize).
    hf_ds = None
    if ds_config and ds_config.get("zero_optimization", {}).get("stage") == 3:
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(ds_config)
    model, tokenizer = build_model(spec, gradient_checkpointing=recipe.gradient_checkpointing)
    if init_state is not None:
        load_trainable(model, init_state, heads=False)
    model.to(device)
    if ranks.world > 1:
        torch.manual_seed(recipe.seed + ranks.rank)  # dropout differs between ranks

    train_idx = np.flatnonzero(in_training)
    if opts.max_train:
        train_idx = train_subset(train_idx, opts.max_train, recipe.seed)
    if train_idx.size == 0:
        raise SpecllmError(f"{opts.data}: no example in the train split (outside the validation split)")
    train = data.take(train_idx)
    builder = PromptBuilder(tokenizer, PatchConfig(spec.patch_width).count(grid_size) if spec.patch_width else None)
    spec.prompt = prompt_record(spec, builder)  # infer's read-out then needs no tokenizer
    # Without the text objective the answer tokens would only cost time: the read-out sees the prompt alone.
    encoded = [builder.encode(q, a if opts.text_weight > 0 else None) for q, a in zip(train.question, train.answer)]
    context = getattr(model.lm.config, "max_position_embeddings", None)
    longest = max(builder.length(e) for e in encoded)
    if context and longest > context:
        raise SpecllmError(f"{opts.data}: examples reach {longest} tokens, over the model's context of {context}")
    names = train.value_names
    teff = train.values[:, names.index("teff")] if "teff" in names else np.full(len(train_idx), np.nan)
    weights = density_weights(teff, opts.density_weight)
    weights[train.split == "synthetic"] *= opts.synthetic_weight

    optimizer = torch.optim.AdamW(
        model.param_groups(recipe.lr, opts.head_lr_mult), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    # --batch-size is per device (as DeepSpeed's train_micro_batch_size_per_gpu): the ranks share each epoch.
    micro_per_epoch = math.ceil(len(train_idx) / (recipe.batch_size * ranks.world))
    total_steps = max(1, math.ceil(micro_per_epoch * recipe.epochs / recipe.grad_accum))
    if opts.max_steps:
        total_steps = min(total_steps, opts.max_steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(recipe.warmup_fraction * total_steps), total_steps)
    engine = _deepspeed_engine(model, optimizer, scheduler, ds_config) if ds_config else None
    run = Run(
        opts=opts,
        out=out,
        ranks=ranks,
        device=device,
        spec=spec,
        model=model,
        builder=builder,
        train=train,
        val=data.take(np.flatnonzero(val_mask)),
        test=data.take(np.flatnonzero(data.split == "test")),
        encoded=encoded,
        z=spec.standardise(train.values),
        weights=weights,
        trainable=trainable,
        optimizer=optimizer,
        scheduler=scheduler,
        engine=engine,
        total_steps=total_steps,
        global_batch=recipe.batch_size * recipe.grad_accum * ranks.world,
        average=WeightAverage.for_run(recipe.average_from, recipe.save_every, total_steps),
        hf_ds=hf_ds,
    )
    if resume_from is not None:
        run.step = restore_checkpoint(model, optimizer, scheduler, out, engine, ranks, run.average)
    if ranks.main:
        say(
            f"train: {ranks.world} rank(s) x batch {recipe.batch_size} per device x {recipe.grad_accum} accumulation"
            f" = global batch {run.global_batch}; {total_steps} optimizer steps"
            + (f"; resumed from step {run.step}" if run.step else "")
        )
    return run


def fit(run: Run) -> Fitted:
    """The training loop: micro-batches -> loss -> backward; every `grad_accum` of them clip, step, schedule; a
    checkpoint every `save_every` steps."""
    opts, recipe, ranks, train, device = run.opts, run.opts.recipe, run.ranks, run.train, run.device
    model, engine = run.model, run.engine
    # Every rank walks the same seeded order of the examples, a fresh permutation per epoch.
    order = np.concatenate(
        [
            np.random.default_rng(recipe.seed + e).permutation(len(train.spec_id))
            for e in range(math.ceil(recipe.epochs) + 1)
        ]
    )
    # One precision regime per run. Under DeepSpeed it is the config's: its bf16 section (set from --bf16 on a bf16
    # GPU) casts the parameters to bf16 and runs the module with autocast off, whatever autocast is on around it, and
    # a torch_autocast section has the engine enter autocast itself; so no autocast is entered here. Without
    # DeepSpeed: torch autocast (bf16 where supported) over fp32 weights. The patch projector is fed in its weights'
    # dtype and the read-out computes in fp32 in every regime (spectral.Fp32Linear).
    precision = contextlib.nullcontext if engine is not None else (lambda: autocast(device, recipe.bf16))
    model.train()
    history, t0, seen = [], time.time(), 0
    parts_names = ("text", "value", "class")
    bar = (
        progress_bar(f"train stage {opts.stage}", total=run.total_steps, done=run.step, loss="", rate="")
        if ranks.main
        else contextlib.nullcontext(lambda *a, **k: None)
    )
    with bar as advance:
        while run.step < run.total_steps:
            step = run.step
            sums = torch.zeros(2 * len(parts_names), dtype=torch.float64, device=device)
            for micro in range(recipe.grad_accum):
                idx = rank_batch(order, step, micro, recipe.batch_size, recipe.grad_accum, ranks)
                flux = mask = None
                if train.flux is not None:  # augmentation drawn from (seed, step, position): the same on resume
                    end = ((step * recipe.grad_accum + micro) * ranks.world + ranks.rank + 1) * recipe.batch_size
                    arng = np.random.default_rng([recipe.seed, step, end])
                    flux, mask = augment(train.flux[idx], train.mask[idx], arng, opts.augment)
                batch = run.builder.collate(
                    [run.encoded[i] for i in idx], flux, mask, run.z[idx], train.classes[idx], device, run.weights[idx]
                )
                with precision():
                    loss, parts, _ = (engine or model)(
                        batch, opts.text_weight, opts.value_weight, opts.class_weight, opts.nll_beta
                    )
                if engine is not None:  # DeepSpeed accumulates, clips and steps at its boundaries
                    engine.backward(loss)
                    engine.step()
                else:
                    (loss / recipe.grad_accum).backward()
                for j, name in enumerate(parts_names):
                    if name in parts:
                        sums[2 * j] += parts[name]
                        sums[2 * j + 1] += 1
                seen += len(idx)
            if engine is None:
                if ranks.world > 1:
                    average_gradients(run.trainable, ranks.world)
                torch.nn.utils.clip_grad_norm_(run.trainable, recipe.max_grad_norm)
                run.optimizer.step()
                run.scheduler.step()
                run.optimizer.zero_grad(set_to_none=True)
            if ranks.world > 1:
                torch.distributed.all_reduce(sums)
            run.step = step = step + 1
            mean_parts = {n: float(sums[2 * j] / sums[2 * j + 1]) for j, n in enumerate(parts_names) if sums[2 * j + 1]}
            # time_s: seconds since the loop began, at this step's end (rates after warm-up steps: gpu_check)
            history.append({"step": step, **mean_parts, "time_s": round(time.time() - t0, 4)})
            rate = seen * ranks.world / max(1e-9, time.time() - t0)
            advance(1, loss=" ".join(f"{k} {v:.3f}" for k, v in mean_parts.items()), rate=f"{rate:.2f}/s")
            if run.average is not None and run.average.due(step):
                run.average.add(trainable_state(model))  # every rank: a collective under ZeRO-3
            if step % recipe.save_every == 0 and step < run.total_steps:
                save_checkpoint(
                    model,
                    run.spec,
                    run.optimizer,
                    run.scheduler,
                    step,
                    run.out,
                    keep=opts.keep_checkpoints,
                    engine=engine,
                    ranks=ranks,
                    average=run.average,
                )
    elapsed = time.time() - t0
    per_rank = torch.zeros(ranks.world, dtype=torch.float64, device=device)
    per_rank[ranks.rank] = seen
    if ranks.world > 1:
        torch.distributed.all_reduce(per_rank)
    total_seen = int(per_rank.sum())
    first_step_s = history[0]["time_s"] if history else None
    steady = (len(history) - 1) * run.global_batch / max(elapsed - first_step_s, 1e-9) if len(history) > 1 else None
    if ranks.main:
        say(
            f"train: {run.step} steps, {total_seen} samples in {elapsed:.0f} s ({total_seen / max(elapsed, 1e-9):.2f} samples/s"
            + (f"; {steady:.2f} after the first step, which took {first_step_s:.1f} s)" if steady else ")")
        )
    return Fitted(history, total_seen, [int(n) for n in per_rank.tolist()], elapsed, first_step_s, steady)


def finish(run: Run, fitted: Fitted) -> dict:
    """Evaluate (validation: figures and calibration; test only with --report-test) and write the model directory,
    its history and metrics."""
    opts, ranks, spec, model = run.opts, run.ranks, run.spec, run.model
    model.eval()
    last, average = None, run.average
    if average is not None and average.count:  # the model evaluated and written is the average
        last = trainable_state(model)  # a collective under ZeRO-3
        load_trainable(model, average.mean())
        if ranks.main:
            say(
                f"train: the model is the average of {average.count} snapshots of the weights from step {average.start}"
                f" of {run.step} (stochastic weight averaging); the last step's weights in {run.out / LAST}"
            )
    # The ranks share each evaluation in equal parts (predict_shared; under ZeRO-3 in lock-step, as every forward
    # gathers the partitioned weights), so no rank waits on another's whole pass; rank 0 scores the gathered result.
    # Choices between runs are made on the validation split; the test split only for the model card.
    metrics, val_metrics = {}, {}
    quiet, console.quiet = console.quiet, console.quiet or not ranks.main
    try:
        if len(run.val.spec_id):  # one pass: the factors are fitted on it, then applied to it
            preds = predict_shared(model, spec, run.builder, run.val, run.device, ranks)
            if ranks.main:
                if opts.calibrate:
                    spec.error_scale = calibrate_errors(preds, run.val, spec)
                    preds.errors *= error_factors(spec, preds.classes)
                val_metrics = split_metrics(preds, run.val, spec, "validation")
        if opts.report_test and len(run.test.spec_id):
            preds = predict_shared(model, spec, run.builder, run.test, run.device, ranks)
            if ranks.main:
                metrics = split_metrics(preds, run.test, spec, "test")
    finally:
        console.quiet = quiet
    state = trainable_state(model)  # a collective under ZeRO-3
    if ranks.main:
        recipe, engine = opts.recipe, run.engine
        data_manifest = read_manifest(opts.data) or {}
        spec.manifest = {
            "specllm": __version__,
            "data": os.path.abspath(opts.data),
            "data_content_hash": shards_sha256(data_manifest),  # of the verified QA shards read (`shards_sha256`)
            "recipe": asdict(recipe),
            "options": {k: v for k, v in asdict(opts).items() if k not in ("recipe", "lora", "augment", "patch")},
            "augment": asdict(opts.augment),
            "parallel": {
                "ranks": ranks.world,
                "batch_per_device": recipe.batch_size,
                "grad_accum": recipe.grad_accum,
                "global_batch": run.global_batch,
                "samples_per_rank": fitted.per_rank,
                "deepspeed_zero_stage": engine.zero_optimization_stage() if engine is not None else None,
                "deepspeed_bf16": engine.bfloat16_enabled() if engine is not None else None,
            },
            "train_examples": int(len(run.train.spec_id)),  # every example stepped on, the synthetic ones included
            "synthetic_examples": int((run.train.split == "synthetic").sum()),
            "validation_examples": int(len(run.val.spec_id)),
            "test_examples": int(len(run.test.spec_id)),
            "steps": run.step,
            "samples_per_second": fitted.samples / max(fitted.elapsed, 1e-9),
            "first_step_seconds": fitted.first_step_s,
            "samples_per_second_after_first_step": fitted.steady,
            "peak_gpu_memory_gb": (
                torch.cuda.max_memory_allocated(run.device) / 2**30 if run.device.type == "cuda" else None
            ),
            "final_loss": fitted.history[-1] if fitted.history else None,
            "weight_average": (
                {"from_step": average.start, "every": average.every, "snapshots": average.count}
                if last is not None
                else None
            ),
            "validation_metrics": val_metrics,
            "metrics": metrics,
        }
        dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[opts.save_dtype]
        parent = model_dir(opts.init) if opts.init else None
        save_model_dir(model, spec, run.out / "model", dtype=dtype, parent=parent, state=state)
        if last is not None:  # for comparison: not calibrated on its own (error_scale is the average's)
            note = "the last optimizer step's weights, not averaged; error_scale fitted for the average in ../model"
            last_spec = dataclasses.replace(spec, manifest={**spec.manifest, "weight_average": None, "weights": note})
            save_model_dir(model, last_spec, run.out / LAST, dtype=dtype, parent=parent, state=last)
        atomic_write_json(run.out / "history.json", fitted.history)
        atomic_write_json(run.out / "metrics.json", {"validation": val_metrics, "test": metrics})
    ranks.barrier()  # the others wait until rank 0 has written
    run.hf_ds = None  # transformers stops treating models as ZeRO-3 ones
    return {"spec": spec, "metrics": metrics, "history": fitted.history}


def _deepspeed_config(opts: TrainOptions) -> dict:
    """The --deepspeed JSON with the recipe's batch (per device), accumulation, clipping and precision filled in."""
    try:
        config = json.loads(Path(opts.deepspeed).read_text())
    except (OSError, ValueError) as exc:
        raise SpecllmError(f"--deepspeed {opts.deepspeed}: not a readable DeepSpeed JSON config ({exc})") from None
    config["train_micro_batch_size_per_gpu"] = opts.recipe.batch_size  # per device; DeepSpeed multiplies by ranks
    config["gradient_accumulation_steps"] = opts.recipe.grad_accum  # the engine steps at accumulation boundaries
    config.pop("train_batch_size", None)
    config["gradient_clipping"] = opts.recipe.max_grad_norm
    device = pick_device()
    config.setdefault("bf16", {})["enabled"] = bool(
        opts.recipe.bf16 and device.type == "cuda" and bf16_supported(device)
    )
    return config


def _deepspeed_engine(model, optimizer, scheduler, config: dict):
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


__all__ = ["TrainOptions", "run_train", "setup", "fit", "finish", "load_qa", "trainable_state", "rank_batch", "Ranks"]
