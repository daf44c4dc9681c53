"""Baselines on tiny synthetic spectra: every model trains and predicts; missing labels are masked, not zero-filled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specllm.baselines import (
    LabelScaler,
    LightGBMModel,
    NetModel,
    SpectraSet,
    make_baseline,
    masked_loss,
    validation_split,
)
from specllm.config import (
    CLASSES,
    PRESETS,
    BenchmarkConfig,
    GRUConfig,
    LightGBMConfig,
    NetTrainConfig,
    ResNetConfig,
    SmallCNNConfig,
    apply_preset,
)

GRID = 96
LABELS = ("teff", "logg", "feh")


def synthetic(n: int = 60, seed: int = 1, grid: int = GRID) -> SpectraSet:
    """Spectra whose line depths follow the labels, so a model can learn something in a few steps."""
    rng = np.random.default_rng(seed)
    teff = rng.uniform(4000, 9000, n)
    logg = rng.uniform(1.0, 5.0, n)
    feh = rng.uniform(-2.0, 0.5, n)
    x = np.linspace(0, 1, grid)
    flux = np.ones((n, grid))
    for k, (centre, depth) in enumerate([(0.2, (teff - 4000) / 5000), (0.5, (logg - 1) / 4), (0.8, feh + 2.0)]):
        flux -= 0.3 * depth[:, None] * np.exp(-0.5 * ((x - centre) / 0.03) ** 2) * (k + 1) / 3
    flux += rng.normal(0, 0.01, flux.shape)
    classes = np.array([CLASSES[min(int((9000 - t) / 1000), 4)] for t in teff], dtype=object)
    labels = np.column_stack([teff, logg, feh])
    return SpectraSet(
        np.array([f"s{i}" for i in range(n)], dtype=object), flux.astype(np.float32), classes, labels, LABELS
    )


def tiny_config() -> BenchmarkConfig:
    return BenchmarkConfig(
        train=NetTrainConfig(max_epochs=2, batch_size=16, patience=2),
        resnet=ResNetConfig(width=4),
        smallcnn=SmallCNNConfig(channels=(4, 8, 8), pooled_length=4, hidden=16),
        gru=GRUConfig(hidden=16, patch=16),
        lightgbm=LightGBMConfig(n_estimators=20, early_stopping_rounds=5),
        threads=1,
    )


@pytest.mark.parametrize("name", ["lightgbm", "resnet50", "smallcnn", "gru"])
def test_every_baseline_trains_and_predicts(name):
    data = synthetic()
    train, test = data.subset(np.arange(45)), data.subset(np.arange(45, 60))
    model = make_baseline(name, tiny_config()).fit(train)
    pred = model.predict(test)
    assert pred.labels.shape == (15, 3)
    assert np.isfinite(pred.labels).all()
    assert set(pred.classes) <= set(CLASSES)
    assert pred.label_names == LABELS
    assert model.log.epochs >= 1


def test_resnet50_has_bottleneck_blocks_3_4_6_3():
    model = NetModel("resnet50", resnet=ResNetConfig(width=4))
    net = model._build(GRID, 3)
    blocks = [m for m in net.modules() if type(m).__name__ == "Bottleneck"]
    assert len(blocks) == 16  # 3 + 4 + 6 + 3
    # the last stage is 8 x width planes, expanded 4x
    assert net.heads.classify.in_features == 4 * 8 * 4


def test_masked_loss_ignores_missing_labels():
    torch.manual_seed(0)
    class_logits = torch.randn(4, 5)
    regression = torch.rand(4, 2)
    targets = torch.rand(4, 2)
    cls = torch.tensor([0, 1, -1, 2])  # row 2: class unknown
    masked = targets.clone()
    masked[1, 0] = float("nan")
    masked[3, 1] = float("nan")
    total, ce, mse = masked_loss((class_logits, regression), masked, cls, 50.0)
    present = torch.isfinite(masked)
    expected_mse = ((regression - targets)[present] ** 2).mean()
    expected_ce = torch.nn.functional.cross_entropy(class_logits[[0, 1, 3]], cls[[0, 1, 3]])
    assert torch.isfinite(total)
    assert torch.allclose(mse, expected_mse) and torch.allclose(ce, expected_ce)
    assert torch.allclose(total, expected_ce + 50.0 * expected_mse)
    # zero-filling would have given another value: the mask is what makes the difference
    zero_filled = ((regression - torch.nan_to_num(masked, nan=0.0)) ** 2).mean()
    assert not torch.allclose(mse, zero_filled)
    # gradients flow only from present labels
    regression.requires_grad_(True)
    masked_loss((class_logits, regression), masked, cls, 50.0)[0].backward()
    assert regression.grad[1, 0] == 0 and regression.grad[3, 1] == 0 and regression.grad[0, 0] != 0


def test_masked_loss_all_missing_is_zero_not_nan():
    reg = torch.rand(3, 1, requires_grad=True)
    total, ce, mse = masked_loss(
        (torch.randn(3, 5), reg), torch.full((3, 1), float("nan")), torch.tensor([-1, -1, -1]), 50.0
    )
    assert float(total.detach()) == 0.0
    total.backward()


def test_label_scaler_uses_present_values_only():
    labels = np.array([[100.0, 1.0], [np.nan, 3.0], [102.0, np.nan], [101.0, 2.0]])
    scaler = LabelScaler.fit(labels)
    assert scaler.lo.tolist() == [100.0, 1.0] and scaler.hi.tolist() == [102.0, 3.0]
    scaled = scaler.transform(labels)
    assert np.isnan(scaled[1, 0]) and np.isnan(scaled[2, 1])
    np.testing.assert_allclose(scaler.inverse(scaled[[0, 3]]), labels[[0, 3]])


def _with_missing(data: SpectraSet, fraction: float = 0.4) -> SpectraSet:
    """feh shifted to ~100 and missing for a fraction of rows: zero-filling would drag the predictions far down."""
    labels = data.labels.copy()
    labels[:, 2] = 100.0 + labels[:, 2] * 0.1
    labels[np.random.default_rng(3).random(len(labels)) < fraction, 2] = np.nan
    return SpectraSet(data.spec_id, data.flux, data.classes, labels, data.label_names)


def test_nets_mask_missing_labels():
    data = _with_missing(synthetic())
    model = make_baseline("smallcnn", tiny_config()).fit(data)
    assert model.scaler.lo[2] > 99.0  # min-max over present labels only: a zero-filled label would give 0
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in model.log.history)
    pred = model.predict(data)
    assert np.isfinite(pred.labels).all()
    assert 99.0 < np.median(pred.labels[:, 2]) < 101.0


def test_lightgbm_masks_missing_labels():
    data = _with_missing(synthetic())
    pred = LightGBMModel(LightGBMConfig(n_estimators=30, early_stopping_rounds=5), threads=1).fit(data).predict(data)
    assert pred.labels[:, 2].min() > 99.0  # trained on present rows only


def test_missing_classes_are_masked():
    data = synthetic()
    classes = data.classes.copy()
    classes[::3] = None
    data = SpectraSet(data.spec_id, data.flux, classes, data.labels, data.label_names)
    assert (data.class_index()[::3] == -1).all()
    for name in ("lightgbm", "smallcnn"):
        pred = make_baseline(name, tiny_config()).fit(data).predict(data)
        assert all(c in CLASSES for c in pred.classes)


def test_net_save_and_load_roundtrip(tmp_path):
    data = synthetic()
    model = make_baseline("gru", tiny_config()).fit(data)
    files = model.save(tmp_path)
    assert (tmp_path / "gru.safetensors").exists() and len(files) == 2
    again = NetModel.load(tmp_path, "gru", GRID)
    np.testing.assert_allclose(again.predict(data).labels, model.predict(data).labels, rtol=1e-5)


def test_lightgbm_saves_text_models(tmp_path):
    model = LightGBMModel(LightGBMConfig(n_estimators=5), threads=1).fit(synthetic())
    files = model.save(tmp_path)
    assert (tmp_path / "lightgbm-teff.txt").read_text().startswith("tree")
    assert len(files) == 5  # class + 3 labels + json


def test_training_is_deterministic():
    data = synthetic(40)
    a = make_baseline("smallcnn", tiny_config()).fit(data).predict(data).labels
    b = make_baseline("smallcnn", tiny_config()).fit(data).predict(data).labels
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_validation_split_is_deterministic_and_disjoint():
    tr, va = validation_split(100, 0.1, 8, seed=0)
    tr2, va2 = validation_split(100, 0.1, 8, seed=0)
    assert (tr == tr2).all() and (va == va2).all()
    assert len(va) == 10 and not set(tr) & set(va) and len(tr) + len(va) == 100
    assert len(validation_split(3, 0.1, 8, 0)[1]) == 0


def test_quick_preset_is_applied():
    cfg = BenchmarkConfig(quick=True).resolved()
    base, quick = BenchmarkConfig(), PRESETS["quick"]
    assert cfg.train.max_epochs == quick["train"]["max_epochs"] < base.train.max_epochs
    assert cfg.train.patience == quick["train"]["patience"] and cfg.train.lr == base.train.lr
    assert cfg.resnet.width == quick["resnet"]["width"] < base.resnet.width and cfg.resnet.blocks == (3, 4, 6, 3)
    assert cfg.lightgbm.n_estimators == quick["lightgbm"]["n_estimators"] < base.lightgbm.n_estimators
    assert BenchmarkConfig(quick=True, max_epochs=3).resolved().train.max_epochs == 3
    assert BenchmarkConfig(max_epochs=3).resolved().resnet == base.resnet
    assert base.resolved() == base
    with pytest.raises(KeyError, match="no field 'widht'"):
        apply_preset(base, {"resnet": {"widht": 8}})
