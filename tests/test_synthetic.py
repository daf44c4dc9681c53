"""specllm.synthetic (issue 22): the arrays-only unpickler, the Cannon evaluation, the LAMOST-like spectra and the
shard folder `benchmarks/synthetic_shards.py` writes. The real thedoppler pickles are read only where the sdist was
downloaded (`make model`'s out/cache in this checkout, or /work/cache/thedoppler); everything else runs on hand-made
models."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from specllm.config import GridConfig, SplitConfig
from specllm.errors import SpecllmError
from specllm.ingest import shard_schema
from specllm.shards import read_table, seal_shards, vectors_to_arrow, verified_shard_paths, write_table
from specllm.splits import is_validation, split_of
from specllm.synthetic import (
    Donors,
    Generator,
    SyntheticConfig,
    blackbody_ratio,
    load_cannon,
    load_pickle_arrays,
    write_synthetic_shards,
)

SDIST_DATA = Path("thedoppler-1.1.32/doppler/data")  # inside the extracted sdist
DOPPLER_DATA = next(
    (
        p / SDIST_DATA
        for p in (Path(__file__).resolve().parents[1] / "out" / "cache", Path("/work/cache/thedoppler"))
        if (p / SDIST_DATA).is_dir()
    ),
    Path("/work/cache/thedoppler") / SDIST_DATA,
)
CUBIC_TERMS = [
    [(0, 1)],
    [(1, 1)],
    [(2, 1)],
    [(0, 2.0)],
    [(1, 1), (0, 1)],
    [(2, 1), (0, 1)],
    [(1, 2.0)],
    [(2, 1), (1, 1)],
    [(2, 2.0)],
    [(0, 3.0)],
    [(1, 1), (0, 2.0)],
    [(2, 1), (0, 2.0)],
    [(1, 2.0), (0, 1)],
    [(2, 1), (1, 1), (0, 1)],
    [(2, 2.0), (0, 1)],
    [(1, 3.0)],
    [(2, 1), (1, 2.0)],
    [(2, 2.0), (1, 1)],
    [(2, 3.0)],
]  # fmt: skip  (thedoppler's cubic models: this order, 19 terms after the constant)


def _state(theta: np.ndarray, dispersion: np.ndarray, labels: np.ndarray, terms=CUBIC_TERMS) -> dict:
    """A dict as thecannon's CannonModel.write pickles it (class names only as strings)."""
    names = ("TEFF", "LOGG", "FEH")
    return {
        "theta": theta,
        "dispersion": dispersion,
        "training_set_labels": labels.astype(np.float32),
        "vectorizer": ("PolynomialVectorizer", {"metadata": {}, "terms": terms}),
        "censors": {"label_names": names, "items": {}, "num_pixels": dispersion.size},
        "regularization": np.int64(0),
        "s2": np.zeros(dispersion.size),
        "fwhm": 0.001,
        "wavevac": False,
        "metadata": {"model_class": "CannonModel", "version": "0.2.93"},
    }


def _training_labels(teff=(8000.0, 40000.0), logg=(2.5, 5.0), feh=(-2.5, 0.5)) -> np.ndarray:
    t, g, f = np.meshgrid(np.linspace(*teff, 9), np.linspace(*logg, 5), np.linspace(*feh, 4), indexing="ij")
    return np.stack([t.ravel(), g.ravel(), f.ravel()], axis=1)


# ---------------------------------------------------------------- the unpickler


def test_refuses_a_pickle_that_calls_os_system(tmp_path):
    evil = tmp_path / "evil.pkl"
    # GLOBAL os.system, then a call with an argument: never executed, refused when the global is looked up
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    with pytest.raises(SpecllmError, match=r"refused pickle global os\.system"):
        load_cannon(evil)
    assert not (tmp_path / "pwned").exists()


def test_refuses_any_class_and_names_it(tmp_path):
    from collections import OrderedDict

    path = tmp_path / "cls.pkl"
    path.write_bytes(pickle.dumps({"theta": OrderedDict(a=1)}))
    with pytest.raises(SpecllmError, match=r"collections\.OrderedDict"):
        load_pickle_arrays(path)


def test_accepts_a_pickle_of_numpy_arrays(tmp_path):
    data = {"a": np.arange(6.0).reshape(2, 3), "b": [np.float32(2.5), np.int64(3)], "c": ("x", np.bool_(True))}
    path = tmp_path / "ok.pkl"
    for protocol in range(3, pickle.HIGHEST_PROTOCOL + 1):
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        got = load_pickle_arrays(path)
        np.testing.assert_array_equal(got["a"], data["a"])
        assert got["b"][0] == np.float32(2.5) and got["b"][1] == 3 and got["c"] == ("x", True)
    path.write_bytes(pickle.dumps(data, protocol=2))  # array bytes through _codecs.encode: not admitted
    with pytest.raises(SpecllmError, match=r"_codecs\.encode"):
        load_pickle_arrays(path)


