"""Metrics every model is judged by, and the paper's tables and plots.

Residual = prediction - label. For each model, label and class (A/F/G/K/M, and all together as `metrics.OVERALL`)
we report mu, sigma, RMSE and n as `specllm.metrics` defines them (sigma with ddof 0), over the spectra that have
both a label and a prediction: a missing label (NaN) or missing prediction is left out, never counted as zero.

Tables follow *Spectra as Language*:
- Tables 2-4: one table per label (Teff, log g, [Fe/H]); rows = model; columns = A, F, G, K, M, all; cells
  'mu ± sigma'.
- Table 5: mu ± sigma per element/label (all classes); rows = model; columns = labels.
- Table 6: RMSE per element/label and class; rows = label x model; columns = A, F, G, K, M, all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .files import atomic_write
from .labels import CLASSES, label_title
from .metrics import OVERALL, per_class, residual_stats

GROUPS: tuple[str, ...] = (*CLASSES, OVERALL)
MISSING_CELL = "—"

_DECIMALS = {"teff": 1}


def label_decimals(name: str) -> int:
    return _DECIMALS.get(name, 3)


@dataclass(frozen=True)
class Stat:
    model: str
    label: str
    group: str
    n: int
    mu: float
    sigma: float
    rmse: float

    def cell(self, decimals: int) -> str:
        if self.n == 0:
            return MISSING_CELL
        return f"{self.mu:.{decimals}f} ± {self.sigma:.{decimals}f}"


def compute_stats(
    model: str, true_labels: np.ndarray, pred_labels: np.ndarray, classes: np.ndarray, label_names: Sequence[str]
) -> list[Stat]:
    """Per label and per true class (plus overall) statistics of one model's residuals."""
    out = []
    for j, name in enumerate(label_names):
        for group, s in per_class(pred_labels[:, j], true_labels[:, j], classes).items():
            out.append(Stat(model, name, group, s.n, s.mu, s.sigma, s.rmse))
    return out


def class_accuracy(true: np.ndarray, pred: np.ndarray) -> tuple[int, float]:
    """(n, accuracy) over rows with a known true class; a missing prediction counts as wrong."""
    true = np.asarray(true, dtype=object)
    known = np.array([isinstance(t, str) for t in true], bool)
    if not known.any():
        return 0, math.nan
    hits = np.array([p == t for p, t in zip(np.asarray(pred, dtype=object)[known], true[known], strict=True)])
    return int(known.sum()), float(hits.mean())


def _lookup(stats: Sequence[Stat]) -> dict[tuple[str, str, str], Stat]:
    return {(s.model, s.label, s.group): s for s in stats}


def _models(stats: Sequence[Stat]) -> list[str]:
    return list(dict.fromkeys(s.model for s in stats))


def _labels(stats: Sequence[Stat]) -> list[str]:
    return list(dict.fromkeys(s.label for s in stats))


# ---------------------------------------------------------------- tables (header row + data rows of strings)

Table = tuple[list[str], list[list[str]]]


def per_class_table(stats: Sequence[Stat], label: str) -> Table:
    """Tables 2-4 layout: rows = model, columns = A F G K M overall, cells 'mu ± sigma'."""
    look, d = _lookup(stats), label_decimals(label)
    rows = []
    for model in _models(stats):
        rows.append(
            [model] + [look[(model, label, g)].cell(d) if (model, label, g) in look else MISSING_CELL for g in GROUPS]
        )
    return ["model", *GROUPS], rows


def element_table(stats: Sequence[Stat]) -> Table:
    """Table 5 layout: rows = model, columns = labels (elements), cells overall 'mu ± sigma'."""
    look, labels = _lookup(stats), _labels(stats)
    rows = []
    for model in _models(stats):
        cells = [
            look[(model, lab, OVERALL)].cell(label_decimals(lab)) if (model, lab, OVERALL) in look else MISSING_CELL
            for lab in labels
        ]
        rows.append([model, *cells])
    return ["model", *[label_title(lab) for lab in labels]], rows


