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
    assert out_in.mean() < 0.1 and out_far.mean() > 0.95 and (score > 1).mean() > 0.95
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
    assert domain.class_prob_min == 0.0 and domain.features == "flux"


def test_residual_sees_what_the_training_set_lacks(tmp_path):
    """Spectra along a direction no training spectrum varies in are out by their residual, although their
    projection on the leading components is ordinary; the two thresholds are quantiles of the held-out scores."""
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(40, 40)))[0]

    def sample(n, extra=0.0):  # variation in the first 5 directions only, plus noise
        x = rng.normal(size=(n, 5)) @ basis[:5] * 3 + rng.normal(size=(n, 40)) * 0.1
        return x + extra * basis[20]

    config = DomainConfig(components=5, neighbours=5, quantile=0.9, residual_quantile=0.9)
    domain = fit_domain(sample(400), sample(200), None, np.zeros((400, 1)), ["x"], ["G"], config)
    val_knn, val_res = domain.distances(sample(2000))
    assert (
        0.05 < np.mean(val_knn > domain.threshold) < 0.15 and 0.05 < np.mean(val_res > domain.residual_threshold) < 0.15
    )
    odd = sample(200, extra=2.0)
    knn, res = domain.distances(odd)
    assert np.mean(knn > domain.threshold) < 0.2 and np.mean(res > domain.residual_threshold) > 0.95
    assert np.mean(domain.check(odd, np.zeros((200, 1)), ["x"])[0]) > 0.95
    save_domain(domain, tmp_path)
    back = load_domain(tmp_path)
    assert back.residual_threshold == domain.residual_threshold and np.allclose(
        back.score(odd), domain.score(odd), rtol=1e-3
    )


def test_uncertain_limits_and_older_files(tmp_path):
    from specllm.domain import uncertainty_limits

    errors = np.column_stack([np.linspace(100, 1100, 101), np.linspace(0.1, 1.1, 101)])
    limits = uncertainty_limits(errors, ["teff", "logg"], 0.9)
    assert limits == pytest.approx({"teff": 1000.0, "logg": 1.0})
    rng = np.random.default_rng(4)
    domain = fit_domain(rng.normal(size=(50, 5)), rng.normal(size=(20, 5)), None, rng.normal(size=(50, 2)),
                        ["teff", "logg"], ["G"], DomainConfig(components=3, neighbours=3), error_max=limits)  # fmt: skip
    flagged = domain.uncertain(np.array([[500.0, 0.5], [1200.0, 0.5], [500.0, 1.2], [np.nan, 0.5]]), ["teff", "logg"])
    assert flagged.tolist() == [False, True, True, True]  # a missing sigma is no evidence of a good one
    assert not domain.uncertain(np.array([[5000.0]]), ["feh"]).any()  # no limit for this label
    # a domain file written before the residual (no `scale`): the neighbour distance alone, as then
    save_domain(domain, tmp_path)
    import json

    from safetensors.numpy import load_file, save_file

    arrays = load_file(str(tmp_path / "domain.safetensors"))
    save_file({k: v for k, v in arrays.items() if k != "scale"}, str(tmp_path / "domain.safetensors"))
    meta = json.loads((tmp_path / "domain.json").read_text())
    for key in ("scale", "residual_threshold", "error_max", "weights_sha256"):
        meta.pop(key, None)
    (tmp_path / "domain.json").write_text(json.dumps(meta))
    old = load_domain(tmp_path)
    x = rng.normal(size=(6, 5))
    assert old.scale is None and old.error_max == {}
    assert np.allclose(old.score(x), old.distances(x)[0] / old.threshold)


def test_classifier_against_out_of_range_spectra(tmp_path):
    from specllm.domain import fit_classifier

    rng = np.random.default_rng(7)
    base = rng.normal(size=(8, 40))  # 8 directions the "training spectra" vary along, in 40 features

    def spectra(n, shift=0.0):
        x = rng.normal(size=(n, 8)) @ base + 0.05 * rng.normal(size=(n, 40))
        x[:, :4] += shift  # the out-of-range kind: a band the training spectra never show this deep
        return x

    fit, val, neg = spectra(300), spectra(200), spectra(150, shift=-1.5)
    domain = fit_domain(fit, val, None, rng.normal(size=(300, 2)), ["teff", "logg"], ["G"],
                        DomainConfig(components=8, neighbours=5, quantile=0.98, residual_quantile=0.98))  # fmt: skip
    before = (domain.score(spectra(200, shift=-1.5)) > 1).mean()
    info = fit_classifier(domain, fit, neg, val, 0.98, 1.0)
    assert info["converged"] and info["negatives"] == 150 and 0 < info["threshold"] < 1
    assert (domain.classifier_probability(val) > info["threshold"]).mean() <= 0.03  # the quantile, on validation
    unseen_out = domain.score(spectra(200, shift=-1.5)) > 1
    assert unseen_out.mean() >= max(before, 0.9)  # new spectra of the negatives' kind are caught
    assert (domain.score(spectra(200)) > 1).mean() < 0.1  # new training-like spectra mostly pass
    save_domain(domain, tmp_path)
    again = load_domain(tmp_path)
    assert again.classifier["weights"] == info["weights"]
    assert np.allclose(again.score(val[:20]), domain.score(val[:20]), rtol=1e-4)


def test_band_indices_see_a_molecular_band_the_training_spectra_lack(tmp_path):
    from specllm.config import GridConfig
    from specllm.domain import joint_budget
    from specllm.physics import air_to_vacuum

    rng = np.random.default_rng(11)
    wave = GridConfig().wavelengths()
    lo, hi = air_to_vacuum(np.array([7126.0, 7135.0]))
    band = (wave >= lo) & (wave <= hi)  # TiO5's band: 9 of 4,901 pixels

    def spectra(n, depth=0.0):
        slope = rng.uniform(-0.3, 0.3, size=(n, 1)) * (wave - 6250) / 2450
        noise = rng.uniform(0.005, 0.03, size=(n, 1))  # SNR varies from spectrum to spectrum
        x = 0.8 + slope + noise * rng.normal(size=(n, wave.size))
        x[:, band] *= 1 - depth
        return x.astype(np.float32)

    fit, val = spectra(300), spectra(200)
    config = DomainConfig(components=4, neighbours=5)
    plain = fit_domain(fit, val, None, rng.normal(size=(300, 1)), ["teff"], ["G"], DomainConfig(components=4,
                       neighbours=5, indices=False))  # fmt: skip
    domain = fit_domain(fit, val, None, rng.normal(size=(300, 1)), ["teff"], ["G"], config)
    assert len(domain.index_low) == 20 and domain.index_threshold > 0
    banded = spectra(100, depth=0.15)
    assert (plain.score(banded) > 1).mean() < 0.5  # 9 pixels: the distances hardly see it
    assert (domain.score(banded) > 1).mean() > 0.95
    assert (domain.score(spectra(200)) > 1).mean() < 0.05
    mask = np.zeros(banded.shape, bool)
    mask[:, band] = True  # the band not observed: not read
    assert (domain.score(banded, mask) > 1).mean() <= (plain.score(banded) > 1).mean() + 0.02
    before, _ = joint_budget(domain, val, None, 0.9)  # one budget: 10% of the held-out spectra out in all
    assert before > 0 and (domain.score(val) > 1).mean() == pytest.approx(0.1, abs=0.01)
    save_domain(domain, tmp_path)
    again = load_domain(tmp_path)
    assert again.score_scale == domain.score_scale and again.index_high == domain.index_high
    assert np.allclose(again.score(banded[:10]), domain.score(banded[:10]), rtol=1e-4)
