"""Do the class head and the Teff read-out disagree where a row is far off? On the validation split only (issue 23).

    PYTHONPATH=$PWD python benchmarks/class_consistency.py SHARDS MODEL_DIR [MODEL_DIR ...] [--quantiles 0.01,0.02,0.05]

Each MODEL_DIR is trained with the validation split held out. A row is "inconsistent" where its predicted Teff lies
outside the [q, 1 - q] quantiles of the catalogue Teff of the fit spectra (train split minus validation) whose
catalogue class is the row's predicted class: a metal-poor F star read as a 9,000 K star, or an A star read as a
6,000 K one, would show it if the class head reads the spectrum's type apart from the Teff head. Printed per q:
the share flagged by it alone and together with the model's `domain` and `uncertain` flags (as fitted in MODEL_DIR,
or the shipped check), the far-off rows caught and the far-off share of the unflagged rows.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from uncertain_budget import caught, model_predictions, split_spectra  # benchmarks/, beside this script

from specllm.metrics import far_off


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--quantiles", default="0.005,0.01,0.02,0.05")
    args = ap.parse_args(argv)
    names = ["teff", "logg", "feh"]
    flux, mask, truth, classes, val = split_spectra(args.shards)
    fit_teff = {c: truth[~val & (classes == c), 0] for c in sorted(set(classes[~val]) - {None})}
    flux, mask, truth = flux[val], mask[val], truth[val]
    print("| model | q | inconsistent | with domain + uncertain | far off caught | far off among unflagged |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        loaded, values, errors, predicted = model_predictions(model, flux, mask, names)
        out_domain, _ = loaded.domain.check(flux, values, names, mask)
        flags = out_domain | loaded.domain.uncertain(errors, names)
        far = far_off(values, truth, names)
        print(f"| {model} | (flags as fitted) | | {flags.mean():.1%} | {caught(far, flags)}")
        for q in [float(x) for x in args.quantiles.split(",")]:
            lo = {c: np.quantile(t, q) for c, t in fit_teff.items()}
            hi = {c: np.quantile(t, 1 - q) for c, t in fit_teff.items()}
            odd = np.array([c in lo and not lo[c] <= v <= hi[c] for c, v in zip(predicted, values[:, 0])])
            print(f"| {model} | {q} | {odd.mean():.1%} | {(flags | odd).mean():.1%} | {caught(far, flags | odd)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
