"""Model directories: building a spectral LM from a recipe, saving it (safetensors + JSON), loading it back.

A model directory holds:
- `spec.json`: what the model is (base model and its fingerprint, format, stage, labels and their standardisation,
  classes, LoRA recipe, patch width, layers kept) plus the run manifest (data hash, recipe, metrics);
- `weights.safetensors`: the trainable tensors only (LoRA adapter `lora.*`, patch projector `patcher.*`, read-out
  heads `value_head.*`, `class_head.*`), small enough to ship. The base model is loaded from `base_model`.
Directories are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import QUANTIZE_METHODS, LoraConfig, PatchStem, Quantized, QuantizeMethod
from .device import pick_device
from .errors import SpecllmError, one_line
from .files import atomic_write, replace_dir, temp_dir
from .labels import CLASSES
from .metrics import OVERALL
from .models import base_fingerprint, load_causal_lm, load_tokenizer, resolve_base
from .progress import say
from .spectral import PatchEmbedder, SpectralLM

SPEC = "spec.json"
WEIGHTS = "weights.safetensors"


@dataclass
class ModelSpec:
    stage: int
    format: str
    base_model: str
    base_fingerprint: str
    value_names: list[str]
    value_mean: list[float]
    value_std: list[float]
    classes: list[str]
    lora: dict = field(default_factory=lambda: asdict(LoraConfig()))
    patch_width: int | None = None
    patch_stem: PatchStem = "mlp"  # config.PatchConfig.stem; absent in an older spec.json (the MLP alone)
    grid_size: int | None = None
    layers: int | None = None  # decoder layers kept (None: all)
    quantize: Quantized = "none"  # base weights as trained (LoraConfig.quantize resolved); absent in an older spec.json
    # label -> {predicted class or "all": factor} applied to the read-out's sigma (fitted on the validation split)
    error_scale: dict | None = None
    log_values: list[str] = field(default_factory=list)  # labels the read-out regresses as log10 (--log-teff)
    manifest: dict = field(default_factory=dict)
    weights_sha256: str | None = None  # SHA-256 of weights.safetensors, recorded when written, checked on load
    # the token ids of the question a patch-format model is asked at inference, split around the spectral tokens,
    # and the padding id ({"question", "before", "after", "pad_id"}; `predict.prompt_record`): the read-out runs
    # without loading the tokenizer. Absent in an older spec.json (the tokenizer is loaded then).
    prompt: dict | None = None

    @classmethod
    def from_json(cls, path: Path) -> ModelSpec:
        """The spec of a model directory, each field checked for its type (and the labels' lists for one length):
        a spec.json with a missing field or a value of the wrong type is one SpecllmError line, never a traceback
        later."""
        data = read_json(path)
        if not isinstance(data, dict):
            raise SpecllmError(f"{one_line(path)}: not a specllm model spec (a JSON object is expected)")
        check_spec(data, path)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def _log_columns(self) -> list[int]:
        return log_columns(self.value_names, self.log_values)

    def standardise(self, values: np.ndarray) -> np.ndarray:
        """Labels (N, len(value_names)) in their units -> the read-out's targets: log10 where `log_values` says,
        then standardised by `value_mean` and `value_std` (which are of the log10 there)."""
        return (regressed(values, self._log_columns()) - np.asarray(self.value_mean)) / np.asarray(self.value_std)

    def unstandardise(self, mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The read-out's standardised means and 1-sigma -> labels and 1-sigma in their units (a log10 label: 10^x,
        its sigma ln(10) x value x sigma of the log)."""
        std = np.asarray(self.value_std)
        values = np.asarray(mu, np.float64) * std + np.asarray(self.value_mean)
        errors = np.asarray(sigma, np.float64) * std
        cols = self._log_columns()
        values[:, cols] = 10.0 ** values[:, cols]
        errors[:, cols] *= np.log(10.0) * values[:, cols]
        return values, errors


def log_columns(value_names: list[str], log_values: list[str]) -> list[int]:
    """The columns of `value_names` that the read-out regresses as log10."""
    return [value_names.index(n) for n in log_values if n in value_names]


def regressed(values: np.ndarray, log_cols: list[int]) -> np.ndarray:
    """Labels in their units -> what the read-out regresses before standardising: a float64 copy, log10 in
    `log_cols` (non-positive -> NaN / -inf)."""
    v = np.array(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        v[:, log_cols] = np.log10(v[:, log_cols])
    return v


def _fits(value, hint) -> bool:
    """Whether a JSON value fits a ModelSpec field's type (int is not bool; a float field takes an int)."""
    import types
    import typing

    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _type_name(hint) -> str:
    import typing

    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


LORA_TYPES = {"r": int, "alpha": float, "dropout": float, "target_modules": str | list[str]}


def check_spec(data: dict, path: str | os.PathLike) -> None:
    """The checks of `ModelSpec.from_json` (see there)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(ModelSpec)
    where = f"{one_line(path)}: not a valid specllm model spec"
    for f in dataclasses.fields(ModelSpec):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in data:
            if required:
                raise SpecllmError(f"{where} (no {f.name!r})")
            continue
        if not _fits(data[f.name], hints[f.name]):
            literal = typing.get_origin(hints[f.name]) is typing.Literal
            got = repr(data[f.name]) if literal else type(data[f.name]).__name__
            raise SpecllmError(f"{where} ({f.name!r} should be {_type_name(hints[f.name])}, got {got})")
    if data["stage"] not in (1, 2):
        raise SpecllmError(f"{where} ('stage' is {data['stage']}; 1 or 2)")
    n = len(data["value_names"])
    if len(data["value_mean"]) != n or len(data["value_std"]) != n:
        raise SpecllmError(f"{where} ('value_names', 'value_mean' and 'value_std' differ in length)")
    lora = data.get("lora", {})
    for key, hint in LORA_TYPES.items():
        if key not in lora or not _fits(lora[key], hint):
            raise SpecllmError(f"{where} ('lora' needs {key!r} as {_type_name(hint)})")
    for key in ("patch_width", "grid_size", "layers"):
        if data.get(key) is not None and data[key] <= 0:
            raise SpecllmError(f"{where} ({key!r} is {data[key]}; a positive integer or null)")
    prompt = data.get("prompt")
    if prompt is not None and not (
        isinstance(prompt.get("question"), str)
        and all(_fits(prompt.get(k), list[int]) for k in ("before", "after"))
        and _fits(prompt.get("pad_id"), int)
    ):
        raise SpecllmError(f"{where} ('prompt' needs 'question', 'before' and 'after' token ids and 'pad_id')")


def read_json(path: str | os.PathLike):
    """A JSON file of a model or checkpoint; a missing, truncated or garbled one is one SpecllmError line."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SpecllmError(f"{one_line(path)}: unreadable ({one_line(exc)})") from None


def read_safetensors(path: str | os.PathLike, blob: bytes | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (parsed from `blob`, its bytes, where the caller read them); a truncated or
    garbled one (or another format) is one SpecllmError line."""
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    try:
        return load(blob) if blob is not None else load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise SpecllmError(f"{one_line(path)}: not a readable safetensors file ({one_line(reason)})") from None


def bitsandbytes_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def resolve_quantize(method: QuantizeMethod) -> Quantized:
    """'nf4' or 'none' for a LoraConfig.quantize choice on this machine."""
    if method not in QUANTIZE_METHODS:
        raise SpecllmError(f"--quantize {method}: expected one of {', '.join(QUANTIZE_METHODS)}")
    if method == "auto":
        return "nf4" if pick_device().type == "cuda" and bitsandbytes_available() else "none"
    if method == "nf4" and not bitsandbytes_available():
        raise SpecllmError("--quantize nf4 needs bitsandbytes: pip install 'bitsandbytes>=0.50'")
    return method


def _check_cpu_4bit(lm, base: str) -> None:
    """bitsandbytes' CPU 4-bit kernels need every quantised layer's input width to be a multiple of the quantisation
    block (64); a narrower layer fails at the first evaluation with "shape '[N, 0]' is invalid"."""
    narrow = {m.in_features for m in lm.modules() if type(m).__name__ == "Linear4bit" and m.in_features % 64}
    if narrow:
        raise SpecllmError(
            f"--quantize nf4 on the CPU: {base} has layers {min(narrow)} wide, bitsandbytes' CPU kernels need multiples"
            " of 64 (use --quantize none, or a GPU)"
        )


def _base_lm(spec: ModelSpec, lean: bool = False):
    """The base causal LM of `spec` (quantised as `spec.quantize` says), cut to `spec.layers`, frozen. lean: on
    `specllm.decoder` (no transformers import) where it covers the base, for the read-out at inference."""
    path = resolve_base(spec.base_model, weights=True)  # also quiets transformers (and keeps it offline)
    if lean and spec.quantize != "nf4":
        from .decoder import load_decoder

        lm = load_decoder(path, spec.layers)  # None where specllm.decoder does not cover the base
        if lm is not None:
            return lm.requires_grad_(False)
    lm = load_causal_lm(path, quantize=spec.quantize)
    if spec.layers is not None:
        inner = lm.model
        if not 0 < spec.layers <= len(inner.layers):
            raise SpecllmError(f"--layers {spec.layers}: the base model has {len(inner.layers)} decoder layers")
        inner.layers = inner.layers[: spec.layers]
        lm.config.num_hidden_layers = spec.layers
        if getattr(lm.config, "layer_types", None):
            lm.config.layer_types = lm.config.layer_types[: spec.layers]
    for p in lm.parameters():
        p.requires_grad_(False)
    return lm


def _patcher(spec: ModelSpec, lm) -> PatchEmbedder | None:
    if not spec.patch_width:
        return None
    return PatchEmbedder(spec.grid_size, spec.patch_width, lm.config.hidden_size, stem=spec.patch_stem)


def build_model(spec: ModelSpec, gradient_checkpointing: bool = False):
    """(SpectralLM, tokenizer) with fresh LoRA and heads for `spec`, its base quantised as `spec.quantize` says."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    lm = _base_lm(spec)
    tokenizer = load_tokenizer(spec.base_model)
    if spec.quantize == "nf4" and pick_device().type != "cuda":
        _check_cpu_4bit(lm, spec.base_model)
    if spec.quantize == "nf4":
        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.enable_input_require_grads()
    lora = spec.lora
    peft_config = PeftLoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    lm = get_peft_model(lm, peft_config)
    patcher = _patcher(spec, lm)
    if patcher is not None:
        # Start the spectral tokens at the scale of the model's own token embeddings.
        embeddings = lm.get_input_embeddings().weight
        with _whole(embeddings):  # partitioned when the base was created under ZeRO-3
            scale = embeddings.detach().float().std().item()
        with torch.no_grad():
            patcher.net[-1].weight.mul_(scale / max(1e-6, patcher.net[-1].weight.std().item()) * 0.5)
    model = SpectralLM(lm, len(spec.value_names), len(spec.classes), patcher)
    return model, tokenizer


def _whole(param: torch.nn.Parameter):
    """A ZeRO-3-partitioned parameter gathered whole for reading (a no-op for an ordinary one)."""
    if not hasattr(param, "ds_id"):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([param])


def gathered(model: SpectralLM, modify: bool = False):
    """Under DeepSpeed ZeRO-3 the trainable tensors are sharded across ranks: gather them whole (for saving, or for
    loading with `modify=True`) -- saving without this writes empty LoRA tensors (peft issues 2884 and 453)."""
    params = [p for p in model.parameters() if p.requires_grad or hasattr(p, "ds_id")]
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    trainable = [p for p in model.parameters() if p.requires_grad]
    return deepspeed.zero.GatheredParameters(trainable, modifier_rank=0 if modify else None)


def trainable_state(model: SpectralLM) -> dict[str, torch.Tensor]:
    """Every trainable tensor under a stable name (LoRA weights named as PEFT names them)."""
    from peft import get_peft_model_state_dict

    with gathered(model):
        # From the trainable parameters, not `state_dict()`: bitsandbytes' 4-bit layers repack their weights when a
        # state dict is taken, which fails on ZeRO-3's partitioned weights (and costs time everywhere).
        lora = {n: p for n, p in model.lm.named_parameters() if p.requires_grad}
        state = {f"lora.{k}": v for k, v in get_peft_model_state_dict(model.lm, state_dict=lora).items()}
        for name in HEADS:
            module = getattr(model, name)
            if module is not None:
                state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
        return {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}


def load_trainable(model: SpectralLM, state: dict[str, torch.Tensor], heads: bool = True) -> None:
    from peft import set_peft_model_state_dict

    lora = {k[5:]: v for k, v in state.items() if k.startswith("lora.")}
    with gathered(model, modify=True):
        result = set_peft_model_state_dict(model.lm, lora)
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise SpecllmError(f"adapter does not fit the model: unexpected keys {unexpected[:3]}")
        _load_heads(model, state, HEADS if heads else ("patcher",))


HEADS = ("patcher", "value_head", "class_head")  # the trainable modules outside the causal LM


def _load_heads(model: SpectralLM, state: dict[str, torch.Tensor], names: tuple[str, ...] = HEADS) -> None:
    for name in names:
        module = getattr(model, name)
        part = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
        if module is not None and part:
            module.load_state_dict(part)


PARENT = "parent"  # a stage-2 model keeps a copy of the stage-1 model it continued from, so infer can run both


def save_model_dir(
    model: SpectralLM,
    spec: ModelSpec,
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    parent: Path | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the model directory; `state` is `trainable_state(model)` when the caller already gathered it (under
    ZeRO-3 every rank must take part in the gathering, and only rank 0 writes)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(temp_dir(path.parent, prefix=f".{path.name}."))
    try:
        state = trainable_state(model) if state is None else state
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        # One metadata key: safetensors writes the metadata map in a per-process random order, so two keys made the
        # same weights a different file (and SHA-256) from one run to the next.
        sha = atomic_write(tmp / WEIGHTS, lambda t: save_file(state, t, metadata={"format": "pt"}), digest=True)
        spec_data = asdict(spec) | {"weights_sha256": sha}  # checked by every load (`read_weights`)
        (tmp / SPEC).write_text(json.dumps(spec_data, indent=2, default=str) + "\n")
        if parent is not None:
            (tmp / PARENT).mkdir()
            for name in (SPEC, WEIGHTS):
                shutil.copyfile(parent / name, tmp / PARENT / name)  # created as the umask allows
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a model directory's weights.safetensors, verified as shards are: the file's SHA-256 equals the
    one its spec.json recorded when it was written (one SpecllmError line if not: changed or damaged since), and
    every floating tensor is finite (NaN or infinite weights would label every spectrum with nothing). A directory
    written by an older specllm records no hash: loaded with a warning."""
    import hashlib

    path = Path(path)
    weights = path / WEIGHTS
    data = read_json(path / SPEC) if (path / SPEC).exists() else {}
    expected = data.get("weights_sha256") if isinstance(data, dict) else None
    try:
        blob = weights.read_bytes()  # hashed and parsed from the same bytes
    except OSError as exc:
        raise SpecllmError(f"{one_line(weights)}: unreadable ({exc.strerror or exc})") from None
    if expected is None:
        say(f"warning: {one_line(path)}: {SPEC} records no SHA-256 of {WEIGHTS} (an older specllm?): not verified")
    elif hashlib.sha256(blob).hexdigest() != expected:
        raise SpecllmError(
            f"{one_line(weights)}: content differs from the SHA-256 in {SPEC} (changed or damaged since it was "
            "written); restore the model directory or train it again"
        )
    state = read_safetensors(weights, blob)
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SpecllmError(
                f"{one_line(weights)}: tensor {one_line(name)} holds NaN or infinite values; this model cannot label "
                "spectra (train it again)"
            )
    return state


def calibration_file(source: str) -> Path:
    """The file behind a calibration source: a NAME under specllm/recipes/calibration/, a JSON file, or a model or
    run directory (its spec.json)."""
    from .config import RECIPES, recipe_file

    path = Path(source) if Path(source).exists() else recipe_file(source, RECIPES / "calibration")
    return model_dir(path) / SPEC if path.is_dir() else path


def read_calibration(source: str) -> tuple[Path, dict]:
    """(the file behind `source` (`calibration_file`), its JSON object): a SpecllmError naming it if unreadable."""
    path = calibration_file(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecllmError(f"{path}: no calibration to read ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise SpecllmError(f"{path}: no calibration to read (not a JSON object)")
    return path, data


def read_error_scale(source: str, value_names: list[str]) -> dict:
    """`ModelSpec.error_scale` (factors on the read-out's sigma per label and predicted class) from `source`: a
    NAME under specllm/recipes/calibration/, a JSON file holding `error_scale`, or a model or run directory (its
    spec.json). Every label of `value_names` needs an overall (`all`) factor; factors are finite and positive."""
    path, data = read_calibration(source)
    scale = data.get("error_scale")
    ok = isinstance(scale, dict) and all(
        isinstance(scale.get(n), dict)
        and OVERALL in scale[n]
        and all(isinstance(v, (int, float)) and np.isfinite(v) and v > 0 for v in scale[n].values())
        for n in value_names
    )
    if not ok:
        raise SpecllmError(
            f"{path}: `error_scale` should map each of {', '.join(value_names)} to positive factors, "
            f"'{OVERALL}' among them"
        )
    return {n: {str(k): float(v) for k, v in scale[n].items()} for n in value_names}


def model_dir(path: str | os.PathLike) -> Path:
    """A model directory, given it or the training run directory that holds it (RUN/model)."""
    path = Path(path)
    return path / "model" if (path / "model" / SPEC).exists() else path


def merge_lora(lm, state: dict[str, torch.Tensor], lora: dict) -> int:
    """Add the LoRA deltas of `state` (PEFT's names, as `trainable_state` writes them under `lora.`) into the
    weights of the plain causal LM `lm`: W += alpha / r * B @ A. Returns the number of layers changed. The result
    computes what the PEFT-wrapped model computes in evaluation (dropout off), without the adapter's extra
    matrix products per layer and without importing PEFT."""
    modules = dict(lm.named_modules())
    scale = lora["alpha"] / lora["r"]
    merged = 0
    for key, a in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key[len("lora.") : -len(".lora_A.weight")]
        name = name.removeprefix("base_model.model.")
        b = state[key.replace(".lora_A.", ".lora_B.")]
        target = modules.get(name)
        if target is None or not hasattr(target, "weight"):
            raise SpecllmError(f"adapter does not fit the model: no layer {name}")
        with torch.no_grad():
            target.weight += (scale * (b.float() @ a.float())).to(target.weight.dtype)
        merged += 1
    return merged


def load_model_dir(path: str | os.PathLike, merge: bool = False, lean: bool = False):
    """(SpectralLM, ModelSpec, tokenizer) from a model directory (see module doc); the base is quantised as it was
    in training (without bitsandbytes an nf4-trained model is loaded unquantised, with a warning).

    merge: for inference only: the LoRA adapter is added into the base weights (`merge_lora`; not for an nf4 base)
    and the model is a plain causal LM with the read-out, which runs faster and loads without PEFT.
    lean: with merge, for the numeric read-out only (`--decode head`): the base runs on `specllm.decoder` where it
    can, and where spec.json records the prompt's token ids (`ModelSpec.prompt`) no tokenizer is loaded (None is
    returned for it): neither imports transformers, which is most of a short run's start-up."""
    path = model_dir(path)
    if not (path / SPEC).exists() or not (path / WEIGHTS).exists():
        raise SpecllmError(f"{path}: not a specllm model directory (needs {SPEC} and {WEIGHTS})")
    spec = ModelSpec.from_json(path / SPEC)
    if spec.quantize == "nf4" and not bitsandbytes_available():
        say(f"warning: {path}: trained on a 4-bit (nf4) base, bitsandbytes is not installed: base loaded unquantised")
        spec.quantize = "none"
    state = {k: v.float() if v.is_floating_point() else v for k, v in read_weights(path).items()}
    if merge and spec.quantize != "nf4":
        lm = _base_lm(spec, lean)
        merge_lora(lm, state, spec.lora)
        model = SpectralLM(lm, len(spec.value_names), len(spec.classes), _patcher(spec, lm))
        tokenizer = None if lean and spec.prompt else load_tokenizer(spec.base_model)
        _load_heads(model, state)
    else:
        model, tokenizer = build_model(spec)
        load_trainable(model, state)
    fingerprint = base_fingerprint(resolve_base(spec.base_model))
    if fingerprint != spec.base_fingerprint:
        say(f"warning: {path}: base model differs from the one it was trained on ({spec.base_model})")
    model.eval()
    return model, spec, tokenizer


def _residual_rows(metrics: dict, names: list[str]) -> list[str]:
    """Markdown rows: mu ± sigma per class and overall, and the share within 1 sigma, per label."""
    classes = [c for c in (*CLASSES, OVERALL) if any(c in metrics.get(n, {}) for n in names)]
    lines = ["| label | " + " | ".join(classes) + " | within 1 sigma |", "|---" * (len(classes) + 2) + "|"]
    for name in names:
        row = metrics.get(name, {})
        cells = [f"{row[c]['mu']:+.3g} ± {row[c]['sigma']:.3g} (n={row[c]['n']})" if c in row else "" for c in classes]
        within = row.get(OVERALL, {}).get("within_1sigma")
        lines.append(f"| {name} | " + " | ".join(cells) + (f" | {within:.0%} |" if within is not None else " |"))
    if "class_accuracy" in metrics:
        lines += ["", f"Class accuracy: {metrics['class_accuracy']:.1%}"]
    if "teff_bins" in metrics:
        bins = metrics["teff_bins"]
        lines += [
            "",
            "Teff bias per 1,000 K bin of the label (mu ± sigma, n):",
            "",
            "| " + " | ".join(f"{k} K" for k in bins) + " | >= 9000 K together |",
            "|---" * (len(bins) + 1) + "|",
            "| "
            + " | ".join(f"{m['mu']:+.0f} ± {m['sigma']:.0f} ({m['n']})" for m in bins.values())
            + f" | {metrics['teff_hot']['mu'] or 0:+.0f} ({metrics['teff_hot']['n']}) |",
        ]
    return lines


def write_model_card(path: str | os.PathLike, command: str, started: float | None = None) -> Path:
    """A Markdown model card (data, recipe, validation and test figures, calibration, limits) from a model
    directory's spec.json; `started`: the time (`time.time()`) the command began, for its duration and load."""
    path = Path(path)
    spec = ModelSpec.from_json(path / SPEC)
    m = spec.manifest
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    from .domain import load_domain
    from .flags import markdown_table

    domain = load_domain(path)
    covers = ", ".join(domain.trained_classes) if domain else "the classes of its training data"
    lines = [
        f"# specllm model: stage {spec.stage}, format `{spec.format}`",
        "",
        f"**What it covers:** {covers} stars like those of its training set (below), stage {spec.stage}: "
        + (
            "Teff, log g, [Fe/H] and the class, no [X/Fe] abundances."
            if spec.stage == 1
            else f"[X/Fe] for {', '.join(spec.value_names)}."
        )
        + " Anything else still gets numbers, but `specllm infer` flags its row (`flag`, `flag_reason`; table below).",
        "",
        f"- Base model: `{spec.base_model}` (fingerprint `{spec.base_fingerprint[:16]}`), first {spec.layers or 'all'} decoder layers",
        f"- Trainable: LoRA r={spec.lora['r']}, alpha={spec.lora['alpha']}, dropout={spec.lora['dropout']} on {spec.lora['target_modules']}"
        + (f"; patch projector ({spec.patch_width}-pixel patches)" if spec.patch_width else "")
        + ("; convolutional stem under the patches" if spec.patch_stem == "conv" else "")  # "mlp" without patches
        + "; numeric read-out heads",
        f"- Weights: `{WEIGHTS}` ({size / 1e6:.1f} MB in this directory), safetensors",
        f"- Data: `{Path(str(m.get('data'))).name}` (content hash `{str(m.get('data_content_hash'))[:16]}`), "
        f"{(m.get('train_examples') or 0) - (m.get('synthetic_examples') or 0)} train / {m.get('validation_examples')}"
        f" validation / {m.get('test_examples')} test "
        + (
            "spectra (validation: a hash of the id carves it from the train split; every choice was made on it)"
            if m.get("validation_examples")
            else "spectra (no validation hold-out: trained on the whole train split, validation included; the recipe"
            " was chosen on held-out runs' validation figures, docs/BENCHMARKS.md)"
        )
        + (
            f"; plus {m['synthetic_examples']} synthetic spectra in training only (`benchmarks/synthetic_shards.py`: "
            "thedoppler's Cannon models on the continua of real train-split spectra; never in validation or test)"
            if m.get("synthetic_examples")
            else ""
        ),
        f"- Recipe: {json.dumps(m.get('recipe'))}",
        f"- Options: {json.dumps(m.get('options'))}",
        f"- Augmentation: {json.dumps(m.get('augment'))}",
        f"- Training: {m.get('steps')} optimizer steps at {m.get('samples_per_second', 0):.2f} samples/s"
        + (
            f"; the weights are the average of {avg['snapshots']} snapshots, one every {avg['every']} steps from step"
            f" {avg['from_step']} (stochastic weight averaging, `average_from`)"
            if (avg := m.get("weight_average"))
            else ""
        ),
        f"- Reproduce: `{command}`",
    ]
    if started is not None:
        import time

        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        lines.append(
            f"- `{command}` took {(time.time() - started) / 60:.1f} min on {os.cpu_count()} CPU(s); load average at"
            f" its end (1, 5, 15 min): {load}"
        )
    scale = spec.error_scale or {}
    applied = scale and not m.get("validation_examples")  # no validation split: the factors came from elsewhere
    transferred = (m.get("options") or {}).get("calibration_from") if applied else None
    fitted_on = (
        f"by held-out runs of this recipe on their validation spectra (`{transferred}`, specllm/recipes/calibration/)"
        if transferred
        else "on the validation spectra"
    )
    if scale:
        lines += [
            "- Uncertainties: the read-out's Gaussian sigma times a factor per label and predicted class, fitted so that"
            " 68.3% of the validation spectra lie within 1 sigma"
            + (f", {fitted_on}: " if transferred else ": ")
            + "; ".join(f"{n} " + ", ".join(f"{c} x{v:.2f}" for c, v in scale[n].items()) for n in scale)
        ]
    if transferred:  # no validation spectra of its own: the figures of the held-out runs its factors come from
        try:
            held_out_runs = read_calibration(transferred)[1].get("fitted_on")
        except SpecllmError:
            held_out_runs = None
        for run in held_out_runs or []:
            if isinstance(run, dict) and run.get("validation_metrics"):
                lines += [
                    "",
                    f"## Validation split of a held-out run of this recipe (seed {run.get('seed')}, "
                    f"{run.get('validation_examples')} spectra; within 1 sigma: after its own factors, fitted there)",
                    "",
                ]
                lines += _residual_rows(run["validation_metrics"], list(spec.value_names))
    for title, key in (("Validation split", "validation_metrics"), ("Test split", "metrics")):
        if m.get(key):
            lines += ["", f"## {title}: mu ± sigma of (prediction - label)", ""]
            lines += _residual_rows(m[key], list(spec.value_names))
    lines += ["", "## Flags written by `specllm infer`", "", markdown_table(), ""]
    if domain is not None:
        info = domain.info
        lines += [
            "### The domain check (`domain.safetensors`, `domain.json`)",
            "",
            f"- Features: {info.get('features')}, projected on its {domain.components.shape[0]} leading principal "
            f"components ({info.get('explained_variance', float('nan')):.0%} of its variance), each scaled to unit variance.",
            f"- Score: the mean distance to the {domain.neighbours} nearest of {domain.reference.shape[0]} training "
            "spectra in that space, and the residual off those components (what no training spectrum has)"
            + (
                f", and how far the farthest of {len(domain.index_low)} band indices (Lick, TiO/CaH, H alpha, Ca II "
                "triplet) lies outside the training spectra's range"
                if domain.index_threshold
                else ""
            )
            + (", and a classifier against synthetic out-of-range spectra" if domain.classifier else "")
            + "; each over its threshold, the largest of them"
            + (
                f" divided by {domain.score_scale:.3g} (one budget shared by the parts: "
                f"{info.get('val_out_of_domain_parts', float('nan')):.1%} of validation spectra over a part's own "
                f"threshold, {info.get('val_out_of_domain_joint', float('nan')):.1%} over the shared one)"
                if domain.score_scale != 1.0
                else ""
            )
            + " is `domain_score` (above 1: flagged `domain`).",
            f"- Fitted on the train split of `{Path(str(info.get('shards'))).name}` ({info.get('train_spectra')} spectra, "
            f"{info.get('partial_spectra')} of them with one end of the grid cut so that partial coverage alone passes); "
            f"thresholds = the {info.get('config', {}).get('quantile')} and {info.get('config', {}).get('residual_quantile')} "
            f"quantiles over its {info.get('held_out_spectra')} validation spectra (the split's hash rule); the test "
            "split is never used.",
            f"- On those validation spectra `domain` fired on "
            f"{info.get('val_out_of_domain_joint', info.get('val_out_of_domain', float('nan'))):.1%} (by its score) and "
            f"`uncertain` on {info.get('val_uncertain', float('nan')):.1%}.",
            "- `uncertain`: a predicted 1-sigma above "
            + (", ".join(f"{k} {v:.4g}" for k, v in domain.error_max.items()) or "(no limits: off)")
            + f" (the {info.get('config', {}).get('uncertain_quantile')} quantile over the validation spectra"
            + (
                "; this model was trained on them, so its sigmas there are smaller than on unseen spectra)."
                if not m.get("validation_examples")
                else ")."
            ),
            "- Also flagged `domain`: a predicted label outside the training labels' range ("
            + ", ".join(
                f"{n} {lo:.5g}..{hi:.5g}" for n, lo, hi in zip(domain.label_names, domain.label_min, domain.label_max)
            )
            + ").",
            f"- `class`: header SUBCLASS or predicted class outside {', '.join(domain.trained_classes)}, or `class_prob` "
            f"below {domain.class_prob_min:.3f} (the {info.get('config', {}).get('class_prob_quantile')} quantile on held-out train spectra).",
            "- Reproduce: `specllm fit-domain SHARDS MODEL_DIR` (run by `make model`); measured in docs/BENCHMARKS.md.",
            "",
        ]
    lines += [
        "## Known limits",
        "",
        "- Trained on LAMOST DR10 A, F and G stars only (the shared sample): K and M stars, supergiants and the most",
        "  metal-poor stars are outside its training range (the label range above), and its labels for them are",
        "  extrapolations.",
        "- Labels are the LAMOST pipeline's (LASP); the model inherits their systematics.",
        (
            f"- Uncertainties are the read-out's Gaussian sigma, scaled {fitted_on}; on the test split their"
            " calibration is the 'within 1 sigma' column above."
            if scale
            else "- Uncertainties are the read-out's Gaussian sigma, not rescaled; on the test split their calibration"
            " is the 'within 1 sigma' column above."
        ),
    ]
    card = path / "README.md"
    card.write_text("\n".join(lines) + "\n")
    return card
