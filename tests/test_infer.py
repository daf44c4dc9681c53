"""`specllm infer`: CSV schema and order, stdout holds only data, bad files, shard input, rank slices, shipped model."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from specllm.config import GridConfig

from .llmfactory import write_qa

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DR10 = SHARED / "lamost" / "dr10" / "spectra"


def real_files(n: int) -> list[str]:
    if not DR10.is_dir():
        pytest.skip("../shared/data not present")
    return [str(p) for p in sorted(DR10.glob("*.fits.gz"))[:n]]


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "specllm", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def test_csv_schema_order_and_bad_files(tmp_path, tiny_run):
    files = real_files(3)
    broken = tmp_path / "broken.fits.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    missing = tmp_path / "missing.fits"
    inputs = [files[0], str(broken), files[1], str(missing), files[2]]
    proc = run_cli("infer", *inputs, "--model", str(tiny_run))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    # stdout is CSV only: every line parses into the header's columns
    assert [r["file"] for r in rows] == inputs
    header = proc.stdout.splitlines()[0].split(",")
    for col in ("file", "obsid", "class", "teff", "logg", "feh", "teff_err", "logg_err", "feh_err", "status"):
        assert col in header
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 3
    for r in ok:
        assert r["class"] in "AFGKM" and float(r["teff_err"]) > 0 and np.isfinite(float(r["teff"]))
    bad = {r["file"]: r["status"] for r in rows if r["status"] != "ok"}
    assert "unreadable" in bad[str(broken)] and "no such file" in bad[str(missing)]
    assert str(broken) in proc.stderr and "Traceback" not in proc.stderr


def test_all_failed_exits_nonzero_and_strict(tmp_path, tiny_run):
    broken = tmp_path / "x.fits"
    broken.write_text("not fits")
    proc = run_cli("infer", str(broken), "--model", str(tiny_run))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    files = real_files(1)
    assert run_cli("infer", files[0], str(broken), "--model", str(tiny_run), "--strict").returncode == 1


def test_parquet_output_and_shard_input(tmp_path, tiny_run):
    from specllm.config import IngestConfig
    from specllm.ingest import run_ingest

    files = real_files(4)
    run_ingest(files, str(tmp_path / "shards"), None, IngestConfig())
    out = tmp_path / "labels.parquet"
    proc = run_cli("infer", str(tmp_path / "shards"), "--model", str(tiny_run), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    table = pq.read_table(out)
    assert table.num_rows == 4 and set(table.column("status").to_pylist()) == {"ok"}


def test_predict_table_reads_one_split(tmp_path, tiny_run):
    from specllm.infer import predict_table

    qa = write_qa(tmp_path / "qa", "patch", n=12, grid=GridConfig().size, test_every=3)
    table = predict_table(str(tiny_run), str(qa), split="test")
    assert table["spec_id"].to_pylist() == ["s2", "s5", "s8", "s11"]
    for name in ("class", "teff", "logg", "feh", "teff_err"):
        assert table[name].null_count == 0, name
    assert len(predict_table(str(tiny_run), str(qa), split=None)) == 12


def test_rank_slices_cover_inputs_once(tmp_path, tiny_run, monkeypatch):
    files = real_files(5)
    parts = []
    for rank in range(2):
        env_cmd = [
            sys.executable,
            "-m",
            "specllm",
            "infer",
            *files,
            "--model",
            str(tiny_run),
            "--output",
            str(tmp_path / "p.csv"),
        ]
        env = dict(__import__("os").environ, RANK=str(rank), WORLD_SIZE="2")
        proc = subprocess.run(env_cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        parts.append(list(csv.DictReader(open(tmp_path / f"p.rank{rank:03d}-of-002.csv"))))
    got = [r["file"] for r in parts[0]] + [r["file"] for r in parts[1]]
    assert sorted(got) == sorted(files) and len(got) == len(files)


@pytest.mark.slow
def test_shipped_model_on_real_spectra():
    from specllm.predict import default_model_dir

    if not (default_model_dir() / "spec.json").exists():
        pytest.skip("no shipped model in this checkout")
    files = real_files(4)
    proc = run_cli("infer", *files)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert 3000 < float(r["teff"]) < 12000 and 0 < float(r["logg"]) < 6 and -3 < float(r["feh"]) < 1
