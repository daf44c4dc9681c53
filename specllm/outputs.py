"""`infer`'s output table: its columns (type, unit, precision) named once, and one streaming writer per format.

`COLUMNS` is the one table of column types, units and precisions; every writer (CSV, ECSV, Parquet, FITS,
VOTable) and the Python API (`specllm.load_model`) take types, units and rounding from it, so adding a column to
`infer`'s rows is one line here. Abundances `<x>_fe` and every `<label>_err` follow their label's entry
(`column()`).

The format is chosen by the output's extension (`FORMATS`); an unknown one is refused before any work. Rows reach
the output as they are computed, in input order (`RowWriter.write`):
- CSV and ECSV are streamed as text into a temporary file beside the output (`.NAME.partial`), one complete line per
  row, renamed onto the output when the run completes;
- Parquet, FITS and VOTable rows are streamed as Arrow IPC record batches into a temporary folder beside the output
  (`.NAME.partial/`, one stream per run, readable up to its last complete batch even after `kill -9`); when the run
  completes the final file is written from it (Parquet by record batch; FITS and VOTable through astropy's writers,
  which hold the table in memory) and the folder removed.
`RowWriter(resume=True)` first takes the rows of an earlier run (from its partial temporary, else from the finished
output) and exposes their ids (`done`): `infer --resume` skips those inputs and appends the rest. The run's metadata
is kept beside the partial (`meta.json`); a resume refuses another model (weights hashes) or other row-changing
`options`, naming the difference, and a partial left without `resume` (or `overwrite`) is refused, never discarded.
A resumed binary partial keeps its streams as they are and adds one; a text one is rewritten beside and renamed.

CSV carries no units or metadata (a plain table for pandas, duckdb and spreadsheets; `csv_dtypes()` gives the types
to read it with); the other formats carry units and the run's metadata (`META`). FITS has no `dex` in its unit
standard: TUNIT is written `dex` anyway (TOPCAT shows it; astropy reads it as an unrecognised unit, with a warning),
and FITS logical nulls (`partial` of a failed row) read as False in astropy (TOPCAT shows them blank).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ._version import __version__
from .errors import SpecllmError, one_line
from .labels import element_title

# ---------------------------------------------------------------- the columns


@dataclass(frozen=True)
class Column:
    kind: str  # "str", "int", "float", "bool"
    unit: str | None = None
    decimals: int | None = None  # floats are rounded to this many decimals in every format
    description: str = ""


COLUMNS: dict[str, Column] = {
    "file": Column("str", description="input file as given (FILE#i: spectrum i of an array file)"),
    "spec_id": Column("str", description="obsid as text, or the file stem where there is none (DR1)"),
    "obsid": Column("int", description="LAMOST observation id"),
    "ra": Column("float", "deg", 7, "right ascension (header)"),
    "dec": Column("float", "deg", 7, "declination (header)"),
    "class": Column("str", description="predicted class A/F/G/K/M"),
    "class_prob": Column("float", None, 3, "probability of the predicted class"),
    "teff": Column("float", "K", 0, "effective temperature"),
    "logg": Column("float", "dex", 3, "log10 surface gravity (cgs)"),
    "feh": Column("float", "dex", 3, "[Fe/H]"),
    "coverage": Column("float", None, 3, "fraction of the 3800-8700 A grid that is observed flux"),
    "partial": Column("bool", description="missing more than 2% of the grid at one end; null for a failed row"),
    "status": Column("str", description="ok, or why the spectrum got no labels"),
    "flag": Column("int", description="bitmask: why a label cannot be trusted (0: none)"),
    "flag_reason": Column("str", description="the flag bits in words"),
    "usable": Column("bool", description="status ok and no flag bit set but partial: the rows to keep"),
    "domain_score": Column("float", None, 3, "distance to the training spectra (> 1: outside the model's domain)"),
    "objclass": Column("str", description="LAMOST CLASS (header)"),
    "subclass": Column("str", description="LAMOST SUBCLASS (header)"),
    "z": Column("float", None, 6, "LAMOST pipeline redshift (header)"),
    "snrg": Column("float", None, 2, "signal-to-noise, g band (header)"),
    "snrr": Column("float", None, 2, "signal-to-noise, r band (header)"),
    "snri": Column("float", None, 2, "signal-to-noise, i band (header)"),
}
ABUNDANCE = Column("float", "dex", 3, "[X/Fe]")
# The null of integer columns where a format needs a value for it (FITS TNULLn): the smallest int64, which no LAMOST
# obsid (positive) or flag (a bitmask >= 0) can be. astropy's default, 999999, is a valid obsid.
INT_NULL = -(2**63)
FALLBACK = Column("float", None, 6)


# IVOA UCD1+ words per column, written to VOTable FIELDs (`ucd()`: `<x>_fe` an abundance, `<label>_err` its error).
UCDS = {
    "file": "meta.ref.uri",
    "spec_id": "meta.id;meta.main",
    "obsid": "meta.id",
    "ra": "pos.eq.ra;meta.main",
    "dec": "pos.eq.dec;meta.main",
    "class": "src.spType",
    "class_prob": "stat.probability",
    "teff": "phys.temperature.effective",
    "logg": "phys.gravity",
    "feh": "phys.abund.Fe",
    "coverage": "stat.fit.param",
    "partial": "meta.code",
    "status": "meta.code.status",
    "flag": "meta.code.qual",
    "flag_reason": "meta.note",
    "usable": "meta.code.qual",
    "domain_score": "stat.fit.goodness",
    "objclass": "src.class",
    "subclass": "src.spType",
    "z": "src.redshift",
    "snrg": "stat.snr",
    "snrr": "stat.snr",
    "snri": "stat.snr",
}


def ucd(name: str) -> str | None:
    """A column's UCD (`UCDS`), None where none fits."""
    if name.endswith("_err"):
        base = ucd(name[: -len("_err")])
        return f"stat.error;{base}" if base else "stat.error"
    if name in UCDS:
        return UCDS[name]
    return "phys.abund" if name.endswith("_fe") else None


