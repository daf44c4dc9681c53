"""`specllm plot PREDICTIONS -o kiel.png`: the picture an astronomer draws first from a table of labels.

The Kiel diagram: Teff (x, reversed: hot on the left) against log g (y, reversed: dwarfs at the bottom) of the rows
`infer` labelled (status `ok`), the usable ones coloured by [Fe/H] or Teff (`PlotConfig.color`), and the flagged
ones drawn apart, one marker per flag keyword (`specllm.flags`; a row under each of its keywords), with their
counts in the legend: that is where K/M stars and galaxies show up as a false giant branch. Usable is the flags'
one rule (`flags.usable`: status ok, no bit set but `partial`), so a row flagged only `partial` is drawn with the
others.

With `reference=CATALOG` the predictions are joined to the catalogue as `compare-external` joins them (by id, by
sky position, or both; the survey's quality cuts) and one panel per label shows prediction against reference, the
1:1 line, and the mean and scatter of the difference of the usable rows.

Predictions are read by `specllm.outputs.read_predictions` (every format `infer` writes); the figure's format is
its extension (PNG, PDF or SVG), written atomically; matplotlib with the Agg backend (no display needed).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from .config import ExternalConfig, PlotConfig
from .errors import SpecllmError
from .flags import FLAGS, USABLE_DESPITE, usable

FIGURE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
# label -> (axis title, unit, colour map)
LABELS = {
    "teff": ("$T_\\mathrm{eff}$", "K", "RdYlBu"),
    "logg": ("$\\log g$", "dex", "viridis"),
    "feh": ("[Fe/H]", "dex", "viridis"),
}
# one marker and colour per flag keyword, in bit order
FLAG_STYLES = [("x", "tab:red"), ("v", "tab:orange"), ("s", "tab:purple"), ("D", "tab:brown"), ("^", "tab:pink"),
               ("P", "tab:olive"), ("*", "tab:cyan"), ("h", "tab:gray")]  # fmt: skip


@dataclass
class PlotResult:
    out: str
    rows: int  # rows in the predictions
    plotted: int  # rows with status ok and finite Teff and log g
    usable: int  # of those, drawn as usable (no flag but `partial`)
    flagged: dict[str, int] = field(default_factory=dict)  # keyword -> rows drawn under it
    matched: int | None = None  # rows joined to the reference (with --reference)


def figure_format(path: str) -> str:
    """The format of a figure by its extension; another is a SpecllmError (before any work)."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in FIGURE_FORMATS:
        raise SpecllmError(f"{path}: unknown figure format {ext or '(no extension)'!r}; use .png, .pdf or .svg")
    return FIGURE_FORMATS[ext]


def _labels(pred, name: str) -> np.ndarray:
    return pred.floats(name) if pred.has(name) else np.full(pred.n, np.nan)


def plot_predictions(
    predictions: str,
    out: str,
    config: PlotConfig = PlotConfig(),
    reference: str | None = None,
    external: ExternalConfig = ExternalConfig(),
) -> PlotResult:
    """Write the Kiel diagram of `predictions` (and, with `reference`, prediction-vs-reference panels) to `out`."""
    from .external.reference import read_prediction_table

    fmt = figure_format(out)
    if not (0 < config.width <= 100 and 10 <= config.dpi <= 1200):
        raise SpecllmError(
            f"--width must lie in (0, 100] inches and --dpi in [10, 1200] (got {config.width}, {config.dpi})"
        )
    pred = read_prediction_table(predictions)
    teff, logg = _labels(pred, "teff"), _labels(pred, "logg")
    if not (np.isfinite(teff).any() and np.isfinite(logg).any()):
        raise SpecllmError(f"{predictions}: no row with both teff and logg to plot")
    status = np.array([s if s is not None else "ok" for s in pred.values("status")] if pred.has("status") else
                      ["ok"] * pred.n, dtype=object)  # fmt: skip
    flag = (np.array([int(f) if f is not None else 0 for f in pred.values("flag")], dtype=np.int64)
            if pred.has("flag") else np.zeros(pred.n, np.int64))  # fmt: skip
    shown = (status == "ok") & np.isfinite(teff) & np.isfinite(logg)
    fit = shown & np.array([usable(s, f) for s, f in zip(status, flag.tolist())], dtype=bool)  # flags' one rule
    result = PlotResult(out=out, rows=pred.n, plotted=int(shown.sum()), usable=int(fit.sum()))

    comparisons = []
    if reference is not None:
        comparisons, result.matched = _reference_pairs(pred, reference, external, np.flatnonzero(shown))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + len(comparisons)
    fig, axes = plt.subplots(1, panels, figsize=(config.width * panels, config.width * 0.82), squeeze=False)
    axes = axes[0]
    _kiel(fig, axes[0], teff, logg, _labels(pred, config.color), config.color, shown, fit, flag, result)
    for ax, (name, p, r, rows) in zip(axes[1:], comparisons):
        _one_to_one(ax, name, p, r, fit[rows], external.survey)
    fig.tight_layout()
    from .files import atomic_write

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atomic_write(out, lambda tmp: fig.savefig(tmp, format=fmt, dpi=config.dpi))
    plt.close(fig)
    return result


