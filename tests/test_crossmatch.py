"""Crossmatch: the matching core, labelled shards, Table 1 counts, the CLI, and real coordinates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from typer.testing import CliRunner

from specllm.cli import app
from specllm.config import STAGE2_ELEMENTS, CrossmatchConfig
from specllm.crossmatch import label_columns, run_crossmatch, stage2_label_columns
from specllm.errors import SpecllmError
from specllm.ingest import shard_schema
from specllm.shards import read_table, seal_shards, shard_paths, vectors_to_arrow
from specllm.skymatch import match_sky

try:  # the table writers live in test_surveys.py (tests/ is on sys.path under pytest's default import mode)
    from test_surveys import allstar_table, galah_table
except ImportError:  # tests/ made a package
    from tests.test_surveys import allstar_table, galah_table

SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"
GRID = 8  # crossmatch never looks at the flux: a tiny grid keeps the shards small
RADIUS = CrossmatchConfig().radius_arcsec


def offset(ra: float, dec: float, arcsec: float, angle_deg: float = 0.0) -> tuple[float, float]:
    """The position `arcsec` away from (ra, dec) towards position angle `angle_deg` (0 = north, 90 = east)."""
    c = SkyCoord(ra, dec, unit="deg").directional_offset_by(angle_deg * np.pi / 180, arcsec / 3600 * np.pi / 180)
    return float(c.ra.deg), float(c.dec.deg)


def write_spectra(path: Path, rows: list[dict], start: int = 0) -> pa.Table:
    """One spectrum shard in the ingest schema; flux/mask values are derived from the row number."""
    schema = shard_schema(None, GRID)
    scalar = pa.schema([f for f in schema if f.name not in ("flux", "mask")])
    records = []
    for i, row in enumerate(rows):
        k = start + i
        records.append({f.name: None for f in scalar} | {"spec_id": f"s{k}", "obsid": k, "split": "train"} | row)
    table = pa.Table.from_pylist(records, schema=scalar)
    n = len(rows)
    flux = (np.arange(n * GRID, dtype=np.float32).reshape(n, GRID) + start * GRID) / 1000
    mask = (np.arange(n * GRID).reshape(n, GRID) % 3) == 0
    table = table.append_column(schema.field("flux"), vectors_to_arrow(flux, pa.float32()))
    table = table.append_column(schema.field("mask"), vectors_to_arrow(mask, pa.bool_()))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    seal_shards(path.parent)
    return table


# ---------------------------------------------------------------- the matching core


def test_match_radius_boundary_nan_and_wraparound():
    cat_ra, cat_dec = np.array([10.0, 359.99995, 45.0]), np.array([0.0, 5.0, 89.9999])
    pts = [offset(10.0, 0.0, 2.9, 30), offset(10.0, 0.0, 3.1, 30), (0.00005, 5.0), offset(45.0, 89.9999, 1.0, 200)]
    ra = np.array([p[0] for p in pts] + [np.nan])
    dec = np.array([p[1] for p in pts] + [0.0])
    m = match_sky(ra, dec, cat_ra, cat_dec, 3.0)
    assert list(m.index) == [0, -1, 1, 2, -1]
    assert m.sep_arcsec[0] == pytest.approx(2.9, abs=1e-6) and np.isnan(m.sep_arcsec[1])
    assert m.sep_arcsec[2] == pytest.approx(0.36, abs=0.01)  # across RA = 0/360
    assert m.sep_arcsec[3] == pytest.approx(1.0, abs=1e-5)  # at the pole
    assert not m.ambiguous.any() and m.ties == 0


def test_match_ambiguous_and_ties_resolved_to_earliest_row():
    # rows 1, 2 and 4 are the same position (a star listed three times); row 3 is 2" away from row 0
    cat = [(20.0, 10.0), (30.0, -5.0), (30.0, -5.0), offset(20.0, 10.0, 2.0, 90), (30.0, -5.0)]
    cat_ra, cat_dec = np.array([c[0] for c in cat]), np.array([c[1] for c in cat])
    q = [offset(20.0, 10.0, 0.5, 270), offset(30.0, -5.0, 0.7, 10)]
    for order in (np.arange(5), np.array([4, 2, 0, 3, 1])):  # the earliest row wins whatever the table order
        m = match_sky(np.array([p[0] for p in q]), np.array([p[1] for p in q]), cat_ra[order], cat_dec[order])
        assert list(order[m.index]) == [0, 1 if order[0] == 0 else 4]
        assert list(m.ambiguous) == [True, True] and m.ties == 1


def test_match_empty_inputs():
    m = match_sky(np.array([]), np.array([]), np.array([1.0]), np.array([1.0]))
    assert len(m.index) == 0
    m = match_sky(np.array([1.0]), np.array([1.0]), np.array([1.0]), np.array([1.0]))  # a one-row catalogue
    assert list(m.index) == [0] and not m.ambiguous[0]


# ---------------------------------------------------------------- the full run on tiny shards

STARS = [  # APOGEE allStar-like rows: (id, ra, dec, overrides)
    {"id": "2M10000000+2000000", "ra": 150.0, "dec": 20.0},  # S0
    {"id": "2M10000400+2000000", "ra": 150.0167, "dec": 20.0, "flags": {"MG": 1}, "values": {"C": -9999.99}},  # S1
    {"id": "2M10000800+2000000", "ra": 150.0333, "dec": 20.0, "aspcapflag": 4},  # S2: fails ASPCAPFLAG == 0
    {"id": "2M10000000+2000000", "ra": 150.0, "dec": 20.0, "extratarg": 16},  # S3: duplicate of S0, never matched
    {"id": "2M10001200+2000000", "ra": np.nan, "dec": np.nan},  # S4: placed from its designation
    {"id": "2M10001600+2000000", "ra": 150.0667, "dec": 20.0},  # S5
    {"id": "2M10001600+2000025", "ra": 150.0667, "dec": 20.0 + 2.5 / 3600},  # S6: 2.5" north of S5
]  # fmt: skip


def _s4() -> tuple[float, float]:
    return 150.0 + 15 * 12.005 / 3600, 20.0 + 0.05 / 3600


def _spectra() -> list[list[dict]]:
    s0, s1, s2 = (150.0, 20.0), (150.0167, 20.0), (150.0333, 20.0)
    return [
        [
            {"ra": offset(*s0, 0.5, 0)[0], "dec": offset(*s0, 0.5, 0)[1], "class": "G", "subclass": "G2"},  # -> S0
            {"ra": offset(*s0, 1.0, 90)[0], "dec": offset(*s0, 1.0, 90)[1], "class": "K"},  # repeat of S0
            {"ra": offset(*s1, 2.9, 180)[0], "dec": offset(*s1, 2.9, 180)[1], "class": "A"},  # -> S1 (2.9")
            {"ra": s2[0], "dec": s2[1], "class": "F"},  # -> S2, labels cut
        ],
        [
            {"ra": offset(*s1, 3.2, 180)[0], "dec": offset(*s1, 3.2, 180)[1], "class": "G"},  # unmatched (3.2")
            {"ra": None, "dec": None, "class": "G"},  # no position
            {"ra": offset(*_s4(), 0.3, 0)[0], "dec": offset(*_s4(), 0.3, 0)[1], "class": "M"},  # -> S4
            {"ra": offset(*s0, 0.2, 200)[0], "dec": offset(*s0, 0.2, 200)[1], "class": None},  # -> S0, class other
            {"ra": offset(150.0667, 20.0, 0.4, 180)[0], "dec": offset(150.0667, 20.0, 0.4, 180)[1], "class": "K"},
        ],
    ]  # the last one -> S5, ambiguous (S6 2.9" away)


GALAH_STARS = [
    {"sobject_id": 170101001, "tmass_id": "10000000+2000000", "ra": 150.0, "dec": 20.0, "flags": {"NI": 3}},
    {"sobject_id": 170101002, "ra": 150.0167, "dec": 20.0, "snr": 12.0},
]


@pytest.fixture
def setup(tmp_path):
    shards = tmp_path / "shards"
    written = [write_spectra(shards / f"part-{k:05d}.parquet", rows, start=4 * k) for k, rows in enumerate(_spectra())]
    allstar = tmp_path / "allStar-like.fits"
    allstar_table(STARS).write(allstar)
    galah = tmp_path / "galah-like.fits"
    galah_table(GALAH_STARS).write(galah)
    return tmp_path, shards, written, str(allstar), str(galah)


EXPECTED_IDS = [
    "2M10000000+2000000", "2M10000000+2000000", "2M10000400+2000000", "2M10000800+2000000",
    None, None, "2M10001200+2000000", "2M10000000+2000000", "2M10001600+2000000",
]  # fmt: skip


def test_run_crossmatch_labels_flags_and_table1(setup):
    tmp_path, shards, written, allstar, galah = setup
    out = tmp_path / "xm"
    result = run_crossmatch(str(shards), str(out), {"apogee": allstar, "galah": galah})
    table = read_table(out)
    # every input row and column kept, flux and mask untouched
    source = pa.concat_tables(written)
    assert table.num_rows == 9 and table.column_names[: len(source.column_names)] == source.column_names
    assert table.select(source.column_names).equals(source)
    assert table.column("apogee_id").to_pylist() == EXPECTED_IDS
    sep = table.column("apogee_sep_arcsec").to_pylist()
    assert sep[0] == pytest.approx(0.5, abs=1e-3) and sep[2] == pytest.approx(2.9, abs=1e-3) and sep[4] is None
    assert table.schema.field("apogee_mg_fe").type == pa.float32()
    mg, c, si = (table.column(f"apogee_{x}_fe").to_pylist() for x in ("mg", "c", "si"))
    k = {e: i for i, e in enumerate(STAGE2_ELEMENTS)}
    assert mg[0] == pytest.approx(0.01 * (k["MG"] + 1)) and mg[1] == mg[0] and mg[7] == mg[0]  # repeats share S0
    assert mg[2] is None and c[2] is None and si[2] == pytest.approx(0.01 * (k["SI"] + 1) + 0.1)  # flag / placeholder
    assert all(table.column(col)[3].as_py() is None for col in label_columns("apogee"))  # ASPCAPFLAG != 0
    assert mg[6] == pytest.approx(0.01 * (k["MG"] + 1) + 0.4)  # S4, placed from its 2MASS designation
    # GALAH: only spectra 0, 1, 7 (S0's position); the second GALAH star fails snr_px_ccd3 > 30
    assert table.column("galah_id").to_pylist() == ["170101001", "170101001", "170101002"] + [None] * 4 + [
        "170101001",
        None,
    ]
    assert table.column("galah_ni_fe").to_pylist()[0] is None and table.column("galah_teff").to_pylist()[:3] == [
        5000.0,
        5000.0,
        None,
    ]
    assert table.column("galah_ci_fe").null_count == 9  # GALAH DR4 has no C I column

    st = json.loads((out / "crossmatch.json").read_text())["surveys"]["apogee"]
    assert (st["matched"], st["unmatched"], st["ambiguous"], st["ties"]) == (7, 2, 1, 0)
    assert (st["stars_matched"], st["stars_with_several_spectra"], st["matched_stars_failing_star_cuts"]) == (5, 1, 1)
    assert st["spectra_with_position"] == 8 and st["separation_arcsec"]["max"] == pytest.approx(2.9, abs=1e-3)
    assert result.stats["apogee"] == st

    # Table 1: valid labels per class (A F G K M other) exactly
    rows = {
        tuple(line.split(",")[:2]): [int(v) for v in line.split(",")[2:]]
        for line in (out / "label_counts.csv").read_text().splitlines()[1:]
    }
    assert rows[("apogee", "matched")] == [1, 1, 1, 2, 1, 1, 7]
    assert rows[("apogee", "mg_fe")] == [0, 0, 1, 2, 1, 1, 5]  # S1 (A) flagged, S2 (F) cut
    assert rows[("apogee", "c_fe")] == [0, 0, 1, 2, 1, 1, 5]  # S1's placeholder
    assert rows[("apogee", "si_fe")] == [1, 0, 1, 2, 1, 1, 6]
    assert rows[("galah", "matched")] == [1, 0, 1, 1, 0, 1, 4]
    assert rows[("galah", "teff")] == [0, 0, 1, 1, 0, 1, 3]
    assert rows[("galah", "ni_fe")] == [0, 0, 0, 0, 0, 0, 0]
    assert ("galah", "ci_fe") not in rows  # Table 1 lists the labels a catalogue carries
    md = (out / "label_counts.md").read_text()
    assert "| mg_fe | 0 | 0 | 1 | 2 | 1 | 1 | 5 |" in md

    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["shards"] == ["part-00000.parquet", "part-00001.parquet"] == [Path(p).name for p in shard_paths(out)]
    )
    assert manifest["counts"]["matched"] == {"apogee": 7, "galah": 4}
    assert manifest["crossmatch"]["stage2_label_columns"] == stage2_label_columns()
    # a rerun gives the same content; crossmatching the output again replaces (not duplicates) the label columns
    again = run_crossmatch(str(shards), str(out), {"apogee": allstar, "galah": galah})
    assert again.content_hash == result.content_hash
    twice = run_crossmatch(str(out), str(tmp_path / "xm2"), {"apogee": allstar, "galah": galah})
    assert read_table(tmp_path / "xm2").column_names == table.column_names and twice.written == 9


def test_one_per_star_and_matched_only(setup):
    tmp_path, shards, _, allstar, _ = setup
    config = CrossmatchConfig(one_per_star=True, matched_only=True)
    result = run_crossmatch(str(shards), str(tmp_path / "one"), {"apogee": allstar}, config)
    table = read_table(tmp_path / "one")
    # S0's three spectra (0.5", 1.0", 0.2") -> only the 0.2" one (spectrum 7) keeps the match; unmatched rows dropped
    assert table.column("spec_id").to_pylist() == ["s2", "s3", "s6", "s7", "s8"]
    assert result.stats["apogee"]["one_per_star_dropped"] == 2 and result.written == 5


def test_quality_cuts_off_and_radius(setup):
    tmp_path, shards, _, allstar, _ = setup
    run_crossmatch(str(shards), str(tmp_path / "nocut"), {"apogee": allstar}, CrossmatchConfig(quality_cuts=False))
    t = read_table(tmp_path / "nocut")
    assert t.column("apogee_mg_fe")[3].as_py() is not None and t.column("apogee_mg_fe")[2].as_py() is not None
    r = run_crossmatch(str(shards), str(tmp_path / "r1"), {"apogee": allstar}, CrossmatchConfig(radius_arcsec=0.6))
    assert r.stats["apogee"]["matched"] == 5 and r.stats["apogee"]["ambiguous"] == 0


def test_stage2_label_columns():
    cols = stage2_label_columns()
    assert len(cols) == len(STAGE2_ELEMENTS) == 21
    assert cols[:3] == ["apogee_c_fe", "apogee_ci_fe", "apogee_n_fe"] and "apogee_tiii_fe" in cols
    assert set(cols) <= set(label_columns("apogee"))
    assert stage2_label_columns("galah")[0] == "galah_c_fe"


def test_usage_errors(setup):
    tmp_path, shards, _, allstar, _ = setup
    with pytest.raises(SpecllmError, match="no catalogue"):
        run_crossmatch(str(shards), str(tmp_path / "o"), {})
    with pytest.raises(SpecllmError, match="must differ"):
        run_crossmatch(str(shards), str(shards), {"apogee": allstar})
    bad = tmp_path / "bad.csv"
    bad.write_text("APOGEE_ID,TEFF\n2M10000000+2000000,5000\n")
    no_label = tmp_path / "nolabel.csv"
    no_label.write_text("RA,DEC\n1,2\n")
    with pytest.raises(SpecllmError, match="none of its label columns"):
        run_crossmatch(str(shards), str(tmp_path / "o"), {"apogee": str(bad), "galah": str(no_label)})
    assert not (tmp_path / "o").exists()  # failed before any work
    nopos = tmp_path / "nopos" / "part-00000.parquet"
    write_spectra(nopos, [{"ra": 1.0}])
    pq.write_table(pq.read_table(nopos).drop_columns(["dec"]), nopos)
    seal_shards(nopos.parent)
    with pytest.raises(SpecllmError, match=r"part-00000.parquet: missing column\(s\) dec"):
        run_crossmatch(str(tmp_path / "nopos"), str(tmp_path / "o"), {"apogee": allstar})


def test_cli(setup):
    tmp_path, shards, _, allstar, galah = setup
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "crossmatch",
            str(shards),
            "--apogee",
            allstar,
            "--galah",
            galah,
            "--out",
            str(tmp_path / "c"),
            "--radius",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "crossmatch apogee: 7 of 9 spectra matched" in res.output
    assert (tmp_path / "c" / "label_counts.md").exists()
    (tmp_path / "x.csv").write_text("KIC,TEFF\n1,5000\n")
    res = runner.invoke(
        app, ["crossmatch", str(shards), "--apogee", str(tmp_path / "x.csv"), "--out", str(tmp_path / "d")]
    )
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "x.csv: APOGEE catalogue lacks RA and DEC" in lines[0] and "Traceback" not in res.output
    far = tmp_path / "far.fits"
    allstar_table([{"id": "2M00000000+0000000", "ra": 0.0, "dec": 0.0}]).write(far)
    res = runner.invoke(app, ["crossmatch", str(shards), "--apogee", str(far), "--out", str(tmp_path / "e")])
    assert res.exit_code == 1  # nothing matched


# ---------------------------------------------------------------- real coordinates


def _shared(rel: str) -> Path:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{rel} not available")
    return path


def test_real_lamost_dr2_apogee_dr12_self_match_with_jitter():
    """The 1,387 LAMOST DR2 x APOGEE DR12 positions, jittered by up to 1.5" in random directions, find their own row."""
    path = _shared("apogee/lamost_dr2_apogee_dr12_labels_1387.fits")
    t = Table.read(path)
    ra, dec = np.asarray(t["RA"], float), np.asarray(t["Dec"], float)
    rng = np.random.default_rng(5)
    c = SkyCoord(ra, dec, unit="deg").directional_offset_by(
        rng.uniform(0, 2 * np.pi, len(ra)), np.deg2rad(rng.uniform(0, 1.5, len(ra)) / 3600)
    )
    m = match_sky(c.ra.deg, c.dec.deg, ra, dec, RADIUS)
    assert (m.index == np.arange(len(ra))).all() and not m.ambiguous.any()
    assert np.nanmax(m.sep_arcsec) <= 1.5 + 1e-6


