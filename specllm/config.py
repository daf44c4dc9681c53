"""Every default of specllm, named once.

The values are those of *Spectra as Language* (Lu, Li et al. 2026) unless a comment says otherwise. The CLI reads
its defaults from these dataclasses, so a paper value is written in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

NormMethod = Literal["max", "quantile", "median"]


@dataclass(frozen=True)
class GridConfig:
    """The common wavelength grid (paper section III.1): 3800-8700 A at 1 A, 4901 values."""

    start: float = 3800.0
    stop: float = 8700.0
    step: float = 1.0

    @property
    def size(self) -> int:
        return int(round((self.stop - self.start) / self.step)) + 1

    def wavelengths(self) -> np.ndarray:
        return self.start + self.step * np.arange(self.size, dtype=np.float64)


@dataclass(frozen=True)
class CleanConfig:
    """Spectrum cleaning (paper section III.1) plus the guards a survey pipeline needs.

    snr_min_r, snr_min_i: keep a spectrum only if SNR_r and SNR_i are both >= these (paper: 2).
    mask_ormask: pixels with a non-zero ormask are excluded (paper).
    require_ivar: pixels with inverse variance <= 0 are excluded too (not in the paper; LAMOST marks dead pixels so).
    norm: 'max' divides by the maximum over good pixels (paper); 'quantile' by the `norm_quantile` quantile,
        'median' by the median: robust alternatives where one hot pixel would set the maximum.
    decimals: rounding of the normalised flux (paper: 3).
    min_coverage: reject a spectrum whose good pixels cover less than this fraction of the grid.
    min_run: observed runs shorter than this many pixels are not trusted as flux (a cubic needs 4 points).
    """

    snr_min_r: float = 2.0
    snr_min_i: float = 2.0
    mask_ormask: bool = True
    require_ivar: bool = True
    norm: NormMethod = "max"
    norm_quantile: float = 0.99
    decimals: int = 3
    min_coverage: float = 0.5
    min_run: int = 4


@dataclass(frozen=True)
class SplitConfig:
    """Deterministic train/test split from a hash of the spectrum id (paper: 8:2)."""

    test_fraction: float = 0.2
    salt: str = "specllm-split-v1"


@dataclass(frozen=True)
class IngestConfig:
    grid: GridConfig = field(default_factory=GridConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    shard_size: int = 512
    workers: int = 1
    balance: int | None = None
    strict: bool = False


# The spectral classes the paper trains on (LAMOST subclasses reduced to their letter).
CLASSES: tuple[str, ...] = ("A", "F", "G", "K", "M")
# Stage-1 numeric labels, in answer order, with the number of decimals the paper writes.
STAGE1_LABELS: tuple[tuple[str, int], ...] = (("teff", 2), ("logg", 3), ("feh", 3))


# ---------------------------------------------------------------- serialisation, model and training

FORMATS: tuple[str, ...] = ("paper", "compact", "patch")
# The paper's stage-2 elements (APOGEE DR16 [X/Fe]), in answer order.
STAGE2_ELEMENTS: tuple[str, ...] = (
    "C", "CI", "N", "O", "NA", "MG", "AL", "SI", "P", "S", "K", "CA", "TI", "TIII", "V", "CR", "MN", "CO", "NI", "CU", "CE",
)  # fmt: skip


@dataclass(frozen=True)
class PatchConfig:
    """Spectral tokens (`--format patch`): the flux vector cut into fixed-width patches, one embedding each."""

    width: int = 64  # 4901 pixels -> 77 patches

    def count(self, grid_size: int) -> int:
        return -(-grid_size // self.width)


@dataclass(frozen=True)
class LoraConfig:
    """LoRA / QLoRA adapter (paper: rank 64, alpha 128, dropout 0.1, all linear layers; 4-bit NF4 on CUDA)."""

    r: int = 64
    alpha: int = 128
    dropout: float = 0.1
    target_modules: str = "all-linear"
    quantize_4bit: bool = True  # only where CUDA + bitsandbytes are available


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (paper: AdamW lr 1e-4, weight decay 0.1, cosine schedule, bf16, gradient checkpointing)."""

    lr: float = 1e-4
    weight_decay: float = 0.1
    schedule: str = "cosine"
    warmup_fraction: float = 0.03
    epochs: float = 3.0
    batch_size: int = 4
    grad_accum: int = 4
    bf16: bool = True  # where the hardware supports it
    gradient_checkpointing: bool = True
    max_grad_norm: float = 1.0
    save_every: int = 200  # optimizer steps between checkpoints
    seed: int = 0


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation of patch-mode spectra (not in the paper; all off by default).

    noise: Gaussian flux noise, its sigma drawn per spectrum from |N(0, noise)|; scale: flux multiplied by
    U(1 - scale, 1 + scale); span_probability: chance that a random span (a fraction span_min..span_max of the grid,
    half of them at an edge) is masked and filled as the preprocessing fills gaps, so the model learns to read
    spectra with partial wavelength coverage.
    """

    noise: float = 0.0
    scale: float = 0.0
    span_probability: float = 0.0
    span_min: float = 0.05
    span_max: float = 0.3


@dataclass(frozen=True)
class InferConfig:
    batch_size: int = 16
    decode: str = "head"  # 'head': numeric read-out written as the answer text; 'text': constrained greedy decoding
    max_new_tokens: int = 64
    partial_coverage: float = 0.95  # (compare-external, without a `partial` column) rows below this coverage
    partial_edge: float = 0.02  # a spectrum missing more than this fraction of the grid at one end is `partial`


@dataclass(frozen=True)
class DomainConfig:
    """The model's own domain check (`flag` bit `domain`), fitted by `python -m specllm.fitdomain` into the model
    directory (`domain.safetensors` + `domain.json`) from the train split of the shards the model was trained on.

    features: 'patches' (default): the patch embeddings, the model's own view of the spectrum (its patch projector's
        output, all patches concatenated); 'hidden': the read-out hidden state the numeric heads read (it maps K and
        M stars close to cool G stars: 3 of 129 non-A/F/G spectra flagged, see docs/BENCHMARKS.md).
    components: leading principal components of the features kept, each scaled to unit variance.
    neighbours: a spectrum's score is its mean distance, in that space, to this many nearest training spectra.
    quantile: the threshold is this quantile of the scores of held-out training spectra (never the test split).
    val_fraction: share of the train split held out for the threshold, drawn by the split's hash rule (salt
        `SplitConfig.salt + ":domain"`), so it never moves.
    partial_fraction, partial_span: this share of the training spectra (drawn at random) is used with one end of the
        grid cut (a fraction drawn uniformly from `partial_span`, filled as the preprocessing fills it), so that
        partial coverage alone is not out of domain; the others as observed. One forward pass per spectrum.
    class_prob_quantile: a class-head probability below this quantile of the held-out training spectra's (stored
        as `class_prob_min`) flags the row `class`; 0 (default): `class_prob` is written but flags nothing (the
        model was trained on those spectra, so their probabilities are optimistic: a 1% quantile flagged 3.3% of
        the DR10 test split).
    seed: the random cuts.
    """

    features: Literal["patches", "hidden"] = "patches"
    components: int = 32
    neighbours: int = 10
    quantile: float = 0.98
    val_fraction: float = 0.2
    partial_fraction: float = 0.5
    partial_span: tuple[float, float] = (0.05, 0.3)
    class_prob_quantile: float = 0.0
    seed: int = 0


# ---------------------------------------------------------------- external spectra and comparison (issue 7)


@dataclass(frozen=True)
class ArrayConfig:
    """Spectra given as arrays with their own wavelength grid (MILES npz, wave/flux tables).

    match_resolution: a source that states its resolution (npz `fwhm_angstrom`, FITS `FWHM`, Parquet metadata) is
        broadened with a Gaussian of varying width to this resolving power where it is sharper (LAMOST LRS:
        R~1800; MILES, FWHM 2.5 A, is sharper red-ward of ~4500 A). None keeps the flux as given.
    kernel_sigmas: the broadening kernel is cut at this many sigma.
    """

    match_resolution: float | None = 1800.0
    kernel_sigmas: float = 4.0


SURVEYS: tuple[str, ...] = ("generic", "galah", "gaia-eso", "apogee", "miles", "lamost")
MatchMethod = Literal["auto", "id", "sky"]


@dataclass(frozen=True)
class ExternalConfig:
    """`compare-external`: predictions against an independent catalogue (paper Tables 7-8, Figures 1-8).

    match: 'id' joins on spec_id / obsid / file name (MILES: miles_id); 'sky' on position within radius_arcsec;
        'auto' tries ids first, then the sky for rows without an id match.
    partial_coverage: a row is 'partial' when its `partial` column says so or, if the predictions lack that
        column, when its coverage is below this fraction of the grid (infer's own threshold).
    min_n: per-class statistics with fewer rows than this are shown as n/a.
    """

    survey: str = "generic"
    match: MatchMethod = "auto"
    radius_arcsec: float = 3.0
    partial_coverage: float = InferConfig.partial_coverage
    min_n: int = 2
    hexbin_gridsize: int = 40
    hexbin_min_rows: int = 50  # fewer matched rows than this: a scatter plot instead of a hexbin


@dataclass(frozen=True)
class SerializeConfig:
    """Question/answer text (`specllm serialize`). The paper's digit counts for stage 1 are in STAGE1_LABELS.

    label_prefix: stage-2 label columns are `<prefix><x>_fe` in the crossmatched shards (e.g. apogee_c_fe).
    flux_decimals: the flux is written to this many decimals (paper: 3, as ingest rounds it); `compact` writes it as
        integers in units of 10**-flux_decimals (thousandths), which keeps every value exact.
    stage2_decimals: digits after the point of the paper's [X/Fe] answers (paper: 3, e.g. ' 0 . 1 5 1 ').
    compact_decimals: digits after the point of log g, [Fe/H] and [X/Fe] in the short answer of compact and patch
        (Teff is written as an integer there: compact_teff_decimals).
    shard_size: question/answer rows per output Parquet shard; batch_size: input rows read at a time.
    """

    label_prefix: str = "apogee_"
    flux_decimals: int = CleanConfig.decimals
    stage2_decimals: int = 3
    compact_decimals: int = 2
    compact_teff_decimals: int = 0
    shard_size: int = 512
    batch_size: int = 64


@dataclass(frozen=True)
class CrossmatchConfig:
    """Sky matching of spectra to survey label catalogues (`specllm crossmatch`).

    radius_arcsec: a spectrum takes the labels of the nearest catalogue star within this separation.
    quality_cuts: apply each survey's flags and cuts (paper; described in `specllm.io.surveys`).
    one_per_star: keep only the nearest spectrum of each catalogue star (ties: the earlier spectrum); by default
        every spectrum of a matched star (LAMOST repeat observations) takes its labels, as the paper does.
    matched_only: write only spectra matched in at least one catalogue.
    match_chunk: positions matched per call (bounds the memory of the matching step).
    """

    radius_arcsec: float = 3.0
    quality_cuts: bool = True
    one_per_star: bool = False
    matched_only: bool = False
    match_chunk: int = 1_000_000


# ---------------------------------------------------------------- benchmark and baselines (issue 6)

BASELINE_MODELS: tuple[str, ...] = ("lightgbm", "resnet50", "smallcnn", "gru")
BENCHMARK_MODELS: tuple[str, ...] = ("llm", *BASELINE_MODELS)


@dataclass(frozen=True)
class LightGBMConfig:
    """LightGBM baseline: one multiclass classifier for the class and one regressor per label on the raw flux.

    Boosting stops early on the validation part of the training split (`NetTrainConfig.val_fraction`).
    """

    n_estimators: int = 1000
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 10
    feature_fraction: float = 0.2
    bagging_fraction: float = 0.8
    early_stopping_rounds: int = 50


@dataclass(frozen=True)
class NetTrainConfig:
    """Training of the PyTorch baselines (paper section IV.1): cross-entropy + `mse_weight` x MSE on min-max
    normalised labels (missing labels masked), Adam lr 1e-3 reduced on plateau, early stopping on a validation part
    of the training split, best checkpoint kept."""

    lr: float = 1e-3
    mse_weight: float = 50.0
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 10  # early stopping: epochs without a better validation loss
    plateau_patience: int = 3  # ReduceLROnPlateau
    plateau_factor: float = 0.5
    val_fraction: float = 0.1
    min_val: int = 8  # never fewer validation spectra than this (if the training set allows)


@dataclass(frozen=True)
class ResNetConfig:
    """1-D ResNet-50: bottleneck blocks [3, 4, 6, 3], stage widths width x (1, 2, 4, 8), expansion 4."""

    blocks: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64  # paper-size ResNet-50; --quick uses `BenchmarkConfig.quick_resnet_width`
    stem_kernel: int = 7
    stem_stride: int = 2  # then a stride-2 max-pool, as in ResNet-50; --quick uses `quick_resnet_stem_stride`
    kernel: int = 3


@dataclass(frozen=True)
class SmallCNNConfig:
    """Small CNN: three conv (kernel 7) + batch-norm + ReLU + max-pool (4) layers, then a dense layer."""

    channels: tuple[int, ...] = (16, 32, 64)
    kernel: int = 7
    pool: int = 4
    pooled_length: int = 16  # adaptive average pool before the dense layer
    hidden: int = 256


@dataclass(frozen=True)
class GRUConfig:
    """Three-layer GRU over the spectrum cut into patches of `patch` pixels (4901 px -> 77 steps of 64)."""

    layers: int = 3
    hidden: int = 128
    patch: int = 64
    dropout: float = 0.1


@dataclass(frozen=True)
class BenchmarkConfig:
    """`specllm benchmark`: which models, on which labels, how large the training subsets, and the quick settings.

    --quick (a full run on a 2-core CPU in about 30 minutes) sets: nets at most `quick_max_epochs` epochs with
    early-stopping patience `quick_patience`; ResNet-50 width `quick_resnet_width` (instead of 64) and stem stride
    `quick_resnet_stem_stride` (instead of 2); LightGBM at most `quick_lgbm_estimators` trees at learning rate
    `quick_lgbm_learning_rate`. Block counts, heads, loss and optimiser are unchanged.
    """

    models: tuple[str, ...] = BENCHMARK_MODELS
    labels: tuple[str, ...] = tuple(name for name, _ in STAGE1_LABELS)
    sizes: tuple[int, ...] = ()
    split: str = "test"
    seed: int = 0
    threads: int = 1  # OpenMP threads spin-wait on a busy machine: LightGBM with 2 on 2 shared cores took 20x the CPU
    quick: bool = False
    max_epochs: int | None = None  # overrides the nets' max_epochs (quick or not) where given
    save_models: bool = True
    predict_batch: int = 256
    lightgbm: LightGBMConfig = field(default_factory=LightGBMConfig)
    train: NetTrainConfig = field(default_factory=NetTrainConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    smallcnn: SmallCNNConfig = field(default_factory=SmallCNNConfig)
    gru: GRUConfig = field(default_factory=GRUConfig)
    quick_max_epochs: int = 30
    quick_patience: int = 6
    quick_resnet_width: int = 8
    quick_resnet_stem_stride: int = 4
    quick_lgbm_estimators: int = 300
    quick_lgbm_learning_rate: float = 0.1
