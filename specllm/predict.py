"""Prediction with a trained spectral LM, shared by `train` (test-split evaluation), `infer` and `benchmark`.

- `load_for_inference`: a model directory (and its stage-1 parent for a stage-2 model) ready to run;
- `predict`: batched forward pass, the numeric read-out (value and 1-sigma per label, class) written as the answer
  text (`decode="head"`), or the answer generated greedily by `constrained_generate` (`decode="text"`), where only
  well-formed answers can come out, parsed by the same parser as everything else;
- `evaluate_split`: paper Table 2 (residual mu and sigma per class, 1-sigma calibration) on a labelled QA split.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import regex
import torch

from .config import CLASSES, GridConfig, InferConfig, PatchConfig
from .device import autocast
from .domain import load_domain
from .errors import SpecllmError
from .files import file_sha256
from .metrics import OVERALL, binned, per_class, residual_stats
from .progress import say
from .prompting import PromptBuilder
from .qa import answer, answer_pattern, parse_answer, question
from .runs import PARENT, SPEC, WEIGHTS, ModelSpec, load_model_dir, model_dir
from .spectral import output_cache

DEFAULT_MODEL = "default"


def default_model_dir() -> Path:
    """The model shipped inside the package (`specllm/models/default`)."""
    return Path(str(resources.files("specllm") / "models" / DEFAULT_MODEL))


def model_metadata(path: Path, name: str | None = None) -> dict:
    """What identifies a model in an output's metadata (`specllm.outputs.META`): its name (`name`, else the path),
    the SHA-256 of its weights (and of its stage-1 parent's), and the content hash of its training data."""
    path = model_dir(path)
    spec = ModelSpec.from_json(path / SPEC)
    parent = path / PARENT / WEIGHTS
    return {
        "model": name or str(path),
        "modelsha": file_sha256(path / WEIGHTS),
        "parentsha": file_sha256(parent) if parent.exists() else None,
        "datasha": spec.manifest.get("data_content_hash"),
    }


def version_lines() -> list[str]:
    """`specllm --version`: specllm, torch and transformers versions, and the shipped model's weights hash."""
    from importlib.metadata import version

    from ._version import __version__

    weights = default_model_dir() / WEIGHTS
    sha = file_sha256(weights) if weights.exists() else "not installed"
    return [
        f"specllm {__version__}",
        f"torch {torch.__version__}",
        f"transformers {version('transformers')}",
        f"model default: weights sha256 {sha}",
    ]


@dataclass
class Loaded:
    model: object
    spec: object
    builder: PromptBuilder
    domain: object = None  # domain.Domain, where the model directory has one (flag bit `domain`)


def _chain(path: Path) -> list[Path]:
    path = model_dir(path)
    return [path / PARENT, path] if (path / PARENT / SPEC).exists() else [path]


def model_specs(path: Path) -> list[ModelSpec]:
    """The specs of the models `load_for_inference` loads, without their weights (for a process that only writes)."""
    chain = _chain(path)
    for p in chain:
        if not (p / SPEC).exists():
            raise SpecllmError(f"{p}: not a specllm model directory (needs {SPEC} and weights)")
    return [ModelSpec.from_json(p / SPEC) for p in chain]


def load_for_inference(path: Path, device: torch.device, decode: str = "head") -> list[Loaded]:
    """The model at `path`, preceded by its stage-1 parent when it is a stage-2 model (labels of both are written).
    With `decode` 'head' (the numeric read-out) it is loaded lean (`runs.load_model_dir`): without transformers where
    the model allows; 'text' loads the tokenizer and transformers' model, which generate."""
    chain = _chain(path)
    loaded = []
    grid = GridConfig()
    for p in chain:
        model, spec, tokenizer = load_model_dir(p, merge=True, lean=decode == "head")
        if spec.grid_size and spec.grid_size != grid.size:
            raise SpecllmError(f"{p}: model grid has {spec.grid_size} pixels, specllm's grid {grid.size}")
        count = PatchConfig(spec.patch_width).count(spec.grid_size) if spec.patch_width else None
        builder = PromptBuilder(tokenizer, count, spec.prompt)
        loaded.append(Loaded(model.to(device), spec, builder, load_domain(p)))
    return loaded


def prompt_record(spec, builder: PromptBuilder) -> dict | None:
    """`ModelSpec.prompt` for a patch-format model: the token ids of the question `infer` asks it (`questions_for`),
    split around the spectral tokens, and the padding id; None for the text formats (their prompt holds the flux)."""
    if not spec.patch_width:
        return None
    asked = questions_for(spec, np.zeros((1, 1)))[0]
    before, after = builder.prompt_ids(asked)
    return {"question": asked, "before": list(before), "after": list(after), "pad_id": int(builder.pad_id)}


@dataclass
class Predictions:
    values: np.ndarray  # (N, K) in label units
    errors: np.ndarray  # (N, K) 1-sigma
    classes: list[str | None]
    texts: list[str]
    ok: np.ndarray  # (N,) bool: the answer text parsed
    hidden: np.ndarray | None = None  # (N, H) float32: the hidden state the read-out saw (only when asked for)
    class_prob: np.ndarray | None = None  # (N,) the class head's probability of its answer (stage 1)


def check_decode(specs, config: InferConfig) -> None:
    """`--decode text` needs a model that learned to write its answer (a positive `text_weight`); a model trained on
    the read-out alone (text_weight 0, the shipped one) answers only through `--decode head`."""
    for spec in specs:
        if config.decode == "text" and spec.manifest.get("options", {}).get("text_weight", 1.0) == 0:
            raise SpecllmError(
                "--decode text: this model was trained without the answer-text objective (text_weight 0); "
                "use --decode head (the default)"
            )


def questions_for(spec, flux: np.ndarray) -> list[str]:
    """The question asked of each spectrum: every label the model knows (flux in the text for text formats)."""
    asked = ["class", *spec.value_names] if spec.stage == 1 else list(spec.value_names)
    if spec.patch_width:
        return [question(spec.format, spec.stage, None, asked)] * len(flux)
    return [question(spec.format, spec.stage, f, asked) for f in flux]


def predict(
    model,
    spec,
    builder: PromptBuilder,
    questions,
    flux,
    mask,
    device: torch.device,
    config: InferConfig = InferConfig(),
    return_hidden: bool = False,
) -> Predictions:
    """Labels for `questions` (with `flux`/`mask` for the patch format, None for the text formats), in batches of
    `config.batch_size`. With `return_hidden`, `Predictions.hidden` holds the final hidden state of each prompt."""
    check_decode([spec], config)
    n = len(questions)
    values = np.full((n, len(spec.value_names)), np.nan)
    errors = np.full_like(values, np.nan)
    classes: list[str | None] = [None] * n
    texts = [""] * n
    ok = np.zeros(n, dtype=bool)
    class_prob = np.full(n, np.nan)
    hidden = [] if return_hidden else None
    class_head = False
    for start in range(0, n, config.batch_size):
        sl = slice(start, min(n, start + config.batch_size))
        enc = [builder.encode(q, None) for q in questions[sl]]
        batch = builder.collate(
            enc, flux[sl] if flux is not None else None, mask[sl] if mask is not None else None, device=device
        )
        with torch.no_grad(), autocast(device, True):
            out = model.hidden_states(batch, use_cache=config.decode == "text")
            last = out.last_hidden_state[:, -1]
            mu, log_var, logits = model.readout(last)
        if hidden is not None:
            hidden.append(last.float().cpu().numpy())
        values[sl], errors[sl] = spec.unstandardise(
            mu.float().cpu().numpy(), np.exp(0.5 * log_var.float().cpu().numpy())
        )
        class_head = logits is not None
        if logits is not None:
            class_prob[sl] = torch.softmax(logits.float(), -1).max(-1).values.cpu().numpy()
            for i, k in enumerate(logits.argmax(-1).tolist()):
                classes[start + i] = spec.classes[k]
        errors[sl] *= error_factors(spec, classes[sl])
        if config.decode == "text":
            gen = constrained_generate(model, builder, batch, out, spec, device, config)
            for i, text in enumerate(gen):
                parsed, good = parse_answer(spec.format, spec.stage, text)
                texts[start + i], ok[start + i] = text, good
                if good:
                    for j, name in enumerate(spec.value_names):
                        if parsed.get(name) is not None:
                            values[start + i, j] = parsed[name]
                    if parsed.get("class") is not None:
                        classes[start + i] = parsed["class"]
        else:
            for i in range(sl.stop - sl.start):
                labels = {name: values[start + i, j] for j, name in enumerate(spec.value_names)}
                if spec.stage == 1:
                    labels["class"] = classes[start + i]
                try:
                    texts[start + i] = answer(spec.format, spec.stage, labels)
                    ok[start + i] = True
                except ValueError:  # no finite value to write: flagged, never an exception
                    ok[start + i] = False
    if hidden is not None:
        hidden = np.concatenate(hidden) if hidden else np.zeros((0, 0), np.float32)
    # A non-finite read-out (NaN or overflowing weights, inputs outside anything trained) labels nothing: the row
    # fails (`ok` False, no class), never `ok` with empty labels.
    finite = np.isfinite(values).all(axis=1) & np.isfinite(errors).all(axis=1)
    if class_head:
        finite &= np.isfinite(class_prob)
    for i in np.flatnonzero(~finite):
        classes[i], class_prob[i] = None, np.nan
    ok &= finite
    return Predictions(values, errors, classes, texts, ok, hidden, class_prob)


# ---------------------------------------------------------------- constrained decoding

ANSWER_CHARACTERS = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz .-+,:'[]_")

# tokenizer -> its answer vocabulary (built once per tokenizer: it scans the whole vocabulary)
_VOCABULARIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def answer_vocabulary(tokenizer) -> tuple[torch.Tensor, list[str]]:
    """Token ids (and texts) made only of characters an answer can contain: the decoder chooses among these.
    Computed once per tokenizer."""
    vocab = _VOCABULARIES.get(tokenizer)
    if vocab is None:
        ids, texts = [], []
        for i in range(len(tokenizer)):
            text = tokenizer.decode([i])
            if text and len(text) <= 6 and set(text) <= ANSWER_CHARACTERS:
                ids.append(i)
                texts.append(text)
        vocab = _VOCABULARIES[tokenizer] = (torch.tensor(ids), texts)
    return vocab


def constrained_generate(model, builder, batch, out, spec, device, config: InferConfig) -> list[str]:
    """Greedy decoding where each step takes the most likely token that keeps the text a prefix of a well-formed
    answer (`qa.answer_pattern`), and end-of-turn only once the answer is complete: no unparseable output."""
    pattern = regex.compile(answer_pattern(spec.format, spec.stage))
    tok = builder.tokenizer
    vocab_ids, vocab_texts = answer_vocabulary(tok)
    vocab_ids = vocab_ids.to(device)
    eos = tok.eos_token_id
    B = batch.input_ids.shape[0]
    texts = [""] * B
    done = [False] * B
    past = output_cache(out)
    hidden = out.last_hidden_state[:, -1]
    attn = batch.attention_mask
    positions = attn.sum(-1) - 1
    for _ in range(config.max_new_tokens):
        logits = model.lm_logits(hidden).float()
        chosen = []
        for i in range(B):
            pick = eos
            if not done[i]:
                complete = pattern.fullmatch(texts[i]) is not None
                order = torch.argsort(logits[i, vocab_ids], descending=True).tolist()
                pick = None
                if complete and logits[i, eos] >= logits[i, vocab_ids[order[0]]]:
                    pick = eos
                for j in order if pick is None else []:
                    trial = texts[i] + vocab_texts[j]
                    if pattern.fullmatch(trial, partial=True):
                        pick = int(vocab_ids[j])
                        texts[i] = trial
                        break
                if pick is None:  # nothing can extend the text: it is complete (or cannot be, and is flagged)
                    pick = eos
                if pick == eos:
                    done[i] = True
            chosen.append(pick)
        if all(done):
            break
        ids = torch.tensor(chosen, device=device).unsqueeze(1)
        attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=device)], dim=1)
        positions = positions + 1
        with torch.no_grad():
            step = model.run_backbone(
                past,
                input_ids=ids,
                attention_mask=attn,
                position_ids=positions.unsqueeze(1),
                use_cache=True,
            )
        past = output_cache(step)
        hidden = step.last_hidden_state[:, -1]
    return texts


