"""Parquet shards: the schema every stage passes on, atomic writes (`specllm.files`), and streaming reads.

Spectrum shards (written by `ingest`, extended by `crossmatch`) hold one row per spectrum:

| column | type | meaning |
|---|---|---|
| spec_id | string | obsid as text, or the file stem where the file has no obsid (DR1) |
| obsid | int64, nullable | LAMOST observation id |
| file | string | the source file as given |
| data_release, layout | string | e.g. `LAMOST DR10`, `lamost-coadd` |
| ra, dec, z | float64, nullable | position (deg) and pipeline redshift |
| objclass, subclass, class | string, nullable | LAMOST CLASS, SUBCLASS, and the subclass reduced to A/F/G/K/M |
| snru..snrz | float32, nullable | signal-to-noise per band |
| teff, logg, feh | float32, nullable | labels (LAMOST pipeline in stage 1) |
| ...further label columns | as in the catalogue | every other catalogue column is kept |
| split | string | `train` or `test` (hash of spec_id, stable across reruns) |
| coverage | float32 | fraction of the grid that is observed flux |
| flux | fixed_size_list<float32>[grid size] | normalised, resampled, rounded flux |
| mask | fixed_size_list<bool>[grid size] | True where the value is filled (gap, edge), not observed |
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import OutputError, SpecllmError, one_line
from .files import atomic_write, atomic_write_json, file_sha256, temp_dir

COMPRESSION = "zstd"
MANIFEST = "manifest.json"


def write_table(path: str | os.PathLike, table: pa.Table) -> str:
    """Write a zstd Parquet file atomically; returns the SHA-256 of its bytes (for the manifest's `shard_sha256`)."""
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression=COMPRESSION), digest=True)


# ---------------------------------------------------------------- one writer per output


def lock_path(out: str | os.PathLike) -> str:
    """The lock file of an output file or folder: `<out>.lock` beside it (present only while a run holds it)."""
    return os.path.abspath(str(out)).rstrip(os.sep) + ".lock"


@contextlib.contextmanager
def output_lock(out: str | os.PathLike | None) -> Iterator[str | None]:
    """Hold an exclusive advisory lock (`fcntl.flock`) on `out`'s lock file for the whole run: a second run writing
    the same output, from this machine or another that shares the file system's locks, is refused in one
    OutputError line instead of both runs writing (and removing) each other's temporaries. The lock goes with the
    process (a killed run leaves no stale lock: the next run takes it); the file is removed when the run ends.
    None (stdout) locks nothing."""
    if out is None:
        yield None
        return
    import fcntl

    path = lock_path(out)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise OutputError(
                    f"{one_line(out)}: another specllm run{who} is writing this output (lock {one_line(path)}); "
                    "wait for it to finish or choose another output"
                ) from None
            try:  # the run that held it may have removed the file between our open and our lock: take the new one
                current = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        with contextlib.suppress(OSError):  # the pid is for the refusal's message only (a full disk: none)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:  # no lock file can be made where the output goes (not a folder, read-only, ...): nor can the
        path = None  # output; the command's own check (`check_output`) says so in its one line
    if path is None:
        yield None
        return
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def exclusive_output(where="out"):
    """Decorator: the function holds `output_lock` on its output while it runs; `where` names the argument that
    is the output path, or is a function of the arguments (a dict) that returns it (None: nothing to lock). Every
    producing command's library function carries it (ingest, crossmatch, serialize, train, benchmark,
    compare-external); `infer` takes the lock itself, on the output of its rank."""
    import functools
    import inspect

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            out = bound.arguments[where] if isinstance(where, str) else where(bound.arguments)
            with output_lock(out):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def remove_stale_temporaries(directory: str | os.PathLike) -> None:
    for tmp in glob.glob(os.path.join(directory, ".*.tmp")):
        os.unlink(tmp)


