"""Property-based tests of every reader (issue 24), with hypothesis: generated and damaged inputs of each family.

The property, for every family: an input either reads, or raises the project's one-line error type
(`SpecllmError`; a spectrum's `SpectrumRejected` is one) whose message is one line, never anything else, and
within a time bound. The families:

- `fits`: the three LAMOST layouts (DR1 image, DR2-DR8 image, DR8+ COADD table) with header cards set to generated
  values, arrays filled with NaN/inf/huge values, bytes flipped or spliced, files truncated at any byte, gzipped and
  the gzip damaged; read as `ingest` and `infer` read them (read, identity, SNR, cleaning).
- `arrays`: npz, Parquet and CSV tables of spectra: shapes, dtypes, NaN/inf, wavelength order, ids, metadata,
  damaged bytes.
- `catalogues`: LAMOST label catalogues and APOGEE/GALAH/Gaia-ESO tables as CSV: column types, encodings,
  duplicates, missing columns.
- `shards`: `ingest` shard folders with damaged manifests and shards.
- `models`: model folders: spec.json, safetensors headers, domain files.

CI runs `CI_EXAMPLES` examples per property (fast); `benchmarks/fuzz.py` (`make fuzz`) runs the same `check_*`
functions on >= 10^4 generated inputs per family. Every failure found is kept below as an `@example`.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import shutil
import signal
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from specllm.config import CleanConfig, GridConfig
from specllm.errors import SpecllmError, SpectrumRejected

CI_EXAMPLES = int(os.environ.get("SPECLLM_FUZZ_EXAMPLES", "40"))
TIME_BOUND = 20.0  # seconds for one input (a regular file of < 1 MB): more is a finding
CI = settings(  # derandomized: the suite runs the same inputs every time; `make fuzz` explores
    max_examples=CI_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


class Finding(Exception):
    """An input that broke the property: a foreign exception, a message on several lines, or too slow."""


@functools.cache
def _workdir() -> Path:
    import atexit

    path = Path(tempfile.mkdtemp(prefix="specllm-fuzz-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _fresh(name: str) -> Path:
    """An empty folder for one input (the previous input's files removed)."""
    path = _workdir() / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _bounded(fn, *args):
    """fn(*args) with the property: returns, or raises a one-line SpecllmError, within TIME_BOUND seconds; anything
    else raises Finding naming what happened (the last frames of the traceback)."""

    def timeout(*_):
        raise TimeoutError(f"more than {TIME_BOUND} s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, TIME_BOUND)
    start = time.perf_counter()
    try:
        return fn(*args)
    except SpecllmError as exc:
        if "\n" in str(exc) or not str(exc).strip():
            raise Finding(f"SpecllmError not on one line: {str(exc)!r}") from None
        return exc
    except Exception as exc:  # noqa: BLE001 - the property: nothing else may escape
        frames = traceback.extract_tb(exc.__traceback__)[-3:]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
        raise Finding(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''} at {where}") from exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if time.perf_counter() - start > TIME_BOUND:
            raise Finding(f"took {time.perf_counter() - start:.1f} s")


# ---------------------------------------------------------------- values that break parsers

NUMBER_TEXTS = ["0", "-1", "1", "5", "1e30", "-1e30", "1.5", "nan", "NaN", "inf", "-inf", "-9999", "99999999999999999999",
                "1000000000", "2147483648", "-2147483649", "0.0", "1E", "T", "F", "''", "'abc'", "'  '", "", "/", "'",
                "1D10", "+", "-", "0x10", "1_000", "9" * 70]  # fmt: skip
FLOAT_BYTES = [np.float32(v).byteswap().tobytes() for v in (np.nan, np.inf, -np.inf, 0.0, -1.0, 3e38, -3e38, 1e-45)]


def card_texts():
    return st.one_of(
        st.sampled_from(NUMBER_TEXTS),
        st.integers(-(2**70), 2**70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
    )


# ---------------------------------------------------------------- fits: the three LAMOST layouts

FITS_KEYS = ["NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "BITPIX", "PCOUNT", "GCOUNT", "TFIELDS", "TFORM1", "TFORM2",
             "TFORM3", "TFORM5", "TTYPE1", "TTYPE3", "TSCAL1", "TZERO2", "EXTNAME", "XTENSION", "SIMPLE", "OBSID",
             "RA", "DEC", "Z", "SNRR", "SNRI", "SN_R", "COEFF0", "COEFF1", "CLASS", "SUBCLASS", "DATA_V", "FILENAME",
             "TELESCOP", "BSCALE", "BZERO"]  # fmt: skip


@functools.cache
def fits_base(layout: str) -> bytes:
    """A valid, uncompressed spectrum of `layout` (written once by the test factory)."""
    from .fitsfactory import write_spectrum

    path = write_spectrum(_fresh("base") / f"{layout}.fits", layout)
    return path.read_bytes()


def set_card(data: bytes, key: str, value: str, occurrence: int) -> bytes:
    """The `occurrence`-th card `key` set to `value` (added before END of the first header if absent)."""
    name = key.encode().ljust(8)
    hits = [i for i in range(0, len(data) - 79, 80) if data[i : i + 8] == name]
    card = (name + b"= " + value.encode("ascii", "replace").rjust(20)).ljust(80)[:80]
    if hits:
        i = hits[occurrence % len(hits)]
        return data[:i] + card + data[i + 80 :]
    end = data.find(b"END" + b" " * 77)
    if end < 0:
        return data
    block_end = (end // 2880 + 1) * 2880
    if b" " * 80 == data[end + 80 : end + 160] or end + 80 < block_end:  # room in the header's last block
        return data[:end] + card + data[end : end + 80] + data[end + 160 :]
    return data


def mutate_fits(data: bytes, ops) -> bytes:
    for op in ops:
        kind = op[0]
        if kind == "card":
            data = set_card(data, op[1], op[2], op[3])
        elif kind == "fill" and len(data) > 2880:
            start = 2880 + int(op[1] * (len(data) - 2880)) // 4 * 4
            count = op[2]
            data = data[:start] + (op[3] * count)[: len(data) - start] + data[start + 4 * count :]
            data = data[: len(data)]
        elif kind == "flip" and data:
            i = int(op[1] * (len(data) - 1))
            data = data[:i] + bytes([data[i] ^ (1 << op[2])]) + data[i + 1 :]
        elif kind == "splice" and data:
            i = int(op[1] * len(data))
            data = data[:i] + op[2] + data[i + len(op[2]) :]
        elif kind == "truncate":
            data = data[: int(op[1] * len(data))]
    return data


FRACTION = st.floats(0, 1, allow_nan=False)
FITS_OPS = st.one_of(
    st.tuples(st.just("card"), st.sampled_from(FITS_KEYS), card_texts(), st.integers(0, 2)),
    st.tuples(st.just("fill"), FRACTION, st.integers(1, 5000), st.sampled_from(FLOAT_BYTES)),
    st.tuples(st.just("flip"), FRACTION, st.integers(0, 7)),
    st.tuples(st.just("splice"), FRACTION, st.binary(min_size=1, max_size=200)),
    st.tuples(st.just("truncate"), FRACTION),
)
FITS_CASES = st.fixed_dictionaries(
    {
        "layout": st.sampled_from(["coadd", "image", "dr1"]),
        "ops": st.lists(FITS_OPS, max_size=6),
        "gzip": st.booleans(),
        "gz_ops": st.lists(
            st.one_of(
                st.tuples(st.just("flip"), FRACTION, st.integers(0, 7)), st.tuples(st.just("truncate"), FRACTION)
            ),
            max_size=2,
        ),  # fmt: skip
    }
)


def fits_input(case: dict) -> Path:
    data = mutate_fits(fits_base(case["layout"]), case["ops"])
    name = "spec.fits"
    if case["gzip"]:
        data, name = mutate_fits(gzip.compress(data, compresslevel=1), case["gz_ops"]), "spec.fits.gz"
    path = _fresh("fits") / name
    path.write_bytes(data)
    return path


def read_like_ingest(path: str) -> str:
    """What `ingest` and `infer` do with one spectrum: read, identity, SNR, clean (rejects are fine). Returns
    'read' when some spectrum came through, else 'rejected'."""
    from specllm.io import iter_spectra
    from specllm.io.base import check_identity
    from specllm.preprocess import check_snr, clean_spectrum

    outcome = "rejected"
    for raw in iter_spectra(path):
        if isinstance(raw, SpectrumRejected):
            if "\n" in str(raw):
                raise Finding(f"reject not on one line: {str(raw)!r}")
            continue
        try:
            check_identity(raw.meta)
            check_snr(raw.meta, CleanConfig(), required=False)
            clean_spectrum(raw.wave, raw.flux, raw.ivar, raw.ormask, GridConfig(), CleanConfig())
            outcome = "read"
        except SpectrumRejected:
            pass
    return outcome


def check_fits(case: dict):
    return _bounded(read_like_ingest, str(fits_input(case)))


@CI
@given(FITS_CASES)
# found by benchmarks/fuzz.py (seed 24): bytes of a NaN written over the COADD table's header -> astropy VerifyError
@example({"layout": "coadd", "ops": [("fill", 0.0, 1, b"\xffa\xb1\xe6")], "gzip": False, "gz_ops": []})
# NAXIS = 275171036971824 -> astropy's fallback looped over the axes for minutes (the time bound)
@example({"layout": "image", "ops": [("card", "NAXIS", "275171036971824", 0)], "gzip": False, "gz_ops": []})
# a truncated COADD file whose TTYPE1 is a number -> astropy's fallback raised AssertionError
@example({"layout": "coadd", "ops": [("truncate", 0.2518), ("card", "TTYPE1", "2", 0)], "gzip": False, "gz_ops": []})
# (seed 25) XTENSION = 1.5 in the COADD table header -> AttributeError ('float' object has no attribute 'strip')
@example({"layout": "coadd", "ops": [("card", "XTENSION", "1.5", 1)], "gzip": False, "gz_ops": []})
# (make fuzz, 10^4, seed 24) a damaged, truncated DR1 file -> AttributeError inside astropy's verify('silentfix')
@example({"gz_ops": [], "layout": "dr1", "gzip": False, "ops": [("flip", 0.0, 0), ("card", "SIMPLE", ",2S&$^'", 2),
          ("flip", 0.0, 0), ("card", "SNRR", "", 1), ("fill", 0.985, 322, b"\x7f\x80\x00\x00"),
          ("truncate", 0.5821109173038465)]})  # fmt: skip
def test_fits_reads_or_rejects_in_one_line(case):
    check_fits(case)


# ---------------------------------------------------------------- arrays: npz, Parquet, CSV tables of spectra

DTYPES = ["float32", "float64", "int16", "uint8", "bool", "U4", "complex64", ">f8"]
ARRAY_CASES = st.fixed_dictionaries(
    {
        "format": st.sampled_from(["npz", "parquet-wide", "parquet-long", "csv"]),
        "n": st.integers(0, 4),
        "m": st.integers(0, 40),
        "wave": st.sampled_from(["up", "down", "random", "nan", "const", "loglam", "short"]),
        "flux_dtype": st.sampled_from(DTYPES),
        "bad_values": st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1e300, 1e300]), max_size=4),
        "ivar": st.sampled_from(["none", "ivar", "error", "short"]),
        "names": st.sampled_from(["lower", "upper", "odd"]),
        "extra": st.dictionaries(
            st.sampled_from(
                ["obsid", "teff", "ra", "dec", "spec_id", "fwhm_angstrom", "medium", "class", "miles_id", "id"]
            ),
            st.one_of(card_texts(), st.floats(), st.integers(-(2**63), 2**63 - 1)),
            max_size=4,
        ),  # fmt: skip
        "damage": st.lists(
            st.one_of(
                st.tuples(st.just("flip"), FRACTION, st.integers(0, 7)), st.tuples(st.just("truncate"), FRACTION)
            ),
            max_size=2,
        ),  # fmt: skip
    }
)


def _wave(kind: str, m: int) -> np.ndarray:
    up = np.linspace(3700.0, 9100.0, max(m, 0))
    return {
        "up": up,
        "down": up[::-1].copy(),
        "random": np.random.default_rng(m).uniform(3000, 10000, m),
        "nan": np.where(np.arange(m) == m // 2, np.nan, up),
        "const": np.full(m, 5000.0),
        "loglam": np.log10(up) if m else up,
        "short": up[: m // 2],
    }[kind]


def array_input(case: dict) -> Path:
    n, m = case["n"], case["m"]
    rng = np.random.default_rng(n * 100 + m)
    flux = rng.uniform(0.1, 2.0, (n, m))
    for k, v in enumerate(case["bad_values"]):
        if flux.size:
            flux.flat[(k * 7919) % flux.size] = v
    try:
        with np.errstate(all="ignore"):
            flux = flux.astype(case["flux_dtype"])
    except (ValueError, OverflowError):
        pass
    wave = _wave(case["wave"], m)
    noise = {"none": None, "ivar": np.ones((n, m)), "error": np.full((n, m), 0.1), "short": np.ones((n, max(m - 1, 0)))}
    noise = noise[case["ivar"]]
    name = {"lower": str.lower, "upper": str.upper, "odd": lambda s: s.title() + " "}[case["names"]]
    wave_key = "loglam" if case["wave"] == "loglam" else "wave"
    folder = _fresh("arrays")
    fmt = case["format"]
    extra = {k: v for k, v in case["extra"].items()}
    if fmt == "npz":
        members = {name(wave_key): wave, name("flux"): flux if n != 1 else flux.reshape(-1)}
        if noise is not None:
            members[name("ivar" if case["ivar"] != "error" else "error")] = noise
        for k, v in extra.items():
            members[k] = np.asarray([v] * n) if k not in ("fwhm_angstrom", "medium") else np.asarray(v)
        path = folder / "t.npz"
        np.savez_compressed(path, **members)
    else:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        if fmt == "parquet-wide":
            cols = {name(wave_key): [list(wave)] * n, name("flux"): [list(map(_py, r)) for r in flux]}
            if noise is not None:
                cols[name("ivar")] = [list(r) for r in noise]
            nrows = n
        else:
            reps = max(len(wave), 0)
            nrows = n * reps
            cols = {
                name(wave_key): np.tile(wave, n) if len(wave) == m else np.resize(wave, nrows),
                name("flux"): flux.reshape(-1)[:nrows] if flux.size >= nrows else np.resize(flux, nrows),
                "spec_id": np.repeat([f"s{i}" for i in range(n)], reps)[:nrows],
            }
        for k, v in extra.items():
            cols[k] = [_py(v)] * nrows
        try:
            table = pa.table({k: (list(v) if isinstance(v, np.ndarray) else v) for k, v in cols.items()})
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError):
            table = pa.table({name(wave_key): [1.0], name("flux"): ["x"]})
        path = folder / ("t.csv" if fmt == "csv" else "t.parquet")
        try:
            if fmt == "csv":
                pacsv.write_csv(table, path)
            else:
                pq.write_table(table, path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            path.write_text("wave,flux\n1,x\n")
    data = path.read_bytes()
    if case["damage"]:
        path.write_bytes(mutate_fits(data, case["damage"]))
    return path


def _py(v):
    return v.item() if isinstance(v, np.generic) else v


def read_arrays(path: str) -> str:
    from specllm.io import expand_spectra, is_array_source, load_spectrum

    is_array_source(path)
    for p in list(expand_spectra([path]))[:50]:  # ingest's way: FILE#i one by one
        try:
            load_spectrum(p)
        except SpectrumRejected:
            pass
    return read_like_ingest(path)  # infer's way: the rows streamed


def check_arrays(case: dict):
    return _bounded(read_arrays, str(array_input(case)))


@CI
@given(ARRAY_CASES)
def test_array_sources_read_or_reject_in_one_line(case):
    check_arrays(case)


# ---------------------------------------------------------------- catalogues: LAMOST and other surveys

SURVEY_COLUMNS = {
    "lamost": ["obsid", "filename", "teff", "logg", "feh", "ra", "dec", "snrr", "snri", "class", "subclass", "z"],
    "apogee": ["APOGEE_ID", "RA", "DEC", "TEFF", "LOGG", "FE_H", "FE_H_FLAG", "ASPCAPFLAG", "MG_FE", "MG_FE_FLAG",
               "EXTRATARG"],
    "galah": ["sobject_id", "tmass_id", "ra", "dec", "teff", "logg", "fe_h", "flag_fe_h", "flag_sp", "snr_px_ccd3"],
    "gaia-eso": ["CNAME", "RA", "DEC", "TEFF", "LOGG", "FEH", "MG1", "LIM_MG1"],
}  # fmt: skip
CELL = st.one_of(
    st.floats(-1e4, 1e4).map(lambda v: f"{v:.3f}"),
    st.integers(0, 2**64).map(str),
    card_texts(),
    st.sampled_from(["", "é", "ü.fits", "a,b", '"', "\n", "2M00000000+0000000", "spec-55862-B6212_sp06-003.fits.gz",
                     "true", "None", "null", "NaN", "-9999.99", "STAR_WARN", "0"]),
)  # fmt: skip
CATALOGUE_CASES = st.fixed_dictionaries(
    {
        "survey": st.sampled_from(sorted(SURVEY_COLUMNS)),
        "drop": st.lists(st.integers(0, 11), max_size=3),
        "add": st.lists(st.sampled_from(["", "Unnamed: 0", "TEFF", "teff", "obsid", "x" * 300, "ra "]), max_size=2),
        "rows": st.lists(st.lists(CELL, min_size=12, max_size=12), max_size=6),
        "ragged": st.booleans(),
        "duplicate_rows": st.booleans(),
        "encoding": st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16", "utf-8-sig"]),
        "format": st.sampled_from(["csv", "csv", "parquet"]),
    }
)


def catalogue_input(case: dict) -> Path:
    import csv

    folder = _fresh("catalogue")
    base = SURVEY_COLUMNS[case["survey"]]
    columns = [c for i, c in enumerate(base) if i not in case["drop"]] + case["add"]
    rows = [r[: len(columns) - (case["ragged"] and k == 0)] for k, r in enumerate(case["rows"])]
    rows += rows[:2] if case["duplicate_rows"] else []
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows(rows)
    path = folder / "cat.csv"
    path.write_bytes(buf.getvalue().encode(case["encoding"], "replace"))
    if case["format"] == "parquet":
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        try:
            table = pacsv.read_csv(path)
        except Exception:  # noqa: BLE001 - only the format of the input is chosen here
            return path
        pq.write_table(table, folder / "cat.parquet")
        return folder / "cat.parquet"
    return path


def read_catalogue(path: str, survey: str) -> None:
    if survey == "lamost":
        from specllm.io.lamost_catalog import LabelCatalog

        cat = LabelCatalog(path)
        cat.problem_summary()
        for obsid in (None, 1, 2**62):
            try:
                cat.lookup(obsid, "spec-55862-B6212_sp06-003.fits.gz")
            except (KeyError, SpectrumRejected):  # a duplicated key, a bad row: documented outcomes
                pass
    else:
        from specllm.io.surveys import read_survey

        read_survey(path, survey)


def check_catalogue(case: dict):
    return _bounded(read_catalogue, str(catalogue_input(case)), case["survey"])


_NO_CHANGE = {"drop": [], "add": [], "ragged": False, "duplicate_rows": False, "encoding": "utf-8", "format": "csv"}


@CI
@given(CATALOGUE_CASES)
# found by benchmarks/fuzz.py (seed 24): an APOGEE table without rows (EXTRATARG read as the null type) or with text
# in EXTRATARG -> pyarrow ArrowInvalid/ArrowTypeError from fill_null; a column named twice -> KeyError
@example({**_NO_CHANGE, "survey": "apogee", "rows": []})
@example({**_NO_CHANGE, "survey": "apogee", "rows": [["2M00000000+0000000", "1", "2", "5000", "4", "0", "0", "0", "0",
                                                      "0", "x", ""]]})  # fmt: skip
@example({**_NO_CHANGE, "survey": "lamost", "add": ["teff"], "rows": []})
@example({**_NO_CHANGE, "survey": "gaia-eso", "add": ["TEFF"], "rows": []})
# (make fuzz, 10^4, seed 24) a Latin-1 catalogue written to Parquet: its text columns are binary -> ArrowInvalid
# "Invalid UTF8 payload" from a later string cast; now read as Latin-1 text
@example({**_NO_CHANGE, "survey": "apogee", "format": "parquet", "encoding": "latin-1", "drop": [1],
          "rows": [["\u00fc.fits", "1", "2", "5000", "4", "0", "0", "0", "0", "0", "0", ""]]})  # fmt: skip
def test_catalogues_read_or_fail_in_one_line(case):
    check_catalogue(case)


# ---------------------------------------------------------------- ingest shards and manifests

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)
SHARD_CASES = st.fixed_dictionaries(
    {
        "manifest": st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        "shards",
                        "sha256",
                        "counts",
                        "kind",
                        "content_hash",
                        "grid",
                        "schema",
                        "complete",
                        "files",
                        "specllm",
                        "rejects",
                        "<new>",
                    ]
                ),
                JSON_VALUES,
            ),
            max_size=3,
        ),  # fmt: skip
        "drop_manifest_key": st.booleans(),
        "shard_damage": st.lists(
            st.one_of(
                st.tuples(st.just("flip"), FRACTION, st.integers(0, 7)),
                st.tuples(st.just("truncate"), FRACTION),
                st.tuples(st.just("splice"), FRACTION, st.binary(min_size=1, max_size=64)),
            ),
            max_size=2,
        ),  # fmt: skip
        "manifest_bytes": st.one_of(st.none(), st.binary(max_size=64)),
        "verify": st.booleans(),
    }
)


