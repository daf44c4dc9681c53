"""The domain check's variants on flux features (issue 23), the rows of docs/BENCHMARKS.md "Band indices and one
shared budget": the domain score alone (no label range, no `uncertain` bit), so the same for any model.

    PYTHONPATH=$PWD python benchmarks/domain_variants.py --shards out/model-shards --negatives out/model-negatives \\
        --miles out/flags/miles-buckets.npz

Fit on the train split's fit part, thresholds on its validation part (half of both with one end cut, as
`specllm fit-domain` does); scored on the validation part, the DR10 test split of the same shards, and the MILES
subset `benchmarks/measure_flags.py` writes (stars outside and well inside the training labels' range).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import numpy as np

from specllm.config import CleanConfig, DomainConfig, GridConfig
from specllm.domain import edge_cut, fit_classifier, fit_domain, grid_indices, joint_budget
from specllm.fitdomain import domain_spectra
from specllm.labelling import iter_items, iter_shard_items


def stack(items):
    items = list(items)
    return np.stack([it.flux for it in items]), np.stack([it.mask for it in items]), items


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", required=True)
    ap.add_argument("--negatives", help="ingest shards with split 'synthetic' (the classifier's rows)")
    ap.add_argument("--miles", required=True, help="the MILES subset npz measure_flags.py writes")
    args = ap.parse_args(argv)
    base = DomainConfig()
    items, flux, mask, val, _, rng = domain_spectra(args.shards, base)  # as `specllm fit-domain` prepares them
    test_flux, test_mask, _ = stack(iter_shard_items(args.shards, "test"))
    miles_flux, miles_mask, _ = stack(iter_items([args.miles], GridConfig(), CleanConfig()))
    d = np.load(args.miles)
    t, g, f = d["teff"], d["logg"], d["feh"]
    outside = (t < 4000) | (g < 0.8) | (f < -2.5)  # the subset holds these and stars well inside the range
    groups = {"< 4,000 K": t < 4000, "log g < 0.8": g < 0.8, "[Fe/H] < -2.5": f < -2.5}
    negatives = None
    if args.negatives:
        negatives = stack(iter_shard_items(args.negatives, "synthetic"))[0]
        ncut = rng.random(len(negatives)) < base.partial_fraction
        negatives[ncut] = edge_cut(negatives[ncut], np.zeros(negatives[ncut].shape, bool), rng, base.partial_span)[0]
    labels = np.zeros((len(items), 1))

    def row(name, indices, joint, classifier=False, edge=0.0):
        domain = fit_domain(flux[~val], flux[val], None, labels, ["teff"], ["A"], replace(base, indices=indices),
                            mask_fit=mask[~val], mask_val=mask[val])  # fmt: skip
        if indices and edge > 0:  # the range of the fit spectra's indices cut at these quantiles instead of min..max
            seen = grid_indices(flux[~val], mask[~val])
            domain.index_low = np.nanquantile(seen, edge, 0).tolist()
            domain.index_high = np.nanquantile(seen, 1 - edge, 0).tolist()
            excess = domain.index_excess(flux[val], mask[val])
            domain.index_threshold = max(float(np.quantile(excess, base.quantile)), 1e-3)
        if classifier:
            fit_classifier(domain, flux[~val], negatives, flux[val], base.quantile, base.classifier_l2)
        if joint:
            joint_budget(domain, flux[val], mask[val], base.quantile)
        out = domain.score(miles_flux, miles_mask) > 1
        print(
            f"| {name} | {np.mean(domain.score(flux[val], mask[val]) > 1):.1%} | "
            f"{np.mean(domain.score(test_flux, test_mask) > 1):.1%} | {out[outside].mean():.1%} | "
            f"{out[~outside].mean():.1%} | " + " / ".join(f"{out[m].mean():.0%}" for m in groups.values()) + " |",
            flush=True,
        )

    print("| variant | validation out | DR10 test out | MILES outside | MILES inside | " + " / ".join(groups) + " |")
    print("|---|---|---|---|---|---|")
    row("two distances", False, False)
    if negatives is not None:
        row("+ classifier", False, False, classifier=True)
    row("+ indices, range min..max, own thresholds", True, False)
    row("+ indices, range min..max, one budget", True, True)
    row("+ indices, range 0.1-99.9%, one budget", True, True, edge=0.001)
    row("+ indices, range 0.5-99.5%, one budget", True, True, edge=0.005)
    if negatives is not None:
        row("+ indices + classifier, one budget", True, True, classifier=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
