"""The `specllm` command line: options are parsed here, the work is done by one library function per subcommand.

Options come from the config dataclasses (`specllm.config`) through `specllm.cliopts.config_options`. To add one:
1. add the field, with its default and type (a `Literal[...]` for a choice), to the dataclass in config.py;
2. put its help text as a docstring (a string literal) on the line under the field;
3. name the field's path in the command's `@config_options(...)` below (`Opt(path, "--name")` to rename it);
4. the command receives it in its config; run `make completions` and update README's section of the command.
"""

from __future__ import annotations

import functools
import sys
from typing import Annotated

import typer

from .cliopts import Command, Group, Opt, config_options, recipe_option
from .config import (
    BenchmarkConfig,
    CrossmatchConfig,
    DomainConfig,
    ExternalConfig,
    InferConfig,
    IngestConfig,
    PlotConfig,
    SerializeConfig,
    SerializeFormat,
    TrainOptions,
)

app = typer.Typer(
    name="specllm",
    help="Stellar parameters and abundances from survey spectra, treating spectra as language.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    cls=Group,
    context_settings={"help_option_names": ["-h", "--help"]},  # every command inherits it
)


def _print_version(value: bool) -> None:
    if value:
        from .predict import version_lines

        for line in version_lines():
            print(line)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the versions of specllm, torch and transformers and the shipped model's weights hash.",
        ),
    ] = False,
) -> None:
    """specllm: ingest -> crossmatch -> serialize -> train -> infer, with benchmark and compare-external."""


# What an interrupted command keeps and how to go on (`infer` says it itself, row counts included).
INTERRUPT_HINTS = {
    "ingest": "completed shards are kept; rerun the same command to continue",
    "train": "the checkpoints saved so far are kept; rerun with --resume to continue",
    "crossmatch": "its output is moved into --out only when complete, so nothing of this run is kept; rerun it",
    "serialize": "its output is moved into --out only when complete, so nothing of this run is kept; rerun it",
    "compare-external": "each file is written whole or not at all; rerun the same command",
    "plot": "the figure is written whole or not at all; rerun the same command",
}


def user_errors(fn):
    """Turn a SpecllmError into one line on stderr and its exit status (2; 3 for output errors), an OSError the
    system raised (disk full, read-only, permission) into one line naming the file and exit status 3; never a
    traceback. The line is printed whatever `-q` says: quiet silences progress and summaries, never an error.
    Exit codes: `specllm.errors`."""
    command = fn.__name__.replace("_", "-")
    hint = INTERRUPT_HINTS.get(command, "rerun the same command")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import EXIT_INTERRUPTED, EXIT_OUTPUT, Interrupted, SpecllmError, missing_extra, one_line
        from .progress import say

        try:
            return fn(*args, **kwargs)
        except SpecllmError as exc:
            say(f"specllm: error: {one_line(exc)}")
            raise typer.Exit(exc.exit_code) from None
        except ModuleNotFoundError as exc:  # an optional package (an extra: --deepspeed, --engine ray, ...)
            error = missing_extra(exc)
            if error is None:
                raise
            say(f"specllm: error: {error}")
            raise typer.Exit(error.exit_code) from None
        except OSError as exc:
            where = f"{one_line(exc.filename)}: " if exc.filename else ""
            kept = "completed shards are kept; " if command == "ingest" else ""
            say(f"specllm: error: {where}{exc.strerror or one_line(exc)}; {kept}rerun the same command once the "
                "output can be written")  # fmt: skip
            raise typer.Exit(EXIT_OUTPUT) from None
        except Interrupted as exc:
            say(f"specllm: {exc}")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except KeyboardInterrupt:
            say(f"specllm {command}: interrupted; {hint}")
            raise typer.Exit(130) from None

    return wrapper


