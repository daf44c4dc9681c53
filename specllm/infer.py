"""`specllm infer INPUTS... > labels.csv`: labels for spectra from a trained (or the shipped) model.

INPUTS are FITS files, directories, globs (read and cleaned by exactly the code `ingest` uses) or `ingest` shards.
One CSV row per input, in input order, on stdout (or Parquet with `--output x.parquet`); messages go to stderr.
Decoding: `head` (default) writes the model's numeric read-out as its answer text in one forward pass, with a
Gaussian uncertainty per label; `text` generates the answer greedily, constrained so that only well-formed answers
can come out, and parses it with the same parser as everything else (both in `specllm.predict`). This module turns
inputs into rows and writes them.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import flags
from .config import CleanConfig, GridConfig, InferConfig
from .device import pick_device
from .domain import patch_features
from .errors import SpecllmError, SpectrumRejected, one_line
from .io import LAYOUT_ARRAY, expand_inputs, is_array_source, iter_spectra
from .io.base import check_identity
from .io.lamost_catalog import file_key
from .labels import reduce_class
from .predict import Loaded, default_model_dir, load_for_inference, model_specs, predict, questions_for
from .preprocess import check_snr, clean_spectrum
from .progress import progress_bar, say
from .shards import (
    arrow_to_vectors,
    atomic_write_text,
    check_output,
    iter_batches,
    parquet_file,
    verified_shard_paths,
    write_table,
)


@dataclass
class Item:
    file: str
    spec_id: str | None = None
    obsid: int | None = None
    ra: float | None = None
    dec: float | None = None
    flux: np.ndarray | None = None
    mask: np.ndarray | None = None
    coverage: float | None = None
    edge_gap: float | None = None
    status: str = "ok"
    header: dict = field(default_factory=dict)  # HEADER_COLUMNS where the file (or shard) states them
    snr_reason: str | None = None  # why `ingest` would reject it for SNR ('low SNR', 'no SNR'), else None


# Header facts carried into every row (LAMOST CLASS, SUBCLASS, Z, SNR per band), where present.
HEADER_COLUMNS = ("objclass", "subclass", "z", "snrg", "snrr", "snri")


def snr_reason(meta: dict, clean: CleanConfig, required: bool) -> str | None:
    """The reason `ingest` would give for rejecting this spectrum for its SNR (same function, same options)."""
    try:
        check_snr(meta, clean, required=required)
    except SpectrumRejected as exc:
        return exc.reason
    return None


def edge_gap(mask: np.ndarray) -> float:
    """The larger fraction of the grid that is unobserved at the blue or the red end (partial coverage)."""
    observed = np.flatnonzero(~mask)
    if observed.size == 0:
        return 1.0
    return max(observed[0], mask.size - 1 - observed[-1]) / mask.size


def iter_shard_items(
    path: str, split: str | None = None, verify: bool = True, clean: CleanConfig = CleanConfig()
) -> Iterator[Item]:
    """The spectra of `ingest` or `serialize --format patch` shards (a directory or one .parquet file), optionally
    only one split's, checked against their manifest first (`verify`). spec_id, flux and mask are required; obsid,
    file, position, coverage and the header columns are read if present."""
    optional = ["obsid", "file", "ra", "dec", "coverage", *HEADER_COLUMNS]
    for shard in verified_shard_paths(path, verify):
        names = parquet_file(shard).schema_arrow.names
        present = [c for c in optional if c in names]
        for rb in iter_batches([shard], columns=["spec_id", "flux", "mask", *present] + (["split"] if split else [])):
            keep = (
                np.ones(rb.num_rows, bool)
                if not split
                else np.array([s == split for s in rb.column("split").to_pylist()])
            )
            if not keep.any():
                continue
            flux = arrow_to_vectors(rb.column("flux"), np.float32)
            mask = arrow_to_vectors(rb.column("mask"), bool)
            meta = {c: (rb.column(c).to_pylist() if c in present else [None] * rb.num_rows) for c in optional}
            for i, sid in enumerate(rb.column("spec_id").to_pylist()):
                if keep[i]:
                    f = meta["file"][i] if meta["file"][i] is not None else str(shard)
                    header = {c: meta[c][i] for c in HEADER_COLUMNS if meta[c][i] is not None}
                    yield Item(
                        f,
                        sid,
                        meta["obsid"][i],
                        meta["ra"][i],
                        meta["dec"][i],
                        flux[i],
                        mask[i],
                        meta["coverage"][i],
                        edge_gap(mask[i]),
                        header=header,
                        snr_reason=snr_reason(header, clean, required=False),  # shards passed ingest's own check
                    )


def is_shard_input(item: str) -> bool:
    if os.path.isdir(item):
        return os.path.exists(os.path.join(item, "manifest.json")) or bool(
            glob.glob(os.path.join(item, "part-*.parquet"))
        )
    return item.endswith(".parquet") and not is_array_source(item)


def iter_items(inputs: list[str], grid: GridConfig, clean: CleanConfig, verify: bool = True) -> Iterator[Item]:
    """Input order preserved; FITS and array spectra through the same readers and cleaning as `ingest`; ingest
    shards read as they are (checked against their manifest with `verify`). An input that cannot be used (a shard
    folder that fails its check, a foreign Parquet file) gives one failed item (and one line on stderr) and the run
    goes on. The local engine; `--engine ray` reads the same `input_units` with the same `unit_items` in Ray tasks."""
    for unit in input_units(inputs, verify):
        for item in unit_items(unit, grid, clean):
            report(item)
            yield item


def input_units(inputs: list[str], verify: bool = True) -> Iterator[tuple[str, str, str]]:
    """The inputs, listed in order as units of reading: ("file", path) a FITS file or an array source,
    ("shard", path) one shard of a verified shard folder, ("failed", input, reason) an input that cannot be used."""
    for item in inputs:
        if is_shard_input(item):
            try:
                shards = verified_shard_paths(item, verify)
            except SpecllmError as exc:
                yield ("failed", item, one_line(exc))
                continue
            yield from (("shard", shard, "") for shard in shards)
            continue
        yield from (("file", path, "") for path in expand_inputs([item]))


def unit_items(unit: tuple[str, str, str], grid: GridConfig, clean: CleanConfig) -> Iterator[Item]:
    """The spectra of one unit of `input_units` (checked already), read and cleaned; failed items for what cannot
    be used. Prints nothing: the caller reports failed items (`report`), in order."""
    kind, path, reason = unit
    if kind == "failed":
        yield Item(path, status=reason)
    elif kind == "shard":
        try:
            yield from iter_shard_items(path, verify=False, clean=clean)
        except SpecllmError as exc:
            yield Item(path, status=one_line(exc))
    else:
        for raw in iter_spectra(path):
            if isinstance(raw, SpectrumRejected):
                yield Item(raw.path, status=str(raw))
            else:
                yield raw_item(raw, grid, clean)


def raw_item(raw, grid: GridConfig, clean: CleanConfig) -> Item:
    """A spectrum as read, cleaned as `ingest` cleans it (the per-spectrum work of both engines); one that cannot
    be used is a failed item."""
    meta = raw.meta
    obsid = meta.get("obsid")
    sid = meta.get("spec_id") or (str(obsid) if obsid is not None else file_key(raw.path))
    base = {
        "file": raw.path,
        "spec_id": sid,
        "obsid": obsid,
        "ra": meta.get("ra"),
        "dec": meta.get("dec"),
        "header": {c: meta[c] for c in HEADER_COLUMNS if meta.get(c) is not None},
        "snr_reason": snr_reason(meta, clean, required=raw.layout != LAYOUT_ARRAY),
    }
    try:
        obsid = check_identity(meta)
        cleaned = clean_spectrum(raw.wave, raw.flux, raw.ivar, raw.ormask, grid, clean)
    except SpectrumRejected as exc:
        return Item(**(base | {"obsid": None, "ra": None, "dec": None}), status=one_line(exc))
    return Item(
        **base,
        flux=cleaned.flux,
        mask=cleaned.mask,
        coverage=cleaned.coverage,
        edge_gap=edge_gap(cleaned.mask),
    )


def report(item: Item) -> None:
    """One line on stderr for an item that failed (naming its file and the reason)."""
    if item.status != "ok":
        say(one_line(item.status if item.status.startswith(item.file) else f"{item.file}: {item.status}"))


def label_columns(spec) -> list[str]:
    cols = ["class", "class_prob"] if spec.stage == 1 else []
    return cols + list(spec.value_names) + [f"{n}_err" for n in spec.value_names]


def output_columns(specs) -> list[str]:
    labels = [c for spec in specs for c in label_columns(spec)]
    return [
        "file",
        "spec_id",
        "obsid",
        "ra",
        "dec",
        *labels,
        "coverage",
        "partial",
        "status",
        "flag",
        "flag_reason",
        "domain_score",
        *HEADER_COLUMNS,
    ]


def _rank_slice() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def label_rows(items: Iterable[Item], models: list[Loaded], device, config: InferConfig) -> Iterator[tuple[Item, dict]]:
    """(item, output row) per item, in order; spectra are batched through every model in the chain. Each row
    carries its header facts, `flag` and `flag_reason` (`specllm.flags`) and the domain check's `domain_score`."""
    chunk: list[Item] = []
    checker = next((m for m in models if m.domain is not None), None)
    trained = tuple(checker.domain.trained_classes) if checker else None
    prob_min = checker.domain.class_prob_min if checker else 0.0

    def flush():
        good = [it for it in chunk if it.status == "ok"]
        results = []  # (spec, Predictions) per model
        if good:
            flux = np.stack([it.flux for it in good])
            mask = np.stack([it.mask for it in good])
            for m in models:
                questions = questions_for(m.spec, flux)
                f, k = (flux, mask) if m.spec.patch_width else (None, None)  # text formats: flux is in the question
                hidden = m is checker and checker.domain.features == "hidden"
                results.append(
                    (m.spec, predict(m.model, m.spec, m.builder, questions, f, k, device, config, return_hidden=hidden))
                )
        outside = score = None
        if good and checker is not None:
            preds = results[models.index(checker)][1]
            feats = preds.hidden if checker.domain.features == "hidden" else None
            if feats is None:
                feats = patch_features(checker.model.patcher, flux, mask)
            outside, score = checker.domain.check(feats, preds.values, checker.spec.value_names)
            score = score / checker.domain.threshold
        k = 0
        for it in chunk:
            row = {"file": it.file, "spec_id": it.spec_id, "obsid": it.obsid, "ra": it.ra, "dec": it.dec}
            row.update(
                coverage=it.coverage,
                status=it.status,
                partial=bool(it.edge_gap is not None and it.edge_gap > config.partial_edge),
                **it.header,
            )
            in_domain = True
            if it.status == "ok":
                for spec, preds in results:
                    if not preds.ok[k]:
                        row["status"] = "unparseable answer"
                    for j, name in enumerate(spec.value_names):
                        row[name] = float(preds.values[k, j])
                        row[f"{name}_err"] = float(preds.errors[k, j])
                    if spec.stage == 1:
                        row["class"] = preds.classes[k]
                        if preds.class_prob is not None and np.isfinite(preds.class_prob[k]):
                            row["class_prob"] = float(preds.class_prob[k])
                if outside is not None:
                    in_domain = not outside[k]
                    row["domain_score"] = float(score[k])
                k += 1
            untrained = flags.untrained_class(
                reduce_class(it.header.get("subclass")), row.get("class"), row.get("class_prob"), trained, prob_min
            )
            row["flag"], row["flag_reason"] = flags.combine(
                objclass=it.header.get("objclass"),
                snr_reason=it.snr_reason,
                partial=row["partial"],
                untrained=untrained,
                domain=not in_domain,
            )
            yield it, row
        chunk.clear()

    for item in items:
        chunk.append(item)
        if len(chunk) >= config.batch_size * 4:
            yield from flush()
    yield from flush()


