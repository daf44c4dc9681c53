"""One writer per output (issue 24, item 5): `shards.output_lock`, held by every producing command for its whole run.

Two real processes write the same output at once: the second is refused in one line (exit 3) and the first
finishes with its own complete output; a killed holder leaves no stale lock; staging folders of killed runs are
removed by the next run of the same output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from specllm.errors import OutputError
from specllm.shards import exclusive_output, lock_path, output_lock, staging_dir

HOLD = """
import sys, time
from specllm.shards import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(out, seconds: float = 60.0) -> subprocess.Popen:
    """A separate process that holds `out`'s lock (returns once it does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specllm", *map(str, args)], capture_output=True, text=True, **kw)


def test_second_holder_is_refused_in_one_line_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "o.csv"
    proc = _holder(out)
    try:
        assert os.path.exists(lock_path(out)) and Path(lock_path(out)).read_text().strip() == str(proc.pid)
        with pytest.raises(OutputError) as exc:
            with output_lock(out):
                pass
        msg = str(exc.value)
        assert "\n" not in msg and f"pid {proc.pid}" in msg and "another specllm run" in msg
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with output_lock(out) as path:  # the kernel released the dead process's lock: no stale lock
        assert path == lock_path(out)
    assert not os.path.exists(lock_path(out))  # removed when the run ends


def test_lock_of_a_folder_output_sits_beside_it(tmp_path):
    assert lock_path(tmp_path / "shards") == str(tmp_path / "shards.lock")
    assert lock_path(str(tmp_path / "shards") + "/") == str(tmp_path / "shards.lock")


def test_exclusive_output_reads_the_output_argument(tmp_path):
    seen = []

    @exclusive_output("out")
    def produce(inputs, out, flag=False):
        seen.append(os.path.exists(lock_path(out)))
        return out

    assert produce([], tmp_path / "x") == tmp_path / "x" and seen == [True]
    assert produce([], out=tmp_path / "y") == tmp_path / "y"
    proc = _holder(tmp_path / "x")
    try:
        with pytest.raises(OutputError):
            produce([], tmp_path / "x")
    finally:
        proc.kill()
        proc.wait()


def test_staging_folders_of_killed_runs_of_the_same_output_are_removed(tmp_path):
    stale = Path(staging_dir(tmp_path / "xm", "crossmatch"))
    other = Path(staging_dir(tmp_path / "other", "crossmatch"))  # another output's: left alone
    (stale / "part-00000.parquet").write_bytes(b"half")
    fresh = Path(staging_dir(tmp_path / "xm", "crossmatch"))
    assert fresh.is_dir() and not stale.exists() and other.is_dir()
    assert fresh.name.startswith(".xm.crossmatch-")


def test_a_second_ingest_into_the_same_folder_is_refused(tmp_path, spectrum_file):
    spectrum_file("coadd")
    out = tmp_path / "shards"
    proc = _holder(out)
    try:
        result = cli("ingest", tmp_path, "--out", out, timeout=300)
    finally:
        proc.kill()
        proc.wait()
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "another specllm run" in lines[0] and "Traceback" not in result.stderr
    assert not out.exists()  # nothing written by the refused run


def test_two_infer_runs_on_one_output_the_second_refused_the_first_complete(tmp_path, tiny_run, spectrum_file):
    """The issue's case: two `infer -o o.csv` runs with different inputs at once (every format takes the same lock
    before its RowWriter opens). The first reads its paths from a named pipe that stays open, so that it is mid-run
    when the second starts."""
    ext = ".csv"
    first = [str(spectrum_file("coadd")) for _ in range(3)]
    second = [str(spectrum_file("coadd")) for _ in range(2)]
    out = tmp_path / f"o{ext}"
    pipe = tmp_path / "paths.fifo"
    os.mkfifo(pipe)
    cmd = [sys.executable, "-m", "specllm", "infer", "--model", str(tiny_run), "-q", "-o", str(out)]
    proc = subprocess.Popen([*cmd, "--from-file", str(pipe)], stderr=subprocess.PIPE, text=True)
    release = threading.Event()

    def feed():
        with open(pipe, "w") as fh:
            fh.write("\n".join(first[:1]) + "\n")
            fh.flush()
            release.wait(timeout=300)
            fh.write("\n".join(first[1:]) + "\n")

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        deadline = time.time() + 300
        while not os.path.exists(lock_path(out)) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert os.path.exists(lock_path(out))
        refused = cli("infer", *second, "--model", tiny_run, "-q", "-o", out, timeout=300)
    finally:
        release.set()
        feeder.join()
        _, err = proc.communicate(timeout=300)
    assert refused.returncode == 3, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and f"pid {proc.pid}" in refused.stderr
    assert proc.returncode == 0, err
    from specllm.outputs import read_rows

    assert [r["file"] for r in read_rows(str(out))] == first  # the first run's rows, all of them, nothing else
    assert not os.path.exists(lock_path(out))