@app.command(cls=Command)
@user_errors
@config_options(
    IngestConfig,
    "workers",
    "balance",
    "clean.snr_min_r",
    "clean.snr_min_i",
    "clean.mask_ormask",
    "clean.require_ivar",
    "clean.norm",
    "clean.norm_quantile",
    "clean.decimals",
    "clean.min_coverage",
    "split.test_fraction",
    "shard_size",
    "strict",
    Opt(
        "engine.engine",
        help="local: this machine's worker processes; ray: Ray Data tasks read, clean and write the shards (the "
        "same shards, byte for byte).",
    ),
    "engine.ray_address",
    "engine.ray_cpus",
    "read.max_input_mb",
)
def ingest(
    spectra: Annotated[
        list[str], typer.Argument(help="FITS files, directories, or quoted globs ('spectra/**/*.fits.gz').")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory for the Parquet shards.")],
    catalog: Annotated[
        str | None, typer.Option(help="Label catalogue (CSV, FITS or Parquet), joined by obsid or file name.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing ingest in --out made with other options.")
    ] = False,
    *,
    config: IngestConfig,
):
    """Read LAMOST spectra, clean them as the paper does, and write Parquet shards.

    Example: specllm ingest 'spectra/**/*.fits.gz' --catalog labels.csv --out shards/
    """
    from . import ingest as ingest_mod
    from .progress import say

    result = ingest_mod.run_ingest(spectra, out, catalog, config, overwrite=overwrite)
    for line in ingest_mod.summary_lines(result):
        say(line)
    if result.kept == 0:
        say("specllm: error: no spectrum was kept")
        raise typer.Exit(1)
    if config.strict and result.rejected:
        raise typer.Exit(1)


@app.command(cls=Command)
@user_errors
@config_options(
    CrossmatchConfig, Opt("radius_arcsec", "--radius"), "quality_cuts", "one_per_star", "matched_only", "verify"
)
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
    *,
    config: CrossmatchConfig,
):
    """Add APOGEE / GALAH / Gaia-ESO labels to spectrum shards by sky position (nearest star within --radius).

    Example: specllm crossmatch shards/ --apogee allStar-dr17.fits --out xm/
    """
    from .crossmatch import run_crossmatch

    result = run_crossmatch(shards, out, {"apogee": apogee, "galah": galah, "gaiaeso": gaia_eso}, config)
    if result.matched == 0:
        raise typer.Exit(1)


