"""The one-to-one figures of `compare-external` (paper Figures 1-8): reference (x) against prediction (y)."""

from __future__ import annotations

import os
import warnings

import numpy as np

from ..config import ExternalConfig
from ..files import atomic_write
from ..labels import element_label, element_title
from .stats import ELEMENT_FORMAT, LABEL_FORMAT, LABELS, Comparison, stats


def plot_one_to_one(comp: Comparison, out: str, survey: str, config: ExternalConfig) -> list[str]:
    """One PNG per label: reference (x) vs prediction (y), density (hexbin) or points, the 1:1 line, mu and sigma."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {n: (title, unit) for n, title, unit in LABELS}
    panels = [(n, *comp.labels[n], *names[n]) for n in comp.labels]
    panels += [(element_label(e), *v, element_title(e), "dex") for e, v in comp.elements.items()]
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
