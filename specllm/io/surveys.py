"""Label catalogues of other surveys (APOGEE, GALAH, Gaia-ESO), each described once and registered in `CATALOGUES` (the one
registry, with the plain tables: LAMOST, MILES, any table), and read by
`read_survey` for both `specllm crossmatch` and `specllm compare-external`.

A `Survey` names, per canonical label, the columns that may carry it (first one present wins, case-insensitive), the
label's own quality flag, the star-level cuts and the position/id columns. The same description reads a current
release (APOGEE DR16/DR17 allStar, GALAH DR4 allstar, Gaia-ESO iDR6) and the older or partial tables that carry some
of its columns (APOKASC, GALAH DR3, the LAMOST DR2 x APOGEE DR12 table): whatever a table lacks is simply absent
(null), and only a table without a position or without any label at all is refused.

Missing values: NaN, null and the survey placeholders (<= -9999, e.g. APOGEE's -9999.99) read as missing.
Quality cuts (paper, section II): APOGEE ASPCAPFLAG == 0 and each element's `<X>_FE_FLAG` == 0; GALAH
snr_px_ccd3 > 30, flag_sp == 0 and flag_x_fe == 0. A failed star-level cut nulls every label of that star, a failed
label flag nulls that one label; the star itself stays matchable (its id and separation are still reported).
Where a table has no RA/DEC, positions come from a 2MASS-style designation (HHMMSSss+DDMMSSs; 2MASS truncates, so
the centre of the last digit is used: good to 0.08 arcsec), e.g. APOKASC-3's `2MASS_ID` or GALAH DR3's `tmass_id`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SpecllmError
from ..labels import PLACEHOLDER_MAX, STAGE2_ELEMENTS, element_label
from .tables import ColumnNames, catalog_columns, float_column, read_catalog


@dataclass(frozen=True)
class Label:
    """One label of a survey, written as `<survey>_<name>`.

    columns: value columns, first present wins. flags: this label's own quality flag (valid only where == 0).
    log_eps: Gaia-ESO style absolute abundance A(X) columns, used where no `columns` entry is present and converted
    to [X/Fe] = A(X) - solar - [Fe/H]; a `LIM_<column>` != 0 (an upper limit) reads as missing.
    """

    name: str
    columns: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    log_eps: tuple[str, ...] = ()
    solar: float | None = None


@dataclass(frozen=True)
class StarCut:
    """A star-level quality cut: the first of `columns` present must be == 0 ('zero'; a text list of flag names
    must be empty) or > `value` ('above'). Rows failing it keep their match but lose every label."""

    columns: tuple[str, ...]
    rule: Literal["zero", "above"]
    value: float = 0.0

    def describe(self, column: str, text: bool = False) -> str:
        if self.rule == "zero":
            return f"{column} empty" if text else f"{column} == 0"
        return f"{column} > {self.value:g}"


@dataclass(frozen=True)
class Survey:
    key: str  # output column prefix and CLI name
    title: str
    id_columns: tuple[str, ...]
    ra_columns: tuple[str, ...]
    dec_columns: tuple[str, ...]
    designation_columns: tuple[str, ...]  # 2MASS-style names that encode the position
    labels: tuple[Label, ...]
    star_cuts: tuple[StarCut, ...] = ()
    exclude_bits: tuple[tuple[str, int], ...] = ()  # (column, bitmask): such rows never match (duplicates)

    def label(self, name: str) -> Label:
        return next(lab for lab in self.labels if lab.name == name)

    def column_name(self, label: str) -> str:
        return f"{self.key}_{label}"


# ---------------------------------------------------------------- the surveys, each described once

_GALAH_ALIASES = {"TIII": ("ti2_fe",)}  # GALAH DR3 calls Ti II `ti2_fe`; DR4 has no Ti II
# Gaia-ESO species (iDR6 recommended table: absolute abundances `<EL><ion>`, limits in `LIM_<species>`) per
# paper element; C from the C2 band and N from CN, CI the atomic C I lines.
_GES_SPECIES = {
    "C": "C_C2", "CI": "C1", "N": "N_CN", "O": "O1", "NA": "NA1", "MG": "MG1", "AL": "AL1", "SI": "SI1", "P": "P1",
    "S": "S1", "K": "K1", "CA": "CA1", "TI": "TI1", "TIII": "TI2", "V": "V1", "CR": "CR1", "MN": "MN1", "CO": "CO1",
    "NI": "NI1", "CU": "CU1", "CE": "CE2",
}  # fmt: skip
# Solar log eps of Grevesse, Asplund & Sauval (2007), the Gaia-ESO reference (elements keyed as in STAGE2_ELEMENTS).
_SOLAR_GAS07 = {
    "C": 8.39, "CI": 8.39, "N": 7.78, "O": 8.66, "NA": 6.17, "MG": 7.53, "AL": 6.37, "SI": 7.51, "P": 5.36, "S": 7.14,
    "K": 5.08, "CA": 6.31, "TI": 4.90, "TIII": 4.90, "V": 4.00, "CR": 5.64, "MN": 5.39, "CO": 4.92, "NI": 6.23,
    "CU": 4.21, "CE": 1.70,
}  # fmt: skip

APOGEE = Survey(
    key="apogee",
    title="APOGEE",
    id_columns=("APOGEE_ID", "2MASS ID", "2MASS_ID", "TMASS_ID"),
    ra_columns=("RA",),
    dec_columns=("DEC",),
    designation_columns=("APOGEE_ID", "2MASS ID", "2MASS_ID", "TMASS_ID"),
    labels=(
        Label("teff", ("TEFF", "CORR_ASPCAP TEFF", "TEFF_COR")),
        Label("logg", ("LOGG", "CORR_ASPCAP LOGG", "LOGG_COR")),
        Label("fe_h", ("FE_H", "FE_H_ADOP_COR"), flags=("FE_H_FLAG",)),
        Label("m_h", ("M_H", "PARAM_M_H", "CORR_ASPCAP METALS")),
        Label("alpha_m", ("ALPHA_M", "PARAM_ALPHA_M")),
        *(
            Label(element_label(el), (f"{el}_FE", f"CORR_ASPCAP {el}FE"), flags=(f"{el}_FE_FLAG",))
            for el in STAGE2_ELEMENTS
        ),
    ),
    # ASPCAPFLAG is the DR16/DR17 bitmask; older tables (APOKASC) carry only the list of flag names, ASPCAPFLAGS.
    star_cuts=(StarCut(("ASPCAPFLAG", "ASPCAPFLAGS"), "zero"),),
    # EXTRATARG bit 4 (DUPLICATE): the lower-S/N entry of a star observed twice (DR16/DR17).
    exclude_bits=(("EXTRATARG", 1 << 4),),
)

GALAH = Survey(
    key="galah",
    title="GALAH",
    id_columns=("sobject_id", "tmass_id"),
    ra_columns=("ra", "ra_dr2"),
    dec_columns=("dec", "dec_dr2"),
    designation_columns=("tmass_id",),
    labels=(
        Label("teff", ("teff",)),
        Label("logg", ("logg",)),
        Label("fe_h", ("fe_h",), flags=("flag_fe_h",)),
        *(
            Label(
                element_label(el),
                (element_label(el), *_GALAH_ALIASES.get(el, ())),
                flags=(f"flag_{element_label(el)}",),
            )
            for el in STAGE2_ELEMENTS
        ),
    ),
    # DR4 quotes the S/N of CCD3 as snr_px_ccd3, DR3 as snr_c3_iraf (same recommended cut, > 30).
    star_cuts=(StarCut(("snr_px_ccd3", "snr_c3_iraf"), "above", 30.0), StarCut(("flag_sp",), "zero")),
)

GAIA_ESO = Survey(
    key="gaiaeso",
    title="Gaia-ESO",
    id_columns=("CNAME",),
    ra_columns=("RA", "RADEG", "RA_DEG"),
    dec_columns=("DEC", "DECLINATION", "DEDEG", "DEC_DEG"),
    designation_columns=("CNAME",),
    labels=(
        Label("teff", ("TEFF",)),
        Label("logg", ("LOGG",)),
        Label("fe_h", ("FEH", "FE_H")),
        *(
            Label(element_label(el), (f"{el}_FE",), log_eps=(_GES_SPECIES[el],), solar=_SOLAR_GAS07[el])
            for el in STAGE2_ELEMENTS
        ),
    ),
)


# ---------------------------------------------------------------- the one catalogue registry
# name -> description, for `specllm crossmatch` and `compare-external`. Two kinds of description, each with its reader:
# a `Survey` (above: label columns, per-label flags, star-level quality cuts, positions or 2MASS-style designations;
# read by `read_survey`) or a `PlainTable` (id and label columns only, no cuts; read by
# `specllm.external.reference.read_reference`). A new catalogue is one description and one `register(name, ...)` line
# here, like specutils' loaders (and its name in the CLI's choice list `config.SurveyName`, which a test keeps equal
# to this registry).


@dataclass(frozen=True)
class PlainTable:
    """A reference table without quality cuts: where it keeps what the comparison needs (column names in any case,
    first present wins).

    ids: id columns tried in order; values of `filename`-like columns are compared by file stem, of `miles_id` as
        `miles-NNNN`. labels: Teff, log g, [Fe/H] columns; [X/Fe] is read from `<x>_fe`, valid only where the
        first of `element_flag` present is 0. classes: the catalogue's own spectral class (first present; LAMOST
        SUBCLASS reduced to A/F/G/K/M), by which compare-external groups where it has one.
    """

    name: str
    title: str
    ids: tuple[str, ...]
    labels: dict = field(default_factory=dict)
    element_flag: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    ra: tuple[str, ...] = ("ra", "ra_deg", "raj2000")
    dec: tuple[str, ...] = ("dec", "dec_deg", "dej2000")


Catalogue = Survey | PlainTable
CATALOGUES: dict[str, Catalogue] = {}


def register(name: str, description: Catalogue) -> Catalogue:
    """Add a catalogue under `name` (its `--survey` value); a name is registered once."""
    if name in CATALOGUES:
        raise ValueError(f"catalogue {name!r} is already registered")
    CATALOGUES[name] = description
    return description


def catalogue(name: str) -> Catalogue:
    """The description registered as `name`; an unknown name is one SpecllmError line listing the known ones."""
    if name not in CATALOGUES:
        raise SpecllmError(f"unknown survey {name!r}; choose one of {', '.join(CATALOGUES)}")
    return CATALOGUES[name]


_STD_LABELS = {"teff": ("teff",), "logg": ("logg",), "feh": ("feh", "fe_h", "m_h")}
_GENERIC_IDS = (
    "spec_id",
    "obsid",
    "filename",
    "file",
    "sobject_id",
    "tmass_id",
    "apogee_id",
    "cname",
    "miles_id",
    "id",
)

register(
    "generic",
    PlainTable(
        "generic", "reference", ids=_GENERIC_IDS, labels=_STD_LABELS, element_flag=("flag_{x}_fe", "{x}_fe_flag")
    ),
)
register("galah", GALAH)
register("gaia-eso", GAIA_ESO)
register("apogee", APOGEE)
register("miles", PlainTable("miles", "MILES", ids=("miles_id", "spec_id"), labels=_STD_LABELS))
register(
    "lamost",
    PlainTable(
        "lamost", "LAMOST", ids=("obsid", "filename", "spec_id"), labels=_STD_LABELS, classes=("subclass", "class")
    ),
)

# The surveys with cuts, by their column prefix (`apogee`, `galah`, `gaiaeso`): what crossmatch matches against.
SURVEYS: dict[str, Survey] = {d.key: d for d in CATALOGUES.values() if isinstance(d, Survey)}


def get_survey(survey: str | Survey) -> Survey:
    if isinstance(survey, Survey):
        return survey
    key = survey.lower().replace("-", "").replace("_", "")
    if key not in SURVEYS:
        raise SpecllmError(f"unknown survey '{survey}' (known: {', '.join(SURVEYS)})")
    return SURVEYS[key]


# ---------------------------------------------------------------- 2MASS-style designations

_DESIGNATION = r"^\s*(?:2MASS\s*)?(?:2M|J)?(?P<rh>\d{2})(?P<rm>\d{2})(?P<rs>\d{4})(?P<sign>[+-])(?P<dd>\d{2})(?P<dm>\d{2})(?P<ds>\d{3})\s*$"


def designation_positions(names) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec (deg) from 2MASS-style designations (`2M19550016+4435356`, `J18583782+4822494`, `08520715+1149254`,
    Gaia-ESO CNAME). 2MASS truncates the last digit, so its centre is used. NaN where a name does not parse."""
    arr = names.combine_chunks() if isinstance(names, pa.ChunkedArray) else names
    if not isinstance(arr, pa.Array):
        arr = pa.array(arr)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    n = len(arr)
    ra = np.full(n, np.nan)
    dec = np.full(n, np.nan)
    parts = pc.extract_regex(arr, _DESIGNATION)
    ok = np.asarray(parts.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if not ok.any():
        return ra, dec
    parts = parts.filter(pa.array(ok))

    def number(name: str) -> np.ndarray:
        return pc.cast(pc.struct_field(parts, name), pa.float64()).to_numpy(zero_copy_only=False)

    rh, rm, rs = number("rh"), number("rm"), (number("rs") + 0.5) / 100.0
    dd, dm, ds = number("dd"), number("dm"), (number("ds") + 0.5) / 10.0
    sign = np.where(np.asarray(pc.struct_field(parts, "sign").to_pylist()) == "-", -1.0, 1.0)
    good = (rh < 24) & (rm < 60) & (rs < 60) & (dm < 60) & (ds < 60) & (dd + dm / 60 + ds / 3600 <= 90)
    ra[ok] = np.where(good, 15.0 * (rh + rm / 60.0 + rs / 3600.0), np.nan)
    dec[ok] = np.where(good, sign * (dd + dm / 60.0 + ds / 3600.0), np.nan)
    return ra, dec


# ---------------------------------------------------------------- reading


@dataclass
class SurveyCatalog:
    """A survey table as the crossmatch needs it: aligned per-row arrays, labels already cut (NaN = no label)."""

    survey: Survey
    path: str
    n_rows: int
    ids: np.ndarray  # object array of str
    ra: np.ndarray  # float64 deg, NaN where unknown
    dec: np.ndarray
    matchable: np.ndarray  # bool: has a position and is not an excluded duplicate
    labels: dict[str, np.ndarray]  # every label of the survey, float32, NaN where missing or cut
    present: list[str]  # labels the table carries
    star_ok: np.ndarray  # bool: passes every star-level cut
    position_source: str
    columns_used: dict[str, str] = field(default_factory=dict)  # label/role -> catalogue column
    notes: list[str] = field(default_factory=list)  # one-line remarks (cuts not applicable, placeholders, ...)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> {present, missing, flagged, cut}
    # star-level cut (as described) -> rows passing it; None where its column is absent and it was not applied
    cuts: dict[str, np.ndarray | None] = field(default_factory=dict)
    id_values: dict[str, np.ndarray] = field(default_factory=dict)  # id column -> ids (`ids` is the first)
    excluded: np.ndarray | None = None  # bool: duplicate entries (exclude_bits), never matched

    def summary_lines(self) -> list[str]:
        s = self.survey
        lines = [
            f"{self.path}: {s.title} catalogue, {self.n_rows} rows, {int(self.matchable.sum())} matchable "
            f"(positions from {self.position_source}); labels: {', '.join(self.present)}"
        ]
        lines += [f"{self.path}: {note}" for note in self.notes]
        return lines


def _flag_ok(table: pa.Table, column: str) -> np.ndarray:
    """True where a flag is 0 (integer bitmask) or empty (text list of flag names); null counts as not ok."""
    col = table.column(column)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        values = pc.fill_null(pc.utf8_trim_whitespace(col), "x")
        return np.asarray(pc.equal(values, "").to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_boolean(col.type):
        col = pc.cast(col, pa.int8())
    values = col.to_numpy(zero_copy_only=False)
    values = np.asarray(values, dtype=np.float64)  # nulls -> NaN
    return values == 0


def read_survey(
    path: str, survey: str | Survey, quality_cuts: bool = True, need_position: bool = True, all_ids: bool = False
) -> SurveyCatalog:
    """Read a survey catalogue (CSV, FITS or Parquet) through its `Survey` description.

    Fails at once (SpecllmError, one line) when the table has neither RA/DEC nor a designation to derive them from
    (unless `need_position` is False: rows joined by id alone), or none of the survey's label columns.
    all_ids: read every id column present into `id_values`, not only the first.
    """
    s = get_survey(survey)
    names = catalog_columns(path)
    find = ColumnNames(names).first
    ra_col, dec_col = find(s.ra_columns), find(s.dec_columns)
    designation_col = find(s.designation_columns)
    no_position = (ra_col is None or dec_col is None) and designation_col is None
    if no_position and need_position:
        missing = " and ".join(c for c, have in (("RA", ra_col), ("DEC", dec_col)) if have is None)
        raise SpecllmError(
            f"{path}: {s.title} catalogue lacks {missing} (looked for {'/'.join(s.ra_columns)} and "
            f"{'/'.join(s.dec_columns)}, or a 2MASS-style designation in {'/'.join(s.designation_columns)})"
        )
    sources: dict[str, tuple[str, str]] = {}  # label -> (kind, column)
    for lab in s.labels:
        col = find(lab.columns)
        if col is not None:
            sources[lab.name] = ("value", col)
        elif lab.log_eps and (col := find(lab.log_eps)) is not None:
            sources[lab.name] = ("log_eps", col)
    if not sources:
        wanted = ", ".join(lab.columns[0] if lab.columns else lab.log_eps[0] for lab in s.labels)
        raise SpecllmError(f"{path}: {s.title} catalogue has none of its label columns ({wanted})")

    id_cols = list(dict.fromkeys(c for c in (find((name,)) for name in s.id_columns) if c))
    id_col = id_cols[0] if id_cols else None
    if not all_ids:
        id_cols = id_cols[:1]
    flag_cols = {lab.name: find(lab.flags) for lab in s.labels if lab.name in sources and lab.flags}
    limit_cols = {name: find((f"LIM_{col}",)) for name, (kind, col) in sources.items() if kind == "log_eps"}
    cut_cols = [(cut, find(cut.columns)) for cut in s.star_cuts]
    exclude_cols = [(find((col,)), bits) for col, bits in s.exclude_bits]
    needed = {c for c in (ra_col, dec_col, designation_col, *id_cols) if c}
    needed |= {col for _, col in sources.values()}
    needed |= {c for c in (*flag_cols.values(), *limit_cols.values()) if c}
    needed |= {c for _, c in cut_cols if c} | {c for c, _ in exclude_cols if c}
    if any(kind == "log_eps" for kind, _ in sources.values()) and "fe_h" not in sources:
        raise SpecllmError(f"{path}: {s.title} abundances are absolute (log eps) but the table has no [Fe/H] column")
    table = read_catalog(path, columns=[n for n in names if n in needed])
    n = table.num_rows
    notes: list[str] = []
    used: dict[str, str] = {}

    # positions
    ra = np.full(n, np.nan)
    dec = np.full(n, np.nan)
    if ra_col and dec_col:
        ra = float_column(table, ra_col, path)
        dec = float_column(table, dec_col, path)
        used["ra"], used["dec"] = ra_col, dec_col
        position_source = f"{ra_col}/{dec_col}"
    elif no_position:
        position_source = "no column"
        notes.append("no RA/DEC or designation column: rows can be joined by id only")
    else:
        position_source = f"2MASS-style designation in {designation_col}"
    bad_pos = ~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0))
    if designation_col and bad_pos.any():
        dra, ddec = designation_positions(table.column(designation_col))
        fill = bad_pos & np.isfinite(dra)
        ra[fill], dec[fill] = dra[fill], ddec[fill]
        if ra_col and fill.any():
            notes.append(f"{int(fill.sum())} rows without RA/DEC placed from their designation in {designation_col}")
        used["designation"] = designation_col
    ra = np.mod(ra, 360.0)
    has_pos = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
    if n and not has_pos.any() and need_position:
        raise SpecllmError(f"{path}: {s.title} catalogue has no row with a valid position ({position_source})")
    if (~has_pos).any() and not no_position:
        notes.append(f"{int((~has_pos).sum())} rows without a valid position cannot be matched by position")
    excluded = np.zeros(n, dtype=bool)
    for col, bits in exclude_cols:
        if col is not None:
            values = float_column(table, col, path)  # null -> 0; text that is no number: one line
            flags = np.clip(np.where(np.isfinite(values), values, 0), -(2**62), 2**62).astype(np.int64)
            dup = (flags & bits) != 0
            if dup.any():
                notes.append(f"{int(dup.sum())} rows with {col} & {bits} (duplicate entries) are not matched")
            excluded |= dup
    matchable = has_pos & ~excluded

    # ids
    id_values = {col: np.asarray(pc.cast(table.column(col), pa.string()).to_pylist(), dtype=object) for col in id_cols}
    if id_col:
        ids = id_values[id_col]
        used["id"] = id_col
    else:
        ids = np.asarray([str(i) for i in range(n)], dtype=object)
        notes.append(f"no id column ({'/'.join(s.id_columns)}): rows are identified by their number")

    # star-level cuts
    star_ok = np.ones(n, dtype=bool)
    cuts: dict[str, np.ndarray | None] = {}
    if quality_cuts:
        for cut, col in cut_cols:
            if col is None:
                cuts[cut.describe(cut.columns[0])] = None
                notes.append(f"no {'/'.join(cut.columns)} column: cut {cut.describe(cut.columns[0])} not applied")
                continue
            if cut.rule == "zero":
                ok = _flag_ok(table, col)
            else:
                values = float_column(table, col, path)
                ok = values > cut.value  # NaN fails
            what = cut.describe(col, text=pa.types.is_string(table.schema.field(col).type))
            used[f"cut:{what}"] = col
            notes.append(f"{what}: {int(ok.sum())} of {n} rows pass")
            cuts[what] = ok
            star_ok &= ok

    # labels, one at a time (a 10^6-row catalogue holds 26 of them)
    counts: dict[str, dict[str, int]] = {}
    placeholders = 0
    fe_h = float_column(table, sources["fe_h"][1], path) if "fe_h" in sources else None  # for log eps -> [X/Fe]
    labels: dict[str, np.ndarray] = {}
    no_flag: list[str] = []
    for lab in s.labels:
        if lab.name not in sources:
            labels[lab.name] = np.full(n, np.nan, dtype=np.float32)
            continue
        kind, col = sources[lab.name]
        values = float_column(table, col, path)
        placeholders += int(np.isnan(values).sum())
        used[lab.name] = col
        if kind == "log_eps":
            values = values - lab.solar - fe_h
            lim = limit_cols.get(lab.name)
            if lim is not None:
                values[~_flag_ok(table, lim)] = np.nan
        c = {"present": int(np.isfinite(values).sum()), "flagged": 0, "cut": 0}
        if quality_cuts:
            flag_col = flag_cols.get(lab.name)
            if flag_col is not None:
                ok = _flag_ok(table, flag_col)
                c["flagged"] = int((np.isfinite(values) & ~ok).sum())
                values[~ok] = np.nan
                used[f"flag:{lab.name}"] = flag_col
            elif lab.flags:
                no_flag.append(lab.name)
            c["cut"] = int((np.isfinite(values) & ~star_ok).sum())
            values[~star_ok] = np.nan
        c["valid"] = int(np.isfinite(values).sum())
        counts[lab.name] = c
        labels[lab.name] = values.astype(np.float32)
    if no_flag:
        notes.append(f"no flag column for {', '.join(no_flag)}: those labels are not flag-cut")
    if placeholders:
        notes.append(
            f"{placeholders} label values were NaN, null or placeholders (<= {PLACEHOLDER_MAX:g}): read as missing"
        )
    return SurveyCatalog(
        survey=s,
        path=path,
        n_rows=n,
        ids=ids,
        ra=ra,
        dec=dec,
        matchable=matchable,
        labels=labels,
        present=[lab.name for lab in s.labels if lab.name in sources],
        star_ok=star_ok,
        position_source=position_source,
        columns_used=used,
        notes=notes,
        counts=counts,
        cuts=cuts,
        id_values=id_values,
        excluded=excluded,
    )