@app.command(cls=Command)
@user_errors
@config_options(SerializeConfig, "label_prefix", "verify")
@config_options(TrainOptions, Opt("stage", required=True), "base_model", into=None)
def serialize(
    shards: Annotated[
        str, typer.Argument(help="Spectrum shards (ingest or crossmatch output directory, or one Parquet file).")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory for the question/answer Parquet shards.")],
    format: Annotated[
        SerializeFormat,
        typer.Option(
            "--format",
            help="paper (the paper's text), compact (fewer tokens) or patch (spectral tokens; the only one SmolLM2's "
            "context holds).",
        ),
    ],
    max_tokens: Annotated[
        int | None, typer.Option(help="Refuse examples longer than this (default: the model's context).")
    ] = None,
    count_tokens: Annotated[
        bool, typer.Option(help="Count tokens per example with the model's tokenizer and check the context.")
    ] = True,
    *,
    stage: int,
    base_model: str | None,
    config: SerializeConfig,
):
    """Write spectra as language: question/answer Parquet shards for `specllm train` (tokens counted with
    --base-model's tokenizer).

    Example: specllm serialize xm/ --stage 1 --format patch --out qa1/
    """
    from . import serialize as serialize_mod
    from .progress import say

    result = serialize_mod.run_serialize(
        shards,
        stage,
        format,
        out,
        tokenizer_from=base_model,
        max_tokens=max_tokens,
        label_prefix=config.label_prefix,
        count=count_tokens,
        config=config,
    )
    for line in serialize_mod.summary_lines(result):
        say(line)


@app.command(cls=Command)
@user_errors
@recipe_option
@config_options(
    TrainOptions,
    Opt("stage", required=True),
    "data",
    Opt("out", "--out", "-o"),
    "base_model",
    "init",
    "layers",
    "resume",
    "deepspeed",
    "recipe.epochs",
    "recipe.lr",
    "head_lr_mult",
    "recipe.weight_decay",
    "recipe.batch_size",
    "recipe.grad_accum",
    Opt("recipe.warmup_fraction", "--warmup"),
    "recipe.bf16",
    "recipe.gradient_checkpointing",
    Opt("lora.r", "--lora-r"),
    Opt("lora.alpha", "--lora-alpha"),
    Opt("lora.dropout", "--lora-dropout"),
    Opt("lora.quantize", "--quantize"),
    "text_weight",
    "value_weight",
    "class_weight",
    "nll_beta",
    "density_weight",
    "log_teff",
    "synthetic_weight",
    "validation",
    "calibrate",
    "calibration_from",
    "report_test",
    Opt("patch.width", "--patch-width"),
    Opt("patch.stem", "--patch-stem"),
    "augment.noise",
    "augment.scale",
    "augment.span_probability",
    "recipe.save_every",
    "recipe.average_from",
    "keep_checkpoints",
    "max_steps",
    "max_train",
    "save_dtype",
    "recipe.seed",
    "verify",
    "dist_timeout",
    into="options",
)
def train(*, options: TrainOptions):
    """Fine-tune the spectral LM (LoRA/QLoRA) on QA shards: stage 1, or stage 2 from a stage-1 run.

    Example: specllm train --stage 1 --data qa1/ --out runs/s1 --recipe shipped-stage1
    """
    from .train import run_train

    run_train(options)


@app.command(cls=Command)
@user_errors
@config_options(
    InferConfig,
    "batch_size",
    "decode",
    "verify",
    "clean.snr_min_r",
    "clean.snr_min_i",
    Opt("quiet", "--quiet", "-q"),
    Opt(
        "engine.engine",
        help="local: this machine; ray: Ray Data tasks read and clean, model actors label (the same rows, in the "
        "same order).",
    ),
    "engine.ray_address",
    "engine.ray_cpus",
    "engine.actors",
    "read.max_input_mb",
)
def infer(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="FITS files, directories, quoted globs, ingest shards, or - (paths on stdin, one a line)."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model or run directory (default: the shipped model).")] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="Write here instead of CSV on stdout; the extension picks the format: "
            ".csv, .ecsv, .parquet, .fits, .vot or .xml (VOTable).",
        ),
    ] = None,
    output: Annotated[str | None, typer.Option("--output", hidden=True, help="Old name of --out.")] = None,
    from_file: Annotated[
        str | None, typer.Option("--from-file", help="Read input paths from this file, one a line.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue --out: skip the inputs already in it (or in the partial file a killed run left); refused "
            "if the model or an option that changes rows differs."
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Discard the rows an interrupted run left for --out and start again.")
    ] = False,
    strict: Annotated[bool, typer.Option(help="Exit non-zero if any input failed.")] = False,
    *,
    config: InferConfig,
):
    """Labels for spectra: one row per input, in input order, each with `flag` and `flag_reason`, as CSV on stdout
    or --out FILE.

    Example: find spectra/ -name '*.fits.gz' | specllm infer - -o predictions.fits
    """
    from .errors import SpecllmError
    from .infer import run_infer

    if not inputs and not from_file:
        raise SpecllmError("no inputs: give files, directories, globs, - (paths on stdin) or --from-file LIST")
    failed, total = run_infer(
        inputs or [], model, out or output, config, resume=resume, from_file=from_file, overwrite=overwrite
    )
    if failed and (strict or failed == total):
        raise typer.Exit(1)


