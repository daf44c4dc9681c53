"""`specllm ingest` (specllm.ingest.run_ingest): catalogue joins, SNR cut, balance, split, resume, shard formats,
and the real LAMOST samples under ../shared/data where present."""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from specllm.config import CleanConfig, IngestConfig, SplitConfig
from specllm.errors import SpecllmError
from specllm.ingest import REJECTS, hash_fraction, run_ingest, split_of
from specllm.shards import MANIFEST, arrow_to_vectors, read_table, table_digest

from .fitsfactory import CATALOG_COLUMNS, make_dataset, write_catalog, write_coadd, write_dr1, write_image


def _ingest(tmp_path, rows=None, n=15, catalog_rows=None, columns=CATALOG_COLUMNS, out="out", **config):
    spectra = tmp_path / "fits"
    if rows is None:
        rows = make_dataset(spectra, n)
    catalog = None
    if catalog_rows is not False:
        catalog = str(write_catalog(tmp_path / "cat.csv", catalog_rows or rows, columns))
    result = run_ingest([str(spectra)], str(tmp_path / out), catalog, IngestConfig(**config))
    return result, rows


def _rows(out) -> dict:
    table = read_table(out)
    return {r["spec_id"]: r for r in table.drop_columns(["flux", "mask"]).to_pylist()}


def _rejects(out) -> dict:
    return {os.path.basename(r["file"]): r for r in pq.read_table(Path(out) / REJECTS).to_pylist()}


# ---------------------------------------------------------------- joins and labels


def test_end_to_end_with_catalogue(tmp_path):
    result, rows = _ingest(tmp_path, n=15)
    out = tmp_path / "out"
    assert (result.read, result.kept, sum(result.rejected.values())) == (15, 15, 0)
    table = read_table(out)
    assert table.num_rows == 15
    assert table.schema.field("flux").type == pa.list_(pa.float32(), 4901)
    assert table.schema.field("mask").type == pa.list_(pa.bool_(), 4901)
    got = _rows(out)
    for row in rows:
        r = got[str(row["obsid"])]  # DR1 files (no OBSID) get the catalogue's obsid through the file-name join
        assert r["obsid"] == row["obsid"] and os.path.basename(r["file"]) == row["filename"]
        assert (r["teff"], r["logg"], r["feh"]) == pytest.approx((row["teff"], row["logg"], row["feh"]), rel=1e-6)
        assert r["subclass"] == row["subclass"] and r["class"] == row["subclass"][-2]
        assert r["snrr"] == pytest.approx(row["snrr"]) and r["snri"] == pytest.approx(row["snri"])
        assert r["ra"] == pytest.approx(row["ra"]) and r["split"] == split_of(r["spec_id"], SplitConfig())
        expected = {"coadd": ("lamost-coadd", "LAMOST DR10"), "image": ("lamost-image", "LAMOST DR7"),
                    "dr1": ("lamost-dr1-image", "LAMOST DR1")}[row["layout"]]  # fmt: skip
        assert (r["layout"], r["data_release"]) == expected
        assert r["coverage"] == 1.0 and r["norm"] > 0
    flux = arrow_to_vectors(table.column("flux"))
    assert (
        flux.shape == (15, 4901)
        and np.abs(flux).max() <= 1.0 + 1e-3
        and not arrow_to_vectors(table.column("mask"), bool).any()
    )
    assert sorted(r["class"] for r in got.values()) == sorted("AFGKM" * 3)

    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["counts"] == {"read": 15, "kept": 15, "rejected": {}}
    assert manifest["grid"] == {"start": 3800.0, "stop": 8700.0, "step": 1.0, "size": 4901}
    assert manifest["clean"] == {**CleanConfig().__dict__}
    assert manifest["split"]["test_fraction"] == 0.2 and manifest["shards"] == ["part-00000.parquet"]
    assert manifest["content_hash"] == result.content_hash and len(result.content_hash) == 64
    rejects = pq.read_table(out / REJECTS)
    assert rejects.num_rows == 0 and rejects.column_names == ["file", "reason", "detail"]


