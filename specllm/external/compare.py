"""`specllm compare-external`: predictions against an independent survey (paper Tables 7-8, Figures 1-8).

predictions (the table `infer` writes, in any of its formats) + a reference catalogue -> rows joined by id or by sky
position -> the survey's quality cuts -> per-class mu +- sigma of (prediction - reference) for Teff, log g, [Fe/H]
(Table 7), per-element N, mu, sigma of [X/Fe] (Table 8), a one-to-one density plot per label, and a Markdown report.
Rows whose spectrum covered only part of the grid (`partial`, e.g. MILES beyond 7410 A) are reported separately, and
so are rows `infer` flagged for anything else (`flag`, see `specllm.flags`): the report says how many. Table 7 groups
by the reference catalogue's own class where it has one (LAMOST SUBCLASS), else by the predicted class.

This module runs the comparison; the work is split by role: `reference` (reading the catalogue, joining),
`stats` (the tables, through `specllm.metrics`), `figures` and `report` (both built from `stats`' results).
"""

from __future__ import annotations

import os
from dataclasses import asdict

import numpy as np
import pyarrow as pa

from .._version import __version__
from ..config import ExternalConfig
from ..errors import SpecllmError
from ..files import atomic_write_json, atomic_write_text
from ..flags import FLAGS
from ..flags import PARTIAL as PARTIAL_FLAG
from ..io.surveys import catalogue
from ..io.tables import Table
from ..labels import STAGE1_NAMES, element_label, element_title, split_element_column
from ..metrics import OVERALL
from ..progress import say
from ..shards import exclusive_output, write_table
from .figures import plot_one_to_one
from .reference import (
    PREDICTION_IDS,
    Join,
    Reference,
    elements,
    join,
    read_prediction_table,
    read_reference,
)
from .report import render_report, write_table_csv
from .stats import STAT_FIELDS, Comparison, ExternalResult, table7, table8

TABLE7 = "table7.csv"
TABLE8 = "table8.csv"
REPORT = "report.md"
SUMMARY = "summary.json"
MATCHED = "matched.parquet"
MATCH_METHODS = ("auto", "id", "sky")


def _partial_flags(pred: Table, config: ExternalConfig) -> tuple[np.ndarray, str]:
    if pred.has("partial"):
        values = pred.values("partial")
        flags = np.array([_truthy(v) for v in values], dtype=bool)
        return flags, "the predictions' `partial` column"
    if pred.has("coverage"):
        cov = pred.floats("coverage")
        return np.isfinite(cov) & (cov < config.partial_coverage), f"coverage < {config.partial_coverage:g}"
    return np.zeros(pred.n, dtype=bool), "unknown (no `partial` or `coverage` column): every row counted as full"


def _flag_counts(pred: Table, j: Join) -> dict:
    """How many matched rows `infer` flagged (a bit other than `partial`), and per keyword: these rows are left out
    of the `unflagged` tables and shown apart as `flagged`."""
    if not pred.has("flag"):
        return {"flagged_matched": None}
    flag = np.array([int(f) if f not in (None, "") else 0 for f in pred.values("flag")], dtype=np.int64)[j.pred_index]
    flagged = (flag & ~PARTIAL_FLAG.value) != 0
    by_keyword = {f.keyword: int(np.sum(flagged & ((flag & f.value) != 0))) for f in FLAGS if f is not PARTIAL_FLAG}
    return {"flagged_matched": int(flagged.sum()), "flagged_by_keyword": {k: v for k, v in by_keyword.items() if v}}