def labeller(model_path: str, config: InferConfig):
    """`--engine ray`: built once in each model actor (the model on the actor's device); returns a function that
    labels a batch of items -> [(item without its flux, row)], in order."""
    device = pick_device()
    models = load_for_inference(Path(model_path), device)

    def label(items: list[Item]) -> list[tuple[Item, dict]]:
        pairs = label_rows(items, models, device, config)
        return [(dataclasses.replace(item, flux=None, mask=None), row) for item, row in pairs]

    return label


def ray_rows(inputs: list[str], model_path: Path, config: InferConfig) -> Iterator[tuple[Item, dict]]:
    """`--engine ray`: (item, row) in input order, as `label_rows` gives them; reading and cleaning in Ray tasks,
    labelling in a pool of model actors (`specllm.ray_engine`)."""
    from . import ray_engine

    with ray_engine.session(config.engine):
        units = list(input_units(inputs, config.verify))
        pairs = ray_engine.ordered_actor_map(
            units,
            unit_items,
            (GridConfig(), config.clean),
            labeller,
            (str(model_path), config),
            batch_size=config.batch_size * 4,
            actors=config.engine.actors,
        )
        for item, row in pairs:
            report(item)
            yield item, row


def rows_to_table(rows: list[dict], columns: list[str]) -> pa.Table:
    schema = pa.schema([(c, _arrow_type(c)) for c in columns])
    return pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], schema=schema)