def column(name: str) -> Column:
    """A column's type, unit and precision: `COLUMNS`, `<x>_fe` as an abundance, `<label>_err` as its label."""
    if name in COLUMNS:
        return COLUMNS[name]
    if name.endswith("_err"):
        base = column(name[: -len("_err")])
        return Column(base.kind, base.unit, base.decimals, f"1-sigma uncertainty of {name[:-4]}")
    if name.endswith("_fe"):  # `tiii_fe` -> [Ti II/Fe]
        return Column(ABUNDANCE.kind, ABUNDANCE.unit, ABUNDANCE.decimals, element_title(name[:-3]))
    return FALLBACK


ARROW_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
PANDAS_TYPES = {"str": "string", "int": "Int64", "float": "float64", "bool": "boolean"}
DUCKDB_TYPES = {"str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN"}

# The run's metadata, in every format but CSV (FITS: header keywords of the table HDU).
META = {
    "specllm": "specllm version",
    "model": "model directory (default: the model shipped with specllm)",
    "modelsha": "SHA-256 of the model's weights.safetensors",
    "parentsha": "SHA-256 of its stage-1 parent's weights (stage-2 models)",
    "datasha": "content hash of the model's training data (its model card)",
    "date": "UTC time the run started",
    "command": "command line",
    "options": "the options that change rows, as JSON (infer --resume checks them)",
}


def run_metadata(model: dict, command: str | None = None) -> dict:
    """The `META` of a run: specllm's version, the model's (`model`: model, modelsha, ...), date, command line."""
    meta = {"specllm": __version__, **{k: v for k, v in model.items() if v is not None}}
    meta["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    meta["command"] = command if command is not None else command_line()
    return meta


def command_line() -> str:
    import shlex

    argv = [os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0].endswith("specllm") else "specllm"]
    return shlex.join(argv + sys.argv[1:])


def csv_dtypes(columns: list[str], engine: str = "pandas") -> dict[str, str]:
    """The types to read infer's CSV with: `pandas.read_csv(p, dtype=csv_dtypes(cols))`, or
    `duckdb.read_csv(p, types=csv_dtypes(cols, "duckdb"))` (a plain CSV cannot say that a spec_id of digits is text,
    or that an empty cell of an integer or boolean column is null)."""
    table = PANDAS_TYPES if engine == "pandas" else DUCKDB_TYPES
    return {c: table[column(c).kind] for c in columns}


# ---------------------------------------------------------------- values