# ---------------------------------------------------------------- evaluation on a labelled split


def residual_table(values, errors, labels, classes, names) -> dict:
    """mu +- sigma of (prediction - label) per class and overall, and the 1-sigma calibration (paper Table 2), by
    `metrics.per_class` (classes without a labelled row are left out)."""
    return {
        name: {
            group: stat.as_dict(("n", "mu", "sigma", "sigma_mad", "within_1sigma"))
            for group, stat in per_class(values[:, j], labels[:, j], classes, errors[:, j]).items()
            if stat.n
        }
        for j, name in enumerate(names)
    }


TEFF_BIN = 1000.0  # K: width of the label bins of the Teff bias table
HOT_TEFF = 9000.0  # K: stars at least this hot are also taken together (the sparse hot end)
CALIBRATION_LEVEL = 0.6827  # share of a Gaussian within 1 sigma
CALIBRATION_MIN_ROWS = 30  # a predicted class with fewer validation rows takes the label's overall factor


def error_factors(spec, classes: list[str | None]) -> np.ndarray:
    """(N, K) factors on the read-out's sigma from `spec.error_scale` (1 where the model has none), by label and
    predicted class."""
    factors = np.ones((len(classes), len(spec.value_names)))
    scale = spec.error_scale or {}
    for j, name in enumerate(spec.value_names):
        by_class = scale.get(name)
        if by_class:
            factors[:, j] = [by_class.get(c, by_class[OVERALL]) if c else by_class[OVERALL] for c in classes]
    return factors