@functools.cache
def shard_base() -> Path:
    from specllm.config import IngestConfig
    from specllm.ingest import run_ingest

    from .fitsfactory import make_dataset, write_catalog

    root = _workdir() / "shard-base"
    shutil.rmtree(root, ignore_errors=True)
    rows = make_dataset(root / "fits", 4, layouts=("coadd",))
    catalog = write_catalog(root / "labels.csv", rows)
    run_ingest([str(root / "fits")], str(root / "shards"), str(catalog), IngestConfig(shard_size=2))
    return root / "shards"


def shard_input(case: dict) -> Path:
    folder = _fresh("shards") / "s"
    shutil.copytree(shard_base(), folder)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for key, value in case["manifest"]:
        if isinstance(manifest.get(key), list) and manifest[key] and isinstance(value, (str, int, type(None))):
            manifest[key][0] = value
        else:
            manifest[key] = value
    if case["drop_manifest_key"] and manifest:
        manifest.pop(sorted(manifest)[0])
    manifest_path.write_text(json.dumps(manifest))
    if case["manifest_bytes"] is not None:
        manifest_path.write_bytes(case["manifest_bytes"])
    shard = sorted(folder.glob("part-*.parquet"))[0]
    if case["shard_damage"]:
        shard.write_bytes(mutate_fits(shard.read_bytes(), case["shard_damage"]))
    return folder