def test_not_a_model(tmp_path):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([np.zeros(3)]))
    with pytest.raises(SpecllmError, match="not a Cannon model"):
        load_cannon(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(SpecllmError, match="not a readable pickle"):
        load_cannon(path)


# ---------------------------------------------------------------- the Cannon evaluation


def test_cannon_evaluation_is_the_scaled_polynomial(tmp_path):
    rng = np.random.default_rng(1)
    labels = _training_labels()
    theta = rng.normal(0.0, 0.05, (4, 20))
    theta[:, 0] = 0.8
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(_state(theta, np.array([4000.0, 5000.0, 6000.0, 7000.0]), labels), protocol=3))
    model = load_cannon(path)
    # thecannon: fiducials = median, scales = ptp of the 2.5 / 97.5 percentiles of the training labels
    np.testing.assert_allclose(model.fiducials, [24000.0, 3.75, -1.0])
    np.testing.assert_allclose(model.scales, np.ptp(np.percentile(labels, [2.5, 97.5], axis=0), axis=0), rtol=1e-6)
    np.testing.assert_allclose(model.ranges, [[8000, 40000], [2.5, 5.0], [-2.5, 0.5]])
    star = np.array([12000.0, 4.1, -0.3])
    x, y, z = (star - model.fiducials) / model.scales
    vector = [1, x, y, z, x * x, x * y, x * z, y * y, y * z, z * z, x**3, x * x * y, x * x * z, x * y * y, x * y * z,
              x * z * z, y**3, y * y * z, y * z * z, z**3]  # fmt: skip
    np.testing.assert_allclose(model.label_vector(star)[0], vector)
    np.testing.assert_allclose(model(star), np.minimum(theta @ vector, 1.0))
    np.testing.assert_allclose(model(np.stack([star, star])), np.stack([model(star)] * 2))
    theta[:, 0] = 5.0  # doppler clips the flux at the continuum
    path.write_bytes(pickle.dumps(_state(theta, np.array([4000.0, 5000.0, 6000.0, 7000.0]), labels)))
    assert np.all(load_cannon(path)(star) == 1.0)


def test_blackbody_ratio():
    w = np.array([4000.0, 8000.0])
    r = blackbody_ratio(w, 12000.0, 8000.0)
    assert r[0] > r[1] > 1.0  # hotter: brighter, bluer
    np.testing.assert_allclose(blackbody_ratio(w, 9000.0, 9000.0), 1.0)


# ---------------------------------------------------------------- LAMOST-like spectra and shards


def _line_model(path: Path) -> Path:
    """A small hand-made 'hot star' model, 3,700-9,300 A at 0.5 A: Balmer-like lines deepening with Teff."""
    wave = np.arange(3700.0, 9300.0, 0.5)
    theta = np.zeros((wave.size, 20))
    theta[:, 0] = 1.0
    for centre in (3970.0, 4101.7, 4340.5, 4861.3, 6562.8):
        profile = np.exp(-0.5 * ((wave - centre) / 8.0) ** 2)
        theta[:, 0] -= 0.5 * profile
        theta[:, 1] -= 0.1 * profile
    path.write_bytes(pickle.dumps(_state(theta, wave, _training_labels((6000.0, 20000.0)))))
    return path


def _real_table(n: int, grid: GridConfig) -> pa.Table:
    """Ingest-format rows whose flux is a blue, smooth continuum; train split, outside validation, and some others."""
    ids, i = [], 0
    while len(ids) < n:
        sid = str(900000000 + i)
        i += 1
        if split_of(sid, SplitConfig()) == "train" and not is_validation(sid, SplitConfig()):
            ids.append(sid)
    ids += ["1", "2", "3"]  # whatever split they fall in
    gw = grid.wavelengths()
    teff = np.linspace(7000.0, 11000.0, len(ids))
    flux = np.stack([(gw / gw[0]) ** -2.0 * (1 + 0.02 * np.sin(gw / 300.0)) for _ in ids]).astype(np.float32)
    flux /= flux.max(axis=1, keepdims=True)
    mask = np.zeros(flux.shape, bool)
    mask[:, 1000:1010] = True
    schema = shard_schema(None, grid.size)
    rows = [
        {"spec_id": s, "class": "A", "teff": t, "logg": 4.0, "feh": -0.2, "z": 1e-4, "snrg": 60.0, "snrr": 80.0,
         "split": split_of(s, SplitConfig()), "coverage": 1.0, "norm": 100.0}
        for s, t in zip(ids, teff)
    ]  # fmt: skip
    scalar = pa.schema([f for f in schema if f.name not in ("flux", "mask")])
    table = pa.Table.from_pylist(rows, schema=scalar)
    table = table.append_column(schema.field("flux"), vectors_to_arrow(flux, pa.float32()))
    return table.append_column(schema.field("mask"), vectors_to_arrow(mask, pa.bool_()))


