"""`specllm infer INPUTS... > labels.csv`: labels for spectra from a trained (or the shipped) model.

INPUTS are FITS files, directories, globs (read and cleaned by exactly the code `ingest` uses) or `ingest` shards.
One CSV row per input, in input order, on stdout (or Parquet with `--output x.parquet`); messages go to stderr.
Decoding: `head` (default) writes the model's numeric read-out as its answer text in one forward pass, with a
Gaussian uncertainty per label; `text` generates the answer greedily, constrained so that only well-formed answers
can come out, and parses it with the same parser as everything else.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from .config import CLASSES, CleanConfig, GridConfig, InferConfig, PatchConfig
from .errors import SpecllmError, SpectrumRejected
from .progress import progress_bar, say

DEFAULT_MODEL = "default"


def default_model_dir() -> Path:
    return Path(str(resources.files("specllm") / "models" / DEFAULT_MODEL))


# ---------------------------------------------------------------- prediction core (also used by train/benchmark)


@dataclass
class Predictions:
    values: np.ndarray  # (N, K) in label units
    errors: np.ndarray  # (N, K) 1-sigma
    classes: list[str | None]
    texts: list[str]
    ok: np.ndarray  # (N,) bool: the answer text parsed
    class_prob: np.ndarray | None = None  # (N,) the class head's probability of its answer
    hidden: np.ndarray | None = None  # (N, D) the read-out hidden state (the domain check reads it)


def questions_for(spec, flux: np.ndarray) -> list[str]:
    """The question asked of each spectrum: every label the model knows (flux in the text for text formats)."""
    from .serialize import question

    asked = ["class", *spec.value_names] if spec.stage == 1 else list(spec.value_names)
    if spec.patch_width:
        return [question(spec.format, spec.stage, None, asked)] * len(flux)
    return [question(spec.format, spec.stage, f, asked) for f in flux]


def predict(model, spec, builder, questions, flux, mask, device, config: InferConfig = InferConfig()) -> Predictions:
    from .serialize import answer, parse_answer
    from .train import autocast

    n = len(questions)
    mean = np.asarray(spec.value_mean)
    std = np.asarray(spec.value_std)
    values = np.full((n, len(spec.value_names)), np.nan)
    errors = np.full_like(values, np.nan)
    classes: list[str | None] = [None] * n
    texts = [""] * n
    ok = np.zeros(n, dtype=bool)
    class_prob = np.full(n, np.nan)
    hidden = None
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
        values[sl] = mu.float().cpu().numpy() * std + mean
        if hidden is None:
            hidden = np.zeros((n, last.shape[-1]), dtype=np.float32)
        hidden[sl] = last.float().cpu().numpy()
        errors[sl] = np.exp(0.5 * log_var.float().cpu().numpy()) * std
        if logits is not None:
            class_prob[sl] = torch.softmax(logits.float(), -1).max(-1).values.cpu().numpy()
            for i, k in enumerate(logits.argmax(-1).tolist()):
                classes[start + i] = spec.classes[k]
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
    return Predictions(values, errors, classes, texts, ok, class_prob, hidden)


ANSWER_CHARACTERS = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz .-+,:'[]_")


def answer_vocabulary(tokenizer) -> tuple[torch.Tensor, list[str]]:
    """Token ids (and texts) made only of characters an answer can contain: the decoder chooses among these."""
    ids, texts = [], []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        if text and len(text) <= 6 and set(text) <= ANSWER_CHARACTERS:
            ids.append(i)
            texts.append(text)
    return torch.tensor(ids), texts


def constrained_generate(model, builder, batch, out, spec, device, config: InferConfig) -> list[str]:
    """Greedy decoding where each step takes the most likely token that keeps the text a prefix of a well-formed
    answer (`serialize.answer_pattern`), and end-of-turn only once the answer is complete: no unparseable output."""
    import regex

    from .serialize import answer_pattern
    from .spectral import output_cache

    pattern = regex.compile(answer_pattern(spec.format, spec.stage))
    tok = builder.tokenizer
    if getattr(builder, "_vocab", None) is None:
        builder._vocab = answer_vocabulary(tok)
    vocab_ids, vocab_texts = builder._vocab
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


def residual_table(values, errors, labels, classes, names) -> dict:
    """mu +- sigma of (prediction - label) per class and overall, and the 1-sigma calibration (paper Table 2)."""
    metrics: dict = {}
    for j, name in enumerate(names):
        entry = {}
        for cls in [*CLASSES, "all"]:
            sel = np.isfinite(labels[:, j]) & np.isfinite(values[:, j])
            if cls != "all":
                sel &= np.asarray([c == cls for c in classes])
            if sel.sum() == 0:
                continue
            res = values[sel, j] - labels[sel, j]
            within = np.abs(res) <= errors[sel, j]
            entry[cls] = {
                "n": int(sel.sum()),
                "mu": float(res.mean()),
                "sigma": float(res.std()),
                "within_1sigma": float(within.mean()),
            }
        metrics[name] = entry
    return metrics


def evaluate_split(model, spec, builder, data, device) -> dict:
    """Paper Table 2 on a QA split (labels known): printed on stderr, returned as a dict."""
    preds = predict(model, spec, builder, data.question, data.flux, data.mask, device)
    true_classes = [CLASSES[c] if c >= 0 else None for c in data.classes]
    metrics = residual_table(preds.values, preds.errors, data.values, true_classes, spec.value_names)
    known = [c is not None for c in true_classes]
    if spec.classes and any(known):
        acc = np.mean([p == t for p, t, k in zip(preds.classes, true_classes, known) if k])
        metrics["class_accuracy"] = float(acc)
    for name in spec.value_names:
        row = "  ".join(f"{c} {m['mu']:+.3g}±{m['sigma']:.3g}" for c, m in metrics[name].items())
        say(f"test {name}: {row}  (within 1 sigma: {metrics[name]['all']['within_1sigma']:.0%})")
    if "class_accuracy" in metrics:
        say(f"test class accuracy: {metrics['class_accuracy']:.1%}")
    return metrics


# ---------------------------------------------------------------- inputs -> rows


@dataclass
class Item:
    file: str
    spec_id: str | None = None
    obsid: int | None = None
    ra: float | None = None
    dec: float | None = None
    flux: np.ndarray | None = None
    mask: np.ndarray | None = None
    coverage: float | None = None
    edge_gap: float | None = None
    status: str = "ok"
    header: dict = field(default_factory=dict)  # HEADER_COLUMNS where the file (or shard) states them
    snr_reason: str | None = None  # why `ingest` would reject it for SNR ('low SNR', 'no SNR'), else None


# Header facts carried into every row (LAMOST CLASS, SUBCLASS, Z, SNR per band), where present.
HEADER_COLUMNS = ("objclass", "subclass", "z", "snrg", "snrr", "snri")


def snr_reason(meta: dict, clean: CleanConfig, required: bool) -> str | None:
    """The reason `ingest` would give for rejecting this spectrum for its SNR (same function, same options)."""
    from .preprocess import check_snr

    try:
        check_snr(meta, clean, required=required)
    except SpectrumRejected as exc:
        return exc.reason
    return None


def edge_gap(mask: np.ndarray) -> float:
    """The larger fraction of the grid that is unobserved at the blue or the red end (partial coverage)."""
    observed = np.flatnonzero(~mask)
    if observed.size == 0:
        return 1.0
    return max(observed[0], mask.size - 1 - observed[-1]) / mask.size


def iter_shard_items(path: str, split: str | None = None, clean: CleanConfig = CleanConfig()) -> Iterator[Item]:
    """The spectra of `ingest` or `serialize --format patch` shards (a directory or one .parquet file), optionally
    only one split's. spec_id, flux and mask are required; obsid, file, position and coverage are read if present."""
    import pyarrow.parquet as pq

    from .shards import arrow_to_vectors, iter_batches, shard_paths

    optional = ["obsid", "file", "ra", "dec", "coverage", *HEADER_COLUMNS]
    for shard in shard_paths(path):
        names = pq.ParquetFile(shard).schema_arrow.names
        present = [c for c in optional if c in names]
        for rb in iter_batches(shard, columns=["spec_id", "flux", "mask", *present] + (["split"] if split else [])):
            keep = (
                np.ones(rb.num_rows, bool)
                if not split
                else np.array([s == split for s in rb.column("split").to_pylist()])
            )
            if not keep.any():
                continue
            flux = arrow_to_vectors(rb.column("flux"), np.float32)
            mask = arrow_to_vectors(rb.column("mask"), bool)
            meta = {c: (rb.column(c).to_pylist() if c in present else [None] * rb.num_rows) for c in optional}
            for i, sid in enumerate(rb.column("spec_id").to_pylist()):
                if keep[i]:
                    f = meta["file"][i] if meta["file"][i] is not None else str(shard)
                    header = {c: meta[c][i] for c in HEADER_COLUMNS if meta[c][i] is not None}
                    yield Item(
                        f,
                        sid,
                        meta["obsid"][i],
                        meta["ra"][i],
                        meta["dec"][i],
                        flux[i],
                        mask[i],
                        meta["coverage"][i],
                        edge_gap(mask[i]),
                        header=header,
                        snr_reason=snr_reason(header, clean, required=False),  # shards passed ingest's own check
                    )


