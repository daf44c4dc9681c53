"""The model's own domain check: is a spectrum like the ones the model was trained on? (flag bits `domain` and
`uncertain`)

Works without any header (MILES, arrays, other instruments). Fitted once per model by `specllm fit-domain` on the
train split of the shards the model was trained on, and stored beside the weights:
- `domain.safetensors`: `mean` (D,) of the features, `components` (K, D) their leading principal components divided
  by their standard deviation (stored as float16), `scale` (K,) those standard deviations, `reference` (N, K) the
  training spectra in that whitened space. Features (`features` in domain.json): `flux`, the cleaned spectrum on
  the grid itself (line depths and molecular bands as observed: the default), `patches`, the patch projector's
  output for every patch, concatenated (the model's own view), or `hidden`, the read-out hidden state;
- `domain.json`: the thresholds, the band indices' range, the score's shared scale, the neighbour count, the
  training labels' range, the trained classes,
  `class_prob_min`, the `uncertain` bit's per-label limits on the predicted 1-sigma (`error_max`), and how all of
  it was fitted (counts, quantiles, the held-out part).

A spectrum has two distances from the training set: its mean Euclidean distance to its `neighbours` nearest training
spectra in the whitened space of the leading components (unlike any training spectrum along the directions the
training set varies in), and its residual off those components (a feature the training set does not have at all:
emission lines, strong molecular bands). With `flux` features, 20 spectral band indices (`physics.BAND_INDICES`:
Lick, TiO/CaH, H alpha, Ca II triplet, each against its local continuum) add a third part: how far the farthest
observed index lies outside the fit spectra's range (the weak TiO of a 3,900 K giant is 9 of 4,901 pixels, too little
for either distance, yet unlike every training spectrum in TiO5). Each part is divided by its threshold (a quantile
of held-out training spectra's); with one shared budget (`joint_budget`) the largest is divided once more so that the
parts together flag the quantile's share of held-out spectra. That is `domain_score`; a spectrum is out of domain
when it exceeds 1, or when a predicted label lies outside the training labels' range. Plain numpy: no model code is
imported here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import DomainConfig, GridConfig
from .errors import SpecllmError, one_line
from .files import atomic_write, atomic_write_text, file_sha256

DOMAIN_WEIGHTS = "domain.safetensors"
DOMAIN_JSON = "domain.json"
INDEX_THRESHOLD_MIN = 1e-3  # the band-index threshold's floor (in units of an index's range), never zero
GRID_WAVE = GridConfig().wavelengths()  # the `flux` features' pixels


@dataclass
class Domain:
    mean: np.ndarray
    components: np.ndarray
    reference: np.ndarray
    threshold: float
    neighbours: int
    label_names: list[str]
    label_min: list[float]
    label_max: list[float]
    trained_classes: list[str]
    class_prob_min: float
    info: dict = field(default_factory=dict)
    features: str = "hidden"
    scale: np.ndarray | None = None  # (K,) the components' standard deviations; None (older files): no residual
    residual_threshold: float | None = None
    error_max: dict = field(default_factory=dict)  # label -> the `uncertain` bit's limit on its 1-sigma
    # {"weights", "bias", "threshold", ...}: the logistic classifier against out-of-range spectra (`fit_classifier`)
    classifier: dict | None = None
    # the band-index check (`flux` features): the fit spectra's range of each `physics.BAND_INDICES` index, and the
    # threshold on how far outside it a spectrum's farthest index lies (None, older files: no such check)
    index_low: list | None = None
    index_high: list | None = None
    index_threshold: float | None = None
    # every part over its own threshold, the largest of them is divided by this (the parts' one validation budget)
    score_scale: float = 1.0

    def project(self, hidden: np.ndarray) -> np.ndarray:
        return (np.asarray(hidden, np.float64) - self.mean) @ self.components.T

    def distances(self, features: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray | None]:
        """(N,) mean distance to the `neighbours` nearest training spectra in the whitened leading components, and
        (N,) the residual off those components (None without `scale`)."""
        return distances(features, self.mean, self.components, self.scale, self.reference, self.neighbours, chunk)

    def score(self, features: np.ndarray, mask: np.ndarray | None = None, chunk: int = 512) -> np.ndarray:
        """`domain_score` (> 1: out of domain): the largest of the two distances, the band indices' excess and the
        classifier's probability (where the check has them), each over its threshold, divided by `score_scale`.
        `mask` (N, G), True where the grid is not observed: band indices there are not read (None: all observed)."""
        knn, residual = self.distances(features, chunk)
        score = knn / self.threshold
        if residual is not None and self.residual_threshold:
            score = np.maximum(score, residual / self.residual_threshold)
        if self.index_threshold:
            score = np.maximum(score, self.index_excess(features, mask) / self.index_threshold)
        if self.classifier:
            score = np.maximum(score, self.classifier_probability(features, residual) / self.classifier["threshold"])
        return score / self.score_scale

    def index_excess(self, features: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """(N,) how far a spectrum's band indices lie outside the fit spectra's range, the farthest of its observed
        indices in units of that index's range (negative: every index inside; 0 where none is observed)."""
        return index_excess(grid_indices(features, mask), self.index_low, self.index_high)

    def design(self, features: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """The classifier's inputs: the whitened leading components, their squares and the residual over its
        threshold."""
        pcs = self.project(features)
        return np.column_stack([pcs, pcs**2, residual / self.residual_threshold])

    def classifier_probability(self, features: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
        """(N,) the classifier's probability that a spectrum is one of the out-of-range kind it was shown."""
        if residual is None:
            residual = self.distances(features)[1]
        logit = self.design(features, residual) @ np.asarray(self.classifier["weights"]) + self.classifier["bias"]
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -500, 500)))

    def out_of_range(self, values: np.ndarray, names: list[str]) -> np.ndarray:
        """(N,) True where a predicted label lies outside the training labels' range."""
        out = np.zeros(len(values), dtype=bool)
        for j, name in enumerate(names):
            if name in self.label_names:
                k = self.label_names.index(name)
                v = values[:, j]
                out |= np.isfinite(v) & ((v < self.label_min[k]) | (v > self.label_max[k]))
        return out

    def check(
        self, features: np.ndarray, values: np.ndarray, names: list[str], mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(out of domain (N,) bool, `domain_score` (N,))."""
        score = self.score(features, mask)
        return (score > 1) | self.out_of_range(values, names), score

    def uncertain(self, errors: np.ndarray, names: list[str]) -> np.ndarray:
        """(N,) True where a predicted 1-sigma (calibrated) exceeds its label's `error_max`."""
        out = np.zeros(len(errors), dtype=bool)
        for j, name in enumerate(names):
            limit = self.error_max.get(name)
            if limit is not None:
                out |= np.nan_to_num(errors[:, j], nan=np.inf) > limit
        return out

    def features_of(self, flux: np.ndarray, mask: np.ndarray, patcher=None, hidden: np.ndarray | None = None):
        """The features this check reads, from the cleaned spectra (and the model's patcher or hidden state)."""
        if self.features == "flux":
            return np.asarray(flux, np.float32)
        if self.features == "hidden":
            return hidden
        return patch_features(patcher, flux, mask)


def grid_indices(flux: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """`physics.band_indices` of cleaned spectra on the default grid (the `flux` features); NaN where masked."""
    from .physics import band_indices

    if np.shape(flux)[-1] != GRID_WAVE.size:
        raise SpecllmError(
            f"band indices need the {GRID_WAVE.size}-pixel grid's flux, not {np.shape(flux)[-1]} features"
        )
    return band_indices(flux, GRID_WAVE, mask)


def index_excess(indices: np.ndarray, low, high) -> np.ndarray:
    """(N,) the largest of (index - high) / (high - low) and (low - index) / (high - low) over each row's observed
    (finite) indices; 0 for a row with none."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    width = np.maximum(high - low, 1e-6)
    excess = np.fmax((indices - high) / width, (low - indices) / width)
    largest = np.where(np.isnan(excess), -np.inf, excess).max(1)
    return np.where(np.isfinite(largest), largest, 0.0)


def uncertainty_limits(errors: np.ndarray, names: list[str], quantile: float) -> dict[str, float]:
    """The `uncertain` bit's limit per label: the `quantile` of the predicted 1-sigma (calibrated) over held-out
    spectra."""
    limits = {}
    for j, name in enumerate(names):
        e = errors[:, j][np.isfinite(errors[:, j])]
        if e.size:
            limits[name] = float(np.quantile(e, quantile))
    return limits


def patch_features(patcher, flux: np.ndarray, mask: np.ndarray, batch: int = 64) -> np.ndarray:
    """(N, P*H) float32: the patch projector's embeddings of each spectrum, all patches concatenated."""
    import torch

    device = next(patcher.parameters()).device
    out = np.zeros((len(flux), patcher.count * patcher.position.shape[-1]), np.float32)
    with torch.no_grad():
        for a in range(0, len(flux), batch):
            f = torch.as_tensor(np.asarray(flux[a : a + batch]), device=device)
            m = torch.as_tensor(np.asarray(mask[a : a + batch]), device=device)
            out[a : a + len(f)] = patcher(f, m).float().reshape(len(f), -1).cpu().numpy()
    return out


def distances(features, mean, components, scale, reference, neighbours: int, chunk: int = 512):
    """(kNN distance, residual or None) of `features` for a check with these arrays (see `Domain.distances`)."""
    knn = np.empty(len(features))
    residual = np.empty(len(features)) if scale is not None else None
    basis = components * scale[:, None] if scale is not None else None  # the unit principal directions (as stored)
    for a in range(0, len(features), chunk):
        y = np.asarray(features[a : a + chunk], np.float64) - mean
        knn[a : a + chunk] = knn_score(y @ components.T, reference, neighbours)
        if basis is not None:
            residual[a : a + chunk] = np.sqrt(np.maximum((y**2).sum(1) - ((y @ basis.T) ** 2).sum(1), 0.0))
    return knn, residual


def knn_score(points: np.ndarray, reference: np.ndarray, k: int, exclude_self: bool = False, chunk: int = 512):
    """Mean distance of each point to its k nearest reference points (skipping a zero-distance self match when
    `exclude_self`, for points that are themselves in `reference`)."""
    ref = np.asarray(reference, np.float64)
    ref_sq = (ref**2).sum(1)
    out = np.empty(len(points))
    k_eff = min(k + int(exclude_self), len(ref))
    for a in range(0, len(points), chunk):
        p = np.asarray(points[a : a + chunk], np.float64)
        d2 = np.maximum((p**2).sum(1)[:, None] + ref_sq[None, :] - 2 * p @ ref.T, 0.0)
        part = np.sort(np.partition(d2, k_eff - 1, axis=1)[:, :k_eff], axis=1)
        if exclude_self:
            part = part[:, 1:]
        out[a : a + chunk] = np.sqrt(part).mean(1)
    return out


def edge_cut(flux: np.ndarray, mask: np.ndarray, rng: np.random.Generator, span: tuple[float, float]):
    """Copies with one end of the grid (a fraction drawn from `span`, blue or red at random) unobserved: filled with
    the nearest observed value and masked, as the preprocessing fills grid points past the observed edges."""
    flux, mask = flux.copy(), mask.copy()
    n, g = flux.shape
    for i in range(n):
        width = max(1, int(rng.uniform(*span) * g))
        if rng.random() < 0.5:
            flux[i, :width] = flux[i, width]
            mask[i, :width] = True
        else:
            flux[i, g - width :] = flux[i, g - width - 1]
            mask[i, g - width :] = True
    return flux, mask


def fit_domain(
    hidden_fit: np.ndarray,
    hidden_val: np.ndarray,
    class_prob_val: np.ndarray | None,
    labels: np.ndarray,
    label_names: list[str],
    trained_classes: list[str],
    config: DomainConfig = DomainConfig(),
    info: dict | None = None,
    error_max: dict | None = None,
    mask_fit: np.ndarray | None = None,
    mask_val: np.ndarray | None = None,
) -> Domain:
    """PCA (whitened) on `hidden_fit`, the fit spectra as reference, the thresholds from the held-out `hidden_val`;
    with `flux` features and `config.indices`, the band indices' range from the fit spectra and their threshold from
    the held-out ones (`mask_fit`/`mask_val`: the grid points not observed); `error_max` (the `uncertain` bit's
    limits, `uncertainty_limits`) stored as given. Each part has its own threshold; `joint_budget` then sets the
    one shared by all."""
    x = np.asarray(hidden_fit, np.float64)
    mean = x.mean(0).astype(np.float32).astype(np.float64)  # as stored
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(config.components, vt.shape[0])
    sd = s[:k] / np.sqrt(max(1, len(x) - 1))
    components = (vt[:k] / np.maximum(sd, 1e-12)[:, None]).astype(np.float16).astype(np.float64)  # as stored
    scale = sd.astype(np.float32).astype(np.float64)
    reference = (x - mean) @ components.T
    val_scores, val_residual = distances(hidden_val, mean, components, scale, reference, config.neighbours)
    threshold = float(np.quantile(val_scores, config.quantile))
    residual_threshold = float(np.quantile(val_residual, config.residual_quantile))
    finite = np.isfinite(labels)
    lo = [float(np.min(labels[finite[:, j], j])) for j in range(labels.shape[1])]
    hi = [float(np.max(labels[finite[:, j], j])) for j in range(labels.shape[1])]
    index_low = index_high = index_threshold = None
    if config.indices and config.features == "flux" and x.shape[1] == GRID_WAVE.size:  # spectra on the grid
        seen = grid_indices(x, mask_fit)
        index_low, index_high = np.nanmin(seen, 0).tolist(), np.nanmax(seen, 0).tolist()
        val_excess = index_excess(grid_indices(hidden_val, mask_val), index_low, index_high)
        index_threshold = max(float(np.quantile(val_excess, config.quantile)), INDEX_THRESHOLD_MIN)
        info = {**(info or {}), "val_out_of_domain_indices": float(np.mean(val_excess > index_threshold))}
    cp = class_prob_val[np.isfinite(class_prob_val)] if class_prob_val is not None else np.array([])
    use_prob = cp.size and config.class_prob_quantile > 0
    class_prob_min = float(np.quantile(cp, config.class_prob_quantile)) if use_prob else 0.0
    meta = dict(info or {})
    meta.update(
        config=asdict(config),
        fit_rows=len(x),
        val_rows=len(val_scores),
        explained_variance=float((s[:k] ** 2).sum() / (s**2).sum()),
        val_score_quantiles={q: float(np.quantile(val_scores, q)) for q in (0.5, 0.9, 0.95, 0.98, 0.99)},
        val_residual_quantiles={q: float(np.quantile(val_residual, q)) for q in (0.5, 0.9, 0.95, 0.98, 0.99)},
        val_out_of_domain=float(np.mean((val_scores > threshold) | (val_residual > residual_threshold))),
    )
    return Domain(
        mean=mean,
        components=components,
        reference=reference,
        threshold=threshold,
        neighbours=config.neighbours,
        label_names=list(label_names),
        label_min=lo,
        label_max=hi,
        trained_classes=list(trained_classes),
        class_prob_min=class_prob_min,
        info=meta,
        features=config.features,
        scale=scale,
        residual_threshold=residual_threshold,
        error_max=dict(error_max or {}),
        index_low=index_low,
        index_high=index_high,
        index_threshold=index_threshold,
    )


def joint_budget(domain: Domain, held_out: np.ndarray, mask: np.ndarray | None, quantile: float) -> tuple[float, float]:
    """Sets `domain.score_scale` to the `quantile` of the `held_out` (validation) spectra's score with every part
    over its own threshold, so that the parts share one budget (1 - quantile of the held-out spectra out of domain)
    rather than each spending its own; returns the share of them out of domain before and after."""
    domain.score_scale = 1.0
    raw = domain.score(held_out, mask)
    domain.score_scale = float(np.quantile(raw, quantile))
    return float(np.mean(raw > 1)), float(np.mean(raw / domain.score_scale > 1))


def fit_classifier(
    domain: Domain, positives: np.ndarray, negatives: np.ndarray, held_out: np.ndarray, quantile: float, l2: float
) -> dict:
    """A logistic regression (L-BFGS, L2 penalty `l2`, the two classes weighted equally) of `negatives` (spectra
    outside the training labels' range) against `positives` (the fit spectra) on `Domain.design`; its threshold is
    the `quantile` of the `held_out` (validation) spectra's probabilities. Sets and returns `domain.classifier`."""
    from scipy.optimize import minimize

    if domain.scale is None or not domain.residual_threshold:
        raise SpecllmError("the classifier needs a domain check with a residual (features fitted by this version)")
    x = np.vstack([domain.design(f, domain.distances(f)[1]) for f in (positives, negatives)])
    y = np.concatenate([np.zeros(len(positives)), np.ones(len(negatives))])
    w = np.where(y == 1, 0.5 / len(negatives), 0.5 / len(positives))

    def loss(theta):
        z = x @ theta[:-1] + theta[-1]
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
        value = np.sum(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * l2 * theta[:-1] @ theta[:-1] / len(y)
        grad_z = w * (p - y)
        return value, np.append(x.T @ grad_z + l2 * theta[:-1] / len(y), grad_z.sum())

    fit = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    domain.classifier = {"weights": fit.x[:-1].tolist(), "bias": float(fit.x[-1]), "threshold": 1.0}
    held = domain.classifier_probability(held_out)
    negative_p = domain.classifier_probability(negatives)
    domain.classifier.update(
        threshold=float(max(np.quantile(held, quantile), 1e-6)),
        quantile=quantile,
        l2=l2,
        positives=len(positives),
        negatives=len(negatives),
        converged=bool(fit.success),
    )
    domain.classifier["negatives_above_threshold"] = float(np.mean(negative_p > domain.classifier["threshold"]))
    return domain.classifier


def save_domain(domain: Domain, model_dir: str | os.PathLike) -> None:
    """Writes domain.safetensors and domain.json into the model directory, each atomically."""
    import torch
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    dtypes = {"mean": np.float32, "components": np.float16, "reference": np.float32, "scale": np.float32}
    tensors = {
        name: torch.from_numpy(np.ascontiguousarray(getattr(domain, name), dtype=t))
        for name, t in dtypes.items()
        if getattr(domain, name) is not None
    }
    atomic_write(model_dir / DOMAIN_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    meta = {k: v for k, v in asdict(domain).items() if k not in dtypes}
    meta["weights_sha256"] = file_sha256(model_dir / DOMAIN_WEIGHTS)  # checked by every load (`load_domain`)
    atomic_write_text(model_dir / DOMAIN_JSON, json.dumps(meta, indent=2, default=str) + "\n")


def load_domain(model_dir: str | os.PathLike) -> Domain | None:
    """The domain check stored in a model directory, or None when it has none. domain.safetensors must match the
    SHA-256 its domain.json records (files written before the hash was recorded load unchecked)."""
    model_dir = Path(model_dir)
    if not (model_dir / DOMAIN_JSON).exists() or not (model_dir / DOMAIN_WEIGHTS).exists():
        return None
    from safetensors.numpy import load_file

    try:
        meta = json.loads((model_dir / DOMAIN_JSON).read_text())
        expected = meta.pop("weights_sha256", None) if isinstance(meta, dict) else None
        if expected is not None and file_sha256(model_dir / DOMAIN_WEIGHTS) != expected:
            raise SpecllmError(
                f"{model_dir / DOMAIN_WEIGHTS}: its SHA-256 differs from the one domain.json records "
                "(damaged or replaced; re-fit it with `specllm fit-domain`)"
            )
        arrays = load_file(str(model_dir / DOMAIN_WEIGHTS))
        names = ("mean", "components", "reference", "scale")
        return Domain(**{k: arrays[k].astype(np.float64) for k in names if k in arrays}, **meta)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpecllmError(one_line(f"{model_dir}: unreadable domain check ({exc})")) from None
