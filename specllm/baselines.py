"""The paper's baselines (section IV.1): LightGBM, a 1-D ResNet-50, a small CNN and a three-layer GRU.

Every model is a small object with `fit(train)` and `predict(data)` on a `SpectraSet` (flux matrix, class letters,
label matrix with NaN where a label is missing). The networks share one trunk-plus-heads layout: a class head
(A/F/G/K/M) and one regression head per label, trained with cross-entropy + 50 x MSE on min-max normalised labels.
Missing labels (NaN) and missing classes (None) are masked out of the loss, never zero-filled. Adam at lr 1e-3 is
reduced on plateau of the validation loss; training stops early and the best checkpoint (kept in memory) is restored.
Weights are saved as safetensors (networks) or LightGBM's own text format (no pickle anywhere).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import BenchmarkConfig, GRUConfig, LightGBMConfig, NetTrainConfig, ResNetConfig, SmallCNNConfig
from .errors import SpecllmError
from .files import atomic_write, atomic_write_json
from .labels import CLASSES
from .progress import say

CLASS_INDEX = {c: i for i, c in enumerate(CLASSES)}


# ---------------------------------------------------------------- data passed to every model


@dataclass
class SpectraSet:
    """Spectra of one split: `flux` (n, grid), `classes` (n,) letters or None, `labels` (n, k) float with NaN = missing."""

    spec_id: np.ndarray
    flux: np.ndarray
    classes: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.spec_id)
        if self.flux.shape[0] != n or len(self.classes) != n or self.labels.shape != (n, len(self.label_names)):
            raise ValueError("SpectraSet: flux, classes and labels must have one row per spec_id")

    def __len__(self) -> int:
        return len(self.spec_id)

    def subset(self, index) -> SpectraSet:
        index = np.asarray(index)
        return SpectraSet(
            self.spec_id[index], self.flux[index], self.classes[index], self.labels[index], self.label_names
        )

    def class_index(self) -> np.ndarray:
        """Class as an integer 0..4, -1 where unknown (masked out of the class loss)."""
        return np.array([CLASS_INDEX.get(c, -1) if isinstance(c, str) else -1 for c in self.classes], dtype=np.int64)


@dataclass
class Prediction:
    """A model's answer for a SpectraSet: class letters (None = no answer) and labels (NaN = no answer)."""

    classes: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...]


def validation_split(n: int, fraction: float, minimum: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, validation) indices; validation is empty for sets too small to spare it."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = max(int(round(n * fraction)), min(minimum, n // 4))
    if n < 4:
        n_val = 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclass
class LabelScaler:
    """Min-max normalisation of each label over the training rows where it is present."""

    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def fit(cls, labels: np.ndarray) -> LabelScaler:
        with np.errstate(all="ignore"):
            present = np.isfinite(labels)
            lo = np.array(
                [labels[present[:, j], j].min() if present[:, j].any() else 0.0 for j in range(labels.shape[1])]
            )
            hi = np.array(
                [labels[present[:, j], j].max() if present[:, j].any() else 1.0 for j in range(labels.shape[1])]
            )
        hi = np.where(hi > lo, hi, lo + 1.0)
        return cls(lo.astype(np.float64), hi.astype(np.float64))

    def transform(self, labels: np.ndarray) -> np.ndarray:
        return ((labels - self.lo) / (self.hi - self.lo)).astype(np.float32)

    def inverse(self, scaled: np.ndarray) -> np.ndarray:
        return scaled * (self.hi - self.lo) + self.lo


def masked_loss(logits, targets, class_target, mse_weight: float):
    """cross-entropy (rows with a known class) + mse_weight x MSE over the present (finite) labels only.

    `targets` are normalised labels with NaN where missing; a NaN never reaches the arithmetic (it is replaced
    before the subtraction and its term is dropped by the mask), so missing labels contribute nothing.
    Returns (total, ce, mse) as tensors.
    """
    import torch
    import torch.nn.functional as F

    class_logits, regression = logits
    known = class_target >= 0
    ce = F.cross_entropy(class_logits[known], class_target[known]) if known.any() else class_logits.sum() * 0.0
    present = torch.isfinite(targets)
    if present.any():
        safe = torch.where(present, targets, torch.zeros_like(targets))
        mse = ((regression - safe) ** 2)[present].mean()
    else:
        mse = regression.sum() * 0.0
    return ce + mse_weight * mse, ce, mse


