"""infer's output table (specllm.outputs): one column table, every format readable by astropy with units and
metadata, CSV types for pandas and duckdb, streaming to a partial file and resuming from a cut one."""

from __future__ import annotations

import json
import os
import warnings

import pyarrow as pa
import pytest
from astropy.table import Table

from specllm.errors import SpecllmError
from specllm.outputs import (
    COLUMNS,
    FORMATS,
    RowWriter,
    arrow_schema,
    clean_row,
    column,
    csv_dtypes,
    output_format,
    partial_path,
    read_partial_batches,
    read_predictions,
    read_rows,
    read_table,
    run_metadata,
)

COLS = ["file", "spec_id", "obsid", "ra", "dec", "class", "teff", "logg", "feh", "mg_fe"]
COLS += ["teff_err", "logg_err", "feh_err", "mg_fe_err", "coverage", "partial", "status"]
META = run_metadata({"model": "default", "modelsha": "a" * 64, "datasha": "b" * 64}, "specllm infer x -o y")


def _rows(n: int = 3) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append(
            {
                "file": f"dir,with comma/spec-{i}.fits.gz",
                "spec_id": str(900000 + i),
                "obsid": 900000 + i,
                "ra": 123.456789012 + i,
                "dec": -5.123456789,
                "class": "G",
                "teff": 5614.72,
                "logg": 4.25742,
                "feh": -0.733866,
                "mg_fe": 0.1,
                "teff_err": 67.3694,
                "logg_err": 0.1,
                "feh_err": 0.05,
                "mg_fe_err": 0.02,
                "coverage": 0.99951,
                "partial": i == 1,
                "status": "ok",
            }
        )
    rows.append({"file": "missing.fits", "status": "unreadable: no such file"})
    return rows


def _write(path, rows, **kw) -> RowWriter:
    w = RowWriter(str(path), COLS, META, **kw)
    for r in rows:
        w.write(r)
    w.close()
    return w


def _read(path) -> Table:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FITS: 'dex' is not a FITS-standard unit
        return Table.read(path, format="votable") if str(path).endswith(".vot") else Table.read(path)


def test_column_table_covers_labels_errors_abundances_and_flags():
    assert column("teff").unit == "K" and column("teff").decimals == 0
    assert column("teff_err") == column("teff").__class__("float", "K", 0, column("teff_err").description)
    assert column("mg_fe").unit == "dex" and column("mg_fe_err").decimals == 3
    assert column("ra").decimals == 7 and column("ra").unit == "deg"
    for name in ("flag", "flag_reason", "class_prob", "objclass", "subclass", "z", "snrg", "snrr", "snri"):
        assert name in COLUMNS
    assert arrow_schema(["obsid", "spec_id", "partial"]).types == [pa.int64(), pa.string(), pa.bool_()]


def test_unknown_extension_is_refused_in_one_line():
    for path in ("x.txt", "x", "x.fits.gz"):
        with pytest.raises(SpecllmError) as exc:
            output_format(path)
        assert "\n" not in str(exc.value) and ".parquet" in str(exc.value)
    assert output_format(None) == "csv" and output_format("X.FITS") == "fits"