def is_shard_input(item: str) -> bool:
    from .io import is_array_source

    if os.path.isdir(item):
        return os.path.exists(os.path.join(item, "manifest.json")) or bool(
            glob.glob(os.path.join(item, "part-*.parquet"))
        )
    return item.endswith(".parquet") and not is_array_source(item)


def iter_items(inputs: list[str], grid: GridConfig, clean: CleanConfig) -> Iterator[Item]:
    """Input order preserved; FITS and array spectra through the same readers and cleaning as `ingest`; ingest
    shards read as they are."""
    from .io import LAYOUT_ARRAY, expand_inputs, iter_spectra
    from .io.lamost_catalog import file_key
    from .preprocess import clean_spectrum

    for item in inputs:
        if is_shard_input(item):
            yield from iter_shard_items(item, clean=clean)
            continue
        for path in expand_inputs([item]):
            for raw in iter_spectra(path):
                if isinstance(raw, SpectrumRejected):
                    say(f"{raw.path}: {raw}")
                    yield Item(raw.path, status=str(raw))
                    continue
                meta = raw.meta
                obsid = meta.get("obsid")
                sid = meta.get("spec_id") or (str(obsid) if obsid is not None else file_key(raw.path))
                base = {
                    "file": raw.path,
                    "spec_id": sid,
                    "obsid": obsid,
                    "ra": meta.get("ra"),
                    "dec": meta.get("dec"),
                    "header": {c: meta[c] for c in HEADER_COLUMNS if meta.get(c) is not None},
                    "snr_reason": snr_reason(meta, clean, required=raw.layout != LAYOUT_ARRAY),
                }
                try:
                    cleaned = clean_spectrum(raw.wave, raw.flux, raw.ivar, raw.ormask, grid, clean)
                except SpectrumRejected as exc:
                    say(f"{raw.path}: {exc}")
                    yield Item(**base, status=str(exc))
                    continue
                yield Item(
                    **base,
                    flux=cleaned.flux,
                    mask=cleaned.mask,
                    coverage=cleaned.coverage,
                    edge_gap=edge_gap(cleaned.mask),
                )