def _kiel(fig, ax, teff, logg, colour, colour_name, shown, usable, flag, result: PlotResult) -> None:
    title, unit, cmap = LABELS[colour_name]
    good = usable & np.isfinite(colour)
    if good.any():
        points = ax.scatter(teff[good], logg[good], c=colour[good], s=9, cmap=cmap, lw=0, alpha=0.85,
                            label=f"usable ({int(good.sum())})")  # fmt: skip
        fig.colorbar(points, ax=ax, label=f"{title} ({unit})", pad=0.01)
    nocolour = usable & ~np.isfinite(colour)
    if nocolour.any():
        ax.scatter(teff[nocolour], logg[nocolour], s=9, c="0.5", lw=0, label=f"usable, no {colour_name}")
    for (marker, colour_of), f in zip(FLAG_STYLES, [f for f in FLAGS if f not in USABLE_DESPITE]):
        rows = shown & ~usable & ((flag & f.value) != 0)
        if rows.any():
            result.flagged[f.keyword] = int(rows.sum())
            paint = {"c": colour_of} if marker in "x+" else {"facecolors": "none", "edgecolors": colour_of}
            ax.scatter(teff[rows], logg[rows], s=18, marker=marker, lw=0.8, **paint,
                       label=f"flagged {f.keyword} ({int(rows.sum())})")  # fmt: skip
    ax.set_xlabel("$T_\\mathrm{eff}$ (K)")
    ax.set_ylabel("$\\log g$ (dex)")
    if not ax.xaxis_inverted():
        ax.invert_xaxis()  # hot stars on the left
    if not ax.yaxis_inverted():
        ax.invert_yaxis()  # giants at the top
    ax.set_title(f"Kiel diagram: {result.plotted} spectra, {result.usable} usable", fontsize=10)
    if result.plotted:
        ax.legend(loc="upper left", fontsize=7, frameon=False, markerscale=1.2)  # hot giants: an empty corner


def _reference_pairs(pred, reference: str, external: ExternalConfig, rows: np.ndarray):
    """(label, prediction, reference, prediction rows) per label both have, joined as compare-external joins."""
    from .external.reference import join, read_reference

    ref = read_reference(reference, external.survey)
    j = join(pred, ref, external, rows)
    if not j.pred_index.size:
        raise SpecllmError(f"{pred.path}: no prediction matched a row of {reference}")
    pairs = []
    for name in LABELS:
        if name in ref.labels and pred.has(name):
            p = pred.floats(name)[j.pred_index]
            r = ref.labels[name][j.ref_index]
            if (np.isfinite(p) & np.isfinite(r)).any():
                pairs.append((name, p, r, j.pred_index))
    if not pairs:
        raise SpecllmError(f"{reference}: no reference label (teff, logg, feh) for the predictions")
    return pairs, int(j.pred_index.size)


def _one_to_one(ax, name: str, p: np.ndarray, r: np.ndarray, usable: np.ndarray, survey: str) -> None:
    title, unit, _ = LABELS[name]
    ok = np.isfinite(p) & np.isfinite(r)
    good, bad = ok & usable, ok & ~usable
    ax.scatter(r[good], p[good], s=9, c="tab:blue", lw=0, label=f"usable ({int(good.sum())})")
    if bad.any():
        ax.scatter(r[bad], p[bad], s=14, facecolors="none", edgecolors="tab:red", lw=0.7,
                   label=f"flagged ({int(bad.sum())})")  # fmt: skip
    both = np.r_[p[ok], r[ok]]
    lo, hi = float(both.min()), float(both.max())
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(f"{title} {survey} ({unit})")
    ax.set_ylabel(f"{title} specllm ({unit})")
    if good.any():
        d = p[good] - r[good]
        fmt = "{:.0f}" if name == "teff" else "{:.3f}"
        text = f"usable: $\\mu$ = {fmt.format(d.mean())}, $\\sigma$ = {fmt.format(d.std())}, N = {d.size}"
        ax.text(0.04, 0.96, text, transform=ax.transAxes, va="top", fontsize=8)
    ax.legend(loc="lower right", fontsize=7, frameon=False)
