"""benchmarks/gpu_sweep.py: the examples a device call carries come back as they were (lossless packing), each
variant's rows are the ones it names, and the rebuilt folders verify as any QA folder."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from specllm.shards import (
    arrow_to_vectors,
    read_table,
    seal_shards,
    vectors_to_arrow,
    verified_shard_paths,
    write_table,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
gpu_sweep = pytest.importorskip("gpu_sweep")


def _qa(folder: Path, flux: np.ndarray) -> Path:
    n = len(flux)
    split = ["train", "train", "test", "synthetic", "synthetic", "synthetic"][:n]
    teff = [5000.0, 6000.0, 5500.0, 9000.0, 6500.0, 12000.0][:n]
    table = pa.table(
        {
            "spec_id": [f"s{i}" for i in range(n)],
            "split": split,
            "teff": pa.array(teff, pa.float32()),
            "answer": [f"a{i}" for i in range(n)],
            "flux": vectors_to_arrow(flux.astype(np.float32), pa.float32()),
            "mask": vectors_to_arrow(np.arange(flux.size).reshape(flux.shape) % 3 == 0, pa.bool_()),
        }
    )
    folder.mkdir(parents=True)
    write_table(folder / "part-00000.parquet", table)
    seal_shards(folder, {"kind": "qa", "format": "patch", "labels": ["teff"]})
    return folder


def test_examples_come_back_as_they_were_without_the_test_split(tmp_path):
    rng = np.random.default_rng(0)
    flux = np.round(rng.uniform(-0.8, 1.1, size=(6, 4901)), 3)
    source = _qa(tmp_path / "qa", flux)
    packed = tmp_path / "packed"
    packed.mkdir()
    info = gpu_sweep.pack_examples(str(source), packed)
    assert info["rows"] == 5 and info["splits"] == {"synthetic": 3, "train": 2}
    table, fields = gpu_sweep.unpack_examples(packed)
    original = read_table(verified_shard_paths(source))
    kept = original.take([0, 1, 3, 4, 5])
    assert table.schema.equals(original.schema) and fields["format"] == "patch"
    assert np.array_equal(arrow_to_vectors(table["flux"]), arrow_to_vectors(kept["flux"]))
    assert np.array_equal(arrow_to_vectors(table["mask"], bool), arrow_to_vectors(kept["mask"], bool))
    for name in ("spec_id", "split", "teff", "answer"):
        assert table[name].equals(kept[name])


def test_refuses_flux_it_cannot_pack_losslessly(tmp_path):
    source = _qa(tmp_path / "qa", np.full((6, 4901), 0.12345))
    with pytest.raises(SystemExit, match="losslessly"):
        gpu_sweep.pack_examples(str(source), tmp_path)


def test_each_variant_gets_the_rows_it_names(tmp_path):
    source = _qa(tmp_path / "qa", np.zeros((6, 4901)))
    table = read_table(verified_shard_paths(source))
    ids = lambda data: gpu_sweep.select(table, data)["spec_id"].to_pylist()  # noqa: E731
    assert ids("real") == ["s0", "s1"]  # never the test split
    assert ids("mp") == ["s0", "s1", "s4"]  # + synthetic below 7,000 K
    assert ids("mp+hot1") == ["s0", "s1", "s3", "s4"]  # + the first synthetic hot star
    assert ids("a") == ["s0", "s1", "s3", "s4", "s5"]
    with pytest.raises(SystemExit):
        gpu_sweep.select(table, "everything")
    gpu_sweep.write_qa(gpu_sweep.select(table, "mp"), {"kind": "qa"}, tmp_path / "mp")
    assert read_table(verified_shard_paths(tmp_path / "mp")).num_rows == 3