def clean_value(name: str, value):
    """A row's value as the column's type, rounded to its precision; None, NaN and infinities are null."""
    if value is None:
        return None
    kind = column(name).kind
    if kind == "float":
        value = float(value)
        if not math.isfinite(value):
            return None
        decimals = column(name).decimals
        return round(value, decimals) + 0.0 if decimals is not None else value  # + 0.0: no -0.0
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    return one_line(value)  # text on one line and valid UTF-8 in every format (see `WrittenKeys`)


def clean_row(row: dict, columns: list[str]) -> dict:
    return {c: clean_value(c, row.get(c)) for c in columns}


def format_cell(name: str, value) -> str:
    """A cleaned value as CSV/ECSV text (null: empty); floats with their column's decimals (at least one)."""
    if value is None:
        return ""
    col = column(name)
    if col.kind == "float":
        return f"{value:.{max(col.decimals, 1)}f}" if col.decimals is not None else repr(value)
    if col.kind == "bool":
        return "True" if value else "False"
    if col.kind == "str":
        return value.replace("\r", " ").replace("\n", " ")  # one line per row
    return str(value)


def parse_cell(name: str, text: str):
    if text == "":
        return None
    kind = column(name).kind
    if kind == "float":
        return float(text)
    if kind == "int":
        return int(text)
    if kind == "bool":
        return text == "True"
    return text


# ---------------------------------------------------------------- tables


def arrow_schema(columns: list[str]) -> pa.Schema:
    return pa.schema([pa.field(c, ARROW_TYPES[column(c).kind]) for c in columns])


def rows_to_arrow(rows: list[dict], columns: list[str]) -> pa.Table:
    """Rows (dicts) as an Arrow table of the output's types, values cleaned (rounded, NaN as null)."""
    return pa.Table.from_pylist([clean_row(r, columns) for r in rows], schema=arrow_schema(columns))


def to_astropy(table: pa.Table, meta: dict | None = None):
    """An Arrow table of infer's columns as an astropy Table: masked columns (null as masked), units, display
    formats, descriptions and the run's metadata."""
    import numpy as np
    from astropy.table import MaskedColumn, Table

    out = Table(meta=dict(meta or {}))
    for name in table.column_names:
        col = column(name)
        values = table.column(name).to_pylist()
        mask = np.array([v is None for v in values], dtype=bool)
        if col.kind == "str":
            data = np.array(["" if v is None else v for v in values], dtype=str)
        elif col.kind == "int":
            data = np.array([0 if v is None else v for v in values], dtype=np.int64)
        elif col.kind == "bool":
            data = np.array([False if v is None else v for v in values], dtype=bool)
        else:
            data = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        fmt = f".{col.decimals}f" if col.kind == "float" and col.decimals is not None else None
        out[name] = MaskedColumn(data, mask=mask, unit=col.unit, format=fmt, description=col.description or None)
        if col.kind == "bool":
            out[name].fill_value = False  # what FITS, which has no logical null through astropy, stores
        if col.kind == "int":
            out[name].fill_value = INT_NULL  # FITS TNULL, VOTable null: never a real obsid or flag
    return out


def ecsv_header(columns: list[str], meta: dict) -> list[str]:
    """The ECSV header lines (YAML with types, units, metadata, then the column names) of infer's table."""
    table = to_astropy(pa.Table.from_pylist([], schema=arrow_schema(columns)), meta)
    buf = io.StringIO()
    table.write(buf, format="ascii.ecsv", delimiter=",")
    return buf.getvalue().splitlines()


def parquet_metadata(table: pa.Table, meta: dict) -> dict[str, str]:
    """Parquet key-value metadata: the run's metadata as plain keys (pyarrow, polars, duckdb), and astropy's
    `table_meta_yaml` (types, units, descriptions, metadata) and string lengths, so that `Table.read` restores them."""
    from astropy.table import meta as astropy_meta

    header = to_astropy(table.slice(0, 0), meta)
    out = {k: str(v) for k, v in meta.items()}
    out["table_meta_yaml"] = "\n".join(astropy_meta.get_yaml_from_table(header))
    for name in table.column_names:
        if column(name).kind == "str":
            lengths = [len(v) for v in table.column(name).to_pylist() if v is not None]
            out[f"table::len::{name}"] = str(max(lengths, default=1) or 1)
    return out