def rmse_table(stats: Sequence[Stat]) -> Table:
    """Table 6 layout: rows = label x model, columns = A F G K M overall, cells RMSE."""
    look = _lookup(stats)
    rows = []
    for lab in _labels(stats):
        d = label_decimals(lab)
        for model in _models(stats):
            cells = []
            for g in GROUPS:
                s = look.get((model, lab, g))
                cells.append(MISSING_CELL if s is None or s.n == 0 else f"{s.rmse:.{d}f}")
            rows.append([label_title(lab), model, *cells])
    return ["label", "model", *GROUPS], rows


def markdown_table(table: Table) -> str:
    header, rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def stats_rows(stats: Sequence[Stat], extra: dict | None = None) -> tuple[list[str], list[list]]:
    """Long form (one row per model/label/group) for CSV/JSON."""
    extra = extra or {}
    header = [*extra.keys(), "model", "label", "class", "n", "mu", "sigma", "rmse"]
    rows = [[*extra.values(), s.model, s.label, s.group, s.n, s.mu, s.sigma, s.rmse] for s in stats]
    return header, rows


def stats_json(stats: Sequence[Stat]) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(s).items()} for s in stats]


# ---------------------------------------------------------------- plots (matplotlib, Agg)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=fig.dpi))


def residual_plot(
    path: str | Path,
    label: str,
    true: np.ndarray,
    classes: np.ndarray,
    predictions: dict[str, np.ndarray],
    dpi: int = 72,
) -> None:
    """Residual (prediction - label) against the label: one row per model, one column per class in the test set."""
    plt = _pyplot()
    classes = np.asarray(classes, dtype=object)
    present = [c for c in CLASSES if (classes == c).any()] or [OVERALL]
    models = list(predictions)
    fig, axes = plt.subplots(
        len(models),
        len(present),
        figsize=(2.6 * len(present) + 0.6, 2.0 * len(models) + 0.6),
        dpi=dpi,
        squeeze=False,
        sharey="row",
    )
    d = label_decimals(label)
    for i, model in enumerate(models):
        pred = np.asarray(predictions[model], dtype=np.float64)
        for k, group in enumerate(present):
            ax = axes[i][k]
            rows = np.ones(len(classes), bool) if group == OVERALL else classes == group
            ok = rows & np.isfinite(pred) & np.isfinite(true)
            ax.scatter(true[ok], pred[ok] - true[ok], s=4, alpha=0.6, lw=0)
            ax.axhline(0.0, color="k", lw=0.8)
            s = residual_stats(pred[rows], true[rows])
            ax.set_title(
                f"{model} {group}: {s.mu:.{d}f} ± {s.sigma:.{d}f}" if s.n else f"{model} {group}: no data", fontsize=7
            )
            ax.tick_params(labelsize=6)
            if i == len(models) - 1:
                ax.set_xlabel(label_title(label), fontsize=7)
            if k == 0:
                ax.set_ylabel("prediction − label", fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def scaling_plot(path: str | Path, points: Sequence[dict], labels: Sequence[str], dpi: int = 72) -> None:
    """sigma (overall) against training-set size, one panel per label, one line per model.

    `points`: dicts with keys model, n_train, label, sigma.
    """
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, len(labels), figsize=(3.2 * len(labels), 2.8), dpi=dpi, squeeze=False)
    models = list(dict.fromkeys(p["model"] for p in points))
    for k, label in enumerate(labels):
        ax = axes[0][k]
        for model in models:
            pts = sorted(
                (p["n_train"], p["sigma"])
                for p in points
                if p["model"] == model and p["label"] == label and p["sigma"] is not None
            )
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", ms=3, label=model)
        ax.set_xscale("log")
        sizes = sorted({p["n_train"] for p in points})
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training spectra", fontsize=8)
        ax.set_ylabel(f"σ {label_title(label)}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