@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_every_format_opens_in_astropy_with_units_and_metadata(tmp_path, ext):
    path = tmp_path / f"out{ext}"
    rows = _rows()
    _write(path, rows)
    assert not os.path.exists(partial_path(str(path)))
    t = _read(path)
    assert len(t) == len(rows) and t.colnames == COLS
    assert abs(t["ra"][0] - 123.4567890) < 1e-9 and t["teff"][0] == 5615 and t["logg"][0] == pytest.approx(4.257)
    if ext != ".csv":  # CSV is the plain table (types, no units); see test_csv_types
        assert str(t["teff"].unit) == "K" and str(t["ra"].unit) == "deg" and str(t["logg"].unit) == "dex"
        assert str(t["mg_fe"].unit) == "dex" and str(t["feh_err"].unit) == "dex"
        meta = {k.lower(): v for k, v in t.meta.items()}
        text = "".join(str(meta.get("description", "")).split())  # VOTable: in the table's description
        for key in ("specllm", "modelsha", "datasha", "command", "date"):
            assert str(META[key]).replace(" ", "") in (str(meta.get(key, "")).replace(" ", "") or text), key
        assert str(t["spec_id"][0]) == "900000" and t["spec_id"].dtype.kind in "US"
    if ext == ".parquet":  # Arrow nulls, which astropy's Parquet reader does not know: types checked in Arrow
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        assert [schema.field(c).type for c in ("spec_id", "obsid", "partial")] == [pa.string(), pa.int64(), pa.bool_()]
        assert pq.read_table(path).column("partial").null_count == 1
        t = read_table(str(path))  # specllm's reader: the same table as astropy, nulls masked
        assert str(t["teff"].unit) == "K" and t.meta["modelsha"] == META["modelsha"]
    if ext != ".csv":
        assert t["obsid"].dtype.kind == "i" and t["obsid"].mask[-1]
        assert t["partial"].dtype == bool and bool(t["partial"][1]) is True
    back = read_rows(str(path))
    expected = [clean_row(r, COLS) for r in rows]
    if ext == ".fits":  # FITS logical null reads back as False through astropy
        expected[-1]["partial"] = False
    assert back == expected


def test_csv_text_precision_and_null_partial(tmp_path):
    path = tmp_path / "p.csv"
    _write(path, _rows(1))
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLS)
    assert (
        '"dir,with comma/spec-0.fits.gz",900000,900000,123.4567890,-5.1234568,G,5615.0,4.257,-0.734,0.100' in lines[1]
    )
    assert lines[2].startswith("missing.fits,,,") and lines[2].endswith(",,unreadable: no such file")


def test_csv_types_in_pandas_and_duckdb(tmp_path):
    pd = pytest.importorskip("pandas")
    duckdb = pytest.importorskip("duckdb")
    path = tmp_path / "p.csv"
    _write(path, _rows())
    df = pd.read_csv(path, dtype=csv_dtypes(COLS))
    assert str(df["spec_id"].dtype) == "string" and df["spec_id"][0] == "900000"
    assert str(df["obsid"].dtype) == "Int64" and df["obsid"].isna().tolist() == [False, False, False, True]
    assert str(df["partial"].dtype) == "boolean" and df["partial"].isna().tolist()[-1]
    assert df["ra"][0] == pytest.approx(123.456789, abs=1e-7) and str(df["teff"].dtype) == "float64"
    plain = pd.read_csv(path)  # without the types: numbers are still numbers
    assert str(plain["teff"].dtype) == "float64" and str(plain["ra"].dtype) == "float64"
    rel = duckdb.sql(f"select * from read_csv('{path}', types={csv_dtypes(COLS, 'duckdb')})")
    types = dict(zip(rel.columns, map(str, rel.types)))
    assert types["spec_id"] == "VARCHAR" and types["obsid"] == "BIGINT" and types["partial"] == "BOOLEAN"
    assert types["teff"] == "DOUBLE"
    assert rel.fetchall()[-1][COLS.index("partial")] is None


def test_rows_stream_to_the_partial_file_before_the_end(tmp_path):
    for ext in (".csv", ".parquet"):
        path = tmp_path / f"s{ext}"
        w = RowWriter(str(path), COLS, META, flush_seconds=0.0)
        for r in _rows(2):
            w.write(r)
        assert not path.exists()
        part = partial_path(str(path))
        got = read_rows(part, output_format(str(path)))
        assert [r["file"] for r in got] == [r["file"] for r in _rows(2)]
        w.close()
        assert path.exists() and not os.path.exists(part)


