"""`specllm fit-domain SHARDS [MODEL_DIR]`: fit a model's own domain check and its `uncertain` limits
(`specllm.domain`) and store them in the model directory (`domain.safetensors` + `domain.json`). `make model` runs it
after training.

SHARDS are the `ingest` shards the model was trained on; only their train split is read. It is cut by the
validation hash rule (`specllm.splits`, the same rule `train` holds out) into a fit part (the reference set and its
principal components) and a validation part (every threshold: the two distances', `class_prob_min` and the
`uncertain` bit's per-label limits); the test split is never touched. Half of the spectra (at random) are used with
one end of the grid cut, so partial coverage alone does not count as out of domain. The model itself runs on the
validation spectra only (their predicted 1-sigma and class probability), with the default `flux` features: about a
minute for the 1,300 shared DR10 train spectra on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import DomainConfig, InferConfig, SplitConfig
from .device import pick_device
from .domain import (
    Domain,
    edge_cut,
    fit_classifier,
    fit_domain,
    joint_budget,
    patch_features,
    save_domain,
    uncertainty_limits,
)
from .errors import SpecllmError
from .labelling import iter_shard_items
from .predict import default_model_dir, load_for_inference, predict, questions_for
from .progress import progress_bar, say
from .splits import is_validation

FEATURES = {
    "flux": "the cleaned spectrum on the 3800-8700 A grid (max-normalised, as the model reads it)",
    "patches": "the patch embeddings (the patch projector's output for every patch, concatenated)",
    "hidden": "the read-out hidden state (the last prompt token's, which the numeric heads read)",
}


def _train_labels(shards: str, names: list[str], split: str = "train") -> dict[str, tuple[str | None, list[float]]]:
    """spec_id -> (class, [label per name], NaN where missing) for the shards' rows of `split`."""
    import pyarrow.parquet as pq

    from .shards import shard_paths

    out = {}
    for shard in shard_paths(shards):
        have = pq.ParquetFile(shard).schema_arrow.names
        cols = ["spec_id", "split", *(c for c in ["class", *names] if c in have)]
        table = pq.read_table(shard, columns=cols).to_pylist()
        for r in table:
            if r["split"] == split:
                vals = [np.nan if r.get(n) is None else float(r[n]) for n in names]
                out[r["spec_id"]] = (r.get("class"), vals)
    return out


def domain_spectra(shards: str, config: DomainConfig = DomainConfig(), split: SplitConfig = SplitConfig()):
    """The train-split spectra a domain check is fitted on, as `fit-domain` prepares them: (items, flux, mask, val,
    cut, rng): `val` marks the validation part (the split's hash rule), `cut` the spectra given one cut end (a random
    `config.partial_fraction` of all, drawn from `config.seed`; `rng` is that generator, drawn on after the cut)."""
    items = list(iter_shard_items(shards, "train"))
    if len(items) < 2 * config.neighbours:
        raise SpecllmError(f"{shards}: {len(items)} train-split spectra, too few to fit a domain check")
    val = np.array([is_validation(it.spec_id, split) for it in items])
    flux = np.stack([it.flux for it in items])
    mask = np.stack([it.mask for it in items])
    rng = np.random.default_rng(config.seed)
    cut = rng.random(len(items)) < config.partial_fraction
    flux[cut], mask[cut] = edge_cut(flux[cut], mask[cut], rng, config.partial_span)
    return items, flux, mask, val, cut, rng


