"""The Markdown report and CSV tables of `compare-external`."""

from __future__ import annotations

import os

from ..files import csv_text, write_csv
from ..labels import element_title
from ..metrics import OVERALL
from .stats import (
    ALL,
    ELEMENT_FORMAT,
    FLAGGED,
    FULL,
    LABEL_FORMAT,
    LABELS,
    PARTIAL,
    STAT_FIELDS,
    UNFLAGGED,
    ExternalResult,
)

FLOAT_FORMAT = "{:.6g}"  # compare-external's tables: floats to 6 significant digits


def _cells(rows: list[dict], columns: list[str]) -> list[list]:
    return [[r.get(c) for c in columns] for r in rows]


def table_csv(rows: list[dict], columns: list[str]) -> str:
    """compare-external's tables as CSV: one row per dict, its `columns` in order."""
    return csv_text(columns, _cells(rows, columns), FLOAT_FORMAT)


def write_table_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    write_csv(path, columns, _cells(rows, columns), FLOAT_FORMAT)


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


def _two_tables(title: str, intro: str, table7: list[dict], *parts: tuple[str, str]) -> list[str]:
    """A report section: a title, a sentence, then one Table 7 per (heading, subset)."""
    lines = [f"## {title}", "", intro, ""]
    for heading, subset in parts:
        lines += [f"### {heading}", "", table7_markdown(table7, subset), ""]
    return lines


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
    if c.get("flagged_matched") is None:
        lines.append("- flags: the predictions have no `flag` column (made before infer wrote flags): none left out")
    else:
        kinds = ", ".join(f"{k} {v}" for k, v in c.get("flagged_by_keyword", {}).items())
        lines.append(
            f"- flagged by infer (other than `partial`): {c['flagged_matched']} of {c['matched']} matched rows"
            + (f" ({kinds})" if kinds else "")
            + "; left out of the 'Unflagged rows' table and shown apart"
        )
    if c["matched"] and c["partial_matched"] == c["matched"]:
        lines.append(
            "- every matched spectrum covered only part of the grid: the tables below are all partial-coverage"
        )
    lines += [
        "",
        "## Table 7: Teff, log g, [Fe/H] per class",
        "",
        result.class_note,
        "",
        table7_markdown(result.table7, ALL),
        "",
    ]
    if result.table8:
        lines += ["## Table 8: [X/Fe] per element", "", table8_markdown(result.table8, ALL), ""]
    if PARTIAL in subsets:
        lines += _two_tables(
            "Partial-coverage spectra",
            "Spectra that covered only part of the grid (the missing wavelengths are masked, not observed) "
            "are compared separately:",
            result.table7,
            ("Full coverage", FULL),
            ("Partial coverage", PARTIAL),
        )
        if result.table8:
            lines += ["### Partial coverage, [X/Fe]", "", table8_markdown(result.table8, PARTIAL), ""]
    if UNFLAGGED in subsets:
        lines += _two_tables(
            "Unflagged and flagged rows",
            "The tables above include every matched row. Rows infer flagged (not a star, low SNR, a class or domain "
            f"the model was not trained on) are left out here ({c['flagged_matched']} rows) and shown apart:",
            result.table7,
            ("Unflagged rows", UNFLAGGED),
            ("Flagged rows", FLAGGED),
        )
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
    return table_csv(result.table7, ["subset", "class", "label", *STAT_FIELDS])