def test_resume_from_cut_partials_keeps_each_row_once(tmp_path):
    rows = _rows(5)
    for ext in (".csv", ".ecsv", ".parquet", ".fits"):
        path = tmp_path / f"r{ext}"
        w = RowWriter(str(path), COLS, META, batch_rows=2, flush_seconds=1e9)
        for r in rows[:4]:
            w.write(r)
        w._close_streams()  # as a kill leaves it (no rename)
        part = partial_path(str(path))
        if ext in (".csv", ".ecsv"):  # a kill in the middle of a line
            with open(part, "a") as fh:
                fh.write('"half a row,12')
        else:  # a batch cut short
            stream = os.path.join(part, sorted(os.listdir(part))[0])
            size = os.path.getsize(stream)
            with open(stream, "r+b") as fh:
                fh.truncate(size - 40)
            assert read_partial_batches(part).num_rows == 2  # the last complete batch
        w = RowWriter(str(path), COLS, META, resume=True)
        kept = {r[0] for r in w.done}
        for r in rows:
            if (r["file"], r.get("spec_id")) not in w.done:
                w.write(r)
        w.close()
        assert w.kept == (4 if ext in (".csv", ".ecsv") else 2), ext
        assert kept <= {r["file"] for r in rows}
        expected = [clean_row(r, COLS) for r in rows]
        if ext == ".fits":
            expected[-1]["partial"] = False
        assert read_rows(str(path)) == expected, ext
        # resuming a finished output adds nothing and changes nothing
        w = RowWriter(str(path), COLS, META, resume=True)
        assert w.kept == len(rows)
        w.close()
        assert read_rows(str(path)) == expected


def test_resume_refuses_an_output_with_other_columns(tmp_path):
    path = tmp_path / "o.csv"
    _write(path, _rows(1))
    with pytest.raises(SpecllmError, match="other columns"):
        RowWriter(str(path), COLS[:-1], META, resume=True)
    with pytest.raises(SpecllmError, match="--out"):
        RowWriter(None, COLS, META, resume=True)


# ---------------------------------------------------------------- resume that cannot lose rows (issue 26)


def _options(**kw) -> dict:
    import json

    return META | {"options": json.dumps({"--decode": "head", "--snr-min-r": 2.0} | kw, sort_keys=True)}


@pytest.mark.parametrize("ext", [".csv", ".ecsv", ".parquet", ".fits"])
def test_a_partial_is_refused_without_resume_and_checked_with_it(tmp_path, ext):
    path = tmp_path / f"k{ext}"
    w = RowWriter(str(path), COLS, _options(), flush_seconds=0.0)
    for r in _rows(2)[:2]:
        w.write(r)
    w.abort()  # as an interrupt leaves it
    part = partial_path(str(path))
    before = read_rows(part, output_format(str(path)))
    assert len(before) == 2
    with pytest.raises(SpecllmError) as exc:  # the same command without --resume
        RowWriter(str(path), COLS, _options())
    assert "--resume" in str(exc.value) and "--overwrite" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(SpecllmError, match=r"--snr-min-r 2\.0, this run has --snr-min-r 50"):
        RowWriter(str(path), COLS, _options(**{"--snr-min-r": 50.0}), resume=True)
    with pytest.raises(SpecllmError, match="another model"):
        RowWriter(str(path), COLS, _options() | {"modelsha": "c" * 64}, resume=True)
    with pytest.raises(SpecllmError, match="exclude each other"):
        RowWriter(str(path), COLS, _options(), resume=True, overwrite=True)
    assert read_rows(part, output_format(str(path))) == before  # every refusal left the partial as it was
    w = RowWriter(str(path), COLS, _options(), resume=True)
    assert w.kept == 2
    for r in _rows(2)[2:]:
        w.write(r)
    w.close()
    assert [r["file"] for r in read_rows(str(path))] == [r["file"] for r in _rows(2)]
    assert not os.path.lexists(part) and not os.path.exists(part + ".json")
    # --overwrite discards an interrupted run's rows
    w = RowWriter(str(path), COLS, _options(), flush_seconds=0.0)
    w.write(_rows(1)[0])
    w.abort()
    _write(path, _rows(1)[:0], overwrite=True)
    assert read_rows(str(path)) == [] and not os.path.lexists(part)


