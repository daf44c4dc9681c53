"""Does a forward check catch the far-off rows? (issue 23, validation split only)

    PYTHONPATH=$PWD python benchmarks/consistency_budget.py SHARDS MODEL_DIR

A model of each band index (`specllm.physics.BAND_INDICES`) as a quadratic in the catalogue labels (Teff/1000, log g,
[Fe/H]) is fitted on the fit spectra (train minus validation, as observed); its robust scatter per index is
measured there too. A validation spectrum's score is how far its observed indices lie from those the model expects at
its *predicted* labels (the largest |z| over observed indices). A star read at the wrong labels (a metal-poor F star
read as a 9,000 K solar star; a hot A star read too cool) should disagree with its own line strengths, where a
spectrum read right should not. The table trades the validation share flagged against the far-off rows left
unflagged, beside the `uncertain` bit's quantiles (MODEL_DIR must be trained with the validation split held out).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from uncertain_budget import caught, model_predictions, split_spectra  # benchmarks/, beside this script

from specllm.domain import grid_indices, uncertainty_limits
from specllm.metrics import far_off


def design(labels: np.ndarray) -> np.ndarray:
    """Quadratic terms of (Teff/1000, log g, [Fe/H])."""
    t, g, f = labels[:, 0] / 1000.0, labels[:, 1], labels[:, 2]
    cols = [np.ones_like(t), t, g, f, t * t, g * g, f * f, t * g, t * f, g * f, t**3]
    return np.stack(cols, 1)


def fit_forward(indices: np.ndarray, labels: np.ndarray):
    """Per index: least-squares coefficients on the rows where it and every label are finite; robust scatter."""
    coef, scale = [], []
    x = design(labels)
    for k in range(indices.shape[1]):
        ok = np.isfinite(indices[:, k]) & np.isfinite(x).all(1)
        c, *_ = np.linalg.lstsq(x[ok], indices[ok, k], rcond=None)
        r = indices[ok, k] - x[ok] @ c
        coef.append(c)
        scale.append(1.4826 * np.median(np.abs(r - np.median(r))))
    return np.array(coef), np.maximum(np.array(scale), 1e-6)


def score(indices: np.ndarray, labels: np.ndarray, coef, scale) -> np.ndarray:
    z = np.abs(indices - design(labels) @ coef.T) / scale
    z = np.where(np.isfinite(z), z, -np.inf).max(1)
    return np.where(np.isfinite(z), z, 0.0)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards")
    ap.add_argument("model")
    args = ap.parse_args(argv)
    names = ["teff", "logg", "feh"]
    all_flux, all_mask, all_truth, _, val = split_spectra(args.shards, "train", names)
    flux, mask, truth = all_flux[val], all_mask[val], all_truth[val]
    loaded, values, errors, _ = model_predictions(args.model, flux, mask, names)
    out_domain, _ = loaded.domain.check(flux, values, names, mask)
    # the index model: the fit spectra (train minus validation), as observed, at their catalogue labels
    coef, scale = fit_forward(grid_indices(all_flux[~val], all_mask[~val]), all_truth[~val])
    idx = grid_indices(flux, mask)
    s_pred, s_true = score(idx, values, coef, scale), score(idx, truth, coef, scale)
    far = far_off(values, truth, names)
    print(f"{len(flux)} validation spectra, {far.sum()} far off; domain {out_domain.mean():.1%}")
    print(
        f"score at predicted labels: median {np.median(s_pred):.2f}, far off {np.median(s_pred[far]):.2f}; "
        f"at catalogue labels: median {np.median(s_true):.2f}, far off {np.median(s_true[far]):.2f}; far off rows "
        f"further from their indices at the catalogue labels than at the predicted: {(s_true > s_pred)[far].sum()}, "
        f"beyond the 0.95 quantile of all at catalogue labels: {(s_true > np.quantile(s_true, 0.95))[far].sum()}"
    )
    print("| uncertain q | consistency q | flagged | far off caught | far off among unflagged |")
    print("|---|---|---|---|---|")
    for uq in [0.985, 0.99, 1.0]:
        unc = np.zeros(len(flux), bool)
        if uq < 1:
            lim = uncertainty_limits(errors, names, uq)
            for j, n in enumerate(names):
                unc |= errors[:, j] > lim[n]
        for cq in [0.9, 0.93, 0.95, 0.97, 0.985, 1.0]:
            cons = s_pred > np.quantile(s_pred, cq) if cq < 1 else np.zeros_like(unc)
            flagged = out_domain | unc | cons
            print(f"| {uq} | {cq} | {flagged.mean():.1%} | {caught(far, flagged)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
