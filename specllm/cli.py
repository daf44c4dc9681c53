"""The `specllm` command line: options are parsed here, the work is done by one library function per subcommand."""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Annotated, Optional

import typer

from .config import BenchmarkConfig, CleanConfig, IngestConfig, SplitConfig

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
    spectra: Annotated[list[str], typer.Argument(help="FITS files, directories, or quoted globs ('spectra/**/*.fits.gz').")],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory for the Parquet shards.")],
    catalog: Annotated[Optional[str], typer.Option(help="Label catalogue (CSV, FITS or Parquet), joined by obsid or file name.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = _INGEST.workers,
    balance: Annotated[Optional[int], typer.Option(help="Draw at most N spectra per class A/F/G/K/M.")] = None,
    snr_min_r: Annotated[float, typer.Option(help="Keep spectra with SNR_r >= this (paper: 2).")] = _CLEAN.snr_min_r,
    snr_min_i: Annotated[float, typer.Option(help="Keep spectra with SNR_i >= this (paper: 2).")] = _CLEAN.snr_min_i,
    mask_ormask: Annotated[bool, typer.Option(help="Exclude pixels whose ormask is non-zero (paper).")] = _CLEAN.mask_ormask,
    require_ivar: Annotated[bool, typer.Option(help="Exclude pixels whose inverse variance is <= 0.")] = _CLEAN.require_ivar,
    norm: Annotated[str, typer.Option(help="Normalise by 'max' (paper), 'quantile' or 'median' of the good flux.")] = _CLEAN.norm,
    norm_quantile: Annotated[float, typer.Option(help="Quantile used by --norm quantile.")] = _CLEAN.norm_quantile,
    decimals: Annotated[int, typer.Option(help="Round the normalised flux to this many decimals (paper: 3).")] = _CLEAN.decimals,
    min_coverage: Annotated[float, typer.Option(help="Reject spectra observing less than this fraction of the grid.")] = _CLEAN.min_coverage,
    test_fraction: Annotated[float, typer.Option(help="Fraction of spectra in the test split (paper: 0.2).")] = _SPLIT.test_fraction,
    shard_size: Annotated[int, typer.Option(help="Spectra per Parquet shard.")] = _INGEST.shard_size,
    strict: Annotated[bool, typer.Option(help="Exit non-zero if any spectrum was rejected.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing ingest in --out made with other options.")] = False,
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
    shards: Annotated[str, typer.Argument(help="Spectrum shards (directory written by `specllm ingest`/`crossmatch`).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Report directory (Markdown, CSV, JSON, PNG, saved models).")],
    models: Annotated[str, typer.Option(help="Comma-separated: llm, lightgbm, resnet50, smallcnn, gru.")] = ",".join(_BENCH.models),
    llm: Annotated[str | None, typer.Option(help="Run directory of a trained LLM (`specllm train`); without it llm is skipped.")] = None,
    labels: Annotated[str, typer.Option(help="Comma-separated label columns; 'auto' adds every apogee_<x>_fe column.")] = ",".join(_BENCH.labels),
    sizes: Annotated[str | None, typer.Option(help="Nested training-set sizes for the scaling check, e.g. 200,400,800,1600.")] = None,
    quick: Annotated[bool, typer.Option(help="Fewer epochs, narrower ResNet-50, fewer trees: a full run in ~30 min on 2 CPU cores.")] = _BENCH.quick,
    split: Annotated[str, typer.Option(help="Split every model is evaluated on.")] = _BENCH.split,
    seed: Annotated[int, typer.Option(help="Seed of subsets, validation parts and weights.")] = _BENCH.seed,
    threads: Annotated[int, typer.Option(help="CPU threads for torch and LightGBM.")] = _BENCH.threads,
    max_epochs: Annotated[int | None, typer.Option(help="Override the networks' maximum number of epochs.")] = None,
    save_models: Annotated[bool, typer.Option(help="Save the trained baselines (safetensors / LightGBM text) under OUT/models.")] = _BENCH.save_models,
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


def main() -> None:  # console-script entry point
    sys.exit(app())


if __name__ == "__main__":
    main()
