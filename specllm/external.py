"""`specllm compare-external`: predictions against an independent survey (paper Tables 7-8, Figures 1-8).

predictions (the table `infer` writes: CSV or Parquet) + a reference catalogue -> rows joined by id or by sky
position -> the survey's quality cuts -> per-class mu +- sigma of (prediction - reference) for Teff, log g, [Fe/H]
(Table 7), per-element N, mu, sigma of [X/Fe] (Table 8), a one-to-one density plot per label, and a Markdown report.
Rows whose spectrum covered only part of the grid (`partial`, e.g. MILES beyond 7410 A) are reported separately.

APOGEE, GALAH and Gaia-ESO catalogues are read by `specllm.io.surveys.read_survey`, their one description (id,
position and label columns, placeholders, per-label flags, the paper's cuts, Gaia-ESO's A(X) -> [X/Fe]); this module
keeps only the comparison and the plain tables without cuts (`PLAIN_TABLES`: lamost, miles, generic).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from . import __version__
from .config import SURVEYS, ExternalConfig
from .errors import SpecllmError
from .io.arrays import FLUX_KEYS, WAVE_KEYS, miles_spec_id
from .io.lamost_catalog import file_key
from .io.surveys import SURVEYS as IO_SURVEYS
from .io.surveys import get_survey, read_survey
from .io.tables import PLACEHOLDER_MAX, read_catalog
from .progress import say
from .shards import atomic_write, atomic_write_json, atomic_write_text, write_table

LABELS: tuple[tuple[str, str, str], ...] = (
    ("teff", "Teff", "K"),
    ("logg", "log g", "dex"),
    ("feh", "[Fe/H]", "dex"),
)
LABEL_FORMAT = {"teff": "{:.0f}", "logg": "{:.2f}", "feh": "{:.2f}"}
ELEMENT_FORMAT = "{:.3f}"
CLASS_ORDER = ("A", "F", "G", "K", "M")
OVERALL = "all"
SUBSETS = ("all", "full", "partial")
TABLE7 = "table7.csv"
TABLE8 = "table8.csv"
REPORT = "report.md"
SUMMARY = "summary.json"
MATCHED = "matched.parquet"
STAT_FIELDS = ("n", "mu", "sigma", "median", "sigma_mad")
NPZ_SPECTRUM_KEYS = (*WAVE_KEYS, *FLUX_KEYS, "ivar", "error")
_ELEMENT_RE = re.compile(r"^([a-z]{1,2}(?:i{1,3})?)_fe$")


# ---------------------------------------------------------------- reference catalogues


CLASS_NOTE = "Class: the class specllm predicted for the spectrum (the reference catalogue's own class is not used)."


@dataclass(frozen=True)
class PlainTable:
    """A reference table that is no survey of `specllm.io.surveys` (no quality cuts): where it keeps what the
    comparison needs (column names lower-case, first present wins).

    ids: id columns tried in order; values of `filename`-like columns are compared by file stem, of `miles_id` as
        `miles-NNNN`. labels: Teff, log g, [Fe/H] columns; [X/Fe] is read from `<x>_fe`, valid only where the
        first of `element_flag` present is 0.
    """

    name: str
    title: str
    ids: tuple[str, ...]
    labels: dict = field(default_factory=dict)
    element_flag: tuple[str, ...] = ()
    ra: tuple[str, ...] = ("ra", "ra_deg", "raj2000")
    dec: tuple[str, ...] = ("dec", "dec_deg", "dej2000")


_STD_LABELS = {"teff": ("teff",), "logg": ("logg",), "feh": ("feh", "fe_h", "m_h")}
PLAIN_TABLES: dict[str, PlainTable] = {
    "generic": PlainTable(
        "generic",
        "reference",
        ids=("spec_id", "obsid", "filename", "file", "sobject_id", "tmass_id", "apogee_id", "cname", "miles_id", "id"),
        labels=_STD_LABELS,
        element_flag=("flag_{x}_fe", "{x}_fe_flag"),
    ),
    "lamost": PlainTable("lamost", "LAMOST", ids=("obsid", "filename", "spec_id"), labels=_STD_LABELS),
    "miles": PlainTable("miles", "MILES", ids=("miles_id", "spec_id"), labels=_STD_LABELS),
}
# The other names of config.SURVEYS (galah, apogee, gaia-eso) are surveys of `specllm.io.surveys`, read (columns,
# flags, cuts) by its `read_survey` alone.
SURVEY_NAMES: dict[str, str] = {name: get_survey(name).key for name in SURVEYS if name not in PLAIN_TABLES}
assert set(SURVEY_NAMES.values()) == set(IO_SURVEYS), "config.SURVEYS misses a survey of specllm.io.surveys"


@dataclass
class Reference:
    """A reference catalogue as the comparison needs it, whatever its kind.

    ids: id column (lower-case) -> raw values, tried in this order. ra/dec: deg, NaN where unknown. joinable: rows
    that may be matched (not a survey's duplicate entry). labels: prediction name (teff, logg, feh, <x>_fe) -> values
    with NaN where missing, flagged or cut. cuts: star-level cut -> rows passing it (None: column absent, not applied).
    """

    name: str
    title: str
    n: int
    ids: dict[str, list]
    id_candidates: tuple[str, ...]
    ra: np.ndarray
    dec: np.ndarray
    joinable: np.ndarray
    labels: dict[str, np.ndarray]
    cuts: dict[str, np.ndarray | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _check_survey(name: str) -> None:
    if name not in SURVEYS:
        raise SpecllmError(f"unknown survey {name!r}; choose one of {', '.join(SURVEYS)}")


def _prediction_label(survey_label: str) -> str:
    """io/surveys' `fe_h` is the predictions' `feh`; `teff`, `logg` and `<x>_fe` are spelled alike."""
    return "feh" if survey_label == "fe_h" else survey_label


def read_reference(path: str, name: str) -> Reference:
    """The reference catalogue `path` read as `name`, one of config.SURVEYS."""
    _check_survey(name)
    if name in SURVEY_NAMES:
        cat = read_survey(path, SURVEY_NAMES[name], quality_cuts=True, need_position=False, all_ids=True)
        return Reference(
            name=name,
            title=cat.survey.title,
            n=cat.n_rows,
            ids={col.lower(): values.tolist() for col, values in cat.id_values.items()},
            id_candidates=cat.survey.id_columns,
            ra=cat.ra,
            dec=cat.dec,
            joinable=~cat.excluded,
            labels={_prediction_label(lab): cat.labels[lab].astype(np.float64) for lab in cat.present},
            cuts=cat.cuts,
            notes=[f"catalogue: {note}" for note in cat.notes],
        )
    table = PLAIN_TABLES[name]
    ref = read_table_any(path)
    ra_col, dec_col = ref.first(table.ra), ref.first(table.dec)
    no_position = np.full(ref.n, np.nan)
    labels = {n: ref.floats(c) for n in table.labels if (c := ref.first(table.labels[n]))}
    for x in _elements(ref):
        values = ref.floats(f"{x}_fe")
        flag = ref.first(tuple(f.format(x=x) for f in table.element_flag))
        if flag:
            values[ref.floats(flag) != 0] = np.nan
        labels[f"{x}_fe"] = values
    return Reference(
        name=name,
        title=table.title,
        n=ref.n,
        ids={c: ref.values(c) for c in table.ids if ref.has(c)},
        id_candidates=table.ids,
        ra=ref.floats(ra_col) if ra_col and dec_col else no_position,
        dec=ref.floats(dec_col) if ra_col and dec_col else no_position,
        joinable=np.ones(ref.n, dtype=bool),
        labels=labels,
    )


# ---------------------------------------------------------------- reading


class Columns:
    """A table as numpy columns with case-insensitive lookup (lower-case names)."""

    def __init__(self, path: str, table: pa.Table):
        self.path = path
        self.n = table.num_rows
        self.original = {}
        for name in table.column_names:
            self.original.setdefault(name.strip().lower(), name)
        self._table = table

    def has(self, name: str) -> bool:
        return name in self.original

    def first(self, names) -> str | None:
        return next((n for n in names if n in self.original), None)

    def floats(self, name: str) -> np.ndarray:
        """A numeric column as float64, with nulls, NaN and survey placeholders (<= -9999) as NaN."""
        col = self._table.column(self.original[name])
        if pa.types.is_boolean(col.type):
            col = col.cast(pa.int8())
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type)):
            try:
                col = col.cast(pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise SpecllmError(f"{self.path}: column '{self.original[name]}' is not numeric") from None
        v = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        return np.where(np.isfinite(v) & (v > PLACEHOLDER_MAX), v, np.nan)

    def values(self, name: str) -> list:
        return self._table.column(self.original[name]).to_pylist()


def _read_npz_table(path: str) -> pa.Table:
    """The 1-D arrays of an npz that share its most common length (e.g. the MILES miles_id, teff, logg, feh)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k.lower() not in NPZ_SPECTRUM_KEYS and data[k].ndim == 1}
    except (OSError, ValueError) as exc:
        raise SpecllmError(f"{path}: unreadable npz ({str(exc).splitlines()[0][:160]})") from None
    if not arrays:
        raise SpecllmError(f"{path}: the npz holds no 1-D columns")
    lengths = [a.size for a in arrays.values()]
    n = max(set(lengths), key=lengths.count)
    return pa.table({k: a for k, a in arrays.items() if a.size == n})