def test_dr1_join_on_file_name_only(tmp_path):
    spectra = tmp_path / "fits"
    names = [
        "spec-55862-B6212_sp06-003.fits.gz",
        "spec-55862-B6212_sp06-005.fits.gz",
        "spec-55862-B6212_sp06-006.fits.gz",
    ]
    for name, sub in zip(names, ["F9", "K3", "dM1"], strict=True):
        write_dr1(spectra / name, subclass=sub)
    catalog = [dict(filename=names[0].removesuffix(".gz"), teff=6100.0, logg=4.2, feh=-0.3, subclass="F8", rv=-21.4),
               dict(filename=names[1], teff=4700.0, logg=2.5, feh=0.1, subclass="K2", rv=5.5)]  # fmt: skip
    cat = write_catalog(tmp_path / "catalog.csv", catalog)
    result = run_ingest([str(spectra)], str(tmp_path / "out"), str(cat))
    assert result.kept == 3
    got = _rows(tmp_path / "out")
    first, second, third = (got[n.removesuffix(".fits.gz")] for n in names)
    assert first["obsid"] is None and first["teff"] == pytest.approx(6100.0) and first["subclass"] == "F8"
    assert second["teff"] == pytest.approx(4700.0) and second["rv"] == pytest.approx(5.5) and second["class"] == "K"
    assert third["teff"] is None and third["subclass"] == "dM1" and third["class"] == "M"  # header only
    assert first["data_release"] == "LAMOST DR1" and third["snrr"] == pytest.approx(99.0)


def test_without_catalogue_header_values(tmp_path):
    result, rows = _ingest(tmp_path, n=6, catalog_rows=False)
    assert result.kept == 6
    got = _rows(tmp_path / "out")
    for row in rows:
        key = str(row["obsid"]) if row["layout"] != "dr1" else row["filename"].removesuffix(".fits.gz")
        r = got[key]
        assert r["teff"] is None and r["subclass"] == row["subclass"] and r["objclass"] == "STAR"
        assert r["snrr"] == pytest.approx(row["snrr"]) and r["snrg"] == pytest.approx(row["snrg"])  # header values


def test_extra_catalogue_columns_are_kept(tmp_path):
    spectra = tmp_path / "fits"
    write_coadd(spectra / "a.fits.gz", obsid=1)
    write_coadd(spectra / "b.fits.gz", obsid=2)
    cat = write_catalog(tmp_path / "c.csv", [dict(obsid=1, teff=5000, logg=4, feh=0, rv=1.5, designation="J1", split="x"),
                                             dict(obsid=2, teff=5100, logg=4.1, feh=-9999, rv=None, designation="J2", split="y")])  # fmt: skip
    run_ingest([str(spectra)], str(tmp_path / "out"), str(cat))
    table = read_table(tmp_path / "out")
    assert {"rv", "designation", "cat_split"} <= set(table.column_names)
    got = _rows(tmp_path / "out")
    assert got["1"]["rv"] == 1.5 and got["2"]["rv"] is None and got["2"]["designation"] == "J2"
    assert got["2"]["feh"] is None  # -9999 placeholder
    assert got["1"]["split"] in ("train", "test") and got["1"]["cat_split"] == "x"


# ---------------------------------------------------------------- the SNR cut