def test_resume_of_a_binary_partial_rewrites_nothing(tmp_path):
    """The earlier run's Arrow streams stay byte for byte: a kill during the resume cannot lose them."""
    path = tmp_path / "b.parquet"
    w = RowWriter(str(path), COLS, _options(), flush_seconds=0.0)
    for r in _rows(2)[:2]:
        w.write(r)
    w.abort()
    part = partial_path(str(path))
    streams = {n: open(os.path.join(part, n), "rb").read() for n in os.listdir(part) if n.endswith(".arrows")}
    w = RowWriter(str(path), COLS, _options(), resume=True, flush_seconds=0.0)
    w.write(_rows(2)[2])
    w.abort()  # killed again
    for name, data in streams.items():
        assert open(os.path.join(part, name), "rb").read() == data
    assert read_partial_batches(part).num_rows == 3


# ---------------------------------------------------------------- names in any encoding (issue 24, item 6)

ODD_NAMES = [
    "/data/dür/ü.fits.gz",  # UTF-8: FITS wrote str columns as ASCII and raised UnicodeEncodeError
    "/data/spec-\udcff.fits.gz",  # a byte that is not UTF-8 (Python holds it as a lone surrogate)
    "/data/a\nb.fits.gz",  # a newline: it duplicated a row after --resume
    "/data/日本\t語.fits",
]


@pytest.mark.parametrize("ext", [".csv", ".ecsv", ".parquet", ".fits", ".vot"])
def test_names_in_any_encoding_are_written_and_resumed_faithfully(tmp_path, ext):
    rows = _rows(len(ODD_NAMES))[: len(ODD_NAMES)]
    for row, name in zip(rows, ODD_NAMES):
        row["file"] = name
    rows[0]["spec_id"] = "ü-1"
    path = tmp_path / f"ö-\udcfe{ext}"  # the output's own name is neither ASCII nor UTF-8
    meta = META | {"command": f"specllm infer ü.fits.gz -o ö{ext}"}
    w = RowWriter(str(path), COLS, meta, batch_rows=2, flush_seconds=1e9)
    for r in rows[:3]:
        w.write(r)
    w._close_streams()  # as a kill leaves it: the partial file
    w = RowWriter(str(path), COLS, meta, resume=True)
    assert w.kept == 3
    for r in rows:
        if r["file"] not in w.done_files:  # how infer skips a FITS input already written
            w.write(r)
    w.close()
    back = read_rows(str(path))
    assert [r["file"] for r in back] == ["/data/dür/ü.fits.gz", "/data/spec-\\udcff.fits.gz", "/data/a\\nb.fits.gz",
                                         "/data/日本\\t語.fits"]  # fmt: skip
    assert back[0]["spec_id"] == "ü-1"
    again = RowWriter(str(path), COLS, meta, resume=True)  # a finished output: every name is found again
    assert again.kept == len(rows)
    assert all(name in again.done_files for name in ODD_NAMES)
    assert all((r["file"], r["spec_id"]) in again.done for r in rows)
    again.close()
    assert read_rows(str(path)) == back
    if ext == ".fits":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = Table.read(str(path))
        assert t["file"][0] == "/data/dür/ü.fits.gz".encode() or t["file"][0] == "/data/dür/ü.fits.gz"
        assert "\\xfc.fits.gz" in t.meta["COMMAND"]  # FITS headers are ASCII: other characters escaped


# ---------------------------------------------------------------- outputs read back (issue 26)

PRED_COLS = ["file", "spec_id", "obsid", "ra", "dec", "class", "teff", "logg", "feh", "teff_err", "logg_err"]
PRED_COLS += ["feh_err", "coverage", "partial", "status", "flag", "flag_reason"]


