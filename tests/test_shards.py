"""Shard helpers (specllm.shards): content digests, vector columns, streaming reads, shards written as the umask
allows (the atomic-write helpers themselves: tests/test_files.py)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from specllm.errors import SpecllmError
from specllm.files import atomic_write_json, atomic_write_text, temp_dir
from specllm.shards import (
    MANIFEST,
    arrow_to_vectors,
    iter_batches,
    read_manifest,
    read_table,
    remove_stale_temporaries,
    shard_paths,
    table_digest,
    vector_type,
    vectors_to_arrow,
    write_table,
)


def _table(n=5, size=7, start=0):
    flux = np.arange(start * size, (start + n) * size, dtype=np.float32).reshape(n, size) / 10
    return pa.table(
        {
            "spec_id": [str(i) for i in range(start, start + n)],
            "flux": vectors_to_arrow(flux, pa.float32()),
            "mask": vectors_to_arrow(flux > 1, pa.bool_()),
        }
    )


def test_stale_temporaries_removed(tmp_path):
    (tmp_path / ".part-00001.parquet.abc.tmp").write_bytes(b"half")
    (tmp_path / "part-00000.parquet").write_bytes(b"kept")
    remove_stale_temporaries(tmp_path)
    assert os.listdir(tmp_path) == ["part-00000.parquet"]


def test_vectors_round_trip():
    rows = np.random.default_rng(0).normal(size=(4, 4901)).astype(np.float32)
    arr = vectors_to_arrow(rows, pa.float32())
    assert arr.type == vector_type(pa.float32(), 4901) and arr.type.list_size == 4901 and len(arr) == 4
    np.testing.assert_array_equal(arrow_to_vectors(arr), rows)
    chunked = pa.chunked_array([arr.slice(0, 1), arr.slice(1)])
    np.testing.assert_array_equal(arrow_to_vectors(chunked), rows)
    mask = vectors_to_arrow(rows > 0, pa.bool_())
    np.testing.assert_array_equal(arrow_to_vectors(mask, bool), rows > 0)


def test_table_digest_depends_on_content_not_encoding(tmp_path):
    table = _table()
    pq.write_table(table, tmp_path / "a.parquet", compression="zstd")
    pq.write_table(table, tmp_path / "b.parquet", compression="none", row_group_size=2)
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert table_digest(a) == table_digest(b) == table_digest(table)
    changed = _table().set_column(0, "spec_id", pa.array(["0", "1", "2", "3", "x"]))
    assert table_digest(changed) != table_digest(table)


def test_write_table_uses_zstd(tmp_path):
    write_table(tmp_path / "t.parquet", _table())
    meta = pq.ParquetFile(tmp_path / "t.parquet").metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert [n for n in os.listdir(tmp_path)] == ["t.parquet"]


def test_shard_paths_manifest_order_glob_and_errors(tmp_path):
    for k in (1, 0):
        write_table(tmp_path / f"part-{k:05d}.parquet", _table(start=5 * k))
    assert [os.path.basename(p) for p in shard_paths(tmp_path)] == ["part-00000.parquet", "part-00001.parquet"]
    atomic_write_json(tmp_path / MANIFEST, {"shards": ["part-00001.parquet"]})
    assert [os.path.basename(p) for p in shard_paths(tmp_path)] == ["part-00001.parquet"]  # the manifest decides
    assert read_manifest(tmp_path) == {"shards": ["part-00001.parquet"]}
    assert shard_paths(tmp_path / "part-00000.parquet") == [str(tmp_path / "part-00000.parquet")]
    with pytest.raises(SpecllmError, match="no such shard directory"):
        shard_paths(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecllmError, match="holds no Parquet shards"):
        shard_paths(tmp_path / "empty")
    assert read_manifest(tmp_path / "empty") is None


def test_iter_batches_and_read_table(tmp_path):
    for k in range(3):
        write_table(tmp_path / f"part-{k:05d}.parquet", _table(n=5, start=5 * k))
    batches = list(iter_batches(tmp_path, columns=["spec_id"], batch_size=2))
    assert max(b.num_rows for b in batches) == 2
    assert [i for b in batches for i in b.column(0).to_pylist()] == [str(i) for i in range(15)]
    table = read_table(tmp_path)
    assert table.num_rows == 15 and arrow_to_vectors(table.column("flux")).shape == (15, 7)
    with pytest.raises(SpecllmError, match="missing column"):
        list(iter_batches(tmp_path, columns=["spec_id", "teff"]))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        write_table(tmp_path / "b.parquet", _table())
        d = temp_dir(tmp_path, prefix=".d.")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.parquet"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name
    assert os.stat(d).st_mode & 0o777 == 0o777 & ~umask