def test_snr_cut_from_catalogue_with_header_fallback(tmp_path):
    spectra = tmp_path / "fits"
    header_snr = (20.0, 50.0, 50.0, 50.0, 50.0)
    for obsid in range(1, 7):
        write_coadd(
            spectra / f"s{obsid}.fits.gz", obsid=obsid, snr=header_snr if obsid != 5 else {"r": 50.0, "i": -9999.0}
        )
    write_image(spectra / "s7.fits.gz", obsid=7, snr=(20.0, 50.0, 50.0, 1.5, 50.0))  # header snri low
    catalog = [
        dict(obsid=1, snrr=1.9, teff=5000, logg=4, feh=0),  # catalogue below the cut (header is fine): rejected
        dict(obsid=2, snrr=2.0, teff=5000, logg=4, feh=0),  # exactly at the cut: kept
        dict(obsid=3, snrr=-9999.0, teff=5000, logg=4, feh=0),  # placeholder: header value used, kept
        dict(obsid=4, snrr=None, teff=5000, logg=4, feh=0),  # empty: header value used, kept
        dict(obsid=5, snrr=30.0, teff=5000, logg=4, feh=0),  # snri neither in catalogue (no column) nor header
        dict(obsid=7, snrr=30.0, teff=5000, logg=4, feh=0),  # snri from the header, too low
    ]  # obsid 6 has no catalogue row: header values
    cat = write_catalog(tmp_path / "cat.csv", catalog)
    result = run_ingest([str(spectra)], str(tmp_path / "out"), str(cat))
    assert set(_rows(tmp_path / "out")) == {"2", "3", "4", "6"}
    rejects = _rejects(tmp_path / "out")
    assert rejects["s1.fits.gz"]["reason"] == "low SNR" and "snrr = 1.90" in rejects["s1.fits.gz"]["detail"]
    assert rejects["s5.fits.gz"]["reason"] == "no SNR" and "snri" in rejects["s5.fits.gz"]["detail"]
    assert rejects["s7.fits.gz"]["reason"] == "low SNR" and "snri = 1.50" in rejects["s7.fits.gz"]["detail"]
    assert result.rejected == {"low SNR": 2, "no SNR": 1}
    relaxed = run_ingest(
        [str(spectra)], str(tmp_path / "relaxed"), str(cat), IngestConfig(clean=CleanConfig(snr_min_r=0, snr_min_i=0))
    )
    assert relaxed.kept == 7


def test_duplicated_obsid_in_files_and_catalogue(tmp_path):
    spectra = tmp_path / "fits"
    write_coadd(spectra / "a.fits.gz", obsid=11)
    write_image(spectra / "b.fits.gz", obsid=11)  # same obsid, other file: the second is rejected
    write_coadd(spectra / "c.fits.gz", obsid=12)
    write_coadd(spectra / "d.fits.gz", obsid=13)
    cat = write_catalog(tmp_path / "cat.csv", [dict(obsid=o, teff=5000, logg=4, feh=0) for o in (11, 12, 12, 13)])
    result = run_ingest([str(spectra)], str(tmp_path / "out"), str(cat))
    assert set(_rows(tmp_path / "out")) == {"11", "13"} and result.rejected == {"duplicate obsid": 2}
    rejects = _rejects(tmp_path / "out")
    assert "already read from" in rejects["b.fits.gz"]["detail"] and "a.fits.gz" in rejects["b.fits.gz"]["detail"]
    assert "more than once" in rejects["c.fits.gz"]["detail"] and "cat.csv" in rejects["c.fits.gz"]["detail"]


def test_catalogue_missing_column_fails_before_any_work(tmp_path):
    rows = make_dataset(tmp_path / "fits", 2)
    cat = write_catalog(tmp_path / "cat.csv", rows, ("obsid", "teff", "feh"))
    with pytest.raises(SpecllmError, match="'logg'"):
        run_ingest([str(tmp_path / "fits")], str(tmp_path / "out"), str(cat))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- dataset construction


