"""The model's own domain check: is a spectrum like the ones the model was trained on? (flag bit `domain`)

Works without any header (MILES, arrays, other instruments). Fitted once per model by `python -m specllm.fitdomain`
on the train split of the shards the model was trained on, and stored beside the weights:
- `domain.safetensors`: `mean` (D,) of the features, `components` (K, D) their leading principal components divided
  by their standard deviation (stored as float16), `reference` (N, K) the training spectra in that whitened space.
  Features (`features` in domain.json): `patches`, the patch projector's output for every patch, concatenated (the
  model's own view of the spectrum, before the language model), or `hidden`, the read-out hidden state;
- `domain.json`: the threshold, the neighbour count, the training labels' range, the trained classes,
  `class_prob_min`, and how all of it was fitted (counts, quantiles, the held-out part).

A spectrum's score is its mean Euclidean distance to its `neighbours` nearest training spectra in the whitened space;
it is out of domain when the score exceeds the threshold (a quantile of held-out training spectra's scores) or when
a predicted label lies outside the training labels' range. Plain numpy: no model code is imported here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import DomainConfig
from .errors import SpecllmError
from .shards import atomic_write, atomic_write_text

DOMAIN_WEIGHTS = "domain.safetensors"
DOMAIN_JSON = "domain.json"


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

    def project(self, hidden: np.ndarray) -> np.ndarray:
        return (np.asarray(hidden, np.float64) - self.mean) @ self.components.T

    def score(self, hidden: np.ndarray, chunk: int = 512) -> np.ndarray:
        """Mean distance to the `neighbours` nearest training spectra (whitened leading components)."""
        return knn_score(self.project(hidden), self.reference, self.neighbours, chunk=chunk)

    def out_of_range(self, values: np.ndarray, names: list[str]) -> np.ndarray:
        """(N,) True where a predicted label lies outside the training labels' range."""
        out = np.zeros(len(values), dtype=bool)
        for j, name in enumerate(names):
            if name in self.label_names:
                k = self.label_names.index(name)
                v = values[:, j]
                out |= np.isfinite(v) & ((v < self.label_min[k]) | (v > self.label_max[k]))
        return out

    def check(self, hidden: np.ndarray, values: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(out of domain (N,) bool, score (N,))."""
        score = self.score(hidden)
        return (score > self.threshold) | self.out_of_range(values, names), score


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
) -> Domain:
    """PCA (whitened) on `hidden_fit`, the fit spectra as reference, the threshold from the held-out `hidden_val`."""
    x = np.asarray(hidden_fit, np.float64)
    mean = x.mean(0).astype(np.float32).astype(np.float64)  # as stored
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(config.components, vt.shape[0])
    sd = s[:k] / np.sqrt(max(1, len(x) - 1))
    components = (vt[:k] / np.maximum(sd, 1e-12)[:, None]).astype(np.float16).astype(np.float64)  # as stored
    reference = (x - mean) @ components.T
    val_scores = knn_score((np.asarray(hidden_val, np.float64) - mean) @ components.T, reference, config.neighbours)
    threshold = float(np.quantile(val_scores, config.quantile))
    finite = np.isfinite(labels)
    lo = [float(np.min(labels[finite[:, j], j])) for j in range(labels.shape[1])]
    hi = [float(np.max(labels[finite[:, j], j])) for j in range(labels.shape[1])]
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
    )


def save_domain(domain: Domain, model_dir: str | os.PathLike) -> None:
    """Writes domain.safetensors and domain.json into the model directory, each atomically."""
    import torch
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    dtypes = {"mean": np.float32, "components": np.float16, "reference": np.float32}
    tensors = {
        name: torch.from_numpy(np.ascontiguousarray(getattr(domain, name), dtype=t)) for name, t in dtypes.items()
    }
    atomic_write(
        model_dir / DOMAIN_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "specllm": "domain"})
    )
    meta = {k: v for k, v in asdict(domain).items() if k not in tensors}
    atomic_write_text(model_dir / DOMAIN_JSON, json.dumps(meta, indent=2, default=str) + "\n")


def load_domain(model_dir: str | os.PathLike) -> Domain | None:
    """The domain check stored in a model directory, or None when it has none."""
    model_dir = Path(model_dir)
    if not (model_dir / DOMAIN_JSON).exists() or not (model_dir / DOMAIN_WEIGHTS).exists():
        return None
    from safetensors.numpy import load_file

    try:
        meta = json.loads((model_dir / DOMAIN_JSON).read_text())
        arrays = load_file(str(model_dir / DOMAIN_WEIGHTS))
        return Domain(**{k: arrays[k].astype(np.float64) for k in ("mean", "components", "reference")}, **meta)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpecllmError(f"{model_dir}: unreadable domain check ({exc})") from None