def check_output(path: str | os.PathLike, need_bytes: int = 0, is_file: bool = False) -> None:
    """Before any work: `path` (an output folder, or a file with `is_file`) can be created and written, and its
    disk has about `need_bytes` free. The test writes and removes a probe file in the folder that will hold the
    output (or its nearest existing parent), so a read-only mount, a missing permission or a full disk is one
    OutputError line (exit status 3) before anything was read or written."""
    path = os.path.abspath(str(path))
    folder = os.path.dirname(path) if is_file else path
    if is_file and os.path.isdir(path):
        raise OutputError(f"{one_line(path)}: is a directory; give a file name")
    if not is_file and os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{one_line(path)}: exists and is not a directory")
    existing = folder
    while not os.path.isdir(existing):
        if os.path.lexists(existing):
            raise OutputError(f"{one_line(path)}: cannot be created, {one_line(existing)} is not a directory")
        existing = os.path.dirname(existing)
    try:
        fd, probe = tempfile.mkstemp(prefix=".specllm-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"{one_line(path)}: cannot write in {one_line(existing)} ({exc.strerror or exc}); nothing was written"
        ) from None
    free = shutil.disk_usage(existing).free
    if need_bytes and free < need_bytes:
        raise OutputError(
            f"{one_line(path)}: this run needs about {_megabytes(need_bytes)} and its disk has {_megabytes(free)} "
            "free; free some space or choose another place; nothing was written"
        )


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _canonical_type(t: pa.DataType) -> pa.DataType:
    """List types with their child field named `item`: Parquet round trips rename it `element`."""
    if pa.types.is_fixed_size_list(t):
        return pa.list_(pa.field("item", _canonical_type(t.value_type), t.value_field.nullable), t.list_size)
    if pa.types.is_list(t):
        return pa.list_(pa.field("item", _canonical_type(t.value_type), t.value_field.nullable))
    return t


def table_digest(table: pa.Table) -> str:
    """A hash of a table's content (schema and values), independent of how the Parquet file was encoded: a table
    read back from its shard hashes as the one that was written."""
    schema = pa.schema([pa.field(f.name, _canonical_type(f.type), f.nullable) for f in table.schema])  # no metadata
    table = table.cast(schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def vector_type(value_type: pa.DataType, size: int) -> pa.DataType:
    return pa.list_(value_type, size)


def vectors_to_arrow(rows: np.ndarray, value_type: pa.DataType) -> pa.FixedSizeListArray:
    rows = np.ascontiguousarray(rows)
    n, size = rows.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), type=value_type), size)


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array, dtype=np.float32) -> np.ndarray:
    """A fixed-size-list column as a 2-D numpy array (no copy per row)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    size = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=dtype).reshape(-1, size)


def shard_paths(source: str | os.PathLike) -> list[str]:
    """The Parquet shards of a directory (its manifest's order where present), or a single Parquet file, WITHOUT any
    check (`--no-verify`); consumers call `verified_shard_paths`."""
    source = str(source)
    if os.path.isfile(source):
        return [source]
    if not os.path.isdir(source):
        raise SpecllmError(f"{one_line(source)}: no such shard directory or Parquet file")
    manifest = _load_manifest(source)
    if manifest is not None and isinstance(manifest.get("shards"), list):
        paths = [os.path.join(source, str(n)) for n in manifest["shards"]]
    else:
        paths = sorted(glob.glob(os.path.join(source, "part-*.parquet")))
    if not paths:
        raise SpecllmError(f"{one_line(source)}: holds no Parquet shards")
    return paths


# ---------------------------------------------------------------- integrity between stages
#
# Every producer (ingest, crossmatch, serialize) removes its folder's manifest.json before it writes a shard and
# writes it again, last, when the run is complete: a folder without one is unfinished. The manifest lists the shards
# (`shards`) and the SHA-256 of each shard file's bytes (`shard_sha256`, computed as the file is written). Every
# consumer (serialize, crossmatch, train, infer on shards, benchmark) reads its input through
# `verified_shard_paths`, which refuses a folder that is unfinished, incomplete or changed since it was written.

SHARD_HASHES = "shard_sha256"
SHARD_GLOB = "part-*.parquet"


def integrity_fields(directory: str | os.PathLike, names: list[str], hashes: dict[str, str] | None = None) -> dict:
    """The manifest's integrity fields for the shards `names` of `directory`: `shards` (in order) and
    `shard_sha256` (name -> SHA-256 of the file's bytes; taken from `hashes` where known, else read from disk)."""
    hashes = hashes or {}
    return {
        "shards": list(names),
        SHARD_HASHES: {n: hashes.get(n) or file_sha256(os.path.join(directory, n)) for n in names},
    }


def shards_sha256(manifest: dict | None) -> str | None:
    """What a consumer records of the shard folder it read: the SHA-256 of the shards' names and SHA-256s, in order,
    as the manifest lists them -- the hashes `verified_shard_paths` checked against the bytes, so the record follows
    the data actually read. (A manifest's `content_hash` is the producer's claim about its tables; a shard edited
    and re-sealed keeps the old one, so consumers no longer copy it.) None without a manifest or its hashes."""
    if not manifest or not isinstance(manifest.get(SHARD_HASHES), dict) or not isinstance(manifest.get("shards"), list):
        return None
    listed = [[str(n), str(manifest[SHARD_HASHES].get(n))] for n in manifest["shards"]]
    return hashlib.sha256(json.dumps(listed).encode()).hexdigest()


def seal_shards(directory: str | os.PathLike, fields: dict | None = None) -> dict:
    """Write (atomically) a manifest.json for shards made outside specllm's producers: every part-*.parquet of
    `directory`, in name order, with its SHA-256, merged with `fields` (e.g. kind, grid). Returns the manifest."""
    directory = str(directory)
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(directory, SHARD_GLOB)))
    manifest = {"kind": "spectra", **(fields or {}), **integrity_fields(directory, names)}
    atomic_write_json(os.path.join(directory, MANIFEST), manifest)
    return manifest