def test_donors_are_train_split_outside_validation():
    grid = GridConfig()
    table = _real_table(6, grid)
    donors = Donors(table, SyntheticConfig(), grid)
    for sid in donors.spec_id:
        assert split_of(str(sid), SplitConfig()) == "train" and not is_validation(str(sid), SplitConfig())
    assert len(donors) >= 6


def test_lamost_like_spectrum(tmp_path):
    grid = GridConfig()
    model = load_cannon(_line_model(tmp_path / "m.pkl"))
    cfg = SyntheticConfig(n=2, teff_range=(9000.0, 12000.0), logg_range=(3.8, 4.2), feh_range=(-0.5, 0.0))
    donors = Donors(_real_table(6, grid), cfg, grid)
    gen = Generator([model], donors, cfg, grid)
    rng = np.random.default_rng(0)
    cleaned, used = gen.spectrum(np.array([10000.0, 4.0, -0.2]), 0, {"g": 50.0, "r": 60.0}, rng)
    assert used.name == "m.pkl"
    assert cleaned.flux.shape == (grid.size,) and cleaned.mask.shape == (grid.size,)
    assert np.all(np.isfinite(cleaned.flux)) and abs(float(cleaned.flux.max()) - 1.0) < 0.02
    assert cleaned.mask[1000:1010].all() and not cleaned.mask[2000:3000].any()  # the donor's masked pixels
    hb = int(round(4861.3 * (1 + 1e-4) - grid.start))  # vacuum is ~1.4 A redder: within the broadened line
    assert cleaned.flux[hb] < 0.8 * np.median(cleaned.flux[hb + 60 : hb + 120])
    items = gen.draw(2)
    assert [s.row["spec_id"] for s in items] == ["synth-0", "synth-1"]
    assert all(s.row["split"] == "synthetic" and s.row["class"] == "A" for s in items)
    with pytest.raises(SpecllmError, match="no Cannon model given"):
        Generator([model], donors, SyntheticConfig(teff_range=(5000.0, 12000.0)), grid).draw(1)


def test_synthetic_shards_verify_and_keep_the_real_rows(tmp_path):
    grid = GridConfig()
    real = tmp_path / "real"
    real.mkdir()
    table = _real_table(6, grid)
    write_table(real / "part-00000.parquet", table)
    seal_shards(real, {"grid": {"start": grid.start, "stop": grid.stop, "step": grid.step, "size": grid.size}})
    cfg = SyntheticConfig(n=3, teff_range=(9000.0, 12000.0), logg_range=(3.8, 4.2), feh_range=(-0.5, 0.0))
    out = tmp_path / "synth"
    manifest = write_synthetic_shards(str(real), [str(_line_model(tmp_path / "m.pkl"))], str(out), cfg)
    got = read_table(verified_shard_paths(out))
    assert got.num_rows == table.num_rows + 3 and manifest["counts"] == {
        "rows copied": table.num_rows,
        "synthetic added": 3,
    }
    splits = got.column("split").to_pylist()
    assert splits[: table.num_rows] == table.column("split").to_pylist() and splits[-3:] == ["synthetic"] * 3
    assert got.column("spec_id").to_pylist()[-3:] == ["synth-0", "synth-1", "synth-2"]
    assert got.schema.equals(table.schema)
    assert read_table(str(out / "synthetic.parquet")).num_rows == 3


# ---------------------------------------------------------------- the real thedoppler models (where downloaded)


@pytest.mark.skipif(not DOPPLER_DATA.is_dir(), reason="thedoppler sdist not downloaded (make model)")
def test_thedoppler_models():
    hot = load_cannon(DOPPLER_DATA / "cannongrid_3000_18000_hotdwarfs_norm_cubic_model.pkl")
    cool = load_cannon(DOPPLER_DATA / "cannongrid_3000_18000_coolstars_norm_cubic_model.pkl")
    assert hot.theta.shape == (150001, 20) and hot.label_names == ("TEFF", "LOGG", "FEH")
    assert hot.terms == [[(i, float(p)) for i, p in t] for t in CUBIC_TERMS]
    np.testing.assert_allclose(hot.ranges, [[8000, 40000], [2.5, 5.0], [-2.5, 0.5]])
    np.testing.assert_allclose(cool.ranges[0], [3500, 8000])
    # the two models meet at 8,000 K: their H-beta cores (air 4861.3 A) agree when the labels are scaled right
    w = hot.dispersion
    window = (w > 4840) & (w < 4880)
    star = np.array([8000.0, 4.0, 0.0])
    assert abs(float(hot(star)[window].min()) - float(cool(star)[window].min())) < 0.02
    assert abs(float(w[window][np.argmin(hot(star)[window])]) - 4861.3) < 0.3