def label_columns(spec) -> list[str]:
    cols = ["class", "class_prob"] if spec.stage == 1 else []
    return cols + list(spec.value_names) + [f"{n}_err" for n in spec.value_names]


def output_columns(specs) -> list[str]:
    labels = [c for spec in specs for c in label_columns(spec)]
    return [
        "file",
        "spec_id",
        "obsid",
        "ra",
        "dec",
        *labels,
        "coverage",
        "partial",
        "status",
        "flag",
        "flag_reason",
        "domain_score",
        *HEADER_COLUMNS,
    ]


@dataclass
class Loaded:
    model: object
    spec: object
    builder: object
    domain: object = None  # domain.Domain, where the model directory has one


def load_for_inference(path: Path, device) -> list[Loaded]:
    """The model at `path`, preceded by its stage-1 parent when it is a stage-2 model (labels of both are written)."""
    from .domain import load_domain
    from .prompting import PromptBuilder
    from .runs import PARENT, load_model_dir, model_dir

    path = model_dir(path)
    chain = [path / PARENT, path] if (path / PARENT / "spec.json").exists() else [path]
    loaded = []
    grid = GridConfig()
    for p in chain:
        model, spec, tokenizer = load_model_dir(p)
        if spec.grid_size and spec.grid_size != grid.size:
            raise SpecllmError(f"{p}: model grid has {spec.grid_size} pixels, specllm's grid {grid.size}")
        count = PatchConfig(spec.patch_width).count(spec.grid_size) if spec.patch_width else None
        loaded.append(Loaded(model.to(device), spec, PromptBuilder(tokenizer, count), load_domain(p)))
    return loaded