def begin_output(directory: str | os.PathLike) -> None:
    """Mark `directory` unfinished (its manifest removed) before a producer writes a shard into it."""
    path = os.path.join(str(directory), MANIFEST)
    if os.path.lexists(path):
        os.unlink(path)


def staging_dir(out: str | os.PathLike, name: str) -> str:
    """A new hidden staging folder `.<out's name>.<name>-XXXX` beside `out`, after removing those that killed runs
    of the same stage left for the same `out` (the caller holds `out`'s lock, `exclusive_output`, so none of them
    belongs to a live run)."""
    out = os.path.abspath(str(out)).rstrip(os.sep)
    parent, base = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    prefix = f".{base}.{name}-"
    for stale in glob.glob(os.path.join(glob.escape(parent), glob.escape(prefix) + "*")):
        if os.path.isdir(stale) and not os.path.islink(stale):
            shutil.rmtree(stale, ignore_errors=True)
    return temp_dir(parent, prefix=prefix)


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, name: str) -> Iterator[str]:
    """A hidden folder beside `out` where a producer writes its run (removed whatever happens); `publish` moves it
    into `out` when complete, so a failed or refused run leaves `out` as it was."""
    staging = staging_dir(out, name)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: str, out: str | os.PathLike, manifest: dict) -> None:
    """Move every file of `staging` into `out`, replacing an earlier output's shards and manifest (removed first),
    and write `manifest` last."""
    out = str(out)
    os.makedirs(out, exist_ok=True)
    begin_output(out)
    for stale in glob.glob(os.path.join(out, SHARD_GLOB)):
        os.unlink(stale)
    for name in sorted(os.listdir(staging)):
        os.replace(os.path.join(staging, name), os.path.join(out, name))
    atomic_write_json(os.path.join(out, MANIFEST), manifest)


def _producer(directory: str, manifest: dict | None) -> str:
    """Which command wrote (or was writing) a shard folder, for the hint to rerun it."""
    if manifest is not None:
        if manifest.get("kind") == "qa":
            return "specllm serialize"
        return "specllm crossmatch" if "crossmatch" in manifest else "specllm ingest"
    if os.path.exists(os.path.join(directory, "run.json")) or glob.glob(os.path.join(directory, "part-*.json")):
        return "specllm ingest"
    if os.path.exists(os.path.join(directory, "crossmatch.json")):
        return "specllm crossmatch"
    return "the stage that wrote it (ingest, crossmatch or serialize)"


def _hint(directory: str, manifest: dict | None) -> str:
    producer = _producer(directory, manifest)
    resumes = " (it resumes)" if producer == "specllm ingest" else ""
    return f"rerun {producer} with the same options{resumes}, or pass --no-verify to read it as it is"


def _load_manifest(directory: str) -> dict | None:
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        raise SpecllmError(f"{one_line(path)}: unreadable ({one_line(exc)})") from None
    if not isinstance(manifest, dict):
        raise SpecllmError(f"{one_line(path)}: not a specllm manifest (a JSON object is expected)")
    return manifest


