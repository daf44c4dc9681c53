"""The `specllm` command line: options are parsed here, the work is done by one library function per subcommand."""

from __future__ import annotations

import functools
import sys
from typing import Annotated, Optional

import typer

from .config import CleanConfig, IngestConfig, SerializeConfig, SplitConfig

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


_SERIALIZE = SerializeConfig()


@app.command()
@user_errors
def serialize(
    shards: Annotated[str, typer.Argument(help="Spectrum shards (ingest or crossmatch output directory, or one Parquet file).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory for the question/answer Parquet shards.")],
    stage: Annotated[int, typer.Option(help="1: class, Teff, log g, [Fe/H]; 2: [X/Fe] abundances.")] = 1,
    format: Annotated[str, typer.Option("--format", help="paper (the paper's text), compact (fewer tokens) or patch (spectral tokens).")] = "paper",
    base_model: Annotated[Optional[str], typer.Option(help="Hugging Face model directory whose tokenizer counts tokens (default: embedded SmolLM2).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Refuse examples longer than this (default: the model's context).")] = None,
    label_prefix: Annotated[str, typer.Option(help="Stage 2: label columns are PREFIX<x>_fe.")] = _SERIALIZE.label_prefix,
    count_tokens: Annotated[bool, typer.Option(help="Count tokens per example with the model's tokenizer and check the context.")] = True,
):
    """Write spectra as language: question/answer Parquet shards for `specllm train`."""
    from . import serialize as serialize_mod
    from .progress import say

    result = serialize_mod.run_serialize(
        shards, stage, format, out, tokenizer_from=base_model, max_tokens=max_tokens, label_prefix=label_prefix, count=count_tokens
    )
    for line in serialize_mod.summary_lines(result):
        say(line)


def main() -> None:  # console-script entry point
    sys.exit(app())


if __name__ == "__main__":
    main()
