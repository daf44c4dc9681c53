"""Stage 2 end to end on the tiny model: crossmatch -> serialize --stage 2 -> train --init -> infer with [X/Fe]."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from specllm.config import CrossmatchConfig, GridConfig
from specllm.crossmatch import run_crossmatch, stage2_label_columns
from specllm.ingest import shard_schema
from specllm.serialize import run_serialize
from specllm.shards import seal_shards, vectors_to_arrow
from specllm.train import run_train

from .llmfactory import synthetic_spectra, tiny_llama_dir, tiny_train_options
from .test_surveys import allstar_table

N = 12


def spectrum_shards(path: Path) -> Path:
    """Ingest-schema shards of synthetic spectra at known positions, with stage-1 labels."""
    grid = GridConfig().size
    flux, mask, teff, logg, feh, classes = synthetic_spectra(N, grid)
    schema = shard_schema(None, grid)
    scalar = pa.schema([f for f in schema if f.name not in ("flux", "mask")])
    rows = [
        {f.name: None for f in scalar}
        | {"spec_id": f"s{i}", "obsid": 1000 + i, "file": f"s{i}.fits", "ra": 10.0 + i * 0.01, "dec": -5.0,
           "class": str(classes[i]), "teff": float(teff[i]), "logg": float(logg[i]), "feh": float(feh[i]),
           "split": "test" if i % 4 == 3 else "train", "coverage": 1.0}
        for i in range(N)
    ]  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=scalar)
    table = table.append_column(schema.field("flux"), vectors_to_arrow(flux, pa.float32()))
    table = table.append_column(schema.field("mask"), vectors_to_arrow(mask, pa.bool_()))
    path.mkdir(parents=True)
    pq.write_table(table, path / "part-00000.parquet")
    seal_shards(path)
    return path


def test_stage_two_from_crossmatch_to_infer(tmp_path):
    tiny = tiny_llama_dir(tmp_path)
    shards = spectrum_shards(tmp_path / "spectra")
    rng = np.random.default_rng(0)
    stars = [
        {"id": f"2M{i:08d}", "ra": 10.0 + i * 0.01 + 1e-4, "dec": -5.0, "fe_h": float(rng.normal(-0.2, 0.2)),
         "values": {"C": float(rng.normal(0, 0.1)), "MG": float(rng.normal(0.1, 0.1))}}
        for i in range(N)
    ]  # fmt: skip
    stars[0]["values"]["MG"] = -9999.99  # a placeholder stays missing
    allstar = tmp_path / "allStar.fits"
    allstar_table(stars).write(allstar)
    run_crossmatch(str(shards), str(tmp_path / "xm"), {"apogee": str(allstar)}, CrossmatchConfig())
    xm = pq.read_table(next((tmp_path / "xm").glob("part-*.parquet")))
    assert "apogee_c_fe" in stage2_label_columns() and xm.column("apogee_c_fe").null_count == 0
    assert xm.column("apogee_mg_fe").to_pylist()[0] is None

    run_serialize(str(tmp_path / "xm"), 1, "patch", str(tmp_path / "qa1"), count=False)
    run_serialize(str(tmp_path / "xm"), 2, "patch", str(tmp_path / "qa2"), count=False)
    run_train(tiny_train_options(tmp_path / "qa1", tmp_path / "s1", tiny))
    run_train(tiny_train_options(tmp_path / "qa2", tmp_path / "s2", tiny, stage=2, init=str(tmp_path / "s1")))

    proc = subprocess.run(
        [sys.executable, "-m", "specllm", "infer", str(shards), "--model", str(tmp_path / "s2")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == N
    for col in ("class", "teff", "logg", "feh", "c_fe", "mg_fe", "c_fe_err", "mg_fe_err"):
        assert col in rows[0], col
    assert all(r["status"] == "ok" and r["c_fe"] != "" and r["teff"] != "" for r in rows)
