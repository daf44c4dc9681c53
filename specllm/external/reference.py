"""Reading and joining for `compare-external`: the reference catalogue as the comparison needs it, and the match of
prediction rows to its rows by id, by sky position (`specllm.skymatch`), or both.

APOGEE, GALAH and Gaia-ESO catalogues are read by `specllm.io.surveys.read_survey`, their one description (id,
position and label columns, placeholders, per-label flags, the paper's cuts, Gaia-ESO's A(X) -> [X/Fe]); the plain
tables without cuts (`PLAIN_TABLES`: lamost, miles, generic) are described here. Tables are read by
`specllm.io.tables.read_table` (CSV, FITS, Parquet or npz; columns case-insensitive); predictions (as `infer` writes
them, or another tool's table) by `read_prediction_table`, which `compare-external` and `plot` share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..config import ExternalConfig
from ..errors import SpecllmError
from ..io.arrays import FLUX_KEYS, WAVE_KEYS, miles_spec_id
from ..io.lamost_catalog import file_key
from ..io.surveys import Survey, catalogue, read_survey
from ..io.tables import Table, read_table
from ..labels import clean_number, element_columns, reduce_class, split_element_column
from ..skymatch import SkyIndex

NPZ_SPECTRUM_KEYS = (*WAVE_KEYS, *FLUX_KEYS, "ivar", "error")  # npz members that are spectra, not columns
PREDICTION_IDS = ("obsid", "spec_id", "file", "filename")  # a prediction row's join keys, tried in this order


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
    classes: np.ndarray | None = None  # the catalogue's own class per row (A/F/G/K/M, None where it has none)
    class_column: str | None = None


def _prediction_label(survey_label: str) -> str:
    """io/surveys' `fe_h` is the predictions' `feh`; `teff`, `logg` and `<x>_fe` are spelled alike."""
    return "feh" if survey_label == "fe_h" else survey_label


def read_reference(path: str, name: str) -> Reference:
    """The reference catalogue `path` read as `name`, a name of the registry `specllm.io.surveys.CATALOGUES`."""
    table = catalogue(name)
    if isinstance(table, Survey):
        cat = read_survey(path, table, quality_cuts=True, need_position=False, all_ids=True)
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
    ref = read_table(path, skip_npz=NPZ_SPECTRUM_KEYS)
    ra_col, dec_col = ref.first(table.ra), ref.first(table.dec)
    no_position = np.full(ref.n, np.nan)
    labels = {n: ref.floats(c) for n in table.labels if (c := ref.first(table.labels[n]))}
    class_col = ref.first(table.classes) if table.classes else None
    classes = np.array([reduce_class(v) for v in ref.values(class_col)], dtype=object) if class_col else None
    for x in elements(ref):
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
        classes=classes,
        class_column=class_col,
    )


def read_prediction_table(path: str) -> Table:
    """Predictions in any format `infer` writes (by extension: `specllm.outputs.read_predictions`, the one reader
    of predictions); any other table (another tool's CSV, an npz) as a catalogue."""
    from ..outputs import FORMATS, read_predictions

    if os.path.splitext(path)[1].lower() not in FORMATS:
        return read_table(path, skip_npz=NPZ_SPECTRUM_KEYS)
    table = read_predictions(path)
    if table.num_rows == 0:
        raise SpecllmError(f"{path}: the table is empty")
    return Table(path, table)


def elements(table: Table) -> list[str]:
    """The elements x of a table's unprefixed `<x>_fe` columns (lower-case), in column order."""
    return [split_element_column(n)[1] for n in element_columns(table.names)]


def _norm_id(value, column: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        if clean_number(value) is None:
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


def _prediction_keys(pred: Table) -> list[list[str | None]]:
    """Per prediction row, its candidate join keys in order: obsid, spec_id, file stem."""
    keys: list[list[str | None]] = [[] for _ in range(pred.n)]
    for column in PREDICTION_IDS:
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


def join(pred: Table, ref: Reference, config: ExternalConfig, rows: np.ndarray) -> Join:
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
            m = SkyIndex(ref.ra, ref.dec, usable=ref.joinable).match(
                pred.floats(p_ra)[unmatched], pred.floats(p_dec)[unmatched], config.radius_arcsec
            )
            hit = m.index >= 0
            pi += unmatched[hit].tolist()
            ri += m.index[hit].tolist()
            method += ["sky"] * int(hit.sum())
            sep += m.sep_arcsec[hit].tolist()
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
