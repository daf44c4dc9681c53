"""How the `uncertain` bit's quantile trades rows flagged against far-off rows left unflagged, on the validation
split only (issue 23): the figures behind `DomainConfig.uncertain_quantile`.

    PYTHONPATH=$PWD python benchmarks/uncertain_budget.py SHARDS MODEL_DIR [--quantiles 0.95,0.97,0.985]

SHARDS are the ingest shards the model was trained on; only the validation part of their train split is read (as
observed, no cut ends), with a model trained with that part held out. For each quantile the per-label limits are
that quantile of the validation spectra's calibrated 1-sigma (what `specllm fit-domain` stores); a row is flagged
where the model's domain check (as fitted in MODEL_DIR) or those limits say so. Far off: |dTeff| > 1000 K,
|dlog g| > 1 or |d[Fe/H]| > 0.75 against the catalogue (the issue's definition).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from specllm.config import SplitConfig
from specllm.domain import load_domain, uncertainty_limits
from specllm.fitdomain import _train_labels
from specllm.labelling import iter_shard_items
from specllm.metrics import far_off
from specllm.predict import default_model_dir, load_for_inference, predict, questions_for
from specllm.splits import is_validation


def split_spectra(shards: str, split: str = "train", names=("teff", "logg", "feh")):
    """SHARDS' spectra of `split` as observed: (flux, mask, catalogue labels (N, len(names)), classes, validation),
    `validation` marking the train split's validation part (the split's hash rule)."""
    items = list(iter_shard_items(shards, split))
    labels = _train_labels(shards, list(names), split)
    flux, mask = np.stack([it.flux for it in items]), np.stack([it.mask for it in items])
    truth = np.array([labels[it.spec_id][1] for it in items])
    classes = np.array([labels[it.spec_id][0] for it in items])
    validation = np.array([is_validation(it.spec_id, SplitConfig()) for it in items])
    return flux, mask, truth, classes, validation


def model_predictions(model: str, flux, mask, names=("teff", "logg", "feh")):
    """(the loaded model, its predictions' values and errors in `names`' columns, the predicted classes), through
    `infer`'s path on the CPU; a run's model without a domain check gets the shipped one (`flux` features: any
    model's)."""
    loaded = load_for_inference(Path(model), torch.device("cpu"))[0]
    spec = loaded.spec
    preds = predict(loaded.model, spec, loaded.builder, questions_for(spec, flux), flux, mask, torch.device("cpu"))
    if loaded.domain is None:
        loaded.domain = load_domain(default_model_dir())
    cols = [list(spec.value_names).index(n) for n in names]
    return loaded, preds.values[:, cols], preds.errors[:, cols], np.array(preds.classes, dtype=object)


def caught(far, flagged) -> str:
    """The table's last two cells: far-off rows flagged, and the far-off share of the unflagged rows."""
    return f"{(far & flagged).sum()}/{far.sum()} | {(far & ~flagged).sum() / max((~flagged).sum(), 1):.1%} |"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards")
    ap.add_argument("model")
    ap.add_argument("--quantiles", default="0.95,0.96,0.97,0.98,0.985,0.99")
    args = ap.parse_args(argv)
    flux, mask, truth, _, val = split_spectra(args.shards)
    flux, mask, truth = flux[val], mask[val], truth[val]
    names = ["teff", "logg", "feh"]
    loaded, values, errors, _ = model_predictions(args.model, flux, mask, names)
    domain = loaded.domain
    out_domain, _ = domain.check(flux, values, names, mask)
    far = far_off(values, truth, names)
    print(f"{len(flux)} validation spectra, {far.sum()} far off; domain flags {out_domain.mean():.1%}")
    print("| uncertain quantile | uncertain | domain or uncertain | far off caught | far off among unflagged |")
    print("|---|---|---|---|---|")
    for q in [float(x) for x in args.quantiles.split(",")]:
        domain.error_max = uncertainty_limits(errors, names, q)
        flagged = out_domain | domain.uncertain(errors, names)
        print(f"| {q} | {domain.uncertain(errors, names).mean():.1%} | {flagged.mean():.1%} | {caught(far, flagged)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