def fit_model_domain(
    shards: str,
    model: str | None = None,
    config: DomainConfig = DomainConfig(),
    split: SplitConfig = SplitConfig(),
    infer: InferConfig = InferConfig(),
) -> Domain:
    """Fits the domain check of the model at `model` (default: the shipped one) and writes it there."""
    from .runs import PARENT, model_dir

    path = model_dir(Path(model) if model else default_model_dir())
    target = path / PARENT if (path / PARENT / "spec.json").exists() else path  # the stage-1 model reads the spectrum
    device = pick_device()
    loaded = load_for_inference(path, device)[0]
    spec = loaded.spec
    items, flux, mask, val, cut, rng = domain_spectra(shards, config, split)
    labels = _train_labels(shards, list(spec.value_names))
    n = len(items)
    step = infer.chunk_size
    probe = val & ~cut  # validation spectra as observed: the class head's probabilities, the predicted 1-sigma
    if config.features == "patches":
        if loaded.model.patcher is None:
            raise SpecllmError(f"{path}: features 'patches' need a patch-format model")
        hidden = patch_features(loaded.model.patcher, flux, mask, batch=step)
    elif config.features == "flux":
        hidden = flux
    else:
        hidden = None
    rows = np.arange(n) if config.features == "hidden" else np.flatnonzero(probe)
    class_prob = np.full(n, np.nan)
    errors = np.full((n, len(spec.value_names)), np.nan)
    with progress_bar("domain", total=len(rows)) as advance:
        for a in range(0, len(rows), step):
            sl = rows[a : a + step]
            f, k = (flux[sl], mask[sl]) if spec.patch_width else (None, None)
            preds = predict(
                loaded.model,
                spec,
                loaded.builder,
                questions_for(spec, flux[sl]),
                f,
                k,
                device,
                infer,
                return_hidden=config.features == "hidden",
            )
            if config.features == "hidden":
                if hidden is None:
                    hidden = np.zeros((n, preds.hidden.shape[1]), np.float32)
                hidden[sl] = preds.hidden
            if preds.class_prob is not None:
                class_prob[sl] = preds.class_prob
            errors[sl] = preds.errors
            advance(len(sl))
    names = list(spec.value_names)
    limits = (
        uncertainty_limits(errors[probe], names, config.uncertain_quantile) if config.uncertain_quantile < 1 else {}
    )
    table = np.array([labels[it.spec_id][1] for it in items if it.spec_id in labels]).reshape(-1, len(spec.value_names))
    counts: dict[str, int] = {}
    for it in items:
        cls = labels.get(it.spec_id, (None, []))[0]
        if cls is not None:
            counts[cls] = counts.get(cls, 0) + 1
    trained = [c for c in spec.classes if counts.get(c, 0) > 0] or list(spec.classes)
    info = {
        "shards": str(shards),
        "train_spectra": len(items),
        "held_out_spectra": int(val.sum()),
        "train_class_counts": counts,
        "partial_spectra": int(cut.sum()),
        "features": FEATURES[config.features],
    }
    domain = fit_domain(
        hidden[~val],
        hidden[val],
        class_prob[probe],
        table,
        spec.value_names,
        trained,
        config,
        info,
        limits,
        mask_fit=mask[~val],
        mask_val=mask[val],
    )
    domain.info["val_uncertain"] = float(domain.uncertain(errors[probe], names).mean()) if probe.any() else float("nan")
    if config.negatives:  # a classifier against spectra outside the training labels' range (synthetic)
        if config.features != "flux":
            raise SpecllmError("--negatives needs the 'flux' features")
        negative = list(iter_shard_items(config.negatives, "synthetic"))
        if len(negative) < 2:
            raise SpecllmError(f"{config.negatives}: no rows of split 'synthetic' to use as negatives")
        neg_flux = np.stack([it.flux for it in negative])
        neg_mask = np.stack([it.mask for it in negative])
        neg_cut = rng.random(len(negative)) < config.partial_fraction  # partial coverage is no feature of either
        neg_flux[neg_cut], neg_mask[neg_cut] = edge_cut(neg_flux[neg_cut], neg_mask[neg_cut], rng, config.partial_span)
        fit_classifier(domain, hidden[~val], neg_flux, hidden[val], config.quantile, config.classifier_l2)
        held = domain.score(hidden[val], mask[val])
        domain.info["val_out_of_domain_with_classifier"] = float(np.mean(held > 1))
        domain.info["negatives"] = str(config.negatives)
    if config.joint:
        parts, joint = joint_budget(domain, hidden[val], mask[val], config.quantile)
        domain.info.update(val_out_of_domain_parts=parts, val_out_of_domain_joint=joint)
    save_domain(domain, target)
    say(
        f"domain check ({config.features}): {len(items)} train spectra ({int(val.sum())} validation), thresholds "
        f"{domain.threshold:.3g} (neighbours) {domain.residual_threshold:.3g} (residual), "
        f"{domain.info['val_out_of_domain']:.1%} of validation out"
        + (f", band indices above {domain.index_threshold:.3g}" if domain.index_threshold else "")
        + (
            f"; one budget (score over {domain.score_scale:.3g}): {domain.info['val_out_of_domain_parts']:.1%} -> "
            f"{domain.info['val_out_of_domain_joint']:.1%} of validation out"
            if config.joint
            else ""
        )
        + "; uncertain above "
        + ", ".join(f"{k} {v:.3g}" for k, v in limits.items())
        + f"; trained classes {','.join(trained)}"
        + (
            f"; classifier against {domain.classifier['negatives']} out-of-range spectra: validation out of domain "
            f"{domain.info['val_out_of_domain_with_classifier']:.1%} with it"
            if domain.classifier
            else ""
        )
        + f" -> {target}"
    )
    return domain
