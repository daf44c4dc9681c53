"""The `specllm` command line: options are parsed here, the work is done by one library function per subcommand."""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Annotated

import typer

from .config import (
    SURVEYS,
    AugmentConfig,
    BenchmarkConfig,
    CleanConfig,
    CrossmatchConfig,
    ExternalConfig,
    InferConfig,
    IngestConfig,
    LoraConfig,
    SerializeConfig,
    SplitConfig,
    TrainConfig,
)

app = typer.Typer(
    name="specllm",
    help="Stellar parameters and abundances from survey spectra, treating spectra as language.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


@app.callback()
def _root() -> None:
    """specllm: ingest -> crossmatch -> serialize -> train -> infer, with benchmark and compare-external."""


_CLEAN = CleanConfig()
_SPLIT = SplitConfig()
_INGEST = IngestConfig()
_TRAIN = TrainConfig()
_LORA = LoraConfig()
_AUG = AugmentConfig()
_INFER = InferConfig()
# The SNR cut: ingest keeps spectra at or above it, infer flags those below it ('low SNR'), with the same code.
SnrMinR = Annotated[float, typer.Option(help="SNR_r cut (paper: 2): ingest keeps >=, infer flags below.")]
SnrMinI = Annotated[float, typer.Option(help="SNR_i cut (paper: 2): ingest keeps >=, infer flags below.")]


def user_errors(fn):
    """Turn a SpecllmError into one line on stderr and exit status 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import SpecllmError
        from .progress import say

        try:
            return fn(*args, **kwargs)
        except SpecllmError as exc:
            say(f"specllm: error: {exc}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            say("specllm: interrupted; completed shards are kept, rerun the same command to resume")
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@user_errors
def ingest(
    spectra: Annotated[
        list[str], typer.Argument(help="FITS files, directories, or quoted globs ('spectra/**/*.fits.gz').")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory for the Parquet shards.")],
    catalog: Annotated[
        str | None, typer.Option(help="Label catalogue (CSV, FITS or Parquet), joined by obsid or file name.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = _INGEST.workers,
    balance: Annotated[int | None, typer.Option(help="Draw at most N spectra per class A/F/G/K/M.")] = None,
    snr_min_r: SnrMinR = _CLEAN.snr_min_r,
    snr_min_i: SnrMinI = _CLEAN.snr_min_i,
    mask_ormask: Annotated[
        bool, typer.Option(help="Exclude pixels whose ormask is non-zero (paper).")
    ] = _CLEAN.mask_ormask,
    require_ivar: Annotated[
        bool, typer.Option(help="Exclude pixels whose inverse variance is <= 0.")
    ] = _CLEAN.require_ivar,
    norm: Annotated[
        str, typer.Option(help="Normalise by 'max' (paper), 'quantile' or 'median' of the good flux.")
    ] = _CLEAN.norm,
    norm_quantile: Annotated[float, typer.Option(help="Quantile used by --norm quantile.")] = _CLEAN.norm_quantile,
    decimals: Annotated[
        int, typer.Option(help="Round the normalised flux to this many decimals (paper: 3).")
    ] = _CLEAN.decimals,
    min_coverage: Annotated[
        float, typer.Option(help="Reject spectra observing less than this fraction of the grid.")
    ] = _CLEAN.min_coverage,
    test_fraction: Annotated[
        float, typer.Option(help="Fraction of spectra in the test split (paper: 0.2).")
    ] = _SPLIT.test_fraction,
    shard_size: Annotated[int, typer.Option(help="Spectra per Parquet shard.")] = _INGEST.shard_size,
    strict: Annotated[bool, typer.Option(help="Exit non-zero if any spectrum was rejected.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing ingest in --out made with other options.")
    ] = False,
):
    """Read LAMOST spectra, clean them as the paper does, and write Parquet shards."""
    from . import ingest as ingest_mod
    from .progress import say

    if norm not in ("max", "quantile", "median"):
        raise typer.BadParameter("--norm must be max, quantile or median")
    config = IngestConfig(
        clean=CleanConfig(
            snr_min_r=snr_min_r,
            snr_min_i=snr_min_i,
            mask_ormask=mask_ormask,
            require_ivar=require_ivar,
            norm=norm,
            norm_quantile=norm_quantile,
            decimals=decimals,
            min_coverage=min_coverage,
        ),
        split=SplitConfig(test_fraction=test_fraction),
        shard_size=shard_size,
        workers=workers,
        balance=balance,
        strict=strict,
    )
    result = ingest_mod.run_ingest(spectra, out, catalog, config, overwrite=overwrite)
    for line in ingest_mod.summary_lines(result):
        say(line)
    if result.kept == 0:
        say("specllm: error: no spectrum was kept")
        raise typer.Exit(1)
    if strict and result.rejected:
        raise typer.Exit(1)


_BENCH = BenchmarkConfig()


def _csv_list(value: str, what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise typer.BadParameter(f"{what} must be a comma-separated list")
    return items


@app.command()
@user_errors
def benchmark(
    shards: Annotated[
        str, typer.Argument(help="Spectrum shards (directory written by `specllm ingest`/`crossmatch`).")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Report directory (Markdown, CSV, JSON, PNG, saved models).")],
    models: Annotated[str, typer.Option(help="Comma-separated: llm, lightgbm, resnet50, smallcnn, gru.")] = ",".join(
        _BENCH.models
    ),
    llm: Annotated[
        str | None, typer.Option(help="Run directory of a trained LLM (`specllm train`); without it llm is skipped.")
    ] = None,
    labels: Annotated[
        str, typer.Option(help="Comma-separated label columns; 'auto' adds every apogee_<x>_fe column.")
    ] = ",".join(_BENCH.labels),
    sizes: Annotated[
        str | None, typer.Option(help="Nested training-set sizes for the scaling check, e.g. 200,400,800,1600.")
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Fewer epochs, narrower ResNet-50, fewer trees: a full run in ~30 min on 2 CPU cores.")
    ] = _BENCH.quick,
    split: Annotated[str, typer.Option(help="Split every model is evaluated on.")] = _BENCH.split,
    seed: Annotated[int, typer.Option(help="Seed of subsets, validation parts and weights.")] = _BENCH.seed,
    threads: Annotated[int, typer.Option(help="CPU threads for torch and LightGBM.")] = _BENCH.threads,
    max_epochs: Annotated[int | None, typer.Option(help="Override the networks' maximum number of epochs.")] = None,
    save_models: Annotated[
        bool, typer.Option(help="Save the trained baselines (safetensors / LightGBM text) under OUT/models.")
    ] = _BENCH.save_models,
):
    """Train the baselines, evaluate every model on one test split, and write the paper's tables and plots."""
    from . import benchmark as bench

    try:
        size_list = tuple(int(s) for s in _csv_list(sizes, "--sizes")) if sizes else ()
    except ValueError:
        raise typer.BadParameter("--sizes must be comma-separated integers") from None
    config = dataclasses.replace(
        _BENCH,
        models=_csv_list(models, "--models"),
        labels=_csv_list(labels, "--labels"),
        sizes=size_list,
        quick=quick,
        split=split,
        seed=seed,
        threads=threads,
        max_epochs=max_epochs,
        save_models=save_models,
    )
    result = bench.run_benchmark(shards, out, config, llm=llm, command=bench.command_line())
    sys.stdout.write(bench.summary_csv(result))


@app.command()
@user_errors
def train(
    stage: Annotated[int, typer.Option(help="1: class + Teff, log g, [Fe/H]; 2: [X/Fe] (continues from --init).")],
    data: Annotated[str, typer.Option(help="QA shards written by `specllm serialize`.")],
    out: Annotated[str, typer.Option(help="Run directory (checkpoints, final model in OUT/model).")],
    base_model: Annotated[
        str | None, typer.Option(help="'embedded' (SmolLM2-135M-Instruct), a .gguf file or a local HF model directory.")
    ] = None,
    init: Annotated[
        str | None, typer.Option(help="Start from this run's adapter and projector (required for stage 2).")
    ] = None,
    layers: Annotated[int | None, typer.Option(help="Keep only the first N decoder layers of the base model.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out.")] = False,
    deepspeed: Annotated[
        str | None,
        typer.Option(help="DeepSpeed config JSON (e.g. specllm/recipes/zero3.json); use under the deepspeed launcher."),
    ] = None,
    epochs: Annotated[float, typer.Option(help="Passes over the train split.")] = _TRAIN.epochs,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (paper: 1e-4).")] = _TRAIN.lr,
    head_lr_mult: Annotated[
        float, typer.Option(help="Learning-rate multiplier for the patch projector and read-out heads.")
    ] = 1.0,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (paper: 0.1).")] = _TRAIN.weight_decay,
    batch_size: Annotated[int, typer.Option(help="Micro-batch size.")] = _TRAIN.batch_size,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = _TRAIN.grad_accum,
    warmup: Annotated[float, typer.Option(help="Warm-up fraction of the cosine schedule.")] = _TRAIN.warmup_fraction,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast where the hardware supports it.")] = _TRAIN.bf16,
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="Recompute activations in the backward pass.")
    ] = _TRAIN.gradient_checkpointing,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (paper: 64).")] = _LORA.r,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha (paper: 128).")] = _LORA.alpha,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout (paper: 0.1).")] = _LORA.dropout,
    quantize: Annotated[
        bool, typer.Option(help="4-bit NF4 base (QLoRA) where CUDA + bitsandbytes are available.")
    ] = _LORA.quantize_4bit,
    text_weight: Annotated[float, typer.Option(help="Weight of the answer-token cross-entropy.")] = 1.0,
    value_weight: Annotated[float, typer.Option(help="Weight of the numeric read-out's Gaussian NLL.")] = 1.0,
    class_weight: Annotated[float, typer.Option(help="Weight of the class read-out's cross-entropy.")] = 0.2,
    noise: Annotated[float, typer.Option(help="Augmentation: flux noise sigma scale.")] = _AUG.noise,
    scale: Annotated[float, typer.Option(help="Augmentation: flux scaling half-range.")] = _AUG.scale,
    span_probability: Annotated[
        float, typer.Option(help="Augmentation: chance of a masked wavelength span.")
    ] = _AUG.span_probability,
    save_every: Annotated[int, typer.Option(help="Optimizer steps between checkpoints.")] = _TRAIN.save_every,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    max_train: Annotated[int | None, typer.Option(help="Use only the first N training examples.")] = None,
    save_dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16 for the saved weights.")] = "float32",
    seed: Annotated[int, typer.Option(help="Random seed.")] = _TRAIN.seed,
):
    """Fine-tune the spectral LM (LoRA/QLoRA) on QA shards: stage 1, or stage 2 from a stage-1 run."""
    from .train import TrainOptions, run_train

    if stage not in (1, 2):
        raise typer.BadParameter("--stage must be 1 or 2")
    opts = TrainOptions(
        data=data, out=out, stage=stage, base_model=base_model, init=init, layers=layers, resume=resume,
        deepspeed=deepspeed, max_steps=max_steps, max_train=max_train, text_weight=text_weight,
        value_weight=value_weight, class_weight=class_weight, head_lr_mult=head_lr_mult, save_dtype=save_dtype,
        recipe=TrainConfig(
            lr=lr, weight_decay=weight_decay, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
            warmup_fraction=warmup, bf16=bf16, gradient_checkpointing=gradient_checkpointing, save_every=save_every, seed=seed,
        ),
        lora=LoraConfig(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, quantize_4bit=quantize),
        augment=AugmentConfig(noise=noise, scale=scale, span_probability=span_probability),
    )  # fmt: skip
    run_train(opts)


