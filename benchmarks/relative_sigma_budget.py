"""The `uncertain` bit on a relative 1-sigma, against the shipped absolute limits, at the same flagged share
(issue 23; validation split only; measured and not kept, see docs/BENCHMARKS.md).

    PYTHONPATH=$PWD python benchmarks/relative_sigma_budget.py SHARDS RUN [RUN ...]

Each RUN is trained with the validation split held out. Relative: each label's 1-sigma over the median 1-sigma of
the `--near` fit spectra (train minus validation) nearest in predicted log Teff, the largest over the labels, so
that the large sigmas of hot stars are not what fires. For each quantile of the absolute limits
(`uncertainty_limits`), the relative score's threshold is set to flag the same share (the domain check included).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from uncertain_budget import caught, model_predictions, split_spectra  # benchmarks/, beside this script

from specllm.domain import uncertainty_limits
from specllm.metrics import far_off

NAMES = ["teff", "logg", "feh"]


def relative_sigma(values, errors, fit_values, fit_errors, near: int) -> np.ndarray:
    """(N,) the largest over the labels of sigma / the median sigma of the `near` fit spectra nearest in log Teff."""
    fit_lt = np.log10(fit_values[:, 0])
    typical = np.array(
        [np.median(fit_errors[np.argsort(np.abs(fit_lt - lt))[:near]], axis=0) for lt in np.log10(values[:, 0])]
    )
    return (errors / typical).max(axis=1)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--near", type=int, default=60)
    ap.add_argument("--quantiles", default="0.9,0.94,0.96,0.97,0.98,0.985")
    args = ap.parse_args(argv)
    flux, mask, truth, _, val = split_spectra(args.shards)
    for run in args.runs:
        loaded, values, errors, _ = model_predictions(run, flux, mask, NAMES)
        domain, v, e = loaded.domain, values[val], errors[val]
        out_domain, _ = domain.check(flux[val], v, NAMES, mask[val])
        far = far_off(v, truth[val], NAMES)
        score = relative_sigma(v, e, values[~val], errors[~val], args.near)
        print(f"\n{run}: {val.sum()} validation spectra, {far.sum()} far off; domain {out_domain.mean():.1%}")
        print(
            "| q | absolute: flagged | caught | far among unflagged | relative: flagged | caught | far among unflagged |"
        )
        print("|---|---|---|---|---|---|---|")
        for q in [float(x) for x in args.quantiles.split(",")]:
            domain.error_max = uncertainty_limits(e, NAMES, q)
            absolute = out_domain | domain.uncertain(e, NAMES)
            # the highest threshold at which the relative score flags at least the absolute limits' share
            relative = next(
                out_domain | (score >= t)
                for t in np.sort(score)[::-1]
                if (out_domain | (score >= t)).mean() >= absolute.mean() - 1e-9
            )
            print(
                f"| {q} | {absolute.mean():.1%} | {caught(far, absolute)} {relative.mean():.1%} | {caught(far, relative)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