def _predictions(n: int = 12) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append({"file": f"spec-{i}.fits.gz", "spec_id": str(999999 + i), "obsid": 999999 + i, "ra": 10.0 + i,
                     "dec": -5.0, "class": "GK"[i % 2], "teff": 5000.0 + 37 * i, "logg": 4.0 - 0.1 * i,
                     "feh": -0.3 + 0.05 * i, "teff_err": 50.0, "logg_err": 0.1, "feh_err": 0.05, "coverage": 0.99,
                     "partial": False, "status": "ok", "flag": i % 3, "flag_reason": "low SNR" if i % 3 else ""})  # fmt: skip
    rows.append({"file": "bad.fits", "status": "unreadable: no such file"})
    return rows


@pytest.mark.parametrize("ext", sorted(set(FORMATS) - {".xml"}))
def test_obsid_999999_and_descriptions_read_back(tmp_path, ext):
    """A real obsid 999999 is no null in any format; FITS descriptions reach astropy; VOTable fields carry UCDs."""
    path = tmp_path / f"n{ext}"
    w = RowWriter(str(path), PRED_COLS, META)
    for r in _predictions(2):
        w.write(r)
    w.close()
    table = read_predictions(str(path))
    assert table.column("obsid").to_pylist() == [999999, 1000000, None]
    assert table.schema.field("obsid").type == pa.int64() and table.column("spec_id").to_pylist()[0] == "999999"
    if ext != ".parquet":  # astropy's own reader (its Parquet reader knows no Arrow nulls: read_table above)
        t = _read(path)
        assert int(t["obsid"][0]) == 999999 and not t["obsid"].mask[0] and t["obsid"].mask[2]
        if ext != ".csv":
            assert t["obsid"].description == COLUMNS["obsid"].description
            assert t["flag_reason"].description == COLUMNS["flag_reason"].description
    if ext == ".fits":
        from astropy.io import fits

        header = fits.getheader(path, 1)
        assert header["TNULL3"] < 0 and header["TCOMM1"] == COLUMNS["file"].description
    if ext == ".vot":
        from astropy.io import votable
        from astropy.io.votable.ucd import check_ucd

        fields = {f.name: f.ucd for f in votable.parse(str(path)).get_first_table().fields}
        assert fields["ra"] == "pos.eq.ra;meta.main" and fields["teff_err"] == "stat.error;phys.temperature.effective"
        assert all(check_ucd(u, check_controlled_vocabulary=True) for u in fields.values() if u)
    if ext != ".csv":
        assert dict(read_table(str(path)).meta)["modelsha"] == META["modelsha"]


def test_compare_external_gives_the_same_table_from_every_format(tmp_path):
    from specllm.config import ExternalConfig
    from specllm.external import compare_external

    rows = _predictions()
    cat = tmp_path / "cat.csv"
    lines = ["obsid,ra,dec,teff,logg,feh"]
    lines += [f"{r['obsid']},{r['ra']},{r['dec']},{r['teff'] - 80},{r['logg'] + 0.1},{r['feh']}" for r in rows[:-1]]
    cat.write_text("\n".join(lines) + "\n")
    tables = {}
    for ext in sorted(set(FORMATS) - {".xml"}):
        path = tmp_path / f"p{ext}"
        w = RowWriter(str(path), PRED_COLS, META)
        for r in rows:
            w.write(r)
        w.close()
        result = compare_external(str(path), str(cat), str(tmp_path / ext[1:]), ExternalConfig(survey="lamost"))
        assert result.counts["matched"] == 12 and result.counts["predicted"] == 12, ext
        tables[ext] = ((tmp_path / ext[1:] / "table7.csv").read_text(), result.counts)
    assert len({text for text, _ in tables.values()}) == 1
    assert len({json.dumps(c, sort_keys=True) for _, c in tables.values()}) == 1


def test_abundance_columns_are_described_as_labels_names_them():
    from specllm.labels import element_title
    from specllm.outputs import column

    assert column("tiii_fe").description == "[Ti II/Fe]" == element_title("TIII")
    assert column("ci_fe").description == "[C I/Fe]" and column("mg_fe").description == "[Mg/Fe]"