def test_real_lamost_positions_match_apogee_designations():
    """Cross-survey: LAMOST DR2 positions against the 2MASS positions encoded in the APOGEE_IDs (no RA/DEC)."""
    path = _shared("apogee/lamost_dr2_apogee_dr12_labels_1387.fits")
    t = Table.read(path)
    from specllm.io.surveys import designation_positions

    cra, cdec = designation_positions([str(x) for x in t["APOGEE_ID"]])
    m = match_sky(np.asarray(t["RA"], float), np.asarray(t["Dec"], float), cra, cdec, RADIUS)
    assert (m.index == np.arange(len(t))).all()
    assert np.median(m.sep_arcsec) < 0.2 and m.sep_arcsec.max() < 1.5


def test_real_lamost_repeat_spectra_take_their_star(tmp_path):
    """A real ingest of LAMOST DR8 repeat observations; a catalogue of one row per star (first observation's position):
    every spectrum finds its own star, and repeats all take its labels."""
    import csv

    from specllm.config import CleanConfig, IngestConfig
    from specllm.ingest import run_ingest

    folder = _shared("lamost/dr8")
    with open(folder / "groups.csv") as fh:
        groups = list(csv.DictReader(fh))
    groups = [g for g in groups if int(float(g["GroupID"])) <= 25]  # 25 stars, their repeat spectra
    files = [str(folder / "spectra" / Path(g["combined_file"]).name) for g in groups]
    config = IngestConfig(clean=CleanConfig(snr_min_r=0, snr_min_i=0, min_coverage=0.0))
    run_ingest(files, str(tmp_path / "shards"), config=config)
    first: dict[int, dict] = {}
    for g in groups:
        first.setdefault(int(float(g["GroupID"])), g)
    star_ids = [f"G{gid}" for gid in first]
    Table(
        {
            "APOGEE_ID": star_ids,
            "RA": [float(g["combined_ra_obs"]) for g in first.values()],
            "DEC": [float(g["combined_dec_obs"]) for g in first.values()],
            "ASPCAPFLAG": np.zeros(len(first), np.int64),
            "MG_FE": np.arange(len(first), dtype=np.float32) / 100,
            "MG_FE_FLAG": np.zeros(len(first), np.int32),
        }
    ).write(tmp_path / "stars.fits")
    result = run_crossmatch(str(tmp_path / "shards"), str(tmp_path / "xm"), {"apogee": str(tmp_path / "stars.fits")})
    table = read_table(tmp_path / "xm")
    group_of = {int(g["combined_obsid"]): f"G{int(float(g['GroupID']))}" for g in groups}
    assert table.num_rows == len(files)
    assert table.column("apogee_id").to_pylist() == [group_of[o] for o in table.column("obsid").to_pylist()]
    mg = dict(zip(star_ids, np.arange(len(first)) / 100, strict=True))
    assert table.column("apogee_mg_fe").to_pylist() == pytest.approx(
        [mg[g] for g in table.column("apogee_id").to_pylist()]
    )
    st = result.stats["apogee"]
    assert st["matched"] == len(files) and st["stars_matched"] == 25 and st["stars_with_several_spectra"] == 25
    assert st["separation_arcsec"]["max"] < 3.0


