"""Statistics of `compare-external` (paper Tables 7-8): per class and per element, through `specllm.metrics`.

Differences are prediction - reference. Each table row carries n, mu, sigma (ddof 0), median and sigma_mad as
`specllm.metrics` defines them; a row of fewer than `min_n` stars keeps its n and has None for the rest. Rows are
computed separately for the `full` and `partial` coverage subsets where both occur (`all` always).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..labels import CLASSES, STAGE1_NAMES, STAGE1_TITLES
from ..metrics import OVERALL, Stat, per_class, residual_stats, stat_of

LABELS: tuple[tuple[str, str, str], ...] = tuple((n, *STAGE1_TITLES[n]) for n in STAGE1_NAMES)  # name, title, unit
LABEL_FORMAT = {"teff": "{:.0f}", "logg": "{:.2f}", "feh": "{:.2f}"}  # how tables and figures write each label
ELEMENT_FORMAT = "{:.3f}"
STAT_FIELDS = ("n", "mu", "sigma", "median", "sigma_mad")
ALL, FULL, PARTIAL = "all", "full", "partial"  # coverage subsets
UNFLAGGED, FLAGGED = "unflagged", "flagged"  # rows without / with an infer flag other than `partial`
SUBSETS = (ALL, FULL, PARTIAL, UNFLAGGED, FLAGGED)


# The class column of Table 7 where the reference catalogue has no class of its own (else compare.py says so).
CLASS_NOTE = "Class: the class specllm predicted for the spectrum (the reference catalogue has no class column)."


def stats(diff: np.ndarray, min_n: int) -> dict:
    """STAT_FIELDS of the finite differences (`specllm.metrics`); n alone (the rest None) below `min_n` rows."""
    return _fields(stat_of(diff), min_n)


def _fields(s: Stat, min_n: int) -> dict:
    if s.n < max(1, min_n):
        return {"n": s.n, **dict.fromkeys(STAT_FIELDS[1:])}
    return s.as_dict(STAT_FIELDS)


@dataclass
class Comparison:
    """Matched values per label: name -> (prediction, reference, ok: both present and passing the cuts) for the
    stage-1 labels (`labels`) and per element (`elements`, keyed 'MG', 'TIII', ...); per matched row its group
    (`classes`: what Table 7 groups by, described by `class_note`) and whether its spectrum was partial."""

    labels: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    elements: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    classes: np.ndarray | None = None
    partial: np.ndarray | None = None
    flagged: np.ndarray | None = None  # infer flagged the row (a bit other than `partial`); None: no flag column
    class_note: str = CLASS_NOTE


def _subset_masks(comp: Comparison) -> dict[str, np.ndarray]:
    partial = comp.partial
    masks = {ALL: np.ones(partial.shape, bool)}
    if partial.any() and not partial.all():
        masks[FULL] = ~partial
        masks[PARTIAL] = partial.copy()
    if comp.flagged is not None and comp.flagged.any():
        masks[UNFLAGGED] = ~comp.flagged
        masks[FLAGGED] = comp.flagged.copy()
    return masks


def table7(comp: Comparison, min_n: int) -> list[dict]:
    """Rows (subset, class, label, n, mu, sigma, median, sigma_mad): per class (A/F/G/K/M present, then any other
    class in sorted order) and over all rows (`metrics.OVERALL`), per subset."""
    rows = []
    present = [c for c in CLASSES if np.any(comp.classes == c)]
    others = sorted({str(c) for c in comp.classes if c not in CLASSES and c is not None and c != ""})
    groups = [*present, *others]
    names = [name for name, _, _ in LABELS if name in comp.labels]
    for subset, smask in _subset_masks(comp).items():
        by_label = {}
        for name in names:
            p, r, ok = comp.labels[name]
            sel = ok & smask
            by_label[name] = per_class(p[sel], r[sel], comp.classes[sel], groups=groups)
        for cls in [*groups, OVERALL]:
            for name in names:
                rows.append({"subset": subset, "class": cls, "label": name, **_fields(by_label[name][cls], min_n)})
    return rows


def table8(comp: Comparison, min_n: int) -> list[dict]:
    """Rows (subset, element, n, mu, sigma, median, sigma_mad) over every matched row, per subset."""
    rows = []
    for subset, smask in _subset_masks(comp).items():
        for element, (p, r, ok) in comp.elements.items():
            rows.append(
                {"subset": subset, "element": element, **_fields(residual_stats(p[ok & smask], r[ok & smask]), min_n)}
            )
    return rows


@dataclass
class ExternalResult:
    """What `compare_external` found: the counts of its matching and cuts, the two tables' rows, the figure files,
    and notes for the report."""

    out: str
    counts: dict
    table7: list[dict]
    table8: list[dict]
    figures: list[str]
    cuts_applied: list[str]
    cuts_missing: list[str]
    notes: list[str]
    class_note: str = CLASS_NOTE