def fits_text_as_utf8(table):
    """`table` with its text columns as UTF-8 bytes: astropy writes str columns to FITS as ASCII (a file name
    `ü.fits.gz` raised UnicodeEncodeError); bytes go in as they are (TFORM nA, n the longest name's byte length),
    and astropy, TOPCAT and fitsio read them back as UTF-8."""
    import numpy as np
    from astropy.table import MaskedColumn

    for name in table.colnames:
        col = table[name]
        if col.dtype.kind == "U":
            data = np.array([v.encode("utf-8") for v in np.asarray(col, dtype=str)], dtype=bytes)
            mask = getattr(col, "mask", None)
            table[name] = MaskedColumn(data, mask=mask, unit=col.unit, format=col.format,
                                       description=col.description)  # fmt: skip
    return table


def header_text(value) -> str:
    """A metadata value as FITS header text, which must be printable ASCII: other characters (a non-ASCII name in
    the command line) written as Python escapes (\\xfc)."""
    return one_line(str(value)).encode("ascii", "backslashreplace").decode("ascii")


def write_fits(path: str, table: pa.Table, meta: dict) -> None:
    """FITS: integer nulls as TNULLn = `INT_NULL`; column descriptions as TCOMMn (TOPCAT/STIL read them), as TTYPEn
    comments (cut to the card), and in astropy's serialized-column header comments, which `Table.read` restores as
    `description` (with units and types)."""
    from astropy.io import fits
    from astropy.io.fits.connect import _encode_mixins

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'dex' is not a FITS unit: written below as it is
        hdu = fits.table_to_hdu(_encode_mixins(fits_text_as_utf8(to_astropy(table, {}))))
    for i, name in enumerate(table.column_names, start=1):
        col = column(name)
        if col.unit:
            hdu.header[f"TUNIT{i}"] = col.unit
        if col.description:
            hdu.header.comments[f"TTYPE{i}"] = col.description[:47]
            hdu.header[f"TCOMM{i}"] = header_text(col.description)
    hdu.header["EXTNAME"] = "SPECLLM"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a long value (the command line) leaves no room for its comment
        for key, value in meta.items():
            hdu.header[key.upper()] = (header_text(value), META.get(key, "")[:40])
    from .files import atomic_write

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)

    atomic_write(path, write)


def write_votable(path: str, table: pa.Table, meta: dict) -> None:
    from astropy.io import votable
    from astropy.io.votable.tree import Info

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'dex' is not a VOUnit: kept as it is
        vot = votable.from_table(to_astropy(table, {}))
    element = vot.get_first_table()
    element.description = "specllm labels; " + "; ".join(f"{k}={v}" for k, v in meta.items())
    for key, value in meta.items():
        element.infos.append(Info(name=key, value=str(value)))
    for field in element.fields:
        desc = column(field.name).description
        if desc:
            field.description = desc
        field.ucd = ucd(field.name)
    from .files import atomic_write

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vot.to_xml(tmp)

    atomic_write(path, write)


def write_parquet(path: str, batches, schema: pa.Schema, meta: dict, row_group: int = 65536) -> None:
    import pyarrow.parquet as pq

    from .files import atomic_write
    from .shards import COMPRESSION

    table = pa.Table.from_batches(list(batches), schema=schema)
    table = table.replace_schema_metadata(parquet_metadata(table, meta))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: pyarrow cannot take a path that is not UTF-8 (b'\xfe.parquet')
            pq.write_table(table, fh, compression=COMPRESSION, row_group_size=row_group)

    atomic_write(path, write)


# ---------------------------------------------------------------- formats and the streaming writer

FORMATS = {".csv": "csv", ".ecsv": "ecsv", ".parquet": "parquet", ".fits": "fits", ".vot": "votable", ".xml": "votable"}
TEXT_FORMATS = ("csv", "ecsv")


def output_format(path: str | None) -> str:
    """The format of an output path by its extension ('csv' for stdout); an unknown extension is a SpecllmError."""
    if path is None or path == "-":
        return "csv"
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in FORMATS:
        known = ", ".join(FORMATS)
        raise SpecllmError(f"{path}: unknown output format {ext or '(no extension)'!r}; use one of {known}")
    return FORMATS[ext]


