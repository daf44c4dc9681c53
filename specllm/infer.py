"""`specllm infer INPUTS... > predictions.csv`: labels for spectra from a trained (or the shipped) model.

INPUTS are FITS files, directories, globs (read and cleaned by exactly the code `ingest` uses) or `ingest` shards;
`-` reads paths from stdin, `--from-file LIST` from a file. One row per input, in input order, as CSV on stdout or
written by `specllm.outputs` in the format of `--out`'s extension, row by row as they are computed (`--resume`
continues an interrupted run); messages go to stderr.
Decoding: `head` (default) writes the model's numeric read-out as its answer text in one forward pass, with a
Gaussian uncertainty per label; `text` generates the answer greedily, constrained so that only well-formed answers
can come out, and parses it with the same parser as everything else (both in `specllm.predict`).
This module is the command: options that change rows, the output (streamed, resumable, one run per output), rank
slices, progress and the closing line. Inputs -> items -> rows is the labelling library, `specllm.labelling`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from . import flags
from .config import GridConfig, InferConfig
from .device import pick_device
from .errors import Interrupted, OutputError, SpecllmError, one_line
from .io import is_array_source
from .labelling import (
    Item,
    PathList,
    count_spectra,
    input_units,
    iter_items,
    label_rows,
    labeller,
    output_columns,
    report,
    unit_items,
)
from .outputs import RowWriter, output_format, partial_path, run_metadata
from .predict import check_decode, default_model_dir, load_for_inference, model_metadata, model_specs
from .progress import progress_bar, say
from .shards import check_output, output_lock

# Options of `infer` that change rows, by their command-line name (config fields without one by their path): recorded
# in the output's metadata (`options`) and checked by `--resume`. The model is checked by its weights' hashes.
ROW_OPTIONS = {"decode": "--decode", "clean.snr_min_r": "--snr-min-r", "clean.snr_min_i": "--snr-min-i"}


def row_options(config: InferConfig) -> str:
    """The options of `config` that change rows (ROW_OPTIONS, `max_new_tokens`, `partial_edge` and every field of
    `clean`), as JSON keyed by option name: `infer --resume` refuses to continue an output made with others."""
    import json

    values = {"decode": config.decode, "max_new_tokens": config.max_new_tokens, "partial_edge": config.partial_edge}
    values |= {f"clean.{k}": v for k, v in dataclasses.asdict(config.clean).items()}
    return json.dumps({ROW_OPTIONS.get(k, k): v for k, v in values.items()}, sort_keys=True)


def _rank_slice() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def ray_rows(
    inputs: Iterable[str], model_path: Path, config: InferConfig, writer: RowWriter | None = None
) -> Iterator[tuple[Item, dict]]:
    """`--engine ray`: (item, row) in input order, as `label_rows` gives them; reading and cleaning in Ray tasks,
    labelling in a pool of model actors (`specllm.ray_engine`). With a resumed `writer`, single FITS files already
    written are not read again, and rows already written (array and shard spectra) are left out."""
    from . import ray_engine

    done_files = writer.done_files if writer is not None else frozenset()
    done = writer.done if writer is not None else frozenset()
    with ray_engine.session(config.engine):
        units = [
            u
            for u in input_units(inputs, config.verify)
            if not (u[0] == "file" and u[1] in done_files and not is_array_source(u[1]))
        ]
        pairs = ray_engine.ordered_actor_map(
            units,
            unit_items,
            (GridConfig(), config.clean, config.read),
            labeller,
            (str(model_path), config),
            batch_size=config.chunk_size,
            actors=config.engine.actors,
        )
        for item, row in pairs:
            if item.spec_id is not None and (item.file, item.spec_id) in done:
                continue
            report(item)
            yield item, row


def flushing(items: Iterable[Item], writer: RowWriter) -> Iterator[Item]:
    """`items`, with the writer's rows flushed before each is read: the rows of a batch reach the output before the
    run waits for (or reads) the next input."""
    items = iter(items)
    while True:
        writer.flush()
        try:
            item = next(items)
        except StopIteration:
            return
        yield item


def _write_refused(exc: OSError, writer: RowWriter | None, output: str | None) -> OutputError:
    """The one line for a write the system refused (disk full, file-size limit, ...): the file (the output where the
    system names none), the reason, and what is kept for --resume (the partial file; the previous output is
    untouched, the final file being renamed into place only when whole)."""
    where = one_line(exc.filename or output or "<stdout>")
    if writer is None:
        started = output and os.path.lexists(partial_path(output))
        kept = f"no row was written; rerun{' with --resume' if started else ''}"
    elif output:
        kept = f"{writer.written} row(s) kept in {writer.partial}; rerun with --resume"
    else:
        kept = "rerun"
    return OutputError(f"{where}: {exc.strerror or one_line(exc)}; {kept} once the output can be written")


def run_infer(
    inputs: Iterable[str],
    model_dir: str | None,
    output: str | None,
    config: InferConfig = InferConfig(),
    resume: bool = False,
    from_file: str | None = None,
    overwrite: bool = False,
) -> tuple[int, int]:
    """Writes the predictions (streamed, `--resume` continues); returns (failed, total) counts of this run.
    `config.clean` is ingest's cleaning, SNR cut included: a spectrum below the cut is labelled and flagged
    (`flag_reason` 'low SNR'), where ingest rejects it."""
    rank, world = _rank_slice()
    if world > 1 and not output:
        raise SpecllmError("under a multi-process launcher give --out; each rank writes its own part")
    if world > 1:
        stem, ext = os.path.splitext(output)
        output = f"{stem}.rank{rank:03d}-of-{world:03d}{ext}"
    output_format(output)  # an unknown extension is refused before any work
    if output:
        check_output(output, is_file=True)  # before the model is loaded and any spectrum read
    if resume and not output:
        raise SpecllmError("--resume needs --out FILE: rows on stdout cannot be continued")
    if resume and overwrite:
        raise SpecllmError("--resume and --overwrite exclude each other: continue the output, or start again")
    with output_lock(output):  # one run per output (a second is refused in one line), held until the file is whole
        if output and not (resume or overwrite) and os.path.lexists(partial_path(output)):  # before the model loads
            raise SpecllmError(
                f"{output}: an interrupted run left its rows in {partial_path(output)}; continue it with --resume, "
                "or discard them and start again with --overwrite"
            )
        paths = PathList(inputs, from_file)
        try:
            return _run(paths, model_dir, output, config, resume, rank, world, overwrite)
        finally:
            paths.close()


def _run(paths: PathList, model_dir, output, config, resume: bool, rank: int, world: int, overwrite: bool = False):
    model_path = Path(model_dir) if model_dir else default_model_dir()
    check_decode(model_specs(model_path), config)
    ray = config.engine.engine == "ray"
    if ray:
        if world > 1:
            raise SpecllmError("--engine ray spreads the work itself: run it once, not under a multi-process launcher")
        columns = output_columns(model_specs(model_path))  # the weights load in the model actors
    else:
        device = pick_device()
        try:
            models = load_for_inference(model_path, device, config.decode)
        except KeyboardInterrupt:
            left = output and os.path.lexists(partial_path(output))
            raise Interrupted(
                "infer: interrupted while the model loaded, before any row was written; "
                + (f"{partial_path(output)} is left as it was: " if left else "")
                + "rerun the same command"
                + (" with --resume" if left else "")
            ) from None
        columns = output_columns([m.spec for m in models])
    meta = run_metadata(model_metadata(model_path, name=model_dir or "default"))
    meta["options"] = row_options(config)
    try:
        writer = RowWriter(output, columns, meta, resume=resume, overwrite=overwrite)
    except OSError as exc:  # its partial file cannot be started (disk full, file-size limit)
        raise _write_refused(exc, None, output) from None
    if writer.kept:
        say(f"infer: resuming {output}: {writer.kept} row(s) already there")

    def select(n: int, file: str, spec_id: str | None) -> bool:
        if n % world != rank:
            return False
        if spec_id is None:
            return file not in writer.done_files
        return (file, spec_id) not in writer.done

    failed = total = usable = 0
    flagged: dict[str, int] = {}  # rows per flag keyword, for the closing line
    try:
        total_inputs = None if config.quiet else count_spectra(paths, config.read)
        todo = None if total_inputs is None else max(0, len(range(rank, total_inputs, world)) - writer.kept)
        if ray:
            labelled = ray_rows(paths, model_path, config, writer)
        else:
            items = flushing(iter_items(paths, GridConfig(), config.clean, config.verify, select, config.read), writer)
            labelled = label_rows(items, models, device, config)
        with progress_bar("infer", total=todo, disable=config.quiet) as advance:
            for _, row in labelled:
                writer.write(row)
                total += 1
                failed += row["status"] != "ok"  # the input, or its labels, failed
                usable += bool(row.get("usable"))
                for word, n in flags.keyword_counts([row.get("flag")], [row.get("flag_reason")]).items():
                    flagged[word] = flagged.get(word, 0) + n
                advance(1)
    except OSError as exc:  # the system refused a write (disk full, ...): what is written stays for --resume
        with contextlib.suppress(OSError):
            writer.abort()
        raise _write_refused(exc, writer, output) from None
    except KeyboardInterrupt:
        kept = writer.abort()
        if kept is None:
            raise Interrupted(
                f"infer: interrupted after {total} row(s) on stdout; nothing is kept to resume from "
                "(write to a file with --out to be able to --resume)"
            ) from None
        raise Interrupted(
            f"infer: interrupted; {writer.written} row(s) kept in {kept} (rows in progress are lost); "
            f"rerun the same command with --resume to continue {output}"
        ) from None
    try:
        writer.close()  # the final file (Parquet, FITS, VOTable: written whole from the partial) can meet a limit too
    except OSError as exc:
        raise _write_refused(exc, writer, output) from None
    if not config.quiet:
        say(
            f"infer: {total} input(s), {total - failed} labelled ({usable} usable"
            + "".join(f", {n} {word}" for word, n in flagged.items())
            + f"), {failed} failed"
            + (f", {writer.kept} kept from before" if writer.kept else "")
            + (f" -> {output}" if output else "")
        )
    if total + writer.kept == 0:
        raise SpecllmError("no input spectra")
    return failed, total
