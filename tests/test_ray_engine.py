"""`--engine ray` (specllm.ray_engine): the same shards and rows as the local engine on real DR10 spectra, with a
local Ray of 2 CPUs; a model actor killed mid-run costs nothing (every input once); an interrupted ingest resumes
across engines. Skipped where Ray (the `ray` extra) is not installed."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from specllm.cli import app

ray = pytest.importorskip("ray")

N_FILES = 40  # DR10 spectra per test: both engines and the kill test stay within ~60 s on 2 cores


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting one costs ~10 s); `--engine ray` joins it instead of starting its own."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def dr10_inputs(shared_data, tmp_path_factory):
    """N_FILES real DR10 files, one of them again under another name (a duplicate obsid), and a missing file."""
    files = sorted((shared_data / "lamost" / "dr10" / "spectra").glob("*.fits.gz"))[:N_FILES]
    folder = tmp_path_factory.mktemp("dr10-subset")
    for f in files:
        os.symlink(f, folder / f.name)
    os.symlink(files[3], folder / "zz-again-3.fits.gz")
    return folder


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result


def ingest(dr10_inputs, shared_data, out, *extra):
    labels = shared_data / "lamost" / "dr10" / "labels.csv"
    result = invoke("ingest", str(dr10_inputs), "--catalog", str(labels), "-o", str(out), "--shard-size", "8", *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "manifest.json").read_text())


def test_ingest_engines_give_the_same_shards(local_ray, dr10_inputs, shared_data, tmp_path):
    local = ingest(dr10_inputs, shared_data, tmp_path / "local")
    distributed = ingest(dr10_inputs, shared_data, tmp_path / "ray", "--engine", "ray")
    assert distributed["content_hash"] == local["content_hash"]
    assert (
        distributed["counts"]
        == local["counts"]
        == {
            "read": N_FILES + 1,
            "kept": N_FILES,
            "rejected": {"duplicate obsid": 1},
        }
    )
    assert distributed["shards"] == local["shards"]
    rejects = [pq.read_table(tmp_path / d / "rejects.parquet").to_pylist() for d in ("local", "ray")]
    assert rejects[0] == rejects[1] and rejects[0][0]["file"].endswith("zz-again-3.fits.gz")

    # an interrupted local run (the last two shards' records lost) resumed by the Ray engine: the same hash
    for k in (3, 4):
        os.unlink(tmp_path / "local" / f"part-{k:05d}.json")
    os.unlink(tmp_path / "local" / "part-00004.parquet")
    os.unlink(tmp_path / "local" / "manifest.json")
    resumed = ingest(dr10_inputs, shared_data, tmp_path / "local", "--engine", "ray")
    assert resumed["content_hash"] == local["content_hash"]


def _rows(output: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(output)))


@pytest.fixture(scope="module")
def infer_inputs(dr10_inputs, tmp_path_factory):
    """The DR10 subset, a damaged file and a missing one, in that order."""
    broken = tmp_path_factory.mktemp("bad") / "broken.fits.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    return [str(dr10_inputs), str(broken), str(broken.parent / "missing.fits")]


@pytest.fixture(scope="module")
def local_rows(infer_inputs, tiny_run):
    result = CliRunner().invoke(app, ["infer", *infer_inputs, "--model", str(tiny_run), "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_infer_engines_give_the_same_rows(local_ray, infer_inputs, tiny_run, local_rows):
    result = CliRunner().invoke(
        app, ["infer", *infer_inputs, "--model", str(tiny_run), "--batch-size", "2", "--engine", "ray"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == local_rows
    rows = _rows(result.stdout)
    assert len(rows) == N_FILES + 1 + 2  # the subset with its duplicate, the two bad inputs
    assert rows[-2]["status"].startswith("unreadable") and rows[-1]["status"].startswith("unreadable")
    assert all(r["status"] == "ok" for r in rows[:-2])
    assert "broken.fits.gz: unreadable" in result.stderr and "missing.fits: unreadable" in result.stderr


def test_infer_survives_a_killed_model_actor(local_ray, infer_inputs, tiny_run, local_rows, tmp_path, monkeypatch):
    """The model actor's process exits (os._exit) on its second batch, once: Ray restarts it and retries the
    batch; the output holds every input exactly once, equal to the local engine's."""
    from specllm import ray_engine

    marker = tmp_path / "killed-pid"

    class DiesOnce(ray_engine.ActorCall):
        def __init__(self, factory, args):
            super().__init__(factory, args)
            self.batches = 0

        def __call__(self, batch):
            self.batches += 1
            if self.batches == 2 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().__call__(batch)

    monkeypatch.setattr(ray_engine, "ACTOR", DiesOnce)
    result = CliRunner().invoke(
        app, ["infer", *infer_inputs, "--model", str(tiny_run), "--batch-size", "2", "--engine", "ray"]
    )
    assert result.exit_code == 0, result.output
    assert marker.exists(), "the actor was not killed: the test tested nothing"
    import psutil

    assert not psutil.pid_exists(int(marker.read_text()))
    assert result.stdout == local_rows
    files = [r["file"] for r in _rows(result.stdout)]
    assert len(files) == len(set(files)) == N_FILES + 3


def test_ray_missing_or_misused_is_one_line(local_ray, tmp_path, tiny_run, dr10_inputs):
    result = CliRunner().invoke(
        app,
        ["infer", str(dr10_inputs), "--model", str(tiny_run), "--engine", "ray", "--actors", "2"],
    )
    assert result.exit_code == 2
    assert "leaves no CPU for reading" in result.stderr and "Traceback" not in result.output
    shutil.rmtree(tmp_path, ignore_errors=True)
