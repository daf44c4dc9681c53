"""Progress lines on stderr: the time left of a resumed run counts only the steps this run made."""

import itertools

import pytest

from specllm import progress


@pytest.fixture
def lines(monkeypatch):
    """The plain status lines, one per advance, on a clock that moves 1 s per reading."""
    said = []
    clock = itertools.count(0.0, 1.0)
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    monkeypatch.setattr(progress, "say", said.append)
    return said


def _elapsed_left(line):
    return float(line.split(" after ")[1].split(" s")[0]), float(line.split("about ")[1].split(" s left")[0])


def test_resumed_run_eta_uses_this_runs_rate(lines):
    with progress.progress_bar("train", total=1000, done=900) as advance:
        for _ in range(10):
            advance()
    assert lines[-1].startswith("train: 910/1000 after ")
    elapsed, left = _elapsed_left(lines[-1])
    # 10 steps in `elapsed` s, 90 to go: 9 x elapsed (a rate over all 910 steps would say about elapsed / 10)
    assert left == round(9 * elapsed)


def test_fresh_run_eta(lines):
    with progress.progress_bar("ingest", total=20) as advance:
        for _ in range(10):
            advance()
    assert lines[-1].startswith("ingest: 10/20 after ")
    elapsed, left = _elapsed_left(lines[-1])
    assert left == round(elapsed)  # 10 done, 10 to go at the same rate
