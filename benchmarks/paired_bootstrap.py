"""How sure is "better" or "worse" between two models on the same spectra? A paired bootstrap of sigma per label.

    PYTHONPATH=$PWD python benchmarks/paired_bootstrap.py SHARDS MODEL_A MODEL_B [--split test] [--draws 2000]

Both models predict the SHARDS' split (`predict`, as `infer` does); the spectra are resampled with replacement, the
same draw for both models, and sigma(B) - sigma(A) of prediction - catalogue is recorded per label (and per class
for Teff). Prints the observed difference and its 2.5-97.5% interval: an interval that holds 0 means the split
cannot tell the two apart in that label. A report on predictions already made; nothing is chosen by it.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from uncertain_budget import model_predictions, split_spectra  # benchmarks/, beside this script


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards")
    ap.add_argument("model_a")
    ap.add_argument("model_b")
    ap.add_argument("--split", default="test")
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    names = ["teff", "logg", "feh"]
    flux, mask, truth, classes, _ = split_spectra(args.shards, args.split, names)
    res_a = model_predictions(args.model_a, flux, mask, names)[1] - truth
    res_b = model_predictions(args.model_b, flux, mask, names)[1] - truth
    print(
        f"{len(flux)} {args.split} spectra; sigma(B) - sigma(A), observed [2.5%, 97.5%] over {args.draws} paired draws"
    )
    groups = [(n, j, np.ones(len(flux), bool)) for j, n in enumerate(names)]
    groups += [(f"teff {c}", 0, classes == c) for c in sorted(set(classes) - {None})]
    for name, j, sel in groups:
        a, b = res_a[sel, j], res_b[sel, j]
        ok = np.isfinite(a) & np.isfinite(b)
        a, b = a[ok], b[ok]
        d = np.random.default_rng(args.seed).integers(0, len(a), size=(args.draws, len(a)))  # one draw, both models
        diff = b[d].std(1) - a[d].std(1)
        lo, hi = np.quantile(diff, [0.025, 0.975])
        print(
            f"{name}: A {a.std():.4g}, B {b.std():.4g}, B - A {b.std() - a.std():+.4g} [{lo:+.4g}, {hi:+.4g}] (n={len(a)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
