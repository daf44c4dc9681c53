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


def validation_predictions(shards: str, model: str):
    """The validation spectra of SHARDS' train split as observed (flux, mask), their catalogue labels, and the
    model's predictions of them; with the loaded model (its `spec`, `domain`)."""
    loaded = load_for_inference(Path(model), torch.device("cpu"))[0]
    spec = loaded.spec
    names = list(spec.value_names)
    items = [it for it in iter_shard_items(shards, "train") if is_validation(it.spec_id, SplitConfig())]
    labels = _train_labels(shards, names)
    truth = np.array([labels[it.spec_id][1] for it in items])
    flux, mask = np.stack([it.flux for it in items]), np.stack([it.mask for it in items])
    preds = predict(loaded.model, spec, loaded.builder, questions_for(spec, flux), flux, mask, torch.device("cpu"))
    if loaded.domain is None:  # a run's model before fit-domain: the shipped check (flux features: any model's)
        loaded.domain = load_domain(default_model_dir())
    return loaded, flux, mask, truth, preds


def caught(far, flagged) -> str:
    """The table's last two cells: far-off rows flagged, and the far-off share of the unflagged rows."""
    return f"{(far & flagged).sum()}/{far.sum()} | {(far & ~flagged).sum() / max((~flagged).sum(), 1):.1%} |"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards")
    ap.add_argument("model")
    ap.add_argument("--quantiles", default="0.95,0.96,0.97,0.98,0.985,0.99")
    args = ap.parse_args(argv)
    loaded, flux, mask, truth, preds = validation_predictions(args.shards, args.model)
    domain, names = loaded.domain, list(loaded.spec.value_names)
    out_domain, _ = domain.check(flux, preds.values, names, mask)
    far = far_off(preds.values, truth, names)
    print(f"{len(flux)} validation spectra, {far.sum()} far off; domain flags {out_domain.mean():.1%}")
    print("| uncertain quantile | uncertain | domain or uncertain | far off caught | far off among unflagged |")
    print("|---|---|---|---|---|")
    for q in [float(x) for x in args.quantiles.split(",")]:
        domain.error_max = uncertainty_limits(preds.errors, names, q)
        flagged = out_domain | domain.uncertain(preds.errors, names)
        print(
            f"| {q} | {domain.uncertain(preds.errors, names).mean():.1%} | {flagged.mean():.1%} | {caught(far, flagged)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
