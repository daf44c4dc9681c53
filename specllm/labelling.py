"""The labelling library: inputs -> items -> rows, what `specllm infer`, the Python API (`specllm.api`),
`benchmark --model` (`predict_table`), `fit-domain` (`iter_shard_items`) and the Ray engine's model actors
(`labeller`) share.

Inputs are FITS files, directories, globs (read and cleaned by exactly the code `ingest` uses), array sources or
`ingest` shards (`input_units`, `unit_items`, `iter_items`); each spectrum is an `Item`; `label_rows` batches items
through a model chain and gives one output row per item (columns `output_columns`), with its header facts and
flags. Decoding (`head` or `text`) is `specllm.predict`'s. The `infer` command (options, output, progress, resume)
is `specllm.infer`.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import flags
from .config import CleanConfig, GridConfig, InferConfig, ReadConfig
from .device import pick_device
from .errors import SpecllmError, SpectrumRejected, one_line
from .io import LAYOUT_ARRAY, RawSpectrum, array_count, expand_inputs, is_array_source, iter_spectra
from .io.base import check_identity
from .io.lamost_catalog import file_key
from .labels import reduce_class
from .outputs import rows_to_arrow
from .predict import Loaded, default_model_dir, load_for_inference, predict, questions_for
from .preprocess import check_snr, clean_spectrum
from .progress import progress_bar, say
from .shards import arrow_to_vectors, iter_batches, parquet_file, shard_paths, verified_shard_paths


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
    # a FIFO or device named x.parquet is not a shard: the spectrum readers refuse it in one line
    regular = os.path.isfile(item) or not os.path.lexists(item)
    return item.endswith(".parquet") and regular and not is_array_source(item)


Select = Callable[[int, str, str | None], bool]


def iter_items(
    inputs: Iterable[str],
    grid: GridConfig,
    clean: CleanConfig,
    verify: bool = True,
    select: Select | None = None,
    read: ReadConfig = ReadConfig(),
) -> Iterator[Item]:
    """Input order preserved; FITS and array spectra through the same readers and cleaning as `ingest`; ingest
    shards read as they are (checked against their manifest with `verify`). An input that cannot be used (a shard
    folder that fails its check, a foreign Parquet file) gives one failed item (and one line on stderr) and the run
    goes on. `select(n, file, spec_id)` decides whether the n-th spectrum (counted over every input) is wanted: for a
    FITS file before it is read (spec_id None), for array and shard spectra after. The local engine; `--engine ray`
    reads the same `input_units` with the same `unit_items` in Ray tasks."""
    n = 0

    def wanted(file: str, spec_id: str | None) -> bool:
        nonlocal n
        n += 1
        return select is None or select(n - 1, file, spec_id)

    for unit in input_units(inputs, verify):
        kind, path, _ = unit
        single = kind == "file" and not is_array_source(path)
        if kind == "failed":
            if not wanted(path, None):
                continue
        elif single and not wanted(path, None):
            continue
        for item in unit_items(unit, grid, clean, read):
            if kind == "failed" or single or wanted(item.file, item.spec_id):
                report(item)
                yield item


def input_units(inputs: Iterable[str], verify: bool = True) -> Iterator[tuple[str, str, str]]:
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


def unit_items(
    unit: tuple[str, str, str], grid: GridConfig, clean: CleanConfig, read: ReadConfig = ReadConfig()
) -> Iterator[Item]:
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
        for raw in iter_spectra(path, read):
            if isinstance(raw, SpectrumRejected):
                yield Item(raw.path, status=str(raw))
            else:
                yield raw_item(raw, grid, clean)


def spec_id_of(raw: RawSpectrum) -> str:
    """The spectrum's spec_id: the reader's, else its obsid as text, else the file's stem."""
    obsid = raw.meta.get("obsid")
    return raw.meta.get("spec_id") or (str(obsid) if obsid is not None else file_key(raw.path))


def raw_item(raw: RawSpectrum, grid: GridConfig, clean: CleanConfig) -> Item:
    """A spectrum as read, cleaned as `ingest` cleans it (the per-spectrum work of both engines); one that cannot
    be used is a failed item (reported by the caller)."""
    meta = raw.meta
    base = {
        "file": raw.path,
        "spec_id": spec_id_of(raw),
        "obsid": meta.get("obsid"),
        "ra": meta.get("ra"),
        "dec": meta.get("dec"),
        "header": {c: meta[c] for c in HEADER_COLUMNS if meta.get(c) is not None},
        "snr_reason": snr_reason(meta, clean, required=raw.layout != LAYOUT_ARRAY),
    }
    try:
        obsid = check_identity(meta)
    except SpectrumRejected as exc:  # an obsid that is no id: not written as one
        return Item(**(base | {"obsid": None}), status=one_line(exc))
    try:
        cleaned = clean_spectrum(raw.wave, raw.flux, raw.ivar, raw.ormask, grid, clean)
    except SpectrumRejected as exc:  # the row keeps what was read: ids, position, header facts
        return Item(**(base | {"obsid": obsid}), status=one_line(exc))
    return Item(
        **(base | {"obsid": obsid}),
        flux=cleaned.flux,
        mask=cleaned.mask,
        coverage=cleaned.coverage,
        edge_gap=edge_gap(cleaned.mask),
    )


