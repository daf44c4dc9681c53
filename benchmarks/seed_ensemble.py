"""What an ensemble of seeds of one recipe would buy, on the validation split only (issues 22 and 23).

    PYTHONPATH=$PWD python benchmarks/seed_ensemble.py SHARDS RUN_MODEL [RUN_MODEL ...] [--budgets 0.05,0.075]

Every RUN_MODEL is a model trained with the validation part of SHARDS' train split held out (seeds of one recipe).
Each predicts those spectra as observed through `infer`'s path; the ensemble's label is the members' mean, its
1-sigma the mixture's (sqrt(mean sigma^2 + variance of the members' means)). Printed: sigma of prediction -
catalogue per label for each member and for the ensemble, and, as an `uncertain`-like flag, the members'
disagreement (their standard deviation over the label's median disagreement, the largest over the labels): at each
budget (share of validation rows flagged) how many far-off rows (`metrics.far_off`) it catches, beside the mixture
1-sigma used the same way. A measurement: nothing in the package reads it; an ensemble costs one forward pass per
member at `infer` time.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from uncertain_budget import caught, model_predictions, split_spectra  # benchmarks/, beside this script

from specllm.metrics import far_off

NAMES = ("teff", "logg", "feh")


def top_share(score: np.ndarray, share: float) -> np.ndarray:
    """The rows whose score is among the highest `share` of all rows."""
    return score > np.quantile(score, 1 - share)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--budgets", default="0.05,0.075,0.1")
    args = ap.parse_args(argv)
    flux, mask, truth, _, validation = split_spectra(args.shards)
    flux, mask, truth = flux[validation], mask[validation], truth[validation]
    values, errors = [], []
    for model in args.models:
        _, v, e, _ = model_predictions(model, flux, mask, NAMES)
        values.append(v)
        errors.append(e)
        print(f"{model}: " + " ".join(f"{n} {np.std(v[:, j] - truth[:, j]):.3f}" for j, n in enumerate(NAMES)))
    values, errors = np.stack(values), np.stack(errors)
    mean = values.mean(axis=0)
    spread = values.std(axis=0)
    mixture = np.sqrt((errors**2).mean(axis=0) + spread**2)
    print(
        f"ensemble of {len(args.models)} ({len(truth)} validation spectra): "
        + " ".join(f"{n} {np.std(mean[:, j] - truth[:, j]):.3f}" for j, n in enumerate(NAMES))
    )
    far = far_off(mean, truth, list(NAMES))
    print(
        f"far off (ensemble mean): {far.sum()}; per member: {[int(far_off(v, truth, list(NAMES)).sum()) for v in values]}"
    )
    scores = {
        "disagreement": (spread / np.median(spread, axis=0)).max(axis=1),
        "mixture 1-sigma": (mixture / np.median(mixture, axis=0)).max(axis=1),
    }
    print("| flag score | budget | flagged | far off caught | far off among unflagged |")
    for budget in (float(b) for b in args.budgets.split(",")):
        for name, score in scores.items():
            flagged = top_share(score, budget)
            print(f"| {name} | {budget:.1%} | {flagged.mean():.1%} | {caught(far, flagged)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