def test_balance_per_class(tmp_path):
    rows = make_dataset(tmp_path / "fits", 23, classes=("A", "F", "G", "K", "M", "G", "G"))
    cat = write_catalog(tmp_path / "cat.csv", rows, CATALOG_COLUMNS)
    picked = []
    for out in ("b1", "b2"):
        result = run_ingest([str(tmp_path / "fits")], str(tmp_path / out), str(cat), IngestConfig(balance=3))
        got = _rows(tmp_path / out)
        picked.append(sorted(got))
        classes = [r["class"] for r in got.values()]
        assert {c: classes.count(c) for c in "AFGKM"} == {"A": 3, "F": 3, "G": 3, "K": 3, "M": 3}
        assert result.read == 15
    assert picked[0] == picked[1]  # deterministic
    # the draw is by a hash of the id: the 3 G stars kept are those with the lowest hash (a salt of its own)
    g_ids = [str(r["obsid"]) for r in rows if r["subclass"].startswith("G")]
    best = sorted(g_ids, key=lambda i: hash_fraction(i, SplitConfig().salt + ":balance"))[:3]
    assert sorted(best) == sorted(i for i in picked[0] if i in g_ids)


def test_balance_draw_is_independent_of_the_split(tmp_path):
    rows = make_dataset(tmp_path / "fits", 60, classes=("G",), layouts=("coadd",))
    cat = write_catalog(tmp_path / "cat.csv", rows, CATALOG_COLUMNS)
    run_ingest([str(tmp_path / "fits")], str(tmp_path / "out"), str(cat), IngestConfig(balance=20))
    splits = [r["split"] for r in _rows(tmp_path / "out").values()]
    assert len(splits) == 20 and 0 < splits.count("test") < 10  # drawn by the split's hash, most would be "test"


def test_split_fraction_and_salt():
    ids = [str(900000000 + i) for i in range(20000)]
    splits = [split_of(i, SplitConfig()) for i in ids]
    assert abs(splits.count("test") / len(ids) - 0.2) < 0.01
    other = [split_of(i, SplitConfig(salt="other")) for i in ids]
    assert splits != other and abs(other.count("test") / len(ids) - 0.2) < 0.01
    half = [split_of(i, SplitConfig(test_fraction=0.5)) for i in ids]
    assert all(
        h == "test" for s, h in zip(splits, half, strict=True) if s == "test"
    )  # nested: a larger test set keeps the old


def test_split_stable_when_files_are_added(tmp_path):
    rows = make_dataset(tmp_path / "fits", 10)
    cat = write_catalog(tmp_path / "cat.csv", rows, CATALOG_COLUMNS)
    run_ingest([str(tmp_path / "fits")], str(tmp_path / "before"), str(cat), IngestConfig(shard_size=4))
    more = make_dataset(tmp_path / "fits", 10, seed=1, first_obsid=800000001)  # sorts before the first ones
    cat = write_catalog(tmp_path / "cat.csv", rows + more, CATALOG_COLUMNS)
    run_ingest([str(tmp_path / "fits")], str(tmp_path / "after"), str(cat), IngestConfig(shard_size=4))
    before, after = _rows(tmp_path / "before"), _rows(tmp_path / "after")
    assert len(after) == 20
    assert {i: r["split"] for i, r in before.items()} == {i: after[i]["split"] for i in before}
    assert {r["split"] for r in after.values()} == {"train", "test"}


# ---------------------------------------------------------------- shards, resume, workers


def test_shards_digests_and_content_hash(tmp_path):
    result, _ = _ingest(tmp_path, n=10, shard_size=3)
    out = tmp_path / "out"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["shards"] == [f"part-{k:05d}.parquet" for k in range(4)]
    digests = []
    for k, name in enumerate(manifest["shards"]):
        record = json.loads((out / f"part-{k:05d}.json").read_text())
        table = pq.read_table(out / name)
        assert record["kept"] == table.num_rows and record["ids"] == table.column("spec_id").to_pylist()
        assert record["digest"] == table_digest(table)  # the shard read back hashes as written
        digests.append(record["digest"])
    assert manifest["content_hash"] == hashlib.sha256("".join(digests).encode()).hexdigest()
    assert sum(pq.read_metadata(out / n).num_rows for n in manifest["shards"]) == 10
    assert pq.read_metadata(out / manifest["shards"][0]).row_group(0).column(0).compression == "ZSTD"