def count_spectra(inputs: Iterable[str], read: ReadConfig = ReadConfig()) -> int:
    """How many spectra `iter_items` will yield (the progress bar's total), without reading a spectrum: files are
    listed, array sources and shards counted from their headers."""
    total = 0
    for item in inputs:
        if is_shard_input(item):
            try:
                total += sum(parquet_file(p).metadata.num_rows for p in shard_paths(item))
            except (SpecllmError, OSError, pa.ArrowException):
                total += 1  # iter_items reports it as one failed input
            continue
        for path in expand_inputs([item]):
            if is_array_source(path):
                try:
                    total += array_count(path, read)
                except SpectrumRejected:
                    total += 1
            else:
                total += 1
    return total


class PathList:
    """The inputs of a run: arguments, `-` (paths on stdin, one a line) and `--from-file LIST`, iterable more than
    once (stdin is spooled to a temporary file), so that they can be counted before they are read."""

    def __init__(self, inputs: Iterable[str], from_file: str | None = None, stdin=None):
        self.parts: list[tuple[str, str]] = []  # ("arg", path) or ("list", file of paths)
        self._spool = None
        for item in inputs:
            if item == "-":
                if self._spool is None:
                    self._spool = tempfile.NamedTemporaryFile("w+", encoding="utf-8", prefix="specllm-stdin-")
                    for line in stdin or sys.stdin:
                        self._spool.write(line if line.endswith("\n") else line + "\n")
                    self._spool.flush()
                self.parts.append(("list", self._spool.name))
            else:
                self.parts.append(("arg", item))
        if from_file is not None:
            if not os.path.exists(from_file) or os.path.isdir(from_file):  # a named pipe is fine (with -q)
                raise SpecllmError(f"{from_file}: no such file (--from-file)")
            self.parts.append(("list", from_file))

    def __iter__(self) -> Iterator[str]:
        for kind, value in self.parts:
            if kind == "arg":
                yield value
                continue
            with open(value, encoding="utf-8") as fh:
                for line in fh:
                    path = line.rstrip("\r\n")
                    if path.strip():
                        yield path

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()


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
        "usable",
        "domain_score",
        *HEADER_COLUMNS,
    ]


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
        outside = score = uncertain = None
        if good and checker is not None:
            preds = results[models.index(checker)][1]
            feats = checker.domain.features_of(flux, mask, checker.model.patcher, preds.hidden)
            outside, score = checker.domain.check(feats, preds.values, checker.spec.value_names, mask)
            uncertain = checker.domain.uncertain(preds.errors, checker.spec.value_names)
        k = 0
        for it in chunk:
            row = {"file": it.file, "spec_id": it.spec_id, "obsid": it.obsid, "ra": it.ra, "dec": it.dec}
            row.update(
                coverage=it.coverage,
                status=it.status,
                partial=None if it.edge_gap is None else bool(it.edge_gap > config.partial_edge),
                **it.header,
            )
            in_domain, sure = True, True
            if it.status == "ok":
                for spec, preds in results:
                    if not preds.ok[k]:  # a text answer that did not parse, or a read-out that is not finite
                        finite = np.isfinite(preds.values[k]).all() and np.isfinite(preds.errors[k]).all()
                        row["status"] = "unparseable answer" if finite else "non-finite model output"
                    for j, name in enumerate(spec.value_names):
                        row[name] = float(preds.values[k, j])
                        row[f"{name}_err"] = float(preds.errors[k, j])
                    if spec.stage == 1:
                        row["class"] = preds.classes[k]
                        if preds.class_prob is not None and np.isfinite(preds.class_prob[k]):
                            row["class_prob"] = float(preds.class_prob[k])
                if outside is not None:
                    in_domain, sure = not outside[k], not uncertain[k]
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
                uncertain=not sure,
                header=row["status"] != "ok" or any(it.header.get(c) for c in ("objclass", "subclass")),
            )
            row["usable"] = flags.usable(row["status"], row["flag"])
            yield it, row
        chunk.clear()

    for item in items:
        chunk.append(item)
        if len(chunk) >= config.chunk_size:
            yield from flush()
    yield from flush()


def labeller(model_path: str, config: InferConfig):
    """`--engine ray`: built once in each model actor (the model on the actor's device); returns a function that
    labels a batch of items -> [(item without its flux, row)], in order."""
    device = pick_device()
    models = load_for_inference(Path(model_path), device, config.decode)

    def label(items: list[Item]) -> list[tuple[Item, dict]]:
        pairs = label_rows(items, models, device, config)
        return [(dataclasses.replace(item, flux=None, mask=None), row) for item, row in pairs]

    return label


def predict_table(
    model_dir: str | None, shards: str, split: str | None = "test", config: InferConfig = InferConfig()
) -> pa.Table:
    """The model's labels for the spectra of `ingest`/`serialize` shards (one split, or all with split=None), as
    an Arrow table with the columns `specllm infer` writes. Used by `specllm benchmark --model`."""
    device = pick_device()
    models = load_for_inference(Path(model_dir) if model_dir else default_model_dir(), device, config.decode)
    rows = []
    with progress_bar("predict", total=None) as advance:
        for _, row in label_rows(iter_shard_items(shards, split, config.verify), models, device, config):
            rows.append(row)
            advance(1)
    return rows_to_arrow(rows, output_columns([m.spec for m in models]))
