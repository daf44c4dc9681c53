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
    from specllm.labelling import predict_table

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


# ---------------------------------------------------------------- outputs, streaming, resume, shell conventions (issue 16)


def invoke(*args, input: str | None = None):
    from typer.testing import CliRunner

    from specllm.cli import app

    return CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1"}).invoke(app, [str(a) for a in args], input=input)


def test_outputs_by_extension_carry_units_metadata_and_header_positions(tmp_path, tiny_run):
    import warnings

    from astropy.io import fits
    from astropy.table import Table

    from specllm.files import file_sha256
    from specllm.outputs import FORMATS

    files = real_files(3)
    headers = []
    for f in files:
        with fits.open(f) as hdul:
            headers.append((float(hdul[0].header["RA"]), float(hdul[0].header["DEC"])))
    sha = file_sha256(Path(tiny_run) / "model" / "weights.safetensors")
    for ext in sorted(FORMATS):
        out = tmp_path / f"p{ext}"
        result = invoke("infer", *files, "--model", tiny_run, "-o", out, "-q")
        assert result.exit_code == 0, result.output
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = Table.read(out, format="votable") if ext == ".vot" else Table.read(out)
        assert len(t) == 3 and list(t["status"]) == ["ok"] * 3
        for (ra, dec), r_ra, r_dec in zip(headers, t["ra"], t["dec"]):
            assert abs(r_ra - ra) < 1e-6 and abs(r_dec - dec) < 1e-6
        if ext != ".csv":
            assert str(t["teff"].unit) == "K" and str(t["ra"].unit) == "deg"
            text = " ".join(f"{k}={v}" for k, v in t.meta.items())
            assert sha in "".join(text.split()) and "0.1.0" in text


def test_unknown_extension_is_refused_before_any_work(tmp_path):
    result = invoke("infer", "nothing-read.fits", "--model", tmp_path / "no-model", "-o", tmp_path / "x.txt")
    assert result.exit_code == 2
    assert "unknown output format '.txt'" in result.output and "no-model" not in result.output


def test_paths_from_stdin_and_from_a_file(tmp_path, tiny_run):
    files = real_files(3)
    direct = invoke("infer", *files, "--model", tiny_run, "-q")
    piped = invoke("infer", "-", "--model", tiny_run, "-q", input="\n".join(files) + "\n")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(files[1:]) + "\n\n")
    listed = invoke("infer", files[0], "--from-file", listing, "--model", tiny_run, "-q")
    assert direct.exit_code == piped.exit_code == listed.exit_code == 0, piped.output
    assert direct.stdout == piped.stdout == listed.stdout
    assert len(direct.stdout.splitlines()) == 4


def test_version_names_the_libraries_and_the_model_hash():
    result = invoke("--version")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("specllm ") and lines[1].startswith("torch ") and lines[2].startswith("transformers ")
    assert "weights sha256" in lines[3]


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_run):
    """`infer -o out.parquet` killed with SIGKILL part-way, rerun with --resume: every input once, the same rows.
    The killed run reads its paths from a named pipe fed a few at a time, so that the kill lands mid-run."""
    import os
    import signal
    import threading
    import time

    from specllm.outputs import partial_path, read_partial_batches

    files = real_files(30)
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(files) + "\n")
    pipe = tmp_path / "paths.fifo"
    os.mkfifo(pipe)
    cut, full = tmp_path / "cut.parquet", tmp_path / "full.parquet"
    cmd = [sys.executable, "-m", "specllm", "infer", "--from-file", str(pipe), "--model", str(tiny_run), "-q"]
    proc = subprocess.Popen([*cmd, "--batch-size", "2", "-o", str(cut)], stderr=subprocess.DEVNULL)
    fed = threading.Event()

    def feed():  # 16 paths (two chunks of 8), then the pipe stays open and silent until the kill
        with open(pipe, "w") as fh:
            fh.write("\n".join(files[:16]) + "\n")
            fh.flush()
            fed.wait(timeout=600)

    feeder = threading.Thread(target=feed)
    feeder.start()
    part, kept, deadline = partial_path(str(cut)), 0, time.time() + 300
    while kept == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
        if os.path.isdir(part):
            kept = read_partial_batches(part).num_rows
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fed.set()
    feeder.join()
    kept = read_partial_batches(part).num_rows
    assert 0 < kept <= 16 and not cut.exists()
    args = ["infer", "--from-file", listing, "--model", tiny_run, "-q", "--batch-size", "2"]
    assert invoke(*args, "-o", full).exit_code == 0  # the uninterrupted run (in-process)
    streams = {p.name: p.read_bytes() for p in Path(part).iterdir()}
    refused = invoke(*args, "-o", cut)  # the same command without --resume: refused, the partial intact
    assert refused.exit_code == 2 and "--resume" in refused.output and "--overwrite" in refused.output
    other = invoke(*args, "-o", cut, "--resume", "--snr-min-r", "50")  # rows made under other options
    assert other.exit_code == 2 and "--snr-min-r 2.0, this run has --snr-min-r 50.0" in other.output, other.output
    assert {p.name: p.read_bytes() for p in Path(part).iterdir()} == streams
    again = invoke(*args, "-o", cut, "--resume")
    assert again.exit_code == 0, again.output
    a, b = pq.read_table(full).to_pylist(), pq.read_table(cut).to_pylist()
    assert sorted(r["file"] for r in b) == sorted(files)
    assert a == b


def test_interrupt_message_tells_what_was_kept(tmp_path, tiny_run, monkeypatch):
    from specllm import infer as infer_mod

    calls = {"n": 0}
    real = infer_mod.label_rows

    def stop_after_two(*args, **kwargs):
        for pair in real(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > 2:
                raise KeyboardInterrupt
            yield pair

    monkeypatch.setattr(infer_mod, "label_rows", stop_after_two)
    out = tmp_path / "i.csv"
    result = invoke("infer", *real_files(4), "--model", tiny_run, "-o", out, "-q")
    assert result.exit_code == 130
    assert "2 row(s) kept in" in result.output and "--resume" in result.output
    assert len((tmp_path / ".i.csv.partial").read_text().splitlines()) == 3
    monkeypatch.setattr(infer_mod, "label_rows", real)
    result = invoke("infer", *real_files(4), "--model", tiny_run, "-o", out, "--resume")
    assert result.exit_code == 0 and "2 kept from before" in result.output
    assert len(out.read_text().splitlines()) == 5


def test_interrupt_while_the_model_loads_claims_nothing_kept(tmp_path, tiny_run, monkeypatch):
    from specllm import infer as infer_mod

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(infer_mod, "load_for_inference", stop)
    result = invoke("infer", *real_files(1), "--model", tiny_run, "-o", tmp_path / "m.csv", "-q")
    assert result.exit_code == 130
    assert "while the model loaded, before any row was written" in result.output
    assert "kept" not in result.output and not (tmp_path / ".m.csv.partial").exists()


def test_quiet_never_hides_an_error(tmp_path, tiny_run):
    """-q silences progress and summaries; an unwritable --out is still one line on stderr, exit 3."""
    proc = run_cli("infer", str(tmp_path), "-o", "/proc/x.csv", "-q", "--model", str(tiny_run))
    assert proc.returncode == 3 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "/proc/x.csv" in proc.stderr, proc.stderr