def test_real_apokasc_v71_against_apokasc3():
    """Two real catalogues of the Kepler field: APOKASC v7.1 (RA/DEC) against APOKASC-3 (positions from 2MASS_ID);
    every match must be the same 2MASS star."""
    from specllm.io.surveys import read_survey

    a = read_survey(str(_shared("apogee/APOKASC_Catalog.v7.1.fits")), "apogee")
    b = read_survey(str(_shared("apogee/apokasc3_dr17_logg_cal.fits")), "apogee")
    m = match_sky(a.ra, a.dec, b.ra, b.dec, RADIUS)
    hit = m.index >= 0
    assert hit.sum() == 2039 and not m.ambiguous.any()
    assert [s.replace("J", "2M", 1) for s in a.ids[hit]] == list(b.ids[m.index[hit]])
    assert np.median(m.sep_arcsec[hit]) < 0.1


def test_real_lamost_dr10_headers_against_their_own_positions(tmp_path):
    """A real ingest of 40 LAMOST DR10 spectra (positions from their headers); a catalogue built from those positions,
    jittered by up to 2" and shuffled: every spectrum finds its own row."""
    from specllm.config import CleanConfig, IngestConfig
    from specllm.ingest import run_ingest

    files = sorted(str(p) for p in (_shared("lamost/dr10") / "spectra").glob("*.fits*"))[:40]
    run_ingest(files, str(tmp_path / "shards"), config=IngestConfig(clean=CleanConfig(snr_min_r=0, snr_min_i=0)))
    spectra = read_table(tmp_path / "shards", columns=["spec_id", "ra", "dec"])
    ra, dec = (np.asarray(spectra.column(c).to_numpy(zero_copy_only=False), float) for c in ("ra", "dec"))
    assert np.isfinite(ra).all() and len(ra) >= 30
    rng = np.random.default_rng(11)
    order = rng.permutation(len(ra))
    moved = SkyCoord(ra[order], dec[order], unit="deg").directional_offset_by(
        rng.uniform(0, 2 * np.pi, len(ra)), np.deg2rad(rng.uniform(0, 2.0, len(ra)) / 3600)
    )
    ids = [f"2M-own-{s}" for s in np.asarray(spectra.column("spec_id").to_pylist())[order]]
    Table({"APOGEE_ID": ids, "RA": moved.ra.deg, "DEC": moved.dec.deg, "TEFF": np.full(len(ra), 5000.0)}).write(
        tmp_path / "own.fits"
    )
    result = run_crossmatch(str(tmp_path / "shards"), str(tmp_path / "xm"), {"apogee": str(tmp_path / "own.fits")})
    out = read_table(tmp_path / "xm", columns=["spec_id", "apogee_id", "apogee_sep_arcsec"])
    assert out.column("apogee_id").to_pylist() == [f"2M-own-{s}" for s in out.column("spec_id").to_pylist()]
    assert (
        result.stats["apogee"]["matched"] == len(ra) and max(out.column("apogee_sep_arcsec").to_pylist()) <= 2.0 + 1e-6
    )
