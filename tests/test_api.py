"""The Python API (specllm.load_model(...).predict): paths, arrays and Spectrum1D give infer's table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import specllm

ROOT = Path(__file__).resolve().parents[1]
DR10 = ROOT.parent / "shared" / "data" / "lamost" / "dr10" / "spectra"


@pytest.fixture(scope="module")
def model(tiny_run):
    return specllm.load_model(tiny_run)


def _files(n: int) -> list[str]:
    if not DR10.is_dir():
        pytest.skip("../shared/data not present")
    return [str(p) for p in sorted(DR10.glob("*.fits.gz"))[:n]]


def test_import_is_cheap():
    code = "import sys, specllm; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_paths_give_the_table_infer_writes(model, tiny_run):
    from typer.testing import CliRunner

    from specllm.cli import app
    from specllm.outputs import read_rows

    files = _files(2)
    t = model.predict(files)
    assert t.colnames == model.columns and len(t) == 2
    assert str(t["teff"].unit) == "K" and str(t["logg"].unit) == "dex" and str(t["ra"].unit) == "deg"
    for key in ("specllm", "model", "modelsha", "date", "command"):
        assert key in t.meta
    out = Path(tiny_run).parent / "api.csv"
    result = CliRunner().invoke(app, ["infer", *files, "--model", str(tiny_run), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    cli_rows = read_rows(str(out))
    api_rows = [{c: (None if np.ma.is_masked(r[c]) else r[c].item()) for c in t.colnames} for r in t]
    blank = lambda rows: [{k: (None if v == "" else v) for k, v in r.items()} for r in rows]  # noqa: E731
    assert blank(api_rows) == blank(cli_rows)  # a CSV cell cannot tell an empty text (flag_reason) from a null


def test_arrays_and_spectrum1d_give_the_same_labels_as_the_file(model):
    from specllm.io import read_spectrum

    raw = read_spectrum(_files(1)[0])
    from_file = model.predict(raw.path)
    bad = raw.ormask != 0
    one = model.predict((raw.wave, raw.flux, raw.ivar, bad))
    two = model.predict((raw.wave, np.stack([raw.flux, raw.flux * 3.0]), np.stack([raw.ivar, raw.ivar / 9.0])))
    for name in ("teff", "logg", "feh"):
        assert one[name][0] == from_file[name][0]
    assert list(one["file"]) == ["<array>#0"] and list(two["file"]) == ["<array>#0", "<array>#1"]
    assert two["status"][0] == "ok" and two["teff"][0] == two["teff"][1]  # normalised: a scale changes nothing

    pytest.importorskip("specutils")
    import warnings

    import astropy.units as u
    from astropy.nddata import InverseVariance
    from specutils import Spectrum

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spectrum = Spectrum(
            spectral_axis=raw.wave * u.AA,
            flux=raw.flux * u.dimensionless_unscaled,
            uncertainty=InverseVariance(raw.ivar),
            mask=bad,
            meta={"obsid": raw.meta["obsid"]},
        )
    three = model.predict([spectrum, spectrum])
    assert len(three) == 2 and three["obsid"][0] == raw.meta["obsid"]
    assert three["spec_id"][0] == str(raw.meta["obsid"]) and three["teff"][0] == from_file["teff"][0]


def test_lamost_reader_for_specutils(model):
    pytest.importorskip("specutils")
    from specutils import Spectrum

    import specllm.io.specutils_reader  # noqa: F401  (registers the reader)

    path = _files(1)[0]
    spectrum = Spectrum.read(path, format="LAMOST-LRS")
    assert spectrum.meta["obsid"] > 0 and spectrum.flux.shape == spectrum.spectral_axis.shape
    t = model.predict(spectrum)
    assert t["file"][0] == path and t["teff"][0] == model.predict(path)["teff"][0]


def test_bad_input_is_one_clear_error(model):
    from specllm.errors import SpecllmError

    with pytest.raises(SpecllmError, match="file paths"):
        model.predict([1, 2, 3])
    with pytest.raises(SpecllmError, match="pixels"):
        model.predict((np.arange(10.0), np.ones(11)))
    with pytest.raises(SpecllmError, match="not int"):
        model.predict(5)
    with pytest.raises(SpecllmError, match="unknown key.*'flx'"):
        model.predict({"wave": np.arange(10.0), "flx": np.ones(10)})
    with pytest.raises(SpecllmError, match="no 'flux'"):
        model.predict([{"wave": np.arange(10.0)}])


def test_dict_input_gives_the_file_labels_and_keeps_header_facts(model):
    from specllm.io import read_spectrum

    raw = read_spectrum(_files(1)[0])
    from_file = model.predict(raw.path)
    facts = {k: raw.meta[k] for k in ("obsid", "ra", "dec", "subclass", "snrr") if raw.meta.get(k) is not None}
    t = model.predict({"wave": raw.wave, "flux": raw.flux, "ivar": raw.ivar, "mask": raw.ormask != 0, **facts})
    assert list(t["file"]) == ["<dict>#0"] and t["obsid"][0] == raw.meta["obsid"]
    for name in ("teff", "logg", "feh", "ra", "dec"):
        assert t[name][0] == from_file[name][0]
    assert t["subclass"][0] == from_file["subclass"][0]
    two = model.predict([{"wave": raw.wave, "flux": raw.flux}, {"wave": raw.wave, "flux": raw.flux * 2}])
    assert list(two["file"]) == ["<dict>#0", "<dict>#1"] and two["teff"][0] == two["teff"][1]


def test_a_failed_row_keeps_what_was_read(model):
    """A spectrum refused on coverage keeps its ids, position and header facts (issue 26)."""
    from specllm.io import read_spectrum

    raw = read_spectrum(_files(1)[0])
    flux = raw.flux.copy()
    ivar = np.zeros_like(raw.ivar)
    ivar[1000:1200] = 1.0  # a few percent of the grid observed
    t = model.predict({"wave": raw.wave, "flux": flux, "ivar": ivar, "obsid": raw.meta["obsid"],
                       "ra": raw.meta["ra"], "dec": raw.meta["dec"], "subclass": "G2"})  # fmt: skip
    assert "coverage" in t["status"][0]
    assert t["obsid"][0] == raw.meta["obsid"] and t["spec_id"][0] == str(raw.meta["obsid"])
    assert t["ra"][0] == pytest.approx(raw.meta["ra"]) and t["subclass"][0] == "G2"