def calibrate_errors(preds: Predictions, data, spec) -> dict:
    """Factors on the read-out's sigma, per label and predicted class (and overall), such that 68.3% of the
    labelled examples of `data` (the validation split) lie within 1 sigma of `preds`, predictions made without
    factors: `ModelSpec.error_scale`."""
    scale = {}
    predicted = np.array([c or "" for c in preds.classes])
    for j, name in enumerate(spec.value_names):
        z = np.abs(preds.values[:, j] - data.values[:, j]) / preds.errors[:, j]
        good = np.isfinite(z)
        if good.sum() < 2:
            continue
        scale[name] = {OVERALL: float(np.quantile(z[good], CALIBRATION_LEVEL))}
        for cls in sorted(set(predicted[good]) - {""}):
            rows = good & (predicted == cls)
            if rows.sum() >= CALIBRATION_MIN_ROWS:
                scale[name][cls] = float(np.quantile(z[rows], CALIBRATION_LEVEL))
        say(f"calibration {name}: sigma x " + ", ".join(f"{k} {v:.2f}" for k, v in scale[name].items()))
    return scale


def evaluate_split(model, spec, builder, data, device, split: str = "test") -> dict:
    """Paper Table 2 on a QA split (labels known, `train.QAData`): printed on stderr, returned as a dict."""
    preds = predict(model, spec, builder, data.question, data.flux, data.mask, device)
    return split_metrics(preds, data, spec, split)