def _rank_slice() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def label_rows(items: Iterable[Item], models: list[Loaded], device, config: InferConfig) -> Iterator[tuple[Item, dict]]:
    """(item, output row) per item, in order; spectra are batched through every model in the chain. Each row
    carries its header facts, `flag` and `flag_reason` (`specllm.flags`) and the domain check's `domain_score`."""
    from . import flags
    from .io.lamost_catalog import reduce_class

    chunk: list[Item] = []
    checker = next((m for m in models if m.domain is not None), None)
    trained = tuple(checker.domain.trained_classes) if checker else None
    prob_min = checker.domain.class_prob_min if checker else 0.0

    def flush():
        good = [it for it in chunk if it.status == "ok"]
        results = []  # (spec, Predictions) per model
        if good:
            flux = np.stack([it.flux for it in good])
            mask = np.stack([it.mask for it in good])
            for m in models:
                questions = questions_for(m.spec, flux)
                f, k = (flux, mask) if m.spec.patch_width else (None, None)  # text formats: flux is in the question
                results.append((m.spec, predict(m.model, m.spec, m.builder, questions, f, k, device, config)))
        outside = score = None
        if good and checker is not None:
            from .domain import patch_features

            preds = results[models.index(checker)][1]
            feats = patch_features(checker.model.patcher, flux, mask) if checker.domain.features == "patches" else None
            outside, score = checker.domain.check(
                preds.hidden if feats is None else feats, preds.values, checker.spec.value_names
            )
            score = score / checker.domain.threshold
        k = 0
        for it in chunk:
            row = {"file": it.file, "spec_id": it.spec_id, "obsid": it.obsid, "ra": it.ra, "dec": it.dec}
            row.update(
                coverage=it.coverage,
                status=it.status,
                partial=bool(it.edge_gap is not None and it.edge_gap > config.partial_edge),
                **it.header,
            )
            in_domain = True
            if it.status == "ok":
                for spec, preds in results:
                    if not preds.ok[k]:
                        row["status"] = "unparseable answer"
                    for j, name in enumerate(spec.value_names):
                        row[name] = float(preds.values[k, j])
                        row[f"{name}_err"] = float(preds.errors[k, j])
                    if spec.stage == 1:
                        row["class"] = preds.classes[k]
                        if preds.class_prob is not None and np.isfinite(preds.class_prob[k]):
                            row["class_prob"] = float(preds.class_prob[k])
                if outside is not None:
                    in_domain = not outside[k]
                    row["domain_score"] = float(score[k])
                k += 1
            untrained = flags.untrained_class(
                reduce_class(it.header.get("subclass")), row.get("class"), row.get("class_prob"), trained, prob_min
            )
            row["flag"], row["flag_reason"] = flags.combine(
                objclass=it.header.get("objclass"),
                snr_reason=it.snr_reason,
                partial=row["partial"],
                untrained=untrained,
                domain=not in_domain,
            )
            yield it, row
        chunk.clear()

    for item in items:
        chunk.append(item)
        if len(chunk) >= config.batch_size * 4:
            yield from flush()
    yield from flush()