@app.command(cls=Command)
@user_errors
@config_options(
    BenchmarkConfig,
    "models",
    "labels",
    "sizes",
    "quick",
    "split",
    "seed",
    "threads",
    "max_epochs",
    "save_models",
    "verify",
)
def benchmark(
    shards: Annotated[
        str, typer.Argument(help="Spectrum shards (directory written by `specllm ingest`/`crossmatch`).")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Report directory (Markdown, CSV, JSON, PNG, saved models).")],
    model: Annotated[
        str | None, typer.Option(help="Run directory of a trained LLM (`specllm train`); without it llm is skipped.")
    ] = None,
    llm: Annotated[str | None, typer.Option("--llm", hidden=True, help="Old name of --model.")] = None,
    *,
    config: BenchmarkConfig,
):
    """Train the baselines, evaluate every model on one test split, and write the paper's tables and plots.

    Example: specllm benchmark shards/ --model runs/s1 --out report/ --quick
    """
    from . import benchmark as bench

    result = bench.run_benchmark(shards, out, config, llm=model or llm, command=bench.command_line())
    sys.stdout.write(bench.summary_csv(result))


@app.command("compare-external", cls=Command)
@user_errors
@config_options(ExternalConfig, "survey", "match", Opt("radius_arcsec", "--radius"), "partial_coverage", "min_n")
def compare_external(
    predictions: Annotated[
        str, typer.Argument(help="Predictions from `specllm infer`: .csv, .ecsv, .parquet, .fits or .vot.")
    ],
    catalog: Annotated[str, typer.Option(help="Reference catalogue (CSV, FITS, Parquet, or the MILES npz).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory for the report, tables and plots.")],
    *,
    config: ExternalConfig,
):
    """Compare predictions with an independent survey: Table 7 (per class), Table 8 (per element), 1:1 plots.

    Example: specllm compare-external labels.parquet --catalog galah_dr4.fits --survey galah --out external/
    """
    from . import external
    from .progress import say

    result = external.compare_external(predictions, catalog, out, config)
    sys.stdout.write(external.overall_csv(result))
    c = result.counts
    say(f"compare-external: matched {c['matched']} of {c['predicted']} predictions, {c['passing_cuts']} pass the cuts")
    say(f"  report in {out}/{external.REPORT}")


@app.command("fit-domain", cls=Command)
@user_errors
@config_options(
    DomainConfig,
    "features",
    "components",
    "neighbours",
    "quantile",
    "residual_quantile",
    "uncertain_quantile",
    "partial_fraction",
    "class_prob_quantile",
    "seed",
    "negatives",
    "classifier_l2",
    "indices",
    "joint",
)
def fit_domain(
    shards: Annotated[
        str,
        typer.Argument(help="The `specllm ingest` shards the model was trained on (only their train split is read)."),
    ],
    model: Annotated[
        str | None, typer.Argument(help="Model or training-run directory (default: the shipped model).")
    ] = None,
    *,
    config: DomainConfig,
):
    """Fit a model's own domain check and its `uncertain` limits on the train split (thresholds on its validation
    part) and store them in the model directory (flag bits `domain` and `uncertain`).

    Example: specllm fit-domain shards/ runs/s1/model
    """
    from .fitdomain import fit_model_domain

    fit_model_domain(shards, model, config)


@app.command(cls=Command)
@user_errors
@config_options(PlotConfig, "color", "width", "dpi")
@config_options(
    ExternalConfig,
    Opt("survey", help="The --reference catalogue's column table and quality cuts (as compare-external's)."),
    Opt("match", help="Join predictions to --reference by id, by sky position within --radius, or ids then sky."),
    Opt("radius_arcsec", "--radius", help="Sky-match radius for --reference, in arcsec."),
    into="external",
)
def plot(
    predictions: Annotated[
        str, typer.Argument(help="Predictions from `specllm infer`: .csv, .ecsv, .parquet, .fits or .vot.")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="The figure: .png, .pdf or .svg.")],
    reference: Annotated[
        str | None,
        typer.Option(help="A reference catalogue (compare-external's --catalog): adds prediction-vs-reference panels."),
    ] = None,
    *,
    config: PlotConfig,
    external: ExternalConfig,
):
    """Draw the Kiel diagram (Teff vs log g) of predictions, flagged rows apart, one legend entry per flag keyword;
    with --reference, prediction against reference per label.

    Example: specllm plot predictions.fits -o kiel.png --color feh
    """
    from .plot import plot_predictions
    from .progress import say

    result = plot_predictions(predictions, out, config, reference, external)
    flagged = ", ".join(f"{k} {n}" for k, n in result.flagged.items()) or "none"
    matched = f", {result.matched} matched to {reference}" if result.matched is not None else ""
    drawn = f"plot: {result.plotted} of {result.rows} rows drawn, {result.usable} usable"
    say(f"{drawn}; flagged: {flagged}{matched} -> {out}")


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


def main() -> None:  # console-script entry point
    sys.argv[1:] = _launcher_arguments(sys.argv[1:])
    sys.exit(app())


if __name__ == "__main__":
    main()