def read_table_any(path: str) -> Columns:
    if not os.path.exists(path):
        raise SpecllmError(f"{path}: no such file")
    table = _read_npz_table(path) if path.lower().endswith(".npz") else read_catalog(path)
    if table.num_rows == 0:
        raise SpecllmError(f"{path}: the table is empty")
    return Columns(path, table)


def _norm_id(value, column: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        if not np.isfinite(value) or value <= PLACEHOLDER_MAX:
            return None
        if value.is_integer():
            value = int(value)
    if column == "miles_id":
        try:
            return miles_spec_id(int(value))
        except (TypeError, ValueError):
            return str(value).strip() or None
    text = str(value).strip()
    if not text:
        return None
    if column in ("filename", "file"):
        return file_key(text)
    return text


def _prediction_keys(pred: Columns) -> list[list[str | None]]:
    """Per prediction row, its candidate join keys in order: obsid, spec_id, file stem."""
    keys: list[list[str | None]] = [[] for _ in range(pred.n)]
    for column in ("obsid", "spec_id", "file", "filename"):
        if pred.has(column):
            for i, v in enumerate(pred.values(column)):
                keys[i].append(_norm_id(v, column))
    return keys


def _reference_index(ref: Reference) -> tuple[dict[str, int], set[str], list[str]]:
    index: dict[str, int] = {}
    duplicates: set[str] = set()
    for column, values in ref.ids.items():
        for i, v in enumerate(values):
            key = _norm_id(v, column)
            if key is None or not ref.joinable[i]:
                continue
            if key in index and index[key] != i:
                duplicates.add(key)
            else:
                index[key] = i
    return index, duplicates, list(ref.ids)


# ---------------------------------------------------------------- joining


@dataclass
class Join:
    pred_index: np.ndarray
    ref_index: np.ndarray
    method: np.ndarray  # 'id' or 'sky'
    sep_arcsec: np.ndarray  # NaN for id matches
    id_columns: list[str]
    ambiguous: int = 0
    notes: list[str] = field(default_factory=list)


def join(pred: Columns, ref: Reference, config: ExternalConfig, rows: np.ndarray) -> Join:
    """Match prediction rows (`rows`, indices into pred) to reference rows, by id, by sky position, or both."""
    pi, ri, method, sep = [], [], [], []
    notes: list[str] = []
    ambiguous = 0
    unmatched = np.asarray(rows, dtype=int)
    id_columns: list[str] = []
    if config.match in ("id", "auto"):
        index, duplicates, id_columns = _reference_index(ref)
        keys = _prediction_keys(pred)
        rest = []
        for i in unmatched:
            hit = None
            for key in keys[i]:
                if key is None:
                    continue
                if key in duplicates:
                    ambiguous += 1
                    hit = -1
                    break
                if key in index:
                    hit = index[key]
                    break
            if hit is None:
                rest.append(i)
            elif hit >= 0:
                pi.append(i)
                ri.append(hit)
                method.append("id")
                sep.append(np.nan)
        unmatched = np.asarray(rest, dtype=int)
        if not id_columns:
            notes.append(f"the catalogue has none of the id columns {', '.join(ref.id_candidates)}")
    if config.match in ("sky", "auto") and unmatched.size:
        p_ra, p_dec = (pred.first(("ra",)), pred.first(("dec",)))
        r_pos = np.isfinite(ref.ra) & np.isfinite(ref.dec)
        if p_ra and p_dec and r_pos.any():
            m_p, m_r, s = _sky_match(
                pred.floats(p_ra)[unmatched],
                pred.floats(p_dec)[unmatched],
                np.where(ref.joinable, ref.ra, np.nan),
                ref.dec,
                config.radius_arcsec,
            )
            pi += unmatched[m_p].tolist()
            ri += m_r.tolist()
            method += ["sky"] * len(m_p)
            sep += s.tolist()
        elif config.match == "sky" or not pi:
            which = "predictions lack ra/dec columns" if not (p_ra and p_dec) else "catalogue has no position"
            notes.append(f"no sky match: the {which}")
    order = np.argsort(np.asarray(pi, dtype=int), kind="stable")
    return Join(
        pred_index=np.asarray(pi, dtype=int)[order],
        ref_index=np.asarray(ri, dtype=int)[order],
        method=np.asarray(method, dtype=object)[order] if method else np.array([], dtype=object),
        sep_arcsec=np.asarray(sep, dtype=float)[order],
        id_columns=id_columns,
        ambiguous=ambiguous,
        notes=notes,
    )


def _sky_match(ra1, dec1, ra2, dec2, radius_arcsec: float):
    """Nearest catalogue position within the radius: (indices into 1, indices into 2, separations in arcsec)."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    ok1 = np.flatnonzero(np.isfinite(ra1) & np.isfinite(dec1))
    ok2 = np.flatnonzero(np.isfinite(ra2) & np.isfinite(dec2))
    if not ok1.size or not ok2.size:
        return np.array([], int), np.array([], int), np.array([], float)
    c1 = SkyCoord(ra1[ok1] * u.deg, dec1[ok1] * u.deg)
    c2 = SkyCoord(ra2[ok2] * u.deg, dec2[ok2] * u.deg)
    idx, d2d, _ = c1.match_to_catalog_sky(c2)
    sep = d2d.to(u.arcsec).value
    keep = sep <= radius_arcsec
    return ok1[keep], ok2[idx[keep]], sep[keep]


# ---------------------------------------------------------------- statistics


def stats(diff: np.ndarray, min_n: int) -> dict:
    d = np.asarray(diff, dtype=np.float64)
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n < max(1, min_n):
        return {"n": n, "mu": None, "sigma": None, "median": None, "sigma_mad": None}
    med = float(np.median(d))
    return {
        "n": n,
        "mu": float(d.mean()),
        "sigma": float(d.std(ddof=1)) if n > 1 else 0.0,
        "median": med,
        "sigma_mad": float(1.4826 * np.median(np.abs(d - med))),
    }


@dataclass
class Comparison:
    """Matched values per label: prediction, reference, class, partial, and which rows pass the cuts."""

    labels: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict
    )  # name -> (pred, ref, ok)
    elements: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    classes: np.ndarray | None = None
    partial: np.ndarray | None = None


def _subset_masks(partial: np.ndarray) -> dict[str, np.ndarray]:
    masks = {"all": np.ones(partial.shape, bool)}
    if partial.any() and not partial.all():
        masks["full"] = ~partial
        masks["partial"] = partial.copy()
    return masks


def table7(comp: Comparison, min_n: int) -> list[dict]:
    """Rows (subset, class, label, n, mu, sigma, median, sigma_mad): per class and overall, per subset."""
    rows = []
    present = [c for c in CLASS_ORDER if np.any(comp.classes == c)]
    others = sorted({str(c) for c in comp.classes if c not in CLASS_ORDER and c is not None and c != ""})
    for subset, smask in _subset_masks(comp.partial).items():
        for cls in [*present, *others, OVERALL]:
            cmask = smask if cls == OVERALL else smask & (comp.classes == cls)
            for name, _, _ in LABELS:
                if name not in comp.labels:
                    continue
                p, r, ok = comp.labels[name]
                rows.append({"subset": subset, "class": cls, "label": name, **stats((p - r)[ok & cmask], min_n)})
    return rows


def table8(comp: Comparison, min_n: int) -> list[dict]:
    rows = []
    for subset, smask in _subset_masks(comp.partial).items():
        for element, (p, r, ok) in comp.elements.items():
            rows.append({"subset": subset, "element": element, **stats((p - r)[ok & smask], min_n)})
    return rows


# ---------------------------------------------------------------- the run


@dataclass
class ExternalResult:
    out: str
    counts: dict
    table7: list[dict]
    table8: list[dict]
    figures: list[str]
    cuts_applied: list[str]
    cuts_missing: list[str]
    notes: list[str]


def _elements(table: Columns) -> list[str]:
    """The elements x of a table's `<x>_fe` columns (lower-case)."""
    out = []
    for name in table.original:
        m = _ELEMENT_RE.match(name)
        if m and m.group(1) not in ("fe",):
            out.append(m.group(1))
    return out


def _partial_flags(pred: Columns, config: ExternalConfig) -> tuple[np.ndarray, str]:
    if pred.has("partial"):
        values = pred.values("partial")
        flags = np.array([_truthy(v) for v in values], dtype=bool)
        return flags, "the predictions' `partial` column"
    if pred.has("coverage"):
        cov = pred.floats("coverage")
        return np.isfinite(cov) & (cov < config.partial_coverage), f"coverage < {config.partial_coverage:g}"
    return np.zeros(pred.n, dtype=bool), "unknown (no `partial` or `coverage` column): every row counted as full"


def _truthy(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes", "t")
    return bool(v) if v is not None else False


def compare_external(
    predictions: str,
    catalog: str,
    out: str,
    config: ExternalConfig = ExternalConfig(),
) -> ExternalResult:
    """Join `predictions` with `catalog`, apply the survey's cuts, and write tables, figures and a report to `out`."""
    _check_survey(config.survey)
    if config.match not in ("auto", "id", "sky"):
        raise SpecllmError(f"unknown match method {config.match!r}; choose auto, id or sky")
    pred = read_table_any(predictions)
    label_cols = {n: pred.first((n,)) for n, _, _ in LABELS}
    elements = _elements(pred)
    if not any(label_cols.values()) and not elements:
        raise SpecllmError(f"{predictions}: no prediction column (teff, logg, feh or <x>_fe)")
    if not any(pred.has(c) for c in ("spec_id", "obsid", "file", "filename", "ra")):
        raise SpecllmError(f"{predictions}: no id (spec_id, obsid, file) or ra/dec column to join on")
    ref = read_reference(catalog, config.survey)
    compared = [n for n, c in label_cols.items() if c and n in ref.labels]
    compared += [f"{x}_fe" for x in elements if f"{x}_fe" in ref.labels]
    if not compared:
        raise SpecllmError(f"{catalog}: no reference column for the predicted labels (survey '{config.survey}')")

    counts: dict = {"predictions": pred.n, "catalogue": ref.n}
    # rows `infer` could not predict
    if pred.has("status"):
        status = np.array([str(s) if s is not None else "" for s in pred.values("status")], dtype=object)
        ok_rows = np.flatnonzero(status == "ok")
        reasons: dict[str, int] = {}
        for s in status[status != "ok"]:
            reasons[s] = reasons.get(s, 0) + 1
        counts["status_not_ok"] = reasons
    else:
        ok_rows = np.arange(pred.n)
    counts["predicted"] = int(ok_rows.size)

    j = join(pred, ref, config, ok_rows)
    counts["matched"] = int(j.pred_index.size)
    counts["matched_by_id"] = int(np.sum(j.method == "id"))
    counts["matched_by_sky"] = int(np.sum(j.method == "sky"))
    counts["unmatched"] = int(ok_rows.size - j.pred_index.size)
    counts["ambiguous_id"] = j.ambiguous
    counts["distinct_reference_stars"] = int(np.unique(j.ref_index).size)
    if not j.pred_index.size:
        detail = "; ".join(j.notes) if j.notes else f"id columns tried: {', '.join(j.id_columns) or 'none'}"
        raise SpecllmError(f"{predictions}: no prediction matched a row of {catalog} ({detail})")

    # the survey's star-level cuts, as read_survey applied them: counted here per matched row
    keep_rows = np.ones(j.ref_index.size, dtype=bool)
    cuts_applied, cuts_missing = [], []
    for cut, passing in ref.cuts.items():
        if passing is None:
            cuts_missing.append(cut)
            say(f"{catalog}: quality cut not applied, its column is absent ({cut})")
            continue
        passed = passing[j.ref_index]
        counts[f"cut: {cut}"] = int(np.sum(keep_rows & ~passed))
        keep_rows &= passed
        cuts_applied.append(cut)
    counts["passing_cuts"] = int(keep_rows.sum())

    comp = Comparison()
    raw_class = pred.values("class") if pred.has("class") else [OVERALL] * pred.n
    comp.classes = np.array([str(c) if c not in (None, "") else "?" for c in raw_class], dtype=object)[j.pred_index]
    partial_all, partial_rule = _partial_flags(pred, config)
    comp.partial = partial_all[j.pred_index]
    counts["partial_matched"] = int(comp.partial.sum())

    absent = [x for x in elements if f"{x}_fe" not in ref.labels]
    if absent:
        j.notes.append(f"predicted elements absent from the catalogue: {', '.join(element_title(x) for x in absent)}")
    for name in compared:
        p = pred.floats(label_cols.get(name) or name)[j.pred_index]
        r = ref.labels[name][j.ref_index]
        ok = np.isfinite(p) & np.isfinite(r)  # a survey's labels are already NaN where cut or flagged
        if name in label_cols:
            comp.labels[name] = (p, r, ok)
        else:
            comp.elements[name.removesuffix("_fe").upper()] = (p, r, ok)
    notes = j.notes + ref.notes

    t7 = table7(comp, config.min_n)
    t8 = table8(comp, config.min_n)
    os.makedirs(out, exist_ok=True)
    figures = plot_one_to_one(comp, out, ref.title, config)
    _write_outputs(out, pred, j, comp, t7, t8)
    result = ExternalResult(
        out=out,
        counts=counts,
        table7=t7,
        table8=t8,
        figures=figures,
        cuts_applied=cuts_applied,
        cuts_missing=cuts_missing,
        notes=notes,
    )
    meta = {
        "predictions": os.path.abspath(predictions),
        "catalogue": os.path.abspath(catalog),
        "survey": ref.name,
        "survey_title": ref.title,
        "config": asdict(config),
        "partial_rule": partial_rule,
        "id_columns": j.id_columns,
        "specllm": __version__,
    }
    atomic_write_text(os.path.join(out, REPORT), render_report(result, meta))
    atomic_write_json(
        os.path.join(out, SUMMARY),
        meta
        | {
            "counts": counts,
            "cuts_applied": cuts_applied,
            "cuts_missing": cuts_missing,
            "notes": notes,
            "table7": t7,
            "table8": t8,
            "figures": figures,
        },
    )
    return result


def _write_outputs(out, pred: Columns, j: Join, comp: Comparison, t7, t8) -> None:
    write_csv(os.path.join(out, TABLE7), t7, ["subset", "class", "label", *STAT_FIELDS])
    write_csv(os.path.join(out, TABLE8), t8, ["subset", "element", *STAT_FIELDS])
    cols: dict[str, pa.Array] = {}
    for name in ("spec_id", "obsid", "file"):
        if pred.has(name):
            values = pred.values(name)
            cols[name] = pa.array(
                [str(values[i]) if values[i] is not None else None for i in j.pred_index], pa.string()
            )
    cols["class"] = pa.array(comp.classes.astype(str))
    cols["partial"] = pa.array(comp.partial)
    cols["match"] = pa.array(j.method.astype(str))
    cols["sep_arcsec"] = pa.array(j.sep_arcsec)
    for name, (p, r, ok) in {**comp.labels, **{f"{e.lower()}_fe": v for e, v in comp.elements.items()}}.items():
        cols[f"{name}_pred"] = pa.array(p)
        cols[f"{name}_ref"] = pa.array(r)
        cols[f"{name}_used"] = pa.array(ok)
    write_table(os.path.join(out, MATCHED), pa.table(cols))


def write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    atomic_write_text(path, csv_text(rows, columns))


def csv_text(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.6g}"
        return str(v)

    lines = [",".join(columns)] + [",".join(fmt(r.get(c)) for c in columns) for r in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures


def plot_one_to_one(comp: Comparison, out: str, survey: str, config: ExternalConfig) -> list[str]:
    """One PNG per label: reference (x) vs prediction (y), density (hexbin) or points, the 1:1 line, mu and sigma."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {n: (title, unit) for n, title, unit in LABELS}
    panels = [(n, *comp.labels[n], *names[n]) for n in comp.labels]
    panels += [(f"{e.lower()}_fe", *v, element_title(e), "dex") for e, v in comp.elements.items()]
    figures = []
    for name, p, r, ok, title, unit in panels:
        x, y, part = r[ok], p[ok], comp.partial[ok]
        if not x.size:
            continue
        fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=120)
        lo = float(np.nanmin(np.r_[x, y]))
        hi = float(np.nanmax(np.r_[x, y]))
        pad = 0.05 * (hi - lo or 1.0)
        lo, hi = lo - pad, hi + pad
        mixed = bool(part.any() and not part.all())
        if x.size >= config.hexbin_min_rows:
            extent = (lo, hi, lo, hi)
            hb = ax.hexbin(x, y, gridsize=config.hexbin_gridsize, extent=extent, mincnt=1, cmap="viridis")
            fig.colorbar(hb, ax=ax, label="stars per bin")
            if mixed:
                ax.scatter(x[part], y[part], s=12, facecolors="none", edgecolors="tab:orange", lw=0.7, label="partial")
        else:
            ax.scatter(x[~part], y[~part], s=10, c="tab:blue", label="full coverage")
            ax.scatter(x[part], y[part], s=12, facecolors="none", edgecolors="tab:orange", lw=0.8, label="partial")
        if mixed:
            ax.legend(loc="lower right", fontsize=7, frameon=False)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"{title} {survey} ({unit})")
        ax.set_ylabel(f"{title} specllm ({unit})")
        s = stats(y - x, 1)
        fmt = LABEL_FORMAT.get(name, ELEMENT_FORMAT)
        text = f"$\\mu$ = {fmt.format(s['mu'])}\n$\\sigma$ = {fmt.format(s['sigma'])}\nN = {s['n']}"
        if mixed:
            sp = stats(y[part] - x[part], 1)
            text += f"\npartial: {fmt.format(sp['mu'])} $\\pm$ {fmt.format(sp['sigma'])} ({sp['n']})"
        elif part.all():
            text += "\nall partial coverage"
        ax.text(0.04, 0.96, text, transform=ax.transAxes, va="top", ha="left", fontsize=8)
        ax.set_title(f"{title}: specllm vs {survey}", fontsize=9)
        fig.tight_layout()
        name_png = f"one_to_one_{name}.png"
        path = os.path.join(out, name_png)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        plt.close(fig)
        figures.append(name_png)
    return figures


# ---------------------------------------------------------------- report


def element_title(element: str) -> str:
    """'MG' -> '[Mg/Fe]', 'TIII' -> '[Ti II/Fe]', 'CI' -> '[C I/Fe]' (APOGEE's ionisation-stage names)."""
    e = element.upper()
    stage = {"TIII": ("TI", " II"), "CI": ("C", " I")}.get(e)
    name, suffix = stage if stage else (e, "")
    return f"[{name.capitalize()}{suffix}/Fe]"


def _pm(row: dict | None, fmt: str) -> str:
    if row is None or row["mu"] is None:
        return f"n/a ({row['n'] if row else 0})"
    return f"{fmt.format(row['mu'])} ± {fmt.format(row['sigma'])} ({row['n']})"


def table7_markdown(rows: list[dict], subset: str) -> str:
    sel = [r for r in rows if r["subset"] == subset]
    classes = list(dict.fromkeys(r["class"] for r in sel))
    labels = [(n, t, u) for n, t, u in LABELS if any(r["label"] == n for r in sel)]
    head = "| class | " + " | ".join(f"Δ{t} ({u})" for _, t, u in labels) + " |"
    lines = [head, "|---|" + "---|" * len(labels)]
    for cls in classes:
        cells = []
        for n, _, _ in labels:
            row = next((r for r in sel if r["class"] == cls and r["label"] == n), None)
            cells.append(_pm(row, LABEL_FORMAT[n]))
        lines.append(f"| {'**all**' if cls == OVERALL else cls} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table8_markdown(rows: list[dict], subset: str) -> str:
    sel = [r for r in rows if r["subset"] == subset]
    lines = ["| element | N | μ (dex) | σ (dex) |", "|---|---|---|---|"]
    for r in sel:
        mu = ELEMENT_FORMAT.format(r["mu"]) if r["mu"] is not None else "n/a"
        sigma = ELEMENT_FORMAT.format(r["sigma"]) if r["sigma"] is not None else "n/a"
        lines.append(f"| {element_title(r['element'])} | {r['n']} | {mu} | {sigma} |")
    return "\n".join(lines)


def render_report(result: ExternalResult, meta: dict) -> str:
    c = result.counts
    subsets = list(dict.fromkeys(r["subset"] for r in result.table7))
    lines = [
        f"# External comparison: specllm vs {meta['survey_title']}",
        "",
        f"Predictions `{os.path.basename(meta['predictions'])}`, catalogue `{os.path.basename(meta['catalogue'])}`, "
        f"survey table `{meta['survey']}` (specllm {meta['specllm']}). Differences are prediction - reference; "
        "μ is the mean, σ the standard deviation, (N) the number of stars.",
        "",
        "## Matching and cuts",
        "",
        f"- predictions: {c['predictions']} rows, {c['predicted']} with status ok"
        + (
            f" (not ok: {', '.join(f'{k} {v}' for k, v in c['status_not_ok'].items())})"
            if c.get("status_not_ok")
            else ""
        ),
        f"- catalogue: {c['catalogue']} rows; id columns used: {', '.join(meta['id_columns']) or 'none'}",
        f"- matched: {c['matched']} ({c['matched_by_id']} by id, {c['matched_by_sky']} by sky within "
        f"{meta['config']['radius_arcsec']:g} arcsec), {c['distinct_reference_stars']} distinct reference stars; "
        f"unmatched {c['unmatched']}" + (f"; ambiguous ids {c['ambiguous_id']}" if c["ambiguous_id"] else ""),
        f"- quality cuts applied: {', '.join(result.cuts_applied) or 'none'}; rows passing: {c['passing_cuts']}",
    ]
    if result.cuts_missing:
        lines.append(f"- **quality cuts NOT applied (column absent)**: {', '.join(result.cuts_missing)}")
    lines += [f"- note: {n}" for n in result.notes]
    lines.append(f"- partial coverage ({meta['partial_rule']}): {c['partial_matched']} of {c['matched']} matched rows")
    if c["matched"] and c["partial_matched"] == c["matched"]:
        lines.append(
            "- every matched spectrum covered only part of the grid: the tables below are all partial-coverage"
        )
    lines += [
        "",
        "## Table 7: Teff, log g, [Fe/H] per class",
        "",
        CLASS_NOTE,
        "",
        table7_markdown(result.table7, "all"),
        "",
    ]
    if result.table8:
        lines += ["## Table 8: [X/Fe] per element", "", table8_markdown(result.table8, "all"), ""]
    if "partial" in subsets:
        lines += [
            "## Partial-coverage spectra",
            "",
            "Spectra that covered only part of the grid (the missing wavelengths are masked, not observed) "
            "are compared separately:",
            "",
            "### Full coverage",
            "",
            table7_markdown(result.table7, "full"),
            "",
            "### Partial coverage",
            "",
            table7_markdown(result.table7, "partial"),
            "",
        ]
        if result.table8:
            lines += ["### Partial coverage, [X/Fe]", "", table8_markdown(result.table8, "partial"), ""]
    if result.figures:
        lines += ["## One-to-one plots", ""] + [f"![{f}]({f})" for f in result.figures] + [""]
    lines += [
        "Files: `table7.csv`, `table8.csv` (subset, class/element, n, mu, sigma, median, sigma_mad), "
        "`matched.parquet` (every matched row), `summary.json`.",
        "",
    ]
    return "\n".join(lines)


def overall_csv(result: ExternalResult) -> str:
    """Table 7 (every subset) as CSV, for stdout."""
    return csv_text(result.table7, ["subset", "class", "label", *STAT_FIELDS])