def _truthy(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes", "t")
    return bool(v) if v is not None else False


@exclusive_output("out")
def compare_external(
    predictions: str,
    catalog: str,
    out: str,
    config: ExternalConfig = ExternalConfig(),
) -> ExternalResult:
    """Join `predictions` with `catalog`, apply the survey's cuts, and write tables, figures and a report to `out`."""
    catalogue(config.survey)  # an unknown name: one line, before any reading
    if config.match not in MATCH_METHODS:
        raise SpecllmError(f"unknown match method {config.match!r}; choose {', '.join(MATCH_METHODS)}")
    pred = read_prediction_table(predictions)
    label_cols = {n: pred.first((n,)) for n in STAGE1_NAMES}
    predicted_elements = elements(pred)
    if not any(label_cols.values()) and not predicted_elements:
        raise SpecllmError(f"{predictions}: no prediction column (teff, logg, feh or <x>_fe)")
    if not any(pred.has(c) for c in (*PREDICTION_IDS, "ra")):
        raise SpecllmError(f"{predictions}: no id (spec_id, obsid, file) or ra/dec column to join on")
    ref = read_reference(catalog, config.survey)
    compared = [n for n, c in label_cols.items() if c and n in ref.labels]
    compared += [element_label(x) for x in predicted_elements if element_label(x) in ref.labels]
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

    comp, partial_rule = _comparison(pred, ref, j, compared, config)
    counts["partial_matched"] = int(comp.partial.sum())
    counts.update(_flag_counts(pred, j))
    absent = [x for x in predicted_elements if element_label(x) not in ref.labels]
    if absent:
        j.notes.append(f"predicted elements absent from the catalogue: {', '.join(element_title(x) for x in absent)}")
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
        class_note=comp.class_note,
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


def _comparison(pred: Table, ref: Reference, j: Join, compared: list[str], config: ExternalConfig):
    """The matched values of every compared label, each matched row's class (the reference catalogue's where it has
    one, else the predicted one), coverage and flag."""
    comp = Comparison()
    raw_class = pred.values("class") if pred.has("class") else [OVERALL] * pred.n
    comp.classes = np.array([str(c) if c not in (None, "") else "?" for c in raw_class], dtype=object)[j.pred_index]
    if ref.classes is not None:
        own = ref.classes[j.ref_index]
        has = np.array([c is not None for c in own], dtype=bool)
        comp.classes[has] = own[has]
        comp.class_note = (
            f"Class: the reference catalogue's own class (`{ref.class_column}`, reduced to A/F/G/K/M) for "
            f"{int(has.sum())} of {has.size} matched rows, the class specllm predicted for the other {int((~has).sum())}."
        )
    partial_all, partial_rule = _partial_flags(pred, config)
    comp.partial = partial_all[j.pred_index]
    if pred.has("flag"):
        flag = np.array([int(f) if f not in (None, "") else 0 for f in pred.values("flag")], dtype=np.int64)
        comp.flagged = (flag[j.pred_index] & ~PARTIAL_FLAG.value) != 0
    for name in compared:
        p = pred.floats(name)[j.pred_index]
        r = ref.labels[name][j.ref_index]
        ok = np.isfinite(p) & np.isfinite(r)  # a survey's labels are already NaN where cut or flagged
        if name in STAGE1_NAMES:
            comp.labels[name] = (p, r, ok)
        else:
            comp.elements[split_element_column(name)[1].upper()] = (p, r, ok)
    return comp, partial_rule


def _write_outputs(out, pred: Table, j: Join, comp: Comparison, t7, t8) -> None:
    write_table_csv(os.path.join(out, TABLE7), t7, ["subset", "class", "label", *STAT_FIELDS])
    write_table_csv(os.path.join(out, TABLE8), t8, ["subset", "element", *STAT_FIELDS])
    cols: dict[str, pa.Array] = {}
    for name in ("spec_id", "obsid", "file"):
        if pred.has(name):
            values = pred.values(name)
            cols[name] = pa.array(
                [str(values[i]) if values[i] is not None else None for i in j.pred_index], pa.string()
            )
    cols["class"] = pa.array(comp.classes.astype(str))
    cols["partial"] = pa.array(comp.partial)
    if comp.flagged is not None:
        cols["flagged"] = pa.array(comp.flagged)
    cols["match"] = pa.array(j.method.astype(str))
    cols["sep_arcsec"] = pa.array(j.sep_arcsec)
    for name, (p, r, ok) in {**comp.labels, **{element_label(e): v for e, v in comp.elements.items()}}.items():
        cols[f"{name}_pred"] = pa.array(p)
        cols[f"{name}_ref"] = pa.array(r)
        cols[f"{name}_used"] = pa.array(ok)
    write_table(os.path.join(out, MATCHED), pa.table(cols))
