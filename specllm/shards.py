"""Parquet shards: the schema every stage passes on, atomic writes, and streaming reads.

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

import glob
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import SpecllmError

COMPRESSION = "zstd"
MANIFEST = "manifest.json"


def _unique_name(directory: str | os.PathLike, prefix: str, suffix: str, create) -> str:
    for _ in range(1000):
        name = os.path.join(directory, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            create(name)
        except FileExistsError:
            continue
        return name
    raise FileExistsError(f"{directory}: no unique temporary name")


def temp_file(directory: str | os.PathLike, prefix: str = ".", suffix: str = ".tmp") -> str:
    """A new empty file in `directory`, created with the permissions the umask allows (0666 & ~umask), where
    `tempfile.mkstemp` would make it 0600: files renamed into place from it stay readable to collaborators."""
    return _unique_name(
        directory, prefix, suffix, lambda n: os.close(os.open(n, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    )


def temp_dir(directory: str | os.PathLike, prefix: str = ".") -> str:
    """A new directory in `directory`, 0777 & ~umask (`tempfile.mkdtemp` makes it 0700)."""
    return _unique_name(directory, prefix, "", lambda n: os.mkdir(n, 0o777))


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc/self/status)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def allow_umask(path: str | os.PathLike) -> None:
    """Give a file the permissions the umask allows (0666 & ~umask): for files a library created itself with
    tighter ones (safetensors writes 0600)."""
    os.chmod(path, 0o666 & ~umask())


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call `write(tmp_path)`, then rename the temporary file onto `path` (same directory, so rename is atomic).
    The file ends with the permissions the umask allows, even if `write` replaced the temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(path.parent, prefix=f".{path.name}.")
    try:
        write(tmp)
        allow_umask(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_table(path: str | os.PathLike, table: pa.Table) -> None:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression=COMPRESSION))


def remove_stale_temporaries(directory: str | os.PathLike) -> None:
    for tmp in glob.glob(os.path.join(directory, ".*.tmp")):
        os.unlink(tmp)


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
    """The Parquet shards of a directory (its manifest's order where present), or a single Parquet file."""
    source = str(source)
    if os.path.isfile(source):
        return [source]
    if not os.path.isdir(source):
        raise SpecllmError(f"{source}: no such shard directory or Parquet file")
    manifest = os.path.join(source, MANIFEST)
    if os.path.exists(manifest):
        with open(manifest) as fh:
            names = json.load(fh).get("shards", [])
        paths = [os.path.join(source, n) for n in names]
    else:
        paths = sorted(glob.glob(os.path.join(source, "part-*.parquet")))
    if not paths:
        raise SpecllmError(f"{source}: holds no Parquet shards")
    return paths


def read_manifest(source: str | os.PathLike) -> dict | None:
    path = os.path.join(str(source), MANIFEST)
    if os.path.isdir(str(source)) and os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    return None


def iter_batches(
    source: str | os.PathLike, columns: list[str] | None = None, batch_size: int = 256
) -> Iterator[pa.RecordBatch]:
    """Stream record batches from every shard of `source` (memory bounded by `batch_size`)."""
    for path in shard_paths(source):
        pf = pq.ParquetFile(path)
        if columns is not None:
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise SpecllmError(f"{path}: missing column(s) {', '.join(missing)}")
        yield from pf.iter_batches(batch_size=batch_size, columns=columns)


def read_table(source: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    tables = [pq.read_table(p, columns=columns) for p in shard_paths(source)]
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