def verified_shard_paths(source: str | os.PathLike, verify: bool = True) -> list[str]:
    """The shards of `source`, checked against its manifest.json: the manifest is present (the producer finished),
    every shard it lists exists and no other part-*.parquet lies beside them, and each shard's SHA-256 equals the
    one recorded when it was written. Any failure is one SpecllmError line naming the folder or file, what is
    wrong and the producer to rerun. A single .parquet file is verified against its folder's manifest, which
    must list it. `verify=False` (`--no-verify`) lists the shards without any check."""
    if not verify:
        return shard_paths(source)
    source = str(source)
    if os.path.isfile(source):
        folder, name = os.path.split(os.path.abspath(source))
        manifest = _load_manifest(folder)
        if manifest is None or name not in (manifest.get("shards") or []):
            why = (
                "its folder has no manifest.json" if manifest is None else "its folder's manifest.json does not list it"
            )
            raise SpecllmError(
                f"{one_line(source)}: a single Parquet file is verified against its folder's manifest, and {why}; "
                "give the shard folder, or --no-verify to read the file as it is"
            )
        _check_hash(source, name, manifest, folder)
        return [source]
    if not os.path.isdir(source):
        raise SpecllmError(f"{one_line(source)}: no such shard directory or Parquet file")
    manifest = _load_manifest(source)
    where = one_line(source)
    if manifest is None:
        parts = len(glob.glob(os.path.join(source, SHARD_GLOB)))
        what = f"{parts} shard(s) but no {MANIFEST}" if parts else f"no {MANIFEST} and no shard"
        raise SpecllmError(f"{where}: unfinished or not a shard folder ({what}); {_hint(source, None)}")
    names = manifest.get("shards")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SpecllmError(f"{where}: {MANIFEST} has no list of shards; {_hint(source, manifest)}")
    if not names:
        raise SpecllmError(f"{where}: holds no Parquet shards (its {MANIFEST} lists none)")
    missing = [n for n in names if not os.path.isfile(os.path.join(source, n))]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise SpecllmError(
            f"{where}: {MANIFEST} lists {one_line(missing[0])}{more}, which is missing; {_hint(source, manifest)}"
        )
    listed = set(names)
    extra = sorted(os.path.basename(p) for p in glob.glob(os.path.join(source, SHARD_GLOB)))
    extra = [n for n in extra if n not in listed]
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise SpecllmError(
            f"{where}: {one_line(extra[0])}{more} is not listed in {MANIFEST} (left by another run?); "
            f"{_hint(source, manifest)}"
        )
    for name in names:
        _check_hash(os.path.join(source, name), name, manifest, source)
    return [os.path.join(source, n) for n in names]


def _check_hash(path: str, name: str, manifest: dict, folder: str) -> None:
    hashes = manifest.get(SHARD_HASHES)
    if not isinstance(hashes, dict) or not isinstance(hashes.get(name), str):
        raise SpecllmError(
            f"{one_line(folder)}: {MANIFEST} records no SHA-256 for {one_line(name)} (written by an older specllm?); "
            f"{_hint(folder, manifest)}"
        )
    if file_sha256(path) != hashes[name]:
        raise SpecllmError(
            f"{one_line(path)}: content differs from the SHA-256 in {MANIFEST} (changed or damaged since it was "
            f"written); {_hint(folder, manifest)}"
        )


def read_manifest(source: str | os.PathLike) -> dict | None:
    """The manifest of a shard folder (None where it has none); an unreadable one is one SpecllmError line."""
    return _load_manifest(str(source)) if os.path.isdir(str(source)) else None


def parquet_file(path: str | os.PathLike) -> pq.ParquetFile:
    """Open a Parquet shard; a file that is not one (corrupt, truncated, another format) is one SpecllmError line."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise SpecllmError(f"{one_line(path)}: not a readable Parquet file ({one_line(_first_line(exc))})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def iter_batches(
    source: str | os.PathLike | list[str], columns: list[str] | None = None, batch_size: int = 256
) -> Iterator[pa.RecordBatch]:
    """Stream record batches from every shard of `source` (a folder, a file, or a list of shard paths from
    `verified_shard_paths`; memory bounded by `batch_size`). A damaged shard is one SpecllmError line."""
    for path in source if isinstance(source, list) else shard_paths(source):
        pf = parquet_file(path)
        if columns is not None:
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise SpecllmError(f"{one_line(path)}: missing column(s) {', '.join(missing)}")
        try:
            yield from pf.iter_batches(batch_size=batch_size, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise SpecllmError(f"{one_line(path)}: damaged Parquet data ({one_line(_first_line(exc))})") from None


def read_table(source: str | os.PathLike | list[str], columns: list[str] | None = None) -> pa.Table:
    """Every shard of `source` (a folder, a file, or a list of verified shard paths) as one table."""
    tables = []
    for path in source if isinstance(source, list) else shard_paths(source):
        try:
            tables.append(pq.read_table(path, columns=columns))
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise SpecllmError(
                f"{one_line(path)}: not a readable Parquet file ({one_line(_first_line(exc))})"
            ) from None
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
