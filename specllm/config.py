"""Every default of specllm, named once.

The values are those of *Spectra as Language* (Lu, Li et al. 2026) unless a docstring says otherwise. A field's
docstring (the string literal under it) is also its `--help` text, its type the option's type (a `Literal` lists the
choices): `specllm.cliopts` derives the command-line options from these dataclasses, so a default, a help text and a
set of choices are each written in exactly one place. Named presets (`PRESETS`) are dataclass replacements.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import numpy as np

# Label names live in labels.py; re-exported here for modules that still import them from config.
from .labels import CLASSES, STAGE1_LABELS, STAGE1_NAMES, STAGE2_ELEMENTS  # noqa: F401

RECIPES = Path(__file__).resolve().parent / "recipes"  # the shipped recipe files: `--recipe NAME`


def recipe_file(value: str, folder: Path = RECIPES) -> Path:
    """A recipe-like JSON file named by `value`: a path (it holds a separator or ends in .json), else NAME.json in
    `folder` (the shipped recipes; their calibrations in `folder / "calibration"`)."""
    return Path(value) if os.sep in value or value.endswith(".json") else folder / f"{value}.json"


NormMethod = Literal["max", "quantile", "median"]
SerializeFormat = Literal["paper", "compact", "patch"]
DecodeMethod = Literal["head", "text"]
SaveDtype = Literal["float32", "bfloat16", "float16"]
PatchStem = Literal["mlp", "conv"]
Stage = Literal[1, 2]
# Base-model weights while training (QLoRA): 'nf4' 4-bit NormalFloat through bitsandbytes (CUDA or its CPU backend),
# 'none' as stored; 'auto' is nf4 on CUDA where bitsandbytes is installed and none elsewhere.
QuantizeMethod = Literal["auto", "nf4", "none"]
QUANTIZE_METHODS: tuple[str, ...] = get_args(QuantizeMethod)
# A QuantizeMethod resolved on this machine ('auto' decided, `runs.resolve_quantize`): the form it keeps from there on,
# in the model's spec.json (`ModelSpec.quantize`) and in the loader (`models.load_causal_lm`).
Quantized = Literal["nf4", "none"]


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
    """Spectrum cleaning (paper section III.1) plus the guards a survey pipeline needs."""

    snr_min_r: float = 2.0
    """Keep spectra with SNR_r >= this (paper: 2); infer flags those below it `low SNR`."""
    snr_min_i: float = 2.0
    """Keep spectra with SNR_i >= this (paper: 2); infer flags those below it `low SNR`."""
    mask_ormask: bool = True
    """Exclude pixels whose ormask is non-zero (paper)."""
    require_ivar: bool = True
    """Exclude pixels whose inverse variance is <= 0 (not in the paper; LAMOST marks dead pixels so)."""
    norm: NormMethod = "max"
    """Divide the good flux by its maximum (paper), its --norm-quantile quantile or its median (robust where one
    hot pixel would set the maximum)."""
    norm_quantile: float = 0.99
    """Quantile used by --norm quantile."""
    decimals: int = 3
    """Round the normalised flux to this many decimals (paper: 3)."""
    min_coverage: float = 0.5
    """Reject spectra observing less than this fraction of the grid."""
    min_run: int = 4
    """Observed runs shorter than this many pixels are not trusted as flux (a cubic needs 4 points)."""


@dataclass(frozen=True)
class SplitConfig:
    """Deterministic train/test split from a hash of the spectrum id (paper: 8:2)."""

    test_fraction: float = 0.2
    """Fraction of spectra in the test split (paper: 0.2)."""
    salt: str = "specllm-split-v1"
    """Mixed into the hash of the spectrum id that decides the split."""
    val_fraction: float = 0.2
    """Fraction of the train split held out as the validation split (its own hash of the id): `train` evaluates and
    calibrates on it, `fitdomain` sets its thresholds on it; the test split is only read for the model card."""


EngineName = Literal["local", "ray"]


@dataclass(frozen=True)
class EngineConfig:
    """Where `ingest` and `infer` run: this machine's processes, or a Ray cluster (`pip install 'specllm[ray]'`)."""

    engine: EngineName = "local"
    """local: this machine (a process pool); ray: Ray Data tasks read and clean, model actors label (the same
    results, in the same order)."""
    ray_address: str | None = None
    """Ray cluster to join ('auto': the one this node belongs to; ray://host:10001); default: start a local Ray."""
    ray_cpus: int | None = None
    """CPUs of the local Ray started without --ray-address (default: all of this machine's)."""
    actors: int | None = None
    """Model actors of --engine ray (default: one per GPU of the cluster, else 1 on CPU)."""


