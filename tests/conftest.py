"""Shared fixtures. The FITS/catalogue writers live in `tests/fitsfactory.py` (in a test module:
`from .fitsfactory import make_shards`); the fixtures below wrap them.

- `shared_data`: the `../shared/data` Path (real survey files), or the test is skipped.
- `spectrum_file`: `spectrum_file("coadd" | "image" | "dr1", name=None, gz=True, **writer_kwargs) -> Path`.
- `small_shards`: a fresh shard directory of 20 ingested spectra (classes A/F/G/K/M, three layouts) in tmp_path.
- `session_shards`: the same, built once per session: read it, never write into it.
- `tiny_run`: a run directory of a tiny stage-1 patch-format model, trained for two steps once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from specllm.config import GridConfig
from specllm.train import run_train

from . import fitsfactory
from .llmfactory import tiny_llama_dir, tiny_train_options, write_qa

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "lamost").is_dir():
        pytest.skip(f"real survey data not present at {SHARED_DATA}")
    return SHARED_DATA.resolve()


@pytest.fixture
def spectrum_file(tmp_path):
    counter = iter(range(10**6))

    def write(layout: str = "coadd", name: str | None = None, gz: bool = True, **kwargs) -> Path:
        name = name or f"spec-{layout}-{next(counter)}.fits" + (".gz" if gz else "")
        return fitsfactory.write_spectrum(tmp_path / name, layout, **kwargs)

    return write


@pytest.fixture
def small_shards(tmp_path) -> Path:
    return fitsfactory.make_shards(tmp_path, n=20)


@pytest.fixture(scope="session")
def session_shards(tmp_path_factory) -> Path:
    return fitsfactory.make_shards(tmp_path_factory.mktemp("session-shards"), n=20, shard_size=8)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-run")
    tiny = tiny_llama_dir(root)
    data = write_qa(root / "qa", "patch", n=8, grid=GridConfig().size, test_every=8)
    run_train(tiny_train_options(data, root / "run", tiny))
    return root / "run"