def partial_path(path: str) -> str:
    """Where an unfinished output streams to: `.NAME.partial` beside it (a folder for the binary formats)."""
    p = Path(path)
    return str(p.with_name(f".{p.name}.partial"))


def row_key(row: dict) -> tuple[str | None, str | None]:
    """What identifies an input's row for `--resume`: its file (FILE#i for array spectra) and spec_id."""
    return (row.get("file"), row.get("spec_id"))


def _as_written(key):
    if isinstance(key, tuple):
        return tuple(_as_written(k) for k in key)
    return None if key is None else one_line(key)


class WrittenKeys(set):
    """The files (or `row_key`s) of rows already in an output. Text is written as `one_line` gives it (a newline
    or tab as `\\n`, `\\t`; a byte that is not UTF-8, which Python holds as a lone surrogate, as `\\udcff`), so
    membership is tested on the key as it was written: a name in any encoding is found again by `--resume`."""

    def __contains__(self, key) -> bool:
        return super().__contains__(_as_written(key))

    def add(self, key) -> None:
        super().add(_as_written(key))


class RowWriter:
    """Writes rows (dicts of infer's columns) as they come, in order, to `path` (None: CSV on stdout).

    `resume=True` keeps the rows of an earlier run of the same output (its partial temporary, else the finished
    file): `done` holds their `row_key`s and `kept` their number. `close()` completes the output; `abort()` (on an
    interrupt) leaves the partial temporary for `--resume`.
    """

    def __init__(
        self,
        path: str | None,
        columns: list[str],
        meta: dict,
        resume: bool = False,
        batch_rows: int = 256,
        flush_seconds: float = 0.2,
        overwrite: bool = False,
    ):
        self.path = path
        self.flush_seconds = flush_seconds
        self._last = time.monotonic()
        self.format = output_format(path)
        self.columns = list(columns)
        self.meta = dict(meta)
        self.batch_rows = batch_rows
        self.done: set = WrittenKeys()
        self.done_files: set = WrittenKeys()
        self.kept = 0
        self.written = 0
        self._pending: list[dict] = []
        self._fh = None
        self._ipc = None
        if path is None:
            if resume:
                raise SpecllmError("--resume needs --out FILE: rows on stdout cannot be continued")
            self._fh = sys.stdout
            self._write_text_header()
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.partial = partial_path(path)
        if resume and overwrite:
            raise SpecllmError("--resume and --overwrite exclude each other: continue the output, or start again")
        if os.path.lexists(self.partial) and not (resume or overwrite):
            raise SpecllmError(
                f"{path}: an interrupted run left its rows in {self.partial}; continue it with --resume, "
                "or discard them and start again with --overwrite"
            )
        self._source = None
        previous = self._previous_rows() if resume else None
        if previous and self.format not in TEXT_FORMATS and self._source == self.partial:
            # the earlier run's Arrow streams stay as they are (nothing is rewritten, so a kill now loses nothing);
            # this run's rows go to a stream of their own after them
            for row in previous:
                self._remember(row)
            self.written = len(previous)
        elif previous and self.format in TEXT_FORMATS:
            # the kept rows under this run's header, written beside the partial and renamed onto it
            with open(self.partial + ".new", "w", encoding="utf-8", newline="") as fh:
                self._fh = fh
                self._write_text_header()
                for row in previous:
                    self._remember(row)
                    self._emit(row)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(self.partial + ".new", self.partial)
            self._fh = open(self.partial, "a", encoding="utf-8", newline="")
            self._csv = csv.writer(self._fh, lineterminator="\n")
        else:  # a new partial; rows kept from a finished output are copied in (the output stays until close)
            self._clear_partial()
            if self.format in TEXT_FORMATS:
                self._fh = open(self.partial, "w", encoding="utf-8", newline="")
                self._write_text_header()
            else:
                os.mkdir(self.partial)
            for row in previous or []:
                self._remember(row)
                self._emit(row)
            self._flush()
        self.kept = len(previous or [])
        self._write_meta()

    # ---- resume

    def _previous_rows(self) -> list[dict] | None:
        source = self.partial if os.path.exists(self.partial) else self.path if os.path.exists(self.path) else None
        if source is None:
            return None
        try:
            rows = read_rows(source, self.format)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise SpecllmError(f"{source}: cannot be read to resume ({str(exc).splitlines()[0][:160]})") from None
        if rows and set(rows[0]) != set(self.columns):
            raise SpecllmError(
                f"{source}: has other columns than this run writes (another model?); "
                "give another --out, or start again with --overwrite"
            )
        self._check_meta(source)
        self._source = source
        return rows

    def _meta_path(self) -> str:
        """The run's metadata beside its partial (inside the folder of a binary format): what --resume checks."""
        return os.path.join(self.partial, "meta.json") if self.format not in TEXT_FORMATS else self.partial + ".json"

    def _write_meta(self) -> None:
        import json

        from .files import atomic_write_text

        atomic_write_text(self._meta_path(), json.dumps(self.meta, indent=1, sort_keys=True))

    def _previous_meta(self, source: str) -> dict:
        """The metadata of the run that wrote `source` (its partial's meta.json, or a finished output's own
        metadata); {} where none is recorded (a CSV output, or a partial of an older specllm)."""
        import json

        try:
            if source == self.partial:
                with open(self._meta_path(), encoding="utf-8") as fh:
                    return json.load(fh)
            if self.format == "csv":
                return {}
            return {str(k).lower(): v for k, v in read_table(source).meta.items()}
        except Exception:  # noqa: BLE001 - no readable metadata: nothing to check
            return {}

    def _check_meta(self, source: str) -> None:
        """--resume continues only a run of the same model (weights hashes) and the same row-changing options
        (`RESUME_CHECKED`); otherwise one line naming the difference."""
        import json

        old = self._previous_meta(source)
        if not old:
            return
        again = "resume with the same --model and options, or start again with --overwrite"
        for key in ("modelsha", "parentsha"):
            before, now = old.get(key), self.meta.get(key)
            if (before or now) and str(before) != str(now):
                what = "weights" if key == "modelsha" else "stage-1 parent's weights"
                raise SpecllmError(
                    f"{source}: made with another model (its {what} sha256 {str(before)[:12]}..., this run's "
                    f"{str(now)[:12]}...); {again}"
                )
        if "options" in old and "options" in self.meta:
            try:
                before = json.loads(old["options"]) if isinstance(old["options"], str) else dict(old["options"])
            except (ValueError, TypeError):
                return
            now = json.loads(self.meta["options"])
            for name in sorted(set(before) | set(now)):
                if before.get(name) != now.get(name):
                    raise SpecllmError(
                        f"{source}: made with {name} {before.get(name)}, this run has {name} {now.get(name)}; {again}"
                    )

    def _remember(self, row: dict) -> None:
        self.done.add(row_key(row))
        self.done_files.add(row.get("file"))

    def _clear_partial(self) -> None:
        if os.path.isdir(self.partial):
            shutil.rmtree(self.partial)
        elif os.path.exists(self.partial):
            os.unlink(self.partial)
        if self.format in TEXT_FORMATS and os.path.exists(self._meta_path()):
            os.unlink(self._meta_path())

    # ---- writing

    def _write_text_header(self) -> None:
        lines = ecsv_header(self.columns, self.meta) if self.format == "ecsv" else [",".join(self.columns)]
        self._fh.write("\n".join(lines) + "\n")
        self._csv = csv.writer(self._fh, lineterminator="\n")

    def _emit(self, row: dict) -> None:
        row = clean_row(row, self.columns)
        if self._fh is not None:
            self._csv.writerow([format_cell(c, row[c]) for c in self.columns])
        else:
            self._pending.append(row)
        self.written += 1

    def _flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            return
        if not self._pending:
            return
        if self._ipc is None:
            streams = [int(name[:5]) for name in os.listdir(self.partial) if name[:5].isdigit()]
            n = max(streams, default=-1) + 1  # after every stream there (a resumed run's come first)
            self._ipc_file = open(os.path.join(self.partial, f"{n:05d}.arrows"), "wb")
            self._ipc = pa.ipc.new_stream(self._ipc_file, arrow_schema(self.columns))
        self._ipc.write_batch(pa.RecordBatch.from_pylist(self._pending, schema=arrow_schema(self.columns)))
        self._ipc_file.flush()
        self._pending = []

    def write(self, row: dict) -> None:
        """One row, in input order; text rows reach the file at once, binary ones every `batch_rows` rows or
        `flush_seconds`, whichever comes first."""
        self._emit(row)
        now = time.monotonic()
        if self._fh is not None or len(self._pending) >= self.batch_rows or now - self._last >= self.flush_seconds:
            self._flush()
            self._last = now

    def flush(self) -> None:
        """Every row written so far reaches the file (call it before waiting for more input)."""
        self._flush()
        self._last = time.monotonic()

    def _close_streams(self) -> None:
        self._flush()
        if self._ipc is not None:
            self._ipc.close()
            self._ipc_file.close()
            self._ipc = None
        if self._fh is not None and self._fh is not sys.stdout:
            self._fh.close()

    def abort(self) -> str | None:
        """Flush what was written and keep it (the partial temporary) for --resume; returns where it is."""
        self._close_streams()
        return None if self.path is None else self.partial

    def close(self) -> None:
        """Complete the output: the text temporary renamed, or the binary file written from the streamed batches."""
        self._close_streams()
        if self.path is None:
            return
        if self.format in TEXT_FORMATS:
            with open(self.partial, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self.partial, self.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.partial + ".json")
            return
        table = read_partial_batches(self.partial, self.columns)
        if self.format == "parquet":
            write_parquet(self.path, table.to_batches(), table.schema, self.meta)
        elif self.format == "fits":
            write_fits(self.path, table, self.meta)
        else:
            write_votable(self.path, table, self.meta)
        shutil.rmtree(self.partial)