_SERIALIZE = SerializeConfig()


@app.command()
@user_errors
def serialize(
    shards: Annotated[
        str, typer.Argument(help="Spectrum shards (ingest or crossmatch output directory, or one Parquet file).")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory for the question/answer Parquet shards.")],
    stage: Annotated[int, typer.Option(help="1: class, Teff, log g, [Fe/H]; 2: [X/Fe] abundances.")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="paper (the paper's text), compact (fewer tokens) or patch (spectral tokens; the only one SmolLM2's context holds).",
        ),
    ],
    base_model: Annotated[
        str | None,
        typer.Option(
            help="'embedded' (SmolLM2, default), a .gguf file or a local HF model directory: its tokenizer counts tokens."
        ),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Refuse examples longer than this (default: the model's context).")
    ] = None,
    label_prefix: Annotated[
        str, typer.Option(help="Stage 2: label columns are PREFIX<x>_fe.")
    ] = _SERIALIZE.label_prefix,
    count_tokens: Annotated[
        bool, typer.Option(help="Count tokens per example with the model's tokenizer and check the context.")
    ] = True,
):
    """Write spectra as language: question/answer Parquet shards for `specllm train`."""
    from . import serialize as serialize_mod
    from .progress import say

    result = serialize_mod.run_serialize(
        shards,
        stage,
        format,
        out,
        tokenizer_from=base_model,
        max_tokens=max_tokens,
        label_prefix=label_prefix,
        count=count_tokens,
    )
    for line in serialize_mod.summary_lines(result):
        say(line)


@app.command()
@user_errors
def infer(
    inputs: Annotated[list[str], typer.Argument(help="FITS files, directories, quoted globs, or ingest shards.")],
    model: Annotated[str | None, typer.Option(help="Model or run directory (default: the shipped model).")] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Write here (.csv or .parquet) instead of CSV on stdout.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Spectra per forward pass.")] = _INFER.batch_size,
    decode: Annotated[
        str, typer.Option(help="'head' (numeric read-out, default) or 'text' (constrained greedy decoding).")
    ] = _INFER.decode,
    strict: Annotated[bool, typer.Option(help="Exit non-zero if any input failed.")] = False,
    snr_min_r: SnrMinR = _CLEAN.snr_min_r,
    snr_min_i: SnrMinI = _CLEAN.snr_min_i,
):
    """Labels for spectra: one CSV row per input, in input order, on stdout, each with `flag`/`flag_reason`."""
    from .infer import run_infer

    if decode not in ("head", "text"):
        raise typer.BadParameter("--decode must be head or text")
    clean = CleanConfig(snr_min_r=snr_min_r, snr_min_i=snr_min_i)
    failed, total = run_infer(inputs, model, output, InferConfig(batch_size=batch_size, decode=decode), clean)
    if failed and (strict or failed == total):
        raise typer.Exit(1)


# ---------------------------------------------------------------- compare-external (issue 7)

_EXTERNAL = ExternalConfig()


@app.command("compare-external")
@user_errors
def compare_external(
    predictions: Annotated[str, typer.Argument(help="Predictions from `specllm infer` (CSV or Parquet).")],
    catalog: Annotated[str, typer.Option(help="Reference catalogue (CSV, FITS, Parquet, or the MILES npz).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory for the report, tables and plots.")],
    survey: Annotated[
        str, typer.Option(help=f"Column table and quality cuts: {', '.join(SURVEYS)}.")
    ] = _EXTERNAL.survey,
    match: Annotated[
        str, typer.Option(help="Join by 'id', by 'sky' position, or 'auto' (ids, then sky).")
    ] = _EXTERNAL.match,
    radius: Annotated[float, typer.Option(help="Sky-match radius in arcsec.")] = _EXTERNAL.radius_arcsec,
    partial_coverage: Annotated[
        float, typer.Option(help="Without a `partial` column, rows below this coverage count as partial.")
    ] = _EXTERNAL.partial_coverage,
    min_n: Annotated[int, typer.Option(help="Statistics of fewer rows than this are shown as n/a.")] = _EXTERNAL.min_n,
):
    """Compare predictions with an independent survey: Table 7 (per class), Table 8 (per element), 1:1 plots."""
    from . import external
    from .progress import say

    config = ExternalConfig(
        survey=survey, match=match, radius_arcsec=radius, partial_coverage=partial_coverage, min_n=min_n
    )
    result = external.compare_external(predictions, catalog, out, config)
    sys.stdout.write(external.overall_csv(result))
    c = result.counts
    say(f"compare-external: matched {c['matched']} of {c['predicted']} predictions, {c['passing_cuts']} pass the cuts")
    say(f"  report in {out}/{external.REPORT}")


def _launcher_arguments(argv: list[str]) -> list[str]:
    """Launchers (deepspeed, torch.distributed) insert `--local_rank=N` before the subcommand: move it to LOCAL_RANK."""
    import os

    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.startswith(("--local_rank=", "--local-rank=")):
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
        elif arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            os.environ.setdefault("LOCAL_RANK", argv[i + 1])
            skip = True
        else:
            out.append(arg)
    return out


_CROSSMATCH = CrossmatchConfig()


@app.command()
@user_errors
def crossmatch(
    shards: Annotated[
        str, typer.Argument(help="Spectrum shards written by `specllm ingest` (directory or Parquet file).")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory for the labelled shards.")],
    apogee: Annotated[
        str | None, typer.Option(help="APOGEE allStar (DR16/DR17) or a table like it (CSV, FITS, Parquet).")
    ] = None,
    galah: Annotated[str | None, typer.Option(help="GALAH allstar (DR4, or DR3) catalogue.")] = None,
    gaia_eso: Annotated[str | None, typer.Option("--gaia-eso", help="Gaia-ESO (iDR6-like) catalogue.")] = None,
    radius: Annotated[float, typer.Option(help="Match radius in arcsec.")] = _CROSSMATCH.radius_arcsec,
    quality_cuts: Annotated[
        bool, typer.Option(help="Apply the surveys' flags and cuts (paper).")
    ] = _CROSSMATCH.quality_cuts,
    one_per_star: Annotated[
        bool, typer.Option(help="Only the nearest spectrum of each star takes its labels.")
    ] = _CROSSMATCH.one_per_star,
    matched_only: Annotated[
        bool, typer.Option(help="Write only spectra matched in some catalogue.")
    ] = _CROSSMATCH.matched_only,
):
    """Add APOGEE / GALAH / Gaia-ESO labels to spectrum shards by sky position (nearest star within --radius)."""
    import dataclasses

    from .crossmatch import run_crossmatch

    config = dataclasses.replace(
        _CROSSMATCH,
        radius_arcsec=radius,
        quality_cuts=quality_cuts,
        one_per_star=one_per_star,
        matched_only=matched_only,
    )
    result = run_crossmatch(shards, out, {"apogee": apogee, "galah": galah, "gaiaeso": gaia_eso}, config)
    if result.matched == 0:
        raise typer.Exit(1)


def main() -> None:  # console-script entry point
    sys.argv[1:] = _launcher_arguments(sys.argv[1:])
    sys.exit(app())


if __name__ == "__main__":
    main()
