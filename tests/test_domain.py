"""`specllm.domain`: the model's own domain check (fit, score, label range, files)."""

from __future__ import annotations

import numpy as np
import pytest

from specllm.config import DomainConfig
from specllm.domain import edge_cut, fit_domain, knn_score, load_domain, patch_features, save_domain


def test_domain_check_math():
    rng = np.random.default_rng(0)
    fit, val = rng.normal(size=(400, 12)), rng.normal(size=(200, 12))
    labels = rng.uniform(4000, 9000, size=(400, 1))
    domain = fit_domain(
        fit,
        val,
        rng.uniform(0.4, 1, 200),
        labels,
        ["teff"],
        ["A", "F"],
        DomainConfig(components=6, class_prob_quantile=0.01),
    )
    inside = rng.normal(size=(300, 12))
    far = rng.normal(size=(300, 12)) + 4.0
    out_in, _ = domain.check(inside, np.full((300, 1), 6000.0), ["teff"])
    out_far, score = domain.check(far, np.full((300, 1), 6000.0), ["teff"])
    assert out_in.mean() < 0.1 and out_far.mean() > 0.95 and (score > domain.threshold).mean() > 0.95
    assert domain.out_of_range(np.array([[3000.0], [6000.0], [np.nan]]), ["teff"]).tolist() == [True, False, False]
    assert 0.4 <= domain.class_prob_min < 0.45
    # knn with self excluded ignores the point's own zero distance
    pts = np.array([[0.0], [1.0], [3.0]])
    assert knn_score(pts, pts, 1, exclude_self=True).tolist() == [1.0, 1.0, 2.0]
    flux = np.tile(np.linspace(0.5, 1.0, 100, dtype=np.float32), (4, 1))
    f2, m2 = edge_cut(flux, np.zeros_like(flux, bool), rng, (0.1, 0.3))
    assert all(10 <= m.sum() <= 30 and (m[:5].all() or m[-5:].all()) for m in m2)
    assert np.array_equal(f2[~m2], flux[~m2])


def test_domain_files_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    domain = fit_domain(rng.normal(size=(50, 5)), rng.normal(size=(20, 5)), None, rng.normal(size=(50, 2)),
                        ["a", "b"], ["G"], DomainConfig(components=3, neighbours=3))  # fmt: skip
    assert load_domain(tmp_path) is None
    save_domain(domain, tmp_path)
    back = load_domain(tmp_path)
    x = rng.normal(size=(7, 5))
    assert np.allclose(back.score(x), domain.score(x), rtol=1e-4) and back.threshold == domain.threshold
    assert back.trained_classes == ["G"] and back.label_names == ["a", "b"]
    (tmp_path / "domain.json").write_text("{not json")
    with pytest.raises(Exception, match="unreadable domain check"):
        load_domain(tmp_path)


def test_patch_features_and_default_class_prob():
    import torch

    from specllm.spectral import PatchEmbedder

    torch.manual_seed(0)
    patcher = PatchEmbedder(200, 64, 8)
    flux = np.random.default_rng(0).uniform(0.5, 1, (3, 200)).astype(np.float32)
    feats = patch_features(patcher, flux, np.zeros_like(flux, bool), batch=2)
    assert feats.shape == (3, 4 * 8) and feats.dtype == np.float32
    one = patcher(torch.from_numpy(flux[1:2]), torch.zeros(1, 200, dtype=torch.bool)).detach().reshape(-1).numpy()
    assert np.allclose(feats[1], one, atol=1e-6)
    rng = np.random.default_rng(2)
    domain = fit_domain(rng.normal(size=(40, 4)), rng.normal(size=(10, 4)), rng.uniform(size=10), rng.normal(size=(40, 1)),
                        ["x"], ["G"], DomainConfig(components=2, neighbours=3))  # fmt: skip
    assert domain.class_prob_min == 0.0 and domain.features == "patches"