def read_shards(folder: str, verify: bool) -> None:
    from specllm.labelling import iter_shard_items
    from specllm.shards import read_manifest, verified_shard_paths

    read_manifest(folder)
    verified_shard_paths(folder, verify)
    for _ in iter_shard_items(folder, verify=verify):
        pass


def check_shards(case: dict):
    return _bounded(read_shards, str(shard_input(case)), case["verify"])


@CI
@given(SHARD_CASES)
def test_shard_folders_read_or_fail_in_one_line(case):
    check_shards(case)


# ---------------------------------------------------------------- model folders

MODEL_FILES = ("spec.json", "domain.json", "domain.safetensors")
MODEL_CASES = st.fixed_dictionaries(
    {
        "spec": st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        "stage",
                        "format",
                        "base_model",
                        "value_names",
                        "value_mean",
                        "value_std",
                        "classes",
                        "lora",
                        "patch_width",
                        "grid_size",
                        "layers",
                        "quantize",
                        "error_scale",
                        "manifest",
                        "weights_sha256",
                        "<new>",
                    ]
                ),
                st.one_of(JSON_VALUES, st.just("<drop>")),
            ),
            max_size=3,
        ),  # fmt: skip
        "domain": st.lists(st.tuples(st.text(max_size=12), JSON_VALUES), max_size=2),
        "header": st.lists(
            st.one_of(
                st.tuples(st.just("splice"), st.floats(0, 0.002), st.binary(min_size=1, max_size=16)),
                st.tuples(st.just("flip"), st.floats(0, 0.002), st.integers(0, 7)),
                st.tuples(st.just("truncate"), FRACTION),
            ),
            max_size=2,
        ),  # fmt: skip
        "length": st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    }
)