# ---------------------------------------------------------------- reading back (for --resume)


def read_partial_batches(folder: str, columns: list[str] | None = None) -> pa.Table:
    """Every complete record batch of the Arrow IPC streams in a partial folder (a stream cut by a kill ends at
    its last complete batch)."""
    batches = []
    schema = arrow_schema(columns) if columns else None
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".arrows"):
            continue
        with open(os.path.join(folder, name), "rb") as fh:
            try:
                reader = pa.ipc.open_stream(fh)
            except pa.ArrowInvalid:
                continue  # killed before its schema was written
            schema = schema or reader.schema
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
                except (pa.ArrowInvalid, OSError):
                    break  # the batch the kill cut short
    if schema is None:
        return pa.table({})
    return pa.Table.from_batches(batches, schema=schema)


def _read_text_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    if not text.endswith("\n"):  # a kill cut the last row short
        text = text[: text.rfind("\n") + 1]
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return []
    rows = []
    for cells in reader:
        if len(cells) != len(header):
            raise ValueError(f"a row has {len(cells)} cells, the header {len(header)}")
        rows.append({c: parse_cell(c, v) for c, v in zip(header, cells)})
    return rows


def read_rows(path: str, fmt: str | None = None) -> list[dict]:
    """The rows of an output (or of its partial temporary) as cleaned dicts, in order."""
    fmt = fmt or output_format(path)
    if os.path.isdir(path):
        table = read_partial_batches(path)
    elif fmt in TEXT_FORMATS:
        return _read_text_rows(path)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        with open(path, "rb") as fh:  # any file name (see write_parquet)
            table = pq.read_table(fh)
    else:
        from astropy.table import Table

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = Table.read(path, format="votable" if fmt == "votable" else "fits")
        table = astropy_to_arrow(t)
    return [{c: clean_value(c, v) for c, v in r.items()} for r in table.to_pylist()]