def test_rerun_resumes_and_options_are_guarded(tmp_path):
    first, _ = _ingest(tmp_path, n=8, shard_size=3)
    again = run_ingest(
        [str(tmp_path / "fits")], str(tmp_path / "out"), str(tmp_path / "cat.csv"), IngestConfig(shard_size=3)
    )
    assert again.resumed_chunks == 3 and again.content_hash == first.content_hash and again.kept == 8
    with pytest.raises(SpecllmError, match="other options"):
        run_ingest(
            [str(tmp_path / "fits")], str(tmp_path / "out"), str(tmp_path / "cat.csv"), IngestConfig(shard_size=4)
        )
    replaced = run_ingest(
        [str(tmp_path / "fits")],
        str(tmp_path / "out"),
        str(tmp_path / "cat.csv"),
        IngestConfig(shard_size=4),
        overwrite=True,
    )
    assert replaced.resumed_chunks == 0 and replaced.kept == 8
    assert sorted(glob.glob(str(tmp_path / "out" / "part-*.parquet"))) == [
        str(tmp_path / "out" / f"part-0000{k}.parquet") for k in (0, 1)
    ]


def test_workers_give_the_same_content(tmp_path):
    one, _ = _ingest(tmp_path, n=12, shard_size=5, out="w1")
    two = run_ingest(
        [str(tmp_path / "fits")], str(tmp_path / "w2"), str(tmp_path / "cat.csv"), IngestConfig(shard_size=5, workers=2)
    )
    assert two.content_hash == one.content_hash and two.kept == 12


def test_options_change_the_output(tmp_path):
    one, _ = _ingest(tmp_path, n=4, out="a")
    other = run_ingest([str(tmp_path / "fits")], str(tmp_path / "b"), str(tmp_path / "cat.csv"),
                       IngestConfig(clean=CleanConfig(norm="median", decimals=2)))  # fmt: skip
    assert other.content_hash != one.content_hash
    flux = arrow_to_vectors(read_table(tmp_path / "b").column("flux"))
    assert flux.max() > 1.05 and np.allclose(flux * 100, np.round(flux * 100), atol=1e-3)
    assert json.loads((tmp_path / "b" / MANIFEST).read_text())["clean"]["norm"] == "median"


def test_shards_open_without_specllm(tmp_path, session_shards):
    files = sorted(glob.glob(str(session_shards / "part-*.parquet")))
    assert len(files) == 3  # 20 spectra, 8 per shard

    import pyarrow.dataset as ds

    table = ds.dataset(files, format="parquet").to_table()
    assert table.num_rows == 20 and len(table.column("flux")[0]) == 4901

    import polars as pl

    frame = pl.read_parquet(files)
    assert frame.height == 20 and frame["flux"].dtype == pl.Array(pl.Float32, 4901)
    assert frame["mask"].dtype == pl.Array(pl.Boolean, 4901)
    assert sorted(frame["class"].unique().to_list()) == ["A", "F", "G", "K", "M"]

    import duckdb

    pattern = str(session_shards / "part-*.parquet")
    n, width, teff = duckdb.sql(
        f"select count(*), max(len(flux)), avg(teff) from read_parquet('{pattern}')"
    ).fetchall()[0]
    assert (n, width) == (20, 4901) and 3000 < teff < 9000

    import datasets

    data = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert data.num_rows == 20 and len(data[0]["flux"]) == 4901 and len(data[0]["mask"]) == 4901
    assert isinstance(data[0]["flux"][0], float) and data[0]["split"] in ("train", "test")
    np.testing.assert_allclose(np.asarray(data[0]["flux"], np.float32), table.column("flux")[0].values.to_numpy())


# ---------------------------------------------------------------- the real LAMOST samples (../shared/data)