def _device() -> torch.device:
    return (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def rows_to_table(rows: list[dict], columns: list[str]) -> pa.Table:
    schema = pa.schema([(c, _arrow_type(c)) for c in columns])
    return pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], schema=schema)


def predict_table(
    model_dir: str | None, shards: str, split: str | None = "test", config: InferConfig = InferConfig()
) -> pa.Table:
    """The model's labels for the spectra of `ingest`/`serialize` shards (one split, or all with split=None), as
    an Arrow table with the columns `specllm infer` writes. Used by `specllm benchmark --llm`."""
    device = _device()
    models = load_for_inference(Path(model_dir) if model_dir else default_model_dir(), device)
    rows = []
    with progress_bar("predict", total=None) as advance:
        for _, row in label_rows(iter_shard_items(shards, split), models, device, config):
            rows.append(row)
            advance(1)
    return rows_to_table(rows, output_columns([m.spec for m in models]))


def run_infer(
    inputs: list[str],
    model_dir: str | None,
    output: str | None,
    config: InferConfig = InferConfig(),
    clean: CleanConfig = CleanConfig(),
) -> tuple[int, int]:
    """Writes the predictions; returns (failed, total) input counts. `clean` is ingest's cleaning, SNR cut
    included: a spectrum below it is labelled and flagged (`flag_reason` 'low SNR'), where ingest rejects it."""
    from .shards import atomic_write_text, write_table

    rank, world = _rank_slice()
    if world > 1 and not output:
        raise SpecllmError("under a multi-process launcher give --output; each rank writes its own part")
    if world > 1:
        stem, ext = os.path.splitext(output)
        output = f"{stem}.rank{rank:03d}-of-{world:03d}{ext}"
    model_path = Path(model_dir) if model_dir else default_model_dir()
    device = _device()
    models = load_for_inference(model_path, device)
    columns = output_columns([m.spec for m in models])
    parquet = bool(output and output.endswith(".parquet"))
    text_out = io.StringIO() if output and not parquet else None
    sink = text_out if text_out is not None else sys.stdout
    writer = None if parquet else csv.writer(sink, lineterminator="\n")
    if writer:
        writer.writerow(columns)
    rows_all: list[dict] = []
    failed = total = 0
    items = (it for n, it in enumerate(iter_items(inputs, GridConfig(), clean)) if n % world == rank)
    with progress_bar("infer", total=None) as advance:
        for item, row in label_rows(items, models, device, config):
            total += 1
            failed += item.status != "ok"
            if writer:
                writer.writerow([_fmt(row.get(c)) for c in columns])
                if sink is sys.stdout:
                    sys.stdout.flush()
            else:
                rows_all.append(row)
            advance(1)
    if parquet:
        write_table(output, rows_to_table(rows_all, columns))
    elif text_out is not None:
        atomic_write_text(output, text_out.getvalue())
    say(f"infer: {total} input(s), {total - failed} labelled, {failed} failed" + (f" -> {output}" if output else ""))
    if total == 0:
        raise SpecllmError("no input spectra")
    return failed, total


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not np.isfinite(value) else f"{value:.6g}"
    return str(value)


def _arrow_type(column: str) -> pa.DataType:
    if column in ("file", "spec_id", "class", "status", "flag_reason", "objclass", "subclass"):
        return pa.string()
    if column in ("obsid", "flag"):
        return pa.int64()
    if column == "partial":
        return pa.bool_()
    return pa.float64()