def is_output_column(name: str) -> bool:
    """A column `infer` writes (`COLUMNS`, `<x>_fe`, `<label>_err`), whose type `column()` knows."""
    if name.endswith("_err"):
        return is_output_column(name[: -len("_err")])
    return name in COLUMNS or name.endswith("_fe")


def _typed(table: pa.Table) -> pa.Table:
    """infer's columns of `table` cast to their Arrow types (a column of nulls only, or FITS/VOTable ints)."""
    for i, name in enumerate(table.column_names):
        if is_output_column(name):
            wanted = ARROW_TYPES[column(name).kind]
            if table.column(i).type != wanted:
                table = table.set_column(i, name, table.column(i).cast(wanted))
    return table


def read_predictions(path: str) -> pa.Table:
    """The one reader of predictions: infer's output in any format it writes (.csv, .ecsv, .parquet, .fits, .vot/
    .xml; by extension) as an Arrow table, infer's columns in their types with nulls as nulls (FITS TNULL, VOTable
    nulls, empty CSV cells), other columns as the format gives them, the run's metadata (none for CSV) as the
    schema's metadata. `read_table` (astropy), `compare-external` and `plot` read predictions through it; a file
    that cannot be read is one line."""
    fmt = output_format(path)
    if not os.path.isfile(path):
        raise SpecllmError(f"{path}: no such file")
    meta: dict = {}
    try:
        if fmt == "csv":
            import pyarrow.csv as pacsv

            header = _read_text_header(path)
            types = {c: ARROW_TYPES[column(c).kind] for c in header if is_output_column(c)}
            options = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True)
            with open(path, "rb") as fh:
                table = pacsv.read_csv(fh, convert_options=options)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            with open(path, "rb") as fh:  # any file name (see write_parquet)
                table = pq.read_table(fh)
            internal = ("table_meta_yaml", "table::len::")
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
            meta = {k: v for k, v in meta.items() if not k.startswith(internal)}
            table = table.replace_schema_metadata(None)
        else:
            from astropy.table import Table

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # FITS: 'dex' is not a FITS unit
                t = Table.read(path, format={"fits": "fits", "votable": "votable"}.get(fmt, "ascii.ecsv"))
            meta = {str(k).lower(): v for k, v in t.meta.items() if isinstance(v, str | int | float)}
            if fmt == "votable":
                meta |= _votable_infos(path)
            table = astropy_to_arrow(t)
    except SpecllmError:
        raise
    except Exception as exc:  # noqa: BLE001 - astropy and pyarrow raise many types for a file that is no table
        text = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise SpecllmError(f"{path}: cannot be read as {fmt} predictions ({text})") from None
    meta = {k: str(v) for k, v in meta.items() if k not in ("extname", "comments", "description")}
    return _typed(table).replace_schema_metadata(meta or None)