# ---------------------------------------------------------------- networks


def _torch():
    import torch

    return torch


def build_network(name: str, grid_size: int, n_labels: int, resnet: ResNetConfig, cnn: SmallCNNConfig, gru: GRUConfig):
    import torch
    from torch import nn

    class Heads(nn.Module):
        """A class head and one small regression head per label on top of a trunk's feature vector."""

        def __init__(self, features: int):
            super().__init__()
            self.classify = nn.Linear(features, len(CLASSES))
            self.regress = nn.ModuleList(
                nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 1)) for _ in range(n_labels)
            )

        def forward(self, h):
            return self.classify(h), torch.cat([head(h) for head in self.regress], dim=1)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin: int, planes: int, stride: int, kernel: int):
            super().__init__()
            cout = planes * self.expansion
            self.body = nn.Sequential(
                nn.Conv1d(cin, planes, 1, bias=False),
                nn.BatchNorm1d(planes),
                nn.ReLU(inplace=True),
                nn.Conv1d(planes, planes, kernel, stride=stride, padding=kernel // 2, bias=False),
                nn.BatchNorm1d(planes),
                nn.ReLU(inplace=True),
                nn.Conv1d(planes, cout, 1, bias=False),
                nn.BatchNorm1d(cout),
            )
            self.skip = (
                nn.Sequential(nn.Conv1d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm1d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.act(self.body(x) + self.skip(x))

    class ResNet1D(nn.Module):
        def __init__(self, cfg: ResNetConfig):
            super().__init__()
            w = cfg.width
            layers = [
                nn.Conv1d(1, w, cfg.stem_kernel, stride=cfg.stem_stride, padding=cfg.stem_kernel // 2, bias=False),
                nn.BatchNorm1d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool1d(3, stride=2, padding=1),
            ]
            cin = w
            for stage, n_blocks in enumerate(cfg.blocks):
                planes = w * 2**stage
                for b in range(n_blocks):
                    layers.append(Bottleneck(cin, planes, 2 if (b == 0 and stage > 0) else 1, cfg.kernel))
                    cin = planes * Bottleneck.expansion
            layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten()]
            self.trunk = nn.Sequential(*layers)
            self.heads = Heads(cin)

        def forward(self, x):
            return self.heads(self.trunk(x.unsqueeze(1)))

    class SmallCNN(nn.Module):
        def __init__(self, cfg: SmallCNNConfig):
            super().__init__()
            layers, cin = [], 1
            for cout in cfg.channels:
                layers += [
                    nn.Conv1d(cin, cout, cfg.kernel, padding=cfg.kernel // 2),
                    nn.BatchNorm1d(cout),
                    nn.ReLU(inplace=True),
                    nn.MaxPool1d(cfg.pool),
                ]
                cin = cout
            layers += [
                nn.AdaptiveAvgPool1d(cfg.pooled_length),
                nn.Flatten(),
                nn.Linear(cin * cfg.pooled_length, cfg.hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(0.1),
            ]
            self.trunk = nn.Sequential(*layers)
            self.heads = Heads(cfg.hidden)

        def forward(self, x):
            return self.heads(self.trunk(x.unsqueeze(1)))

    class GRUNet(nn.Module):
        def __init__(self, cfg: GRUConfig):
            super().__init__()
            self.patch = cfg.patch
            self.steps = -(-grid_size // cfg.patch)
            self.embed = nn.Sequential(nn.Linear(cfg.patch, cfg.hidden), nn.LayerNorm(cfg.hidden))
            self.gru = nn.GRU(cfg.hidden, cfg.hidden, num_layers=cfg.layers, batch_first=True, dropout=cfg.dropout)
            self.heads = Heads(2 * cfg.hidden)

        def forward(self, x):
            pad = self.steps * self.patch - x.shape[1]
            if pad:
                x = nn.functional.pad(x, (0, pad), mode="replicate")
            seq, last = self.gru(self.embed(x.reshape(x.shape[0], self.steps, self.patch)))
            return self.heads(torch.cat([last[-1], seq.mean(dim=1)], dim=1))

    if name == "resnet50":
        return ResNet1D(resnet)
    if name == "smallcnn":
        return SmallCNN(cnn)
    if name == "gru":
        return GRUNet(gru)
    raise SpecllmError(f"unknown network {name!r}")


@dataclass
class FitLog:
    epochs: int = 0
    best_epoch: int = 0
    best_val_loss: float = math.inf
    history: list[dict] = field(default_factory=list)


class NetModel:
    """A PyTorch baseline (resnet50, smallcnn or gru) with fit/predict on SpectraSets."""

    def __init__(
        self,
        name: str,
        train: NetTrainConfig = NetTrainConfig(),
        resnet: ResNetConfig = ResNetConfig(),
        smallcnn: SmallCNNConfig = SmallCNNConfig(),
        gru: GRUConfig = GRUConfig(),
        seed: int = 0,
        predict_batch: int = 256,
    ):
        self.name = name
        self.cfg = train
        self.arch = {"resnet50": resnet, "smallcnn": smallcnn, "gru": gru}[name]
        self._archs = (resnet, smallcnn, gru)
        self.seed = seed
        self.predict_batch = predict_batch
        self.net = None
        self.scaler: LabelScaler | None = None
        self.label_names: tuple[str, ...] = ()
        self.log = FitLog()

    def _build(self, grid_size: int, n_labels: int):
        return build_network(self.name, grid_size, n_labels, *self._archs)

    def fit(self, train: SpectraSet) -> NetModel:
        torch = _torch()
        torch.manual_seed(self.seed)
        cfg = self.cfg
        self.label_names = train.label_names
        tr, va = validation_split(len(train), cfg.val_fraction, cfg.min_val, self.seed)
        self.scaler = LabelScaler.fit(train.labels[tr])
        x = torch.from_numpy(np.ascontiguousarray(train.flux, dtype=np.float32))
        y = torch.from_numpy(self.scaler.transform(train.labels))
        c = torch.from_numpy(train.class_index())
        self.net = self._build(train.flux.shape[1], len(self.label_names))
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
        gen = torch.Generator().manual_seed(self.seed)
        best_state, stale, self.log = None, 0, FitLog()
        monitor = va if len(va) else tr
        for epoch in range(1, cfg.max_epochs + 1):
            t0 = time.perf_counter()
            self.net.train()
            order = torch.from_numpy(tr)[torch.randperm(len(tr), generator=gen)]
            total, batches = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                if len(idx) < 2:  # batch-norm needs two samples
                    continue
                loss, _, _ = masked_loss(self.net(x[idx]), y[idx], c[idx], cfg.mse_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, batches = total + loss.item(), batches + 1
            val = self._loss(x[monitor], y[monitor], c[monitor])
            sched.step(val)
            self.log.history.append(
                {
                    "epoch": epoch,
                    "train_loss": total / max(batches, 1),
                    "val_loss": val,
                    "lr": opt.param_groups[0]["lr"],
                    "seconds": time.perf_counter() - t0,
                }
            )
            self.log.epochs = epoch
            if val < self.log.best_val_loss:
                self.log.best_val_loss, self.log.best_epoch, stale = val, epoch, 0
                best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        return self

    def _loss(self, x, y, c) -> float:
        torch = _torch()
        self.net.eval()
        total, n = 0.0, 0
        with torch.inference_mode():
            for start in range(0, len(x), self.predict_batch):
                sl = slice(start, start + self.predict_batch)
                loss, _, _ = masked_loss(self.net(x[sl]), y[sl], c[sl], self.cfg.mse_weight)
                total, n = total + float(loss) * len(x[sl]), n + len(x[sl])
        return total / max(n, 1)

    def predict(self, data: SpectraSet) -> Prediction:
        torch = _torch()
        if self.net is None:
            raise SpecllmError(f"{self.name}: predict before fit")
        self.net.eval()
        x = torch.from_numpy(np.ascontiguousarray(data.flux, dtype=np.float32))
        cls, reg = [], []
        with torch.inference_mode():
            for start in range(0, len(x), self.predict_batch):
                logits, r = self.net(x[start : start + self.predict_batch])
                cls.append(logits.argmax(dim=1).numpy())
                reg.append(r.numpy())
        idx = np.concatenate(cls) if cls else np.zeros(0, dtype=np.int64)
        scaled = np.concatenate(reg) if reg else np.zeros((0, len(self.label_names)), dtype=np.float32)
        classes = np.array([CLASSES[i] for i in idx], dtype=object)
        return Prediction(classes, self.scaler.inverse(scaled.astype(np.float64)), self.label_names)

    def save(self, directory: str | os.PathLike) -> list[str]:
        from safetensors.torch import save_file

        directory = Path(directory)
        weights = directory / f"{self.name}.safetensors"
        state = {k: v.contiguous() for k, v in self.net.state_dict().items()}
        atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"model": self.name}))
        meta = directory / f"{self.name}.json"
        atomic_write_json(
            meta,
            {
                "model": self.name,
                "architecture": asdict(self.arch),
                "train": asdict(self.cfg),
                "labels": list(self.label_names),
                "label_min": self.scaler.lo.tolist(),
                "label_max": self.scaler.hi.tolist(),
                "classes": list(CLASSES),
                "epochs": self.log.epochs,
                "best_epoch": self.log.best_epoch,
                "history": self.log.history,
            },
        )
        return [str(weights), str(meta)]

    @classmethod
    def load(cls, directory: str | os.PathLike, name: str, grid_size: int) -> NetModel:
        """Rebuild a saved network from its safetensors weights and JSON description."""
        from safetensors.torch import load_file

        directory = Path(directory)
        meta = json.loads((directory / f"{name}.json").read_text())
        arch_cls = {"resnet50": ResNetConfig, "smallcnn": SmallCNNConfig, "gru": GRUConfig}[name]
        arch = arch_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["architecture"].items()})
        kwargs = {{"resnet50": "resnet", "smallcnn": "smallcnn", "gru": "gru"}[name]: arch}
        model = cls(name, NetTrainConfig(**meta["train"]), **kwargs)
        model.label_names = tuple(meta["labels"])
        model.scaler = LabelScaler(np.array(meta["label_min"]), np.array(meta["label_max"]))
        model.net = model._build(grid_size, len(model.label_names))
        model.net.load_state_dict(load_file(str(directory / f"{name}.safetensors")))
        return model


# ---------------------------------------------------------------- LightGBM


class LightGBMModel:
    """A LightGBM multiclass classifier for the class and one LightGBM regressor per label, on the flux pixels."""

    name = "lightgbm"

    def __init__(
        self,
        cfg: LightGBMConfig = LightGBMConfig(),
        val: NetTrainConfig = NetTrainConfig(),
        seed: int = 0,
        threads: int = BenchmarkConfig.threads,
    ):
        self.cfg = cfg
        self.val = val
        self.seed = seed
        self.threads = threads
        self.classifier = None
        self.class_names: list[str] = []
        self.regressors: list = []
        self.label_names: tuple[str, ...] = ()
        self.log = FitLog()

    def _params(self, objective: str, **extra) -> dict:
        c = self.cfg
        return {
            "objective": objective,
            "learning_rate": c.learning_rate,
            "num_leaves": c.num_leaves,
            "min_child_samples": c.min_child_samples,
            "feature_fraction": c.feature_fraction,
            "bagging_fraction": c.bagging_fraction,
            "bagging_freq": 1 if c.bagging_fraction < 1 else 0,
            "seed": self.seed,
            "deterministic": True,
            "num_threads": self.threads,
            "verbosity": -1,
            **extra,
        }

    def _train(self, params: dict, x, y, xv, yv):
        import lightgbm as lgb

        dtrain = lgb.Dataset(x, y, free_raw_data=False)
        callbacks, valid = [], []
        if xv is not None and len(yv):
            valid = [lgb.Dataset(xv, yv, reference=dtrain)]
            callbacks = [lgb.early_stopping(self.cfg.early_stopping_rounds, verbose=False)]
        return lgb.train(params, dtrain, num_boost_round=self.cfg.n_estimators, valid_sets=valid, callbacks=callbacks)

    def fit(self, train: SpectraSet) -> LightGBMModel:
        self.label_names = train.label_names
        tr, va = validation_split(len(train), self.val.val_fraction, self.val.min_val, self.seed)
        x = np.asarray(train.flux, dtype=np.float32)
        ci = train.class_index()
        present_classes = sorted({int(i) for i in ci[tr] if i >= 0})
        self.class_names = [CLASSES[i] for i in present_classes]
        self.classifier = None
        if len(present_classes) >= 2:
            remap = {c: k for k, c in enumerate(present_classes)}
            rows = tr[ci[tr] >= 0]
            vrows = va[np.isin(ci[va], present_classes)]
            params = self._params("multiclass", num_class=len(present_classes), metric="multi_logloss")
            self.classifier = self._train(
                params,
                x[rows],
                np.array([remap[i] for i in ci[rows]]),
                x[vrows],
                np.array([remap[i] for i in ci[vrows]]),
            )
        self.regressors = []
        for j, name in enumerate(self.label_names):
            y = train.labels[:, j]
            rows, vrows = tr[np.isfinite(y[tr])], va[np.isfinite(y[va])]
            if len(rows) < 2:
                say(f"lightgbm: label {name} has fewer than 2 training values; it is not predicted")
                self.regressors.append(None)
                continue
            self.regressors.append(
                self._train(self._params("regression", metric="l2"), x[rows], y[rows], x[vrows], y[vrows])
            )
        boosters = [b for b in [self.classifier, *self.regressors] if b is not None]
        self.log.epochs = max([b.current_iteration() for b in boosters], default=0)  # trees grown (most of any booster)
        self.log.best_epoch = max([b.best_iteration or b.current_iteration() for b in boosters], default=0)  # kept
        return self

    def predict(self, data: SpectraSet) -> Prediction:
        x = np.asarray(data.flux, dtype=np.float32)
        if self.classifier is not None:
            proba = self.classifier.predict(x, num_iteration=self.classifier.best_iteration or None)
            classes = np.array([self.class_names[i] for i in np.argmax(proba, axis=1)], dtype=object)
        else:
            only = self.class_names[0] if self.class_names else None
            classes = np.array([only] * len(x), dtype=object)
        labels = np.full((len(x), len(self.label_names)), np.nan)
        for j, booster in enumerate(self.regressors):
            if booster is not None:
                labels[:, j] = booster.predict(x, num_iteration=booster.best_iteration or None)
        return Prediction(classes, labels, self.label_names)

    def save(self, directory: str | os.PathLike) -> list[str]:
        directory = Path(directory)
        written = []
        boosters = [("class", self.classifier)] + list(zip(self.label_names, self.regressors, strict=True))
        for tag, booster in boosters:
            if booster is None:
                continue
            path = directory / f"lightgbm-{tag}.txt"
            atomic_write(path, lambda tmp, b=booster: b.save_model(tmp, num_iteration=b.best_iteration or None))
            written.append(str(path))
        meta = directory / "lightgbm.json"
        atomic_write_json(
            meta,
            {
                "model": "lightgbm",
                "params": asdict(self.cfg),
                "classes": self.class_names,
                "labels": list(self.label_names),
            },
        )
        return written + [str(meta)]


# ---------------------------------------------------------------- factory


def make_baseline(name: str, config) -> LightGBMModel | NetModel:
    """A fresh, untrained baseline from a `BenchmarkConfig` (already adjusted for --quick)."""
    if name == "lightgbm":
        return LightGBMModel(config.lightgbm, config.train, seed=config.seed, threads=config.threads)
    if name in ("resnet50", "smallcnn", "gru"):
        return NetModel(
            name,
            config.train,
            config.resnet,
            config.smallcnn,
            config.gru,
            seed=config.seed,
            predict_batch=config.predict_batch,
        )
    raise SpecllmError(f"unknown baseline {name!r} (choose from lightgbm, resnet50, smallcnn, gru)")