def predict_table(
    model_dir: str | None, shards: str, split: str | None = "test", config: InferConfig = InferConfig()
) -> pa.Table:
    """The model's labels for the spectra of `ingest`/`serialize` shards (one split, or all with split=None), as
    an Arrow table with the columns `specllm infer` writes. Used by `specllm benchmark --model`."""
    device = pick_device()
    models = load_for_inference(Path(model_dir) if model_dir else default_model_dir(), device)
    rows = []
    with progress_bar("predict", total=None) as advance:
        for _, row in label_rows(iter_shard_items(shards, split, config.verify), models, device, config):
            rows.append(row)
            advance(1)
    return rows_to_table(rows, output_columns([m.spec for m in models]))


def run_infer(
    inputs: list[str], model_dir: str | None, output: str | None, config: InferConfig = InferConfig()
) -> tuple[int, int]:
    """Writes the predictions; returns (failed, total) input counts. `config.clean` is ingest's cleaning, SNR cut
    included: a spectrum below the cut is labelled and flagged (`flag_reason` 'low SNR'), where ingest rejects it."""
    rank, world = _rank_slice()
    if world > 1 and not output:
        raise SpecllmError("under a multi-process launcher give --output; each rank writes its own part")
    if world > 1:
        stem, ext = os.path.splitext(output)
        output = f"{stem}.rank{rank:03d}-of-{world:03d}{ext}"
    if output:
        check_output(output, is_file=True)  # before the model is loaded and any spectrum read
    model_path = Path(model_dir) if model_dir else default_model_dir()
    if config.engine.engine == "ray":
        if world > 1:
            raise SpecllmError("--engine ray spreads the work itself: run it once, not under a multi-process launcher")
        labelled = ray_rows(inputs, model_path, config)
        columns = output_columns(model_specs(model_path))
    else:
        device = pick_device()
        models = load_for_inference(model_path, device)
        columns = output_columns([m.spec for m in models])
    parquet = bool(output and output.endswith(".parquet"))
    text_out = io.StringIO() if output and not parquet else None
    sink = text_out if text_out is not None else sys.stdout
    writer = None if parquet else csv.writer(sink, lineterminator="\n")
    if writer:
        writer.writerow(columns)
    rows_all: list[dict] = []
    failed = total = 0
    if config.engine.engine != "ray":
        items = (
            it
            for n, it in enumerate(iter_items(inputs, GridConfig(), config.clean, config.verify))
            if n % world == rank
        )
        labelled = label_rows(items, models, device, config)
    with progress_bar("infer", total=None) as advance:
        for item, row in labelled:
            total += 1
            failed += item.status != "ok"
            if writer:
                writer.writerow([_fmt(row.get(c)) for c in columns])
                if sink is sys.stdout:
                    sys.stdout.flush()
            else:
                rows_all.append(row)
            advance(1)
    if parquet:
        write_table(output, rows_to_table(rows_all, columns))
    elif text_out is not None:
        atomic_write_text(output, text_out.getvalue())
    say(f"infer: {total} input(s), {total - failed} labelled, {failed} failed" + (f" -> {output}" if output else ""))
    if total == 0:
        raise SpecllmError("no input spectra")
    return failed, total


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not np.isfinite(value) else f"{value:.6g}"
    return str(value)


def _arrow_type(column: str) -> pa.DataType:
    if column in ("file", "spec_id", "class", "status", "flag_reason", "objclass", "subclass"):
        return pa.string()
    if column in ("obsid", "flag"):
        return pa.int64()
    if column == "partial":
        return pa.bool_()
    return pa.float64()
