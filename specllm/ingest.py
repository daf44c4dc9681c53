"""`specllm ingest`: survey FITS files + a label catalogue -> cleaned Parquet shards.

Inputs are processed in fixed chunks of `shard_size` files, in input order; chunk k becomes `part-k.parquet` plus
`part-k.json` (its input hash, ids, rejects and content digest), each written atomically, the JSON last. A rerun of
the same command skips every chunk whose JSON matches its inputs, so an interrupted run resumes where it stopped and
ends with the same content hash as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import heapq
import json
import multiprocessing
import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ._version import __version__
from .config import IngestConfig
from .errors import SpecllmError, SpectrumRejected, one_line
from .files import atomic_write_json, file_sha256
from .io import LAYOUT_ARRAY, expand_inputs, expand_spectra, load_spectrum
from .io.base import check_identity, check_regular
from .io.lamost_catalog import LabelCatalog, file_key
from .labels import reduce_class
from .preprocess import check_snr, clean_spectrum
from .progress import progress_bar, say
from .shards import (
    MANIFEST,
    begin_output,
    check_output,
    exclusive_output,
    integrity_fields,
    read_table,
    remove_stale_temporaries,
    table_digest,
    vector_type,
    vectors_to_arrow,
    write_table,
)
from .splits import hash_fraction, split_of

RUN_FILE = "run.json"
REJECTS = "rejects.parquet"
SNR_BANDS = ("u", "g", "r", "i", "z")
BYTES_PER_SPECTRUM = 8_000  # for the free-space check before a run: 6.9 KB per DR10 spectrum in zstd shards

CORE_FIELDS = [
    pa.field("spec_id", pa.string(), nullable=False),
    pa.field("obsid", pa.int64()),
    pa.field("file", pa.string()),
    pa.field("data_release", pa.string()),
    pa.field("layout", pa.string()),
    pa.field("ra", pa.float64()),
    pa.field("dec", pa.float64()),
    pa.field("z", pa.float64()),
    pa.field("objclass", pa.string()),
    pa.field("subclass", pa.string()),
    pa.field("class", pa.string()),
    *(pa.field(f"snr{b}", pa.float32()) for b in SNR_BANDS),
    pa.field("teff", pa.float32()),
    pa.field("logg", pa.float32()),
    pa.field("feh", pa.float32()),
]
TAIL_FIELDS = [pa.field("split", pa.string()), pa.field("coverage", pa.float32()), pa.field("norm", pa.float64())]
REJECT_SCHEMA = pa.schema([("file", pa.string()), ("reason", pa.string()), ("detail", pa.string())])


def shard_schema(catalog: LabelCatalog | None, grid_size: int) -> pa.Schema:
    extras = catalog.extra_fields if catalog else []
    return pa.schema(
        CORE_FIELDS
        + extras
        + TAIL_FIELDS
        + [pa.field("flux", vector_type(pa.float32(), grid_size)), pa.field("mask", vector_type(pa.bool_(), grid_size))]
    )


@dataclass
class IngestResult:
    out: str
    read: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    content_hash: str = ""
    resumed_chunks: int = 0


# ---------------------------------------------------------------- per-spectrum work (runs in worker processes)

_STATE: dict = {}


def _init_worker(config: IngestConfig, catalog: LabelCatalog | None) -> None:
    _STATE["config"] = config
    _STATE["catalog"] = catalog


def describe(path: str, meta: dict) -> dict:
    """Header facts merged with the catalogue row (catalogue wins where it has a value)."""
    catalog: LabelCatalog | None = _STATE["catalog"]
    row = dict(meta)
    if catalog is not None:
        try:
            cat = catalog.lookup(meta.get("obsid"), path)
        except KeyError as exc:
            raise SpectrumRejected(
                "duplicate obsid", f"{exc.args[0]} appears more than once in {catalog.path}"
            ) from None
        if cat:
            row.update({k: v for k, v in cat.items() if v is not None or k not in row})
    if not row.get("spec_id"):  # array sources name their spectra themselves (e.g. miles-0272)
        row["spec_id"] = str(row["obsid"]) if row.get("obsid") is not None else file_key(path)
    row["class"] = reduce_class(row.get("subclass"))
    return row


def process_one(path: str):
    """Read, join, cut and clean one file -> ('ok', row, flux, mask) or ('rejected', path, reason, detail)."""
    config: IngestConfig = _STATE["config"]
    try:
        raw = load_spectrum(path, config.read)  # a survey FITS file, or spectrum i of an array source (`FILE#i`)
        row = describe(path, raw.meta)
        row["obsid"] = check_identity(row)
        check_snr(row, config.clean, required=raw.layout != LAYOUT_ARRAY)
        cleaned = clean_spectrum(raw.wave, raw.flux, raw.ivar, raw.ormask, config.grid, config.clean)
    except SpectrumRejected as exc:
        return ("rejected", path, exc.reason, exc.detail)
    except Exception as exc:  # a file no reader foresaw: report it like any bad file, the run goes on
        detail = str(exc).splitlines()[0][:160] if str(exc) else ""
        return ("rejected", path, "unexpected error", f"{type(exc).__name__}: {detail}")
    row.update(
        file=path,
        layout=raw.layout,
        split=split_of(row["spec_id"], config.split),
        coverage=cleaned.coverage,
        norm=cleaned.norm,
    )
    return ("ok", row, cleaned.flux, cleaned.mask)


def balance_candidate(path: str):
    """Header-only pass for `--balance`: (path, class, priority) or None when the file is not eligible."""
    from astropy.io import fits

    from .io.lamost import header_meta

    try:
        check_regular(path)  # a FIFO or device is never opened (the main pass reports it)
        header = fits.getheader(path)
        row = describe(path, header_meta(header, ""))
        check_snr(row, _STATE["config"].clean)
    except Exception:
        return None  # the main pass reports the reason
    if row["class"] is None:
        return None
    # A salt of its own: drawn with the split's hash, the lowest hashes (all in the test split) would be chosen.
    return (path, row["class"], hash_fraction(row["spec_id"], _STATE["config"].split.salt + ":balance"))


# ---------------------------------------------------------------- the run (main process)


def _options_fingerprint(config: IngestConfig, catalog: LabelCatalog | None) -> dict:
    return {
        "config": dataclasses.asdict(config) | {"workers": None, "strict": None, "engine": None},
        "catalog": os.path.abspath(catalog.path) if catalog else None,
        "specllm": __version__,
    }


def _chunks(items: list[str], size: int):
    for k in range(0, len(items), size):
        yield k // size, items[k : k + size]


def _chunk_hash(paths: list[str]) -> str:
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()


def _select_balanced(paths: list[str], per_class: int, pool_map) -> list[str]:
    heaps: dict[str, list] = {}
    for cand in pool_map(balance_candidate, paths):
        if cand is None:
            continue
        path, cls, prio = cand
        heap = heaps.setdefault(cls, [])
        item = (-prio, path)
        if len(heap) < per_class:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
    chosen = {path for heap in heaps.values() for _, path in heap}
    say(f"balance: {', '.join(f'{c} {len(h)}' for c, h in sorted(heaps.items()))} (up to {per_class} per class)")
    return [p for p in paths if p in chosen]


def _build_table(results: list, schema: pa.Schema, grid_size: int) -> pa.Table:
    rows, fluxes, masks = [], [], []
    for _, row, flux, mask in results:
        rows.append(row)
        fluxes.append(flux)
        masks.append(mask)
    scalar_schema = pa.schema([f for f in schema if f.name not in ("flux", "mask")])
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in scalar_schema} for r in rows], schema=scalar_schema)
    flux = np.stack(fluxes) if fluxes else np.zeros((0, grid_size), np.float32)
    mask = np.stack(masks) if masks else np.zeros((0, grid_size), bool)
    table = table.append_column(schema.field("flux"), vectors_to_arrow(flux, pa.float32()))
    return table.append_column(schema.field("mask"), vectors_to_arrow(mask, pa.bool_()))


@exclusive_output("out")
def run_ingest(
    inputs: list[str],
    out: str,
    catalog_path: str | None = None,
    config: IngestConfig = IngestConfig(),
    overwrite: bool = False,
) -> IngestResult:
    # fails at once on a missing column (and, with --strict, on a value that does not parse)
    catalog = LabelCatalog(catalog_path, strict=config.strict) if catalog_path else None
    if catalog is not None and catalog.problem_summary():
        say(catalog.problem_summary())
    paths = list(expand_spectra(expand_inputs(inputs), config.read))  # an array source -> FILE#0 ... FILE#N-1
    if not paths:
        raise SpecllmError("no input files")
    done = sum(os.path.getsize(p) for p in glob.glob(os.path.join(out, "part-*.parquet")))  # kept on resume
    check_output(out, max(0, len(paths) * BYTES_PER_SPECTRUM - done))
    os.makedirs(out, exist_ok=True)
    remove_stale_temporaries(out)
    fingerprint = _options_fingerprint(config, catalog)
    run_file = os.path.join(out, RUN_FILE)
    if os.path.exists(run_file) and not overwrite:
        with open(run_file) as fh:
            if json.load(fh) != json.loads(json.dumps(fingerprint, default=str)):
                raise SpecllmError(f"{out}: holds an ingest made with other options; use --overwrite or another --out")
    elif overwrite:
        for name in os.listdir(out):
            if name.startswith("part-") or name in (MANIFEST, REJECTS, RUN_FILE):
                os.unlink(os.path.join(out, name))
    begin_output(out)  # no manifest until this run is complete: consumers refuse the folder meanwhile
    atomic_write_json(run_file, fingerprint)

    grid_size = config.grid.size
    schema = shard_schema(catalog, grid_size)
    result = IngestResult(out=out)
    with _engine(config, catalog) as (pool_map, chunks_of):
        if config.balance:
            paths = _select_balanced(paths, config.balance, pool_map)
        seen: dict[str, str] = {}
        shard_names, digests, rejects, hashes = [], [], [], {}
        n_chunks = (len(paths) + config.shard_size - 1) // config.shard_size
        with progress_bar("ingest", total=len(paths)) as advance:
            for k, chunk, record, provisional in chunks_of(out, paths, schema):
                if record is None:
                    record = settle_chunk(out, k, provisional, seen)
                else:
                    result.resumed_chunks += 1
                    for sid in record["ids"]:
                        seen.setdefault(sid, "earlier shard")
                for rej in record["rejects"]:
                    say(
                        one_line(
                            f"{rej['file']}: rejected: {rej['reason']}"
                            + (f" ({rej['detail']})" if rej["detail"] else "")
                        )
                    )
                rejects.extend(record["rejects"])
                if record["kept"]:
                    shard_names.append(record["shard"])
                    hashes[record["shard"]] = record.get("sha256")
                digests.append(record["digest"])
                result.kept += record["kept"]
                advance(len(chunk))
        _remove_parts_beyond(out, n_chunks)
    result.read = len(paths)
    result.rejected = Counter(r["reason"] for r in rejects)
    result.content_hash = hashlib.sha256("".join(digests).encode()).hexdigest()
    write_table(os.path.join(out, REJECTS), pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA))
    atomic_write_json(
        os.path.join(out, MANIFEST),
        {
            "specllm": __version__,
            "kind": "spectra",
            "grid": dataclasses.asdict(config.grid) | {"size": grid_size},
            "clean": dataclasses.asdict(config.clean),
            "split": dataclasses.asdict(config.split),
            "balance": config.balance,
            "catalog": os.path.abspath(catalog_path) if catalog_path else None,
            "counts": {"read": result.read, "kept": result.kept, "rejected": dict(result.rejected)},
            **integrity_fields(out, shard_names, hashes),
            "rejects": REJECTS,
            "content_hash": result.content_hash,
            "schema": {f.name: str(f.type) for f in schema},
        },
    )
    return result


@contextmanager
def _engine(config: IngestConfig, catalog: LabelCatalog | None):
    """(pool_map for the --balance pass, chunks_of(out, paths, schema) -> (k, chunk, record, provisional)) of the
    engine asked for: a process pool of `config.workers` (local), or Ray tasks (`specllm.ray_engine`)."""
    if config.engine.engine == "ray":
        from . import ray_engine

        with ray_engine.session(config.engine):
            yield (
                lambda fn, items: ray_engine.ordered_map(items, balance_task, (config, catalog), per_task=256),
                lambda out, paths, schema: _ray_chunks(out, paths, config, catalog, schema),
            )
        return
    workers = max(1, config.workers)
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(workers, _init_worker, (config, catalog)) if workers > 1 else None
    _init_worker(config, catalog)
    # Large task chunks (up to 64 files) keep the pool's dispatch threads off the GIL the main process needs for
    # building shards: 1,650 DR10 files, 2 workers: ~650 spectra/s with chunks of 4, ~880 with 64.
    pool_map = (
        (lambda fn, items: pool.imap(fn, items, chunksize=max(1, min(64, len(items) // (4 * workers)))))
        if pool
        else map
    )
    try:
        yield (
            pool_map,
            lambda out, paths, schema: _local_chunks(out, paths, config.shard_size, pool_map, schema, config.grid.size),
        )
    finally:
        if pool:
            pool.close()
            pool.join()


def _part(k: int) -> str:
    return f"part-{k:05d}"


def _load_chunk_record(out: str, k: int, input_hash: str) -> dict | None:
    path = os.path.join(out, _part(k) + ".json")
    try:
        with open(path) as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    if record.get("input_hash") != input_hash:
        return None
    if record["kept"]:
        shard = os.path.join(out, record["shard"])
        if not os.path.exists(shard) or (record.get("sha256") and file_sha256(shard) != record["sha256"]):
            return None  # missing or changed since written: made again
    return record


def _local_chunks(out: str, paths: list[str], size: int, pool_map, schema: pa.Schema, grid_size: int):
    """Local engine: (k, chunk, record or None, provisional record or None) in order."""
    for k, chunk, record, results in _prefetched(out, paths, size, pool_map):
        yield k, chunk, record, (None if record else clean_chunk(out, k, chunk, results, schema, grid_size))


def _ray_chunks(out: str, paths: list[str], config: IngestConfig, catalog, schema: pa.Schema):
    """`--engine ray`: (k, chunk, record or None, provisional record or None) in order; the chunks without a
    complete record are cleaned and written by Ray tasks (`ingest_chunk_task`), their records come back in order."""
    from . import ray_engine

    chunks = [
        (k, chunk, _load_chunk_record(out, k, _chunk_hash(chunk))) for k, chunk in _chunks(paths, config.shard_size)
    ]
    todo = [(k, chunk) for k, chunk, record in chunks if record is None]
    provisional = ray_engine.ordered_map(todo, ingest_chunk_task, (config, catalog, out, schema))
    for k, chunk, record in chunks:
        yield k, chunk, record, (next(provisional) if record is None else None)


def _prefetched(out: str, paths: list[str], size: int, pool_map):
    """Yields (k, chunk, record or None, results) in order. A chunk without a complete record is submitted to the
    workers when the chunk before it is handed out, so they clean chunk k+1 while this process builds and writes
    shard k; at most two chunks of results are in memory."""
    chunks = list(_chunks(paths, size))

    def start(i):
        k, chunk = chunks[i]
        record = _load_chunk_record(out, k, _chunk_hash(chunk))
        return record, (pool_map(process_one, chunk) if record is None else None)

    nxt = start(0) if chunks else None
    for i, (k, chunk) in enumerate(chunks):
        record, results = nxt
        nxt = start(i + 1) if i + 1 < len(chunks) else None
        yield k, chunk, record, results


def clean_chunk(out: str, k: int, chunk: list[str], results, schema: pa.Schema, grid_size: int) -> dict:
    """Shard k from the per-file results of its chunk, every cleaned spectrum kept, written atomically; returns
    the chunk's provisional record (`settle_chunk` drops the ids an earlier spectrum had). Runs where the chunk
    was cleaned: this process (local engine) or a Ray worker (`--engine ray`)."""
    kept, rejects, positions = [], [], []
    for pos, res in enumerate(results):
        if res[0] == "rejected":
            _, path, reason, detail = res
            rejects.append({"file": path, "reason": reason, "detail": detail, "pos": pos})
        else:
            kept.append(res)
            positions.append(pos)
    shard = _part(k) + ".parquet"
    digest = sha256 = ""
    if kept:
        table = _build_table(kept, schema, grid_size)
        digest = table_digest(table)
        sha256 = write_table(os.path.join(out, shard), table)
    return {
        "input_hash": _chunk_hash(chunk),
        "shard": shard,
        "kept": len(kept),
        "ids": [r[1]["spec_id"] for r in kept],
        "files": [r[1]["file"] for r in kept],
        "positions": positions,
        "rejects": rejects,
        "digest": digest,
        "sha256": sha256,
    }


def settle_chunk(out: str, k: int, provisional: dict, seen: dict[str, str]) -> dict:
    """In input order (this process): a spectrum whose id an earlier one had becomes the reject `duplicate obsid`
    (its shard is rewritten without it; rare), the others are remembered in `seen`; the chunk's record is written,
    last, so that a rerun skips the chunk."""
    events = [(r.pop("pos"), r) for r in provisional["rejects"]]
    events += [
        (pos, (sid, f)) for pos, sid, f in zip(provisional["positions"], provisional["ids"], provisional["files"])
    ]
    rejects, keep = [], []
    for _, event in sorted(events, key=lambda e: e[0]):
        if isinstance(event, dict):
            rejects.append(event)
            continue
        sid, f = event
        if sid in seen:
            rejects.append({"file": f, "reason": "duplicate obsid", "detail": f"{sid} already read from {seen[sid]}"})
            keep.append(False)
        else:
            seen[sid] = f
            keep.append(True)
    record = {key: provisional[key] for key in ("input_hash", "shard", "kept", "ids", "digest", "sha256")}
    record["rejects"] = rejects
    if not all(keep):
        path = os.path.join(out, provisional["shard"])
        table = read_table(path).filter(pa.array(keep))
        record["ids"] = [sid for sid, ok in zip(provisional["ids"], keep) if ok]
        record["kept"] = table.num_rows
        if table.num_rows:
            record["digest"] = table_digest(table)
            record["sha256"] = write_table(path, table)
        else:
            os.unlink(path)
            record["digest"] = record["sha256"] = ""
    atomic_write_json(os.path.join(out, _part(k) + ".json"), record)
    return record


def ingest_chunk_task(unit: tuple[int, list[str]], config, catalog, out: str, schema: pa.Schema) -> dict:
    """`--engine ray`: one Ray task cleans the chunk k of files with the local engine's `process_one` and writes
    its shard (`clean_chunk`)."""
    k, chunk = unit
    _init_worker(config, catalog)
    return clean_chunk(out, k, chunk, [process_one(p) for p in chunk], schema, config.grid.size)


def balance_task(path: str, config, catalog):
    """`--engine ray`: `balance_candidate` in a Ray worker."""
    _init_worker(config, catalog)
    return balance_candidate(path)


def _remove_parts_beyond(out: str, n_chunks: int) -> None:
    for name in os.listdir(out):
        if name.startswith("part-"):
            try:
                k = int(name[5:10])
            except ValueError:
                continue
            if k >= n_chunks:
                os.unlink(os.path.join(out, name))


def summary_lines(result: IngestResult) -> list[str]:
    lines = [f"ingest: read {result.read}, kept {result.kept}, rejected {sum(result.rejected.values())}"]
    lines += [f"  rejected, {reason}: {n}" for reason, n in result.rejected.most_common()]
    if result.resumed_chunks:
        lines.append(f"  resumed: {result.resumed_chunks} shard(s) already complete were kept")
    lines.append(f"  shards in {result.out}, content hash {result.content_hash[:16]}")
    return lines