@dataclass(frozen=True)
class ReadConfig:
    """Per-input resource caps of every spectrum reader (`ingest`, `infer`): a file beyond them is refused with one
    line naming it and the reason, and the run goes on with the other inputs."""

    max_input_mb: float = 256.0
    """Largest input accepted, in MB: a file's size after decompression (a .gz is inflated up to this and no
    further) and the data sizes its headers declare (NAXIS1 x NAXIS2 x bytes, an npz member's shape, a Parquet row
    group), checked before that data is read. A LAMOST spectrum is < 1 MB; the MILES npz 18 MB."""

    @property
    def max_bytes(self) -> int:
        return int(self.max_input_mb * 1024 * 1024)


@dataclass(frozen=True)
class IngestConfig:
    """`specllm ingest`: grid, cleaning, split and sharding."""

    grid: GridConfig = field(default_factory=GridConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    shard_size: int = 512
    """Spectra per Parquet shard."""
    workers: int = 1
    """Worker processes."""
    balance: int | None = None
    """Draw at most N spectra per class A/F/G/K/M."""
    strict: bool = False
    """Exit non-zero if any spectrum was rejected."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    read: ReadConfig = field(default_factory=ReadConfig)


# ---------------------------------------------------------------- serialisation, model and training

FORMATS: tuple[str, ...] = get_args(SerializeFormat)


@dataclass(frozen=True)
class PatchConfig:
    """Spectral tokens (`--format patch`): the flux vector cut into fixed-width patches, one embedding each."""

    width: int = 64
    """Pixels per patch (4901 pixels -> 77 patches of 64, or 39 of 128: the spectral tokens per spectrum)."""
    stem: PatchStem = "mlp"
    """How a spectral token is made: 'mlp', a 2-layer MLP on its patch, normalised on its own (mean, std); 'conv',
    that plus a convolutional trunk over the whole spectrum (the benchmark's small CNN: three conv k7 + max-pool
    layers, 16/32/64 channels) pooled to one vector per patch, so line depths in flux units and features across
    patch edges reach every token. 'conv' needs a width that is a multiple of 16."""

    def count(self, grid_size: int) -> int:
        return -(-grid_size // self.width)


@dataclass(frozen=True)
class LoraConfig:
    """LoRA / QLoRA adapter (paper: rank 64, alpha 128, dropout 0.1, all linear layers; 4-bit NF4 base).

    quantize: the base model's weights, see QuantizeMethod ('auto': nf4 on CUDA with bitsandbytes, else none); the
        method used is recorded in the model's spec.json (`quantize`) and infer loads the base the same way.
    """

    r: int = 64
    """LoRA rank (paper: 64)."""
    alpha: int = 128
    """LoRA alpha (paper: 128)."""
    dropout: float = 0.1
    """LoRA dropout (paper: 0.1)."""
    target_modules: str = "all-linear"
    """The layers that get adapters (peft's name)."""
    quantize: QuantizeMethod = "auto"
    """Base weights: nf4 (4-bit QLoRA through bitsandbytes, CUDA or CPU), none, or auto (nf4 on CUDA, else none)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (paper: AdamW lr 1e-4, weight decay 0.1, cosine schedule, bf16, gradient checkpointing)."""

    lr: float = 1e-4
    """AdamW learning rate (paper: 1e-4)."""
    weight_decay: float = 0.1
    """AdamW weight decay (paper: 0.1)."""
    schedule: str = "cosine"
    """Learning-rate schedule after the warm-up."""
    warmup_fraction: float = 0.03
    """Warm-up fraction of the cosine schedule."""
    epochs: float = 3.0
    """Passes over the train split."""
    batch_size: int = 4
    """Micro-batch size per device (the global batch is batch_size x grad_accum x ranks, as in DeepSpeed)."""
    grad_accum: int = 4
    """Micro-batches per optimizer step."""
    bf16: bool = True
    """bf16 autocast where the hardware supports it."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this norm."""
    save_every: int = 200
    """Optimizer steps between checkpoints."""
    average_from: float = 1.0
    """Stochastic weight averaging (Izmailov et al. 2018): from this fraction of the optimizer steps on, a snapshot
    of the trainable weights every `save_every` steps and the last step's are averaged, and the model written is the
    average (the last step's weights beside it, in OUT/last). 1: off, the model is the last step's weights."""
    seed: int = 0
    """Random seed."""


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation of patch-mode spectra (not in the paper; all off by default)."""

    noise: float = 0.0
    """Augmentation: Gaussian flux noise, its sigma drawn per spectrum from |N(0, noise)|."""
    scale: float = 0.0
    """Augmentation: flux multiplied by U(1 - scale, 1 + scale)."""
    span_probability: float = 0.0
    """Augmentation: chance that a random wavelength span is masked and filled as the preprocessing fills gaps,
    so the model learns to read spectra with partial coverage."""
    span_min: float = 0.05
    """Shortest masked span, as a fraction of the grid (half of the spans are at an edge)."""
    span_max: float = 0.3
    """Longest masked span, as a fraction of the grid."""


@dataclass
class TrainOptions:
    """`specllm train`: one run, its data and model, and the recipe (optimisation, adapter, augmentation)."""

    data: str
    """QA shards written by `specllm serialize`."""
    out: str
    """Run directory (checkpoints, final model in OUT/model)."""
    stage: Stage = 1
    """1: class + Teff, log g, [Fe/H]; 2: [X/Fe] abundances (a stage-2 model continues from a stage-1 run)."""
    base_model: str | None = None
    """'embedded' (SmolLM2-135M-Instruct, the default), a .gguf file or a local HF model directory; for serialize also
    'llama3' (the paper's Llama-3 tokenizer and 128k context, no weights)."""
    init: str | None = None
    """Start from this run's adapter and projector (required for stage 2)."""
    layers: int | None = None
    """Keep only the first N decoder layers of the base model."""
    resume: bool = False
    """Continue from the last checkpoint in --out."""
    keep_checkpoints: int = 2
    """Checkpoints kept in OUT/checkpoints, the newest N (older ones are deleted as new ones are written)."""
    deepspeed: str | None = None
    """DeepSpeed config JSON (e.g. specllm/recipes/zero3.json); use under the deepspeed launcher."""
    max_steps: int | None = None
    """Stop after this many optimizer steps."""
    max_train: int | None = None
    """Use only N training examples, drawn at random by the recipe's seed (the real/synthetic mix kept): a point
    of a learning curve."""
    text_weight: float = 1.0
    """Weight of the answer-token cross-entropy."""
    value_weight: float = 1.0
    """Weight of the numeric read-out's Gaussian NLL."""
    class_weight: float = 0.2
    """Weight of the class read-out's cross-entropy."""
    head_lr_mult: float = 1.0
    """Learning-rate multiplier for the patch projector and read-out heads."""
    nll_beta: float = 0.0
    """beta of the read-out's beta-NLL (Seitzer et al. 2022): each example's Gaussian NLL is weighted by its predicted
    variance^beta (gradient stopped), so that hard, high-variance examples (hot stars) still pull the mean; 0: the
    plain Gaussian NLL, 1: the mean learns as under MSE."""
    density_weight: float = 0.0
    """Weight each example's read-out loss by (density of its Teff label)^-density_weight (normalised to mean 1,
    clipped at 5): rare hot and cool stars count more. 0: off."""
    log_teff: bool = False
    """Regress log10(Teff) rather than Teff: the read-out's Gaussian then has a width relative to Teff, so that a hot
    star's large error in K weighs as a cool star's small one. Predictions and their 1-sigma come back in K (the
    sigma by the delta method); recorded in spec.json as `log_values`."""
    synthetic_weight: float = 1.0
    """Loss weight of synthetic examples (QA rows of split "synthetic", e.g. `benchmarks/synthetic_shards.py`'s),
    relative to a real spectrum's; they are trained on and never part of the validation or test figures."""
    validation: bool = True
    """Hold out the validation split (`SplitConfig.val_fraction` of the train split, by a hash of the id): the
    run's figures and the uncertainty calibration come from it."""
    calibrate: bool = True
    """Scale the predicted uncertainties per label and predicted class so that 68.3% of validation spectra lie within
    1 sigma (stored in spec.json as `error_scale`)."""
    calibration_from: str | None = None
    """For a run without a validation split (train + validation, as the shipped model): take `error_scale` from
    here, factors fitted on the validation split by held-out runs of the same recipe: a NAME in specllm/recipes/
    (`benchmarks/transfer_calibration.py` writes one), a JSON file holding `error_scale`, or a model directory.
    Ignored where the run holds out its own validation split."""
    report_test: bool = False
    """Also evaluate the test split at the end (the model card's figures). Leave off while choosing a recipe: every
    choice is made on the validation split, and the test split is read once, for the card."""
    save_dtype: SaveDtype = "float32"
    """Precision of the saved weights."""
    verify: bool = True
    """Check the input shards against their manifest.json (present, complete, unchanged) before reading them."""
    dist_timeout: float = 60.0
    """Minutes a rank of a multi-process run (torchrun, deepspeed) waits at a collective (barrier, all-reduce, the
    engine's) before the run is aborted: the process group's timeout (NCCL's default is 10)."""
    recipe: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)


@dataclass(frozen=True)
class InferConfig:
    """`specllm infer`."""

    batch_size: int = 16
    """Spectra per forward pass."""
    chunk_batches: int = 4
    """Batches labelled as one chunk (`chunk_size` = chunk_batches x batch_size spectra): what the local engine reads
    ahead before the model runs and flushes to the output together, what `--engine ray` hands a model actor at a
    time, and `fit-domain`'s step through the train split."""
    decode: DecodeMethod = "head"
    """'head': the numeric read-out, written as the answer text; 'text': constrained greedy decoding."""
    max_new_tokens: int = 64
    """Longest generated answer of --decode text."""
    partial_coverage: float = 0.95
    """(compare-external, without a `partial` column) rows below this coverage are partial."""
    partial_edge: float = 0.02
    """A spectrum missing more than this fraction of the grid at one end is `partial`."""
    verify: bool = True
    """Check the input shards against their manifest.json (present, complete, unchanged) before reading them."""
    quiet: bool = False
    """No progress bar and no summary on stderr (a bad input is still one line)."""
    clean: CleanConfig = field(default_factory=CleanConfig)
    """Ingest's cleaning, its SNR cut included: a spectrum below the cut is labelled and flagged `low SNR`."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    read: ReadConfig = field(default_factory=ReadConfig)

    @property
    def chunk_size(self) -> int:
        """Spectra per chunk: `chunk_batches` batches of `batch_size`."""
        return self.batch_size * self.chunk_batches


@dataclass(frozen=True)
class DomainConfig:
    """The model's own domain check (`flag` bits `domain` and `uncertain`), fitted by `specllm fit-domain` into the
    model directory (`domain.safetensors` + `domain.json`) from the train split of the shards the model was trained
    on: the validation part (`SplitConfig.val_fraction`, the same hash rule as `train`) sets every threshold."""

    features: Literal["flux", "patches", "hidden"] = "flux"
    """'flux': the cleaned spectrum on the grid (line depths, molecular bands and emission as observed; no model
    needed); 'patches': the patch embeddings, the model's own view (its patch projector's output, all patches
    concatenated); 'hidden': the read-out hidden state the numeric heads read (it maps K and M stars close to cool
    G stars: 3 of 129 non-A/F/G spectra flagged, see docs/BENCHMARKS.md)."""
    components: int = 32
    """Leading principal components of the features kept, each scaled to unit variance."""
    neighbours: int = 10
    """A spectrum's score is its mean distance, in that space, to this many nearest training spectra."""
    quantile: float = 0.985
    """The nearest-neighbour threshold is this quantile of held-out training spectra's distances (never the test
    split)."""
    residual_quantile: float = 0.985
    """The threshold on the residual off the leading components (features the training spectra do not have) is
    this quantile of held-out training spectra's residuals."""
    uncertain_quantile: float = 0.985
    """The `uncertain` bit's limit per label is this quantile of the predicted 1-sigma (calibrated) over held-out
    training spectra as observed (`error_max` in domain.json); 1 turns the bit off."""
    partial_fraction: float = 0.5
    """This share of the training spectra (at random) is used with one end of the grid cut, so that partial
    coverage alone is not out of domain; the others as observed."""
    partial_span: tuple[float, float] = (0.05, 0.3)
    """The cut end's fraction of the grid, drawn uniformly from this range and filled as the preprocessing fills it."""
    class_prob_quantile: float = 0.0
    """A class-head probability below this quantile of the held-out training spectra's (stored as
    `class_prob_min`) flags the row `class`; 0: `class_prob` is written but flags nothing (the model was trained
    on those spectra, so their probabilities are optimistic: a 1% quantile flagged 3.3% of the DR10 test split)."""
    seed: int = 0
    """Seed of the random cuts."""
    negatives: str | None = None
    """Ingest shards whose rows of split 'synthetic' are spectra outside the training labels' range (e.g.
    `benchmarks/synthetic_shards.py` with thedoppler's Cannon models below 4,000 K or at log g < 0.8; never an
    acceptance set): a logistic classifier, the training spectra against these, on the leading components (and
    their squares) and the residual, becomes a third score; its threshold is the `quantile` of the validation
    spectra's probabilities. None: the two distances alone."""
    classifier_l2: float = 1.0
    """L2 penalty of that classifier's weights (its inputs are whitened components: unit variance)."""
    indices: bool = True
    """(`flux` features) Also read 20 spectral band indices (Lick, TiO/CaH, H alpha, the Ca II triplet:
    `physics.BAND_INDICES`), each against its own local continuum: a spectrum whose farthest index lies outside the
    fit spectra's range by more than the `quantile` of the validation spectra's excess is out of domain (molecular
    bands of K/M stars, gravity-sensitive lines). Indices over unobserved pixels are not read."""
    joint: bool = True
    """The parts (neighbours, residual, indices, classifier) share one budget: the largest part over its own
    threshold is divided by its `quantile` over the validation spectra, so that 1 - `quantile` of them is out of
    domain in all, rather than up to that share per part."""


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


# The names `compare-external --survey` accepts (light to import for the CLI): the names of the one catalogue registry
# `specllm.io.surveys.CATALOGUES`, in its order (a test keeps the two equal).
SurveyName = Literal["generic", "galah", "gaia-eso", "apogee", "miles", "lamost"]
MatchMethod = Literal["auto", "id", "sky"]


@dataclass(frozen=True)
class ExternalConfig:
    """`compare-external`: predictions against an independent catalogue (paper Tables 7-8, Figures 1-8)."""

    survey: SurveyName = "generic"
    """The catalogue's column table and quality cuts."""
    match: MatchMethod = "auto"
    """Join on spec_id / obsid / file name ('id'; MILES: miles_id), on sky position within --radius ('sky'), or
    on ids first and then the sky for rows without an id match ('auto')."""
    radius_arcsec: float = 3.0
    """Sky-match radius in arcsec."""
    partial_coverage: float = InferConfig.partial_coverage
    """A row is partial when its `partial` column says so or, without that column, when its coverage is below this
    fraction of the grid (infer's own threshold)."""
    min_n: int = 2
    """Statistics of fewer rows than this are shown as n/a."""
    hexbin_gridsize: int = 40
    """Hexagons across a 1:1 plot."""
    hexbin_min_rows: int = 50
    """Fewer matched rows than this: a scatter plot instead of a hexbin."""


@dataclass(frozen=True)
class PlotConfig:
    """`specllm plot`: the Kiel diagram of predictions (and, with a reference catalogue, prediction vs reference)."""

    color: Literal["teff", "feh"] = "feh"
    """Colour the usable rows by this label: 'feh' ([Fe/H]) or 'teff' (Teff)."""
    width: float = 5.6
    """Width of one panel, in inches."""
    dpi: int = 110
    """Dots per inch of a PNG."""


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
    """Stage 2: label columns are PREFIX<x>_fe."""
    flux_decimals: int = CleanConfig.decimals
    stage2_decimals: int = 3
    compact_decimals: int = 2
    compact_teff_decimals: int = 0
    shard_size: int = 512
    batch_size: int = 64
    verify: bool = True
    """Check the input shards against their manifest.json (present, complete, unchanged) before reading them."""


@dataclass(frozen=True)
class CrossmatchConfig:
    """Sky matching of spectra to survey label catalogues (`specllm crossmatch`)."""

    radius_arcsec: float = 3.0
    """Match radius in arcsec: a spectrum takes the labels of the nearest catalogue star within it."""
    quality_cuts: bool = True
    """Apply the surveys' flags and cuts (paper; described in `specllm.io.surveys`)."""
    one_per_star: bool = False
    """Only the nearest spectrum of each star takes its labels (ties: the earlier spectrum); by default every
    spectrum of a matched star (LAMOST repeat observations) does, as in the paper."""
    matched_only: bool = False
    """Write only spectra matched in some catalogue."""
    match_chunk: int = 1_000_000
    """Positions matched per call (bounds the memory of the matching step)."""
    verify: bool = True
    """Check the input shards against their manifest.json (present, complete, unchanged) before reading them."""


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
    width: int = 64  # paper-size ResNet-50 (the quick preset narrows it)
    stem_kernel: int = 7
    stem_stride: int = 2  # then a stride-2 max-pool, as in ResNet-50
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
    """`specllm benchmark`: which models, on which labels, how large the training subsets (`--quick`: the preset
    `PRESETS["quick"]`, applied by `resolved()`)."""

    models: tuple[str, ...] = BENCHMARK_MODELS
    """Comma-separated, from: llm, lightgbm, resnet50, smallcnn, gru."""
    labels: tuple[str, ...] = STAGE1_NAMES
    """Comma-separated label columns; 'auto' adds every apogee_<x>_fe column."""
    sizes: tuple[int, ...] = ()
    """Nested training-set sizes for the scaling check, e.g. 200,400,800,1600."""
    split: str = "test"
    """Split every model is evaluated on."""
    seed: int = 0
    """Seed of subsets, validation parts and weights."""
    threads: int = 1
    """CPU threads for torch and LightGBM (OpenMP threads spin-wait on a busy machine: LightGBM with 2 on 2 shared
    cores took 20x the CPU)."""
    quick: bool = False
    """Fewer epochs, narrower ResNet-50, fewer trees: a full run in ~30 min on 2 CPU cores (the preset 'quick')."""
    max_epochs: int | None = None
    """Override the networks' maximum number of epochs (with --quick or without)."""
    save_models: bool = True
    """Save the trained baselines (safetensors / LightGBM text) under OUT/models."""
    predict_batch: int = 256
    """Spectra per forward pass of the networks."""
    verify: bool = True
    """Check the input shards against their manifest.json (present, complete, unchanged) before reading them."""
    lightgbm: LightGBMConfig = field(default_factory=LightGBMConfig)
    train: NetTrainConfig = field(default_factory=NetTrainConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    smallcnn: SmallCNNConfig = field(default_factory=SmallCNNConfig)
    gru: GRUConfig = field(default_factory=GRUConfig)

    def resolved(self) -> BenchmarkConfig:
        """The configuration actually run: the quick preset (where `quick`), then a `max_epochs` override."""
        cfg = apply_preset(self, PRESETS["quick"]) if self.quick else self
        if cfg.max_epochs is not None:
            cfg = apply_preset(cfg, {"train": {"max_epochs": cfg.max_epochs}})
        return cfg


# ---------------------------------------------------------------- presets

# Named sets of dataclass replacements (nested dicts follow nested configs), applied by `apply_preset`.
PRESETS: dict[str, dict[str, Any]] = {
    # benchmark --quick: a full run on a 2-core CPU in about 30 minutes. Block counts, heads, loss and optimiser are
    # unchanged; ResNet-50 is 8 wide (not 64) with a stride-4 stem (not 2).
    "quick": {
        "train": {"max_epochs": 30, "patience": 6},
        "resnet": {"width": 8, "stem_stride": 4},
        "lightgbm": {"n_estimators": 300, "learning_rate": 0.1},
    },
}

C = TypeVar("C")


def apply_preset(config: C, changes: Mapping[str, Any]) -> C:
    """`config` with `changes` applied: a value replaces a field, a mapping recurses into a nested dataclass."""
    updates = {}
    for name, value in changes.items():
        if not any(f.name == name for f in dataclasses.fields(config)):
            raise KeyError(f"{type(config).__name__} has no field {name!r}")
        current = getattr(config, name)
        nested = isinstance(value, Mapping) and dataclasses.is_dataclass(current)
        updates[name] = apply_preset(current, value) if nested else value
    return dataclasses.replace(config, **updates)


# ---------------------------------------------------------------- ranges of the numeric options

# The declared range (lowest, highest; None: open) of every numeric field that is an option (or an argument of the
# Python API). `specllm.cliopts` turns them into the options' limits (a value outside is a usage error, exit 2, and
# `--help` shows the range); `check_ranges` applies the same to a config built in Python (one SpecllmError line).
RANGES: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "CleanConfig": {
        "snr_min_r": (0, None),
        "snr_min_i": (0, None),
        "norm_quantile": (0, 1),
        "decimals": (0, 10),
        "min_coverage": (0, 1),
        "min_run": (1, None),
    },
    "SplitConfig": {"test_fraction": (0, 1), "val_fraction": (0, 1)},
    "EngineConfig": {"ray_cpus": (1, None), "actors": (1, None)},
    "ReadConfig": {"max_input_mb": (1, None)},
    "IngestConfig": {"shard_size": (1, None), "workers": (1, None), "balance": (1, None)},
    "PatchConfig": {"width": (1, None)},
    "LoraConfig": {"r": (1, None), "alpha": (1, None), "dropout": (0, 1)},
    "TrainConfig": {
        "lr": (0, None),
        "weight_decay": (0, None),
        "warmup_fraction": (0, 1),
        "epochs": (0, None),
        "batch_size": (1, None),
        "grad_accum": (1, None),
        "max_grad_norm": (0, None),
        "save_every": (1, None),
        "average_from": (0, 1),
        "seed": (0, None),
    },
    "AugmentConfig": {
        "noise": (0, None),
        "scale": (0, 1),
        "span_probability": (0, 1),
        "span_min": (0, 1),
        "span_max": (0, 1),
    },
    "TrainOptions": {
        "layers": (1, None),
        "keep_checkpoints": (1, None),
        "max_steps": (1, None),
        "max_train": (1, None),
        "text_weight": (0, None),
        "value_weight": (0, None),
        "class_weight": (0, None),
        "head_lr_mult": (0, None),
        "nll_beta": (0, None),
        "density_weight": (0, None),
        "synthetic_weight": (0, None),
        "dist_timeout": (0, None),
    },
    "InferConfig": {
        "batch_size": (1, None),
        "chunk_batches": (1, None),
        "max_new_tokens": (1, None),
        "partial_coverage": (0, 1),
        "partial_edge": (0, 1),
    },
    "DomainConfig": {
        "components": (1, None),
        "neighbours": (1, None),
        "quantile": (0, 1),
        "residual_quantile": (0, 1),
        "uncertain_quantile": (0, 1),
        "partial_fraction": (0, 1),
        "class_prob_quantile": (0, 1),
        "seed": (0, None),
        "classifier_l2": (0, None),
    },
    "ExternalConfig": {"radius_arcsec": (0, None), "partial_coverage": (0, 1), "min_n": (1, None)},
    "SerializeConfig": {"shard_size": (1, None), "batch_size": (1, None)},
    "CrossmatchConfig": {"radius_arcsec": (0, None), "match_chunk": (1, None)},
    "BenchmarkConfig": {"sizes": (1, None), "seed": (0, None), "threads": (1, None), "max_epochs": (1, None)},
    "PlotConfig": {"width": (0, None), "dpi": (1, None)},
}


def field_range(cls: type, name: str) -> tuple[float | None, float | None]:
    """The declared (lowest, highest) of a field of `cls` ((None, None): none declared)."""
    return RANGES.get(cls.__name__, {}).get(name, (None, None))


def range_text(low, high) -> str:
    if low is not None and high is not None:
        return f"between {low:g} and {high:g}"
    return f">= {low:g}" if low is not None else f"<= {high:g}"


def check_ranges(config, where: str | None = None) -> None:
    """Every field of `config` (and of its nested configs) within its declared range, and of its type's kind (a
    number for a numeric field): for configs built in Python, where no command line checked them. A value outside
    is one SpecllmError line naming the field."""
    from .errors import SpecllmError

    where = where if where is not None else f"{type(config).__name__}."
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        path = f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            check_ranges(value, path + ".")
            continue
        low, high = field_range(type(config), f.name)
        if (low is None and high is None) or value is None:
            continue
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                raise SpecllmError(f"{path}: a number is expected (got {v!r})")
            if (low is not None and v < low) or (high is not None and v > high) or v != v:
                raise SpecllmError(f"{path} must be {range_text(low, high)} (got {v!r})")