def test_real_dr10_with_labels(tmp_path, shared_data):
    dr10 = shared_data / "lamost" / "dr10"
    n_files = len(os.listdir(dr10 / "spectra"))
    result = run_ingest(
        [str(dr10 / "spectra")], str(tmp_path / "dr10"), str(dr10 / "labels.csv"), IngestConfig(workers=2)
    )
    assert n_files == 1650 and result.read == 1650
    assert result.kept == 1636 and result.rejected == {"no SNR": 13, "low SNR": 1}  # measured on the shared sample
    rejects = _rejects(tmp_path / "dr10")
    low = [r for r in rejects.values() if r["reason"] == "low SNR"]
    assert len(low) == 1 and "snri = 1.66" in low[0]["detail"]  # labels.csv has no snri: the header's is used
    table = read_table(tmp_path / "dr10")
    assert table.num_rows == 1636 and table.column("teff").null_count == 0
    assert sorted(set(table.column("class").to_pylist())) == ["A", "F", "G"]
    assert set(table.column("data_release").to_pylist()) == {"LAMOST DR10"}
    assert min(table.column("snrr").to_pylist()) >= 2 and min(table.column("snri").to_pylist()) >= 2
    flux = arrow_to_vectors(table.column("flux"))
    assert flux.shape == (1636, 4901) and np.abs(flux).max() <= 1.2  # a plain spline left 10 spectra above 2
    assert 0.15 < table.column("split").to_pylist().count("test") / 1636 < 0.25

    import datasets

    files = sorted(glob.glob(str(tmp_path / "dr10" / "part-*.parquet")))
    data = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert data.num_rows == 1636 and len(data[1635]["flux"]) == 4901


def test_real_dr1_with_catalogue_on_file_name(tmp_path, shared_data):
    dr1 = shared_data / "lamost" / "dr1"
    result = run_ingest([str(dr1 / "spectra")], str(tmp_path / "dr1"), str(dr1 / "catalog.csv"))
    assert result.read == 176 and result.kept == 175 and result.rejected == {"poor coverage": 1}
    table = read_table(tmp_path / "dr1")
    assert table.column("teff").null_count == 175 - 131  # 131 of the kept spectra have a catalogue row
    assert set(table.column("layout").to_pylist()) == {"lamost-dr1-image"}
    assert {"designation", "rv", "teff_err"} <= set(table.column_names)  # further catalogue columns kept


@pytest.mark.parametrize("folder, read, kept", [("dr7", 109, 105), ("dr8", 220, 219)])
def test_real_dr7_dr8_read(tmp_path, shared_data, folder, read, kept):
    result = run_ingest([str(shared_data / "lamost" / folder / "spectra")], str(tmp_path / folder))
    assert (result.read, result.kept) == (read, kept)
    assert set(result.rejected) <= {"low SNR", "no SNR"}  # every file is readable
    table = read_table(tmp_path / folder, columns=["layout", "obsid", "class"])
    assert set(table.column("layout").to_pylist()) == {"lamost-image"} and table.column("obsid").null_count == 0


def test_real_misc_medium_resolution_rejected(tmp_path, shared_data):
    result = run_ingest([str(shared_data / "lamost" / "misc")], str(tmp_path / "misc"))
    assert (result.read, result.kept) == (3, 2)
    rejects = _rejects(tmp_path / "misc")
    assert list(rejects) == ["med-58408-TD230151N343645T01_sp01-015.fits.gz"]
    assert rejects["med-58408-TD230151N343645T01_sp01-015.fits.gz"]["reason"] == "unsupported layout"
    assert "medium-resolution" in rejects["med-58408-TD230151N343645T01_sp01-015.fits.gz"]["detail"]
    releases = set(read_table(tmp_path / "misc", columns=["data_release"]).column(0).to_pylist())
    assert releases == {"LAMOST DR6", "LAMOST DR7"}


def test_real_sdss_rejected(tmp_path, shared_data):
    result = run_ingest([str(shared_data / "sdss")], str(tmp_path / "sdss"))
    assert result.kept == 0 and result.rejected == {"unsupported layout": 1}
    assert "SDSS" in next(iter(_rejects(tmp_path / "sdss").values()))["detail"]