def split_metrics(preds: Predictions, data, spec, split: str = "test") -> dict:
    """`evaluate_split` on predictions already made for `data`."""
    true_classes = [CLASSES[c] if c >= 0 else None for c in data.classes]
    metrics = residual_table(preds.values, preds.errors, data.values, true_classes, spec.value_names)
    if "teff" in spec.value_names:  # the pull to the mean shows as a bias that grows with the label
        j = spec.value_names.index("teff")
        fields = ("n", "mu", "sigma", "within_1sigma")
        bins = binned(preds.values[:, j], data.values[:, j], TEFF_BIN, preds.errors[:, j])
        metrics["teff_bins"] = {k: v.as_dict(fields) for k, v in bins.items()}
        hot = data.values[:, j] >= HOT_TEFF
        metrics["teff_hot"] = residual_stats(preds.values[hot, j], data.values[hot, j]).as_dict(fields[:3])
    known = [c is not None for c in true_classes]
    if spec.classes and any(known):
        acc = np.mean([p == t for p, t, k in zip(preds.classes, true_classes, known) if k])
        metrics["class_accuracy"] = float(acc)
    for label in spec.value_names:
        row = "  ".join(f"{c} {m['mu']:+.3g}±{m['sigma']:.3g}" for c, m in metrics[label].items())
        say(f"{split} {label}: {row}  (within 1 sigma: {metrics[label][OVERALL]['within_1sigma']:.0%})")
    if "teff_bins" in metrics:
        row = "  ".join(f"{k}: {m['mu']:+.0f} (n={m['n']})" for k, m in metrics["teff_bins"].items())
        say(f"{split} teff bias by 1000 K bin: {row}; >= {HOT_TEFF:.0f} K: {metrics['teff_hot']['mu'] or 0:+.0f}")
    if "class_accuracy" in metrics:
        say(f"{split} class accuracy: {metrics['class_accuracy']:.1%}")
    return metrics