@functools.cache
def model_base() -> Path:
    from specllm.predict import default_model_dir

    return Path(default_model_dir())


def model_input(case: dict) -> Path:
    folder = _fresh("model") / "m"
    folder.mkdir()
    for name in MODEL_FILES:
        shutil.copy(model_base() / name, folder / name)
    spec = json.loads((folder / "spec.json").read_text())
    for key, value in case["spec"]:
        if value == "<drop>":
            spec.pop(key, None)
        else:
            spec[key] = value
    (folder / "spec.json").write_text(json.dumps(spec))
    domain = json.loads((folder / "domain.json").read_text())
    domain.update(dict(case["domain"]))
    (folder / "domain.json").write_text(json.dumps(domain))
    data = (folder / "domain.safetensors").read_bytes()
    if case["length"] is not None:  # the 8-byte header length of a safetensors file
        data = int(case["length"]).to_bytes(8, "little") + data[8:]
    (folder / "domain.safetensors").write_bytes(mutate_fits(data, case["header"]))
    return folder


def read_model(folder: str) -> None:
    from specllm.domain import load_domain
    from specllm.runs import ModelSpec, read_safetensors

    ModelSpec.from_json(Path(folder) / "spec.json")
    read_safetensors(Path(folder) / "domain.safetensors")
    load_domain(folder)


def check_model(case: dict):
    return _bounded(read_model, str(model_input(case)))


@CI
@given(MODEL_CASES)
# found by benchmarks/fuzz.py (seed 24): a domain.json key with a newline -> a two-line error
@example({"spec": [], "domain": [("a\nb", 1)], "header": [], "length": None})
def test_model_folders_read_or_fail_in_one_line(case):
    check_model(case)


FAMILIES = {
    "fits": (FITS_CASES, check_fits),
    "arrays": (ARRAY_CASES, check_arrays),
    "catalogues": (CATALOGUE_CASES, check_catalogue),
    "shards": (SHARD_CASES, check_shards),
    "models": (MODEL_CASES, check_model),
}


def test_a_foreign_exception_is_a_finding():
    """The property can fail: an exception other than SpecllmError, or a message on two lines, is a Finding."""
    with pytest.raises(Finding, match="ZeroDivisionError"):
        _bounded(lambda: 1 / 0)
    with pytest.raises(Finding, match="not on one line"):
        _bounded(lambda: (_ for _ in ()).throw(SpecllmError("a\nb")))
    assert isinstance(_bounded(lambda: (_ for _ in ()).throw(SpecllmError("x: one line"))), SpecllmError)