def _votable_infos(path: str) -> dict:
    from astropy.io import votable

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        element = votable.parse(path).get_first_table()
    return {info.name: info.value for info in element.infos}


def read_table(path: str):
    """infer's output (any format, through `read_predictions`) as an astropy Table with units, descriptions,
    metadata and nulls masked. `Table.read` opens every format too, but astropy's Parquet reader knows no Arrow
    nulls (a failed row's null obsid turns the column float, a null text reads 'None'), and a CSV carries no
    units."""
    table = read_predictions(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return to_astropy(table.replace_schema_metadata(None), meta)


def _read_text_header(path: str) -> list[str]:
    with open(path, encoding="utf-8", newline="") as fh:
        for line in fh:
            if not line.startswith("#"):
                return next(csv.reader([line]))
    return []


def astropy_to_arrow(t) -> pa.Table:
    """An astropy table read back from FITS or VOTable as Arrow, masked values (and VOTable's empty strings) null."""
    import numpy as np

    arrays = {}
    for name in t.colnames:
        col = t[name]
        mask = np.asarray(getattr(col, "mask", np.zeros(len(col), bool)), dtype=bool)
        values = [None if m else (v.decode() if isinstance(v, bytes) else v) for v, m in zip(col.tolist(), mask)]
        if column(name).kind == "str":
            values = [None if v == "" else v for v in values]
        arrays[name] = values
    if not arrays:
        return pa.table({})
    return pa.table({n: pa.array(v, type=ARROW_TYPES[column(n).kind] if is_output_column(n) else None)
                     for n, v in arrays.items()})  # fmt: skip


def describe_columns(columns: list[str]) -> str:
    """A Markdown table of the columns (name, type, unit, precision, meaning), for docs."""
    lines = ["| column | type | unit | precision | meaning |", "|---|---|---|---|---|"]
    for c in columns:
        col = column(c)
        prec = "" if col.decimals is None else f"{10.0**-col.decimals:g}"
        lines.append(f"| {c} | {col.kind} | {col.unit or ''} | {prec} | {col.description} |")
    return "\n".join(lines)


__all__ = [
    "COLUMNS",
    "META",
    "FORMATS",
    "Column",
    "RowWriter",
    "column",
    "csv_dtypes",
    "output_format",
    "read_predictions",
    "read_rows",
    "read_table",
    "rows_to_arrow",
    "run_metadata",
    "to_astropy",
]
