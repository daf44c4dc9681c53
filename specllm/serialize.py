"""`specllm serialize`: spectrum shards -> question/answer Parquet shards, spectra written as language.

Three formats (config.FORMATS):

* ``paper`` - *Spectra as Language* section III.1: a question asking for the labels of a LAMOST low-resolution
  spectrum, ending in its normalised flux, 3 decimals joined by ", " inside ``<flux>...</flux>``; the answer with
  every character spaced, as in Gruver et al. 2023: stage 1 ``[ 'M',' 3 7 9 4 . 6 6 ',' 4 . 6 2 8 ',' - 0 . 0 2 9 ' ]``
  (class, Teff, log g, [Fe/H], decimals from config.STAGE1_LABELS), stage 2 ``[C_FE:' 0 . 1 5 1 ', N_FE:' ... ']``.
* ``compact`` - the same question in fewer words, the flux as integers in thousandths (``303 307 ...``: every value
  recoverable exactly, about 4 tokens a value instead of 7) and a short answer: stage 1 ``G 5615 4.45 -0.77`` (class,
  Teff in K as an integer, log g, [Fe/H] always signed), stage 2 ``c 0.15 mg -0.02`` ([X/Fe] named by the element
  alone: 84 tokens fewer than ``c_fe 0.15 mg_fe -0.02`` for the 21 elements).
* ``patch`` - the short question with an empty ``<flux></flux>`` span: the model splices one embedding per flux patch
  (config.PatchConfig) between the two tags, reading the spectrum from the ``flux`` and ``mask`` columns. The answer
  is the compact one.

Labels a star lacks are left out of its question and answer, as the paper does. `parse_answer` reads every format
back; malformed text gives None values and ok=False, never an exception. `answer_pattern` is a regular expression
matched (with `re.fullmatch`) by exactly the well-formed answers, for constrained decoding.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .config import CLASSES, FORMATS, STAGE1_LABELS, STAGE2_ELEMENTS, GridConfig, PatchConfig, SerializeConfig
from .errors import SpecllmError
from .io.tables import PLACEHOLDER_MAX
from .progress import progress_bar, say
from .shards import (
    MANIFEST,
    arrow_to_vectors,
    atomic_write_json,
    check_output,
    integrity_fields,
    iter_batches,
    parquet_file,
    read_manifest,
    table_digest,
    verified_shard_paths,
    write_table,
)

CONFIG = SerializeConfig()
STAGES = (1, 2)
FLUX_OPEN, FLUX_CLOSE = "<flux>", "</flux>"
FLUX_SPAN = FLUX_OPEN + FLUX_CLOSE  # the empty span of `patch` questions, where the patch embeddings go

STAGE1_KEYS: tuple[str, ...] = ("class",) + tuple(name for name, _ in STAGE1_LABELS)
STAGE2_KEYS: tuple[str, ...] = tuple(f"{e.lower()}_fe" for e in STAGE2_ELEMENTS)
_STAGE1_DECIMALS = dict(STAGE1_LABELS)

_PAPER_NAMES = {
    "class": "spectral class",
    "teff": "effective temperature (Teff)",
    "logg": "surface gravity (log g)",
    "feh": "metallicity ([Fe/H])",
}


def label_keys(stage: int) -> tuple[str, ...]:
    """The labels of a stage, in answer order: class, teff, logg, feh; or c_fe, ci_fe, n_fe, ... (STAGE2_ELEMENTS)."""
    _check_stage(stage)
    return STAGE1_KEYS if stage == 1 else STAGE2_KEYS


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise SpecllmError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _check_stage(stage: int) -> None:
    if stage not in STAGES:
        raise SpecllmError(f"unknown stage {stage!r}; choose 1 (class, Teff, log g, [Fe/H]) or 2 ([X/Fe])")


# ---------------------------------------------------------------- label values


def clean_value(key: str, value) -> float | str | None:
    """A label as written into the text, or None where it is missing (None, NaN, inf, survey placeholder <= -9999,
    a class outside A/F/G/K/M)."""
    if value is None:
        return None
    if key == "class":
        text = str(value).strip().upper()
        return text if text in CLASSES else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number <= PLACEHOLDER_MAX:
        return None
    return number


def asked_labels(stage: int, labels: Mapping[str, object]) -> list[str]:
    """The labels of `labels` that are present (in answer order): those a star's question asks for."""
    return [k for k in label_keys(stage) if clean_value(k, labels.get(k)) is not None]


def _format_number(value: float, decimals: int, signed: bool = False) -> str:
    text = f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"
    if float(text) == 0.0:  # never '-0.000'
        text = f"{0.0:+.{decimals}f}" if signed else f"{0.0:.{decimals}f}"
    return text


def _value_spec(fmt: str, stage: int, key: str) -> tuple[int, bool]:
    """(decimals, always signed) of a numeric label in a format."""
    if fmt == "paper":
        return (_STAGE1_DECIMALS[key] if stage == 1 else CONFIG.stage2_decimals), False
    if key == "teff":
        return CONFIG.compact_teff_decimals, False
    return CONFIG.compact_decimals, key == "feh"  # [Fe/H] signed: tells a lone [Fe/H] from a lone log g


def _paper_key(key: str) -> str:
    return key.upper()  # c_fe -> C_FE, tiii_fe -> TIII_FE


def _compact_key(key: str) -> str:
    return key.removesuffix("_fe")  # c_fe -> c, tiii_fe -> tiii


def _ordered(stage: int, keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    unknown = [k for k in keys if k not in label_keys(stage)]
    if unknown:
        raise ValueError(f"not a stage-{stage} label: {', '.join(map(str, unknown))}")
    return [k for k in label_keys(stage) if k in keys]


# ---------------------------------------------------------------- question and answer text


def _join_words(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _grid_words(grid: GridConfig, angstrom: str) -> str:
    return f"{grid.start:g}-{grid.stop:g} {angstrom} at {grid.step:g} {angstrom}"


def flux_text(fmt: str, flux) -> str:
    """The flux as written inside <flux>...</flux>: '0.303, 0.307, ...' (paper) or '303 307 ...' (compact)."""
    values = np.asarray(flux, dtype=np.float64).ravel()
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("flux is empty or has non-finite values")
    d = CONFIG.flux_decimals
    if fmt == "paper":
        return ", ".join(f"{x:.{d}f}" for x in (np.round(values, d) + 0.0).tolist())
    return " ".join(map(str, np.rint(values * 10**d).astype(np.int64).tolist()))


def question(
    fmt: str, stage: int, flux: np.ndarray | None, labels_present: list[str], grid: GridConfig = GridConfig()
) -> str:
    """The user's question for one star, asking for `labels_present` (the labels it has, see `asked_labels`)."""
    _check_format(fmt)
    keys = _ordered(stage, labels_present)
    if not keys:
        raise ValueError("a question must ask for at least one label")
    if fmt == "patch":
        body = FLUX_SPAN
    elif flux is None:
        raise ValueError(f"format {fmt} writes the flux into the question: flux is required")
    else:
        body = FLUX_OPEN + flux_text(fmt, flux) + FLUX_CLOSE
    if fmt == "paper":
        if stage == 1:
            wanted = _join_words([_PAPER_NAMES[k] for k in keys])
        else:
            wanted = "abundance ratios " + _join_words([_paper_key(k) for k in keys])
        return (
            "The following is the normalized flux of a LAMOST low-resolution stellar spectrum, resampled to "
            f"{_grid_words(grid, 'Å')}. What are the {wanted} of this star? {body}"
        )
    scale = f", flux x{10**CONFIG.flux_decimals}" if fmt == "compact" else ""
    wanted = " ".join(keys) if stage == 1 else "[X/Fe] of " + " ".join(_compact_key(k) for k in keys)
    return f"LAMOST spectrum {_grid_words(grid, 'A')}{scale}. Give {wanted}. {body}"


def answer(fmt: str, stage: int, labels: Mapping[str, float | str | None]) -> str:
    """The assistant's answer: the labels present in `labels`, in answer order, written in the format's style."""
    _check_format(fmt)
    values = {k: clean_value(k, labels.get(k)) for k in label_keys(stage)}
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        raise ValueError(f"no stage-{stage} label to write")
    items = []
    for key, value in values.items():
        if key == "class":
            items.append(f"'{value}'" if fmt == "paper" else value)
            continue
        decimals, signed = _value_spec(fmt, stage, key)
        number = _format_number(value, decimals, signed)
        if fmt == "paper":
            spaced = "' " + " ".join(number) + " '"
            items.append(spaced if stage == 1 else f"{_paper_key(key)}:{spaced}")
        else:
            items.append(number if stage == 1 else f"{_compact_key(key)} {number}")
    if fmt == "paper":
        return "[ " + ",".join(items) + " ]" if stage == 1 else "[" + ", ".join(items) + "]"
    return " ".join(items)


# ---------------------------------------------------------------- the grammar of answers


def _number_pattern(decimals: int, spaced: bool, signed: bool) -> str:
    """Numbers as `_format_number` writes them (no leading zeros, no '-0.00'), characters space-separated if spaced."""
    s = " " if spaced else ""
    more = f"(?:{s}\\d)*" if spaced else "\\d*"
    digits = f"(?:0|[1-9]{more})"
    frac = (f"{s}\\.{s}" + s.join(["\\d"] * decimals)) if decimals else ""
    if decimals:
        small = "|".join(s.join(["0"] * i + ["[1-9]"] + ["\\d"] * (decimals - i - 1)) for i in range(decimals))
        nonzero = f"(?:[1-9]{more}{frac}|0{s}\\.{s}(?:{small}))"
    else:
        nonzero = f"[1-9]{more}"
    negative = f"-{s}{nonzero}"
    return f"(?:\\+{digits}{frac}|{negative})" if signed else f"(?:{digits}{frac}|{negative})"


def _item_pattern(fmt: str, stage: int, key: str) -> str:
    if key == "class":
        letters = "[" + "".join(CLASSES) + "]"
        return f"'{letters}'" if fmt == "paper" else letters
    decimals, signed = _value_spec(fmt, stage, key)
    number = _number_pattern(decimals, fmt == "paper", signed)
    if fmt == "paper":
        return f"' {number} '" if stage == 1 else f"{_paper_key(key)}:' {number} '"
    return number if stage == 1 else f"{_compact_key(key)} {number}"


def _separator(fmt: str, stage: int) -> str:
    return " " if fmt != "paper" else ("," if stage == 1 else ", ")


def _ordered_subsets_pattern(items: Sequence[str], sep: str) -> str:
    """Any non-empty subsequence of `items`, in order, joined by `sep` (size quadratic in len(items), no lookaround).
    The separators (' ', ',', ', ') are no regex metacharacters."""
    alternatives = [item + "".join(f"(?:{sep}{later})?" for later in items[i + 1 :]) for i, item in enumerate(items)]
    return "(?:" + "|".join(alternatives) + ")"


@functools.cache
def answer_pattern(fmt: str, stage: int) -> str:
    """A regular expression matched (use `re.fullmatch`) by exactly the well-formed answers of `fmt` and `stage`:
    any non-empty subset of the stage's labels, in answer order. No anchors, lookarounds or back-references, so it
    compiles to a finite automaton for constrained decoding."""
    _check_format(fmt)
    items = [_item_pattern(fmt, stage, k) for k in label_keys(stage)]
    body = _ordered_subsets_pattern(items, _separator(fmt, stage))
    if fmt == "paper":
        return f"\\[ {body} \\]" if stage == 1 else f"\\[{body}\\]"
    return body


@functools.cache
def _compiled(fmt: str, stage: int) -> re.Pattern:
    return re.compile(answer_pattern(fmt, stage))


@functools.cache
def _compiled_item(fmt: str, stage: int, key: str) -> re.Pattern:
    return re.compile(_item_pattern(fmt, stage, key))


def _split_items(fmt: str, stage: int, text: str) -> list[str]:
    if fmt == "paper":
        inner = text[2:-2] if stage == 1 else text[1:-1]
        return inner.split(_separator(fmt, stage))
    parts = text.split(" ")
    return parts if stage == 1 else [" ".join(parts[i : i + 2]) for i in range(0, len(parts), 2)]


def _item_value(key: str, item: str) -> float | str:
    if key == "class":
        return item.strip("'")
    raw = item.split(":", 1)[1] if ":" in item else item  # paper stage 2: KEY:' v '
    raw = raw.split(" ", 1)[1] if raw[:1].isalpha() else raw  # compact stage 2: key v
    return float(raw.strip("'").replace(" ", ""))


def parse_answer(
    fmt: str, stage: int, text: str, asked: Sequence[str] | None = None
) -> tuple[dict[str, float | str | None], bool]:
    """Generated text -> ({label: value or None for every label of the stage}, ok).

    ok is True when `text` (surrounding whitespace aside) is a well-formed answer and, if `asked` (the labels the
    question named) is given, answers exactly those. Otherwise every value is None and ok is False; no exception.
    Stage-1 answers carry no label names: items are matched to labels by their shape (a class letter, Teff's
    decimals, [Fe/H]'s sign in compact). An answer with log g or [Fe/H] but not both is ambiguous without `asked`
    in `paper`, and in compact when the value is negative (never the case in LAMOST catalogues, which give all three
    or none): ok=False then.
    """
    keys = label_keys(stage)
    _check_format(fmt)
    empty: dict[str, float | str | None] = dict.fromkeys(keys)
    try:
        if not isinstance(text, str):
            return empty, False
        text = text.strip()
        if not _compiled(fmt, stage).fullmatch(text):
            return empty, False
        items = _split_items(fmt, stage, text)
        if stage == 2:
            found = {}
            for item in items:
                key = item.split(":", 1)[0].lower() if fmt == "paper" else item.split(" ", 1)[0] + "_fe"
                found[key] = _item_value(key, item)
            chosen = [k for k in keys if k in found]
        else:
            if asked is not None:
                candidates = [_ordered(stage, asked)]
            else:
                candidates = [list(c) for c in itertools.combinations(keys, len(items))]
            fits = [
                c
                for c in candidates
                if len(c) == len(items)
                and all(_compiled_item(fmt, stage, k).fullmatch(i) for k, i in zip(c, items, strict=True))
            ]
            if len(fits) != 1:
                return empty, False  # no reading (or, without `asked`, more than one)
            chosen = fits[0]
            found = {k: _item_value(k, i) for k, i in zip(chosen, items, strict=True)}
        if asked is not None and chosen != _ordered(stage, asked):
            return empty, False
        return {k: found.get(k) for k in keys}, True
    except Exception:  # noqa: BLE001 - a parser of generated text never raises
        return empty, False


def flux_from_question(fmt: str, text: str) -> np.ndarray | None:
    """The flux written in a paper or compact question (None for patch, whose flux span is empty)."""
    _check_format(fmt)
    start, stop = text.rfind(FLUX_OPEN), text.rfind(FLUX_CLOSE)
    body = text[start + len(FLUX_OPEN) : stop] if 0 <= start < stop else ""
    if not body:
        return None
    if fmt == "paper":
        return np.array([float(x) for x in body.split(", ")])
    return np.array([int(x) for x in body.split(" ")], dtype=np.float64) / 10**CONFIG.flux_decimals


# ---------------------------------------------------------------- tokens


def load_tokenizer(base: str | None):
    """The tokenizer of `base`: 'embedded'/None (SmolLM2), a .gguf file or a local Hugging Face model directory."""
    from .models import load_tokenizer as models_load_tokenizer

    return models_load_tokenizer(base)


def model_context(base: str | None) -> int | None:
    """The model's context length (config.max_position_embeddings), None where the config has none."""
    from transformers import AutoConfig

    from .models import resolve_base

    config = AutoConfig.from_pretrained(str(resolve_base(base)), trust_remote_code=False)
    return getattr(config, "max_position_embeddings", None)


def count_tokens(tokenizer, question_text: str, answer_text: str) -> int:
    """Tokens of the chat-formatted prompt + answer (the model's chat template, as training sees it)."""
    conversation = [{"role": "user", "content": question_text}, {"role": "assistant", "content": answer_text}]
    ids = tokenizer.apply_chat_template(conversation, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


# ---------------------------------------------------------------- the run


@dataclass
class SerializeResult:
    out: str
    fmt: str
    stage: int
    read: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    content_hash: str = ""
    tokens: dict | None = None


def _label_columns(stage: int, names: Sequence[str], label_prefix: str) -> dict[str, str | None]:
    """label key -> input column (None where the shards lack it)."""
    if stage == 1:
        return {k: k for k in STAGE1_KEYS}
    return {k: (label_prefix + k if label_prefix + k in names else None) for k in STAGE2_KEYS}


def _check_inputs(paths: list[str], fmt: str, stage: int, label_prefix: str) -> tuple[dict[str, str | None], int]:
    """Every shard's schema checked before anything is written -> (label columns, grid size)."""
    expected: set[str] | None = None
    grid_size = None
    for path in paths:
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise SpecllmError(f"{path}: not a readable Parquet shard ({exc})") from None
        names = schema.names
        required = ["spec_id", "split", "class", "flux"] + (["mask"] if fmt == "patch" else [])
        if stage == 1:
            required += [k for k in STAGE1_KEYS if k != "class"]
        missing = [c for c in required if c not in names]
        if missing:
            raise SpecllmError(f"{path}: missing column(s) {', '.join(missing)}")
        present = {label_prefix + k for k in STAGE2_KEYS} & set(names) if stage == 2 else set()
        if stage == 2 and not present:
            raise SpecllmError(
                f"{path}: no stage-2 label column ({label_prefix}c_fe, {label_prefix}mg_fe, ...); "
                "run specllm crossmatch first, or give the right label prefix"
            )
        if expected is None:
            expected = present
        elif present != expected:
            raise SpecllmError(f"{path}: label columns differ from those of {paths[0]}")
        size = getattr(schema.field("flux").type, "list_size", None)
        if size is None or size <= 0:
            raise SpecllmError(f"{path}: column flux is not a fixed-size list")
        if grid_size is not None and size != grid_size:
            raise SpecllmError(f"{path}: flux has {size} values, {paths[0]} has {grid_size}")
        grid_size = size
    return _label_columns(stage, pq.read_schema(paths[0]).names, label_prefix), grid_size


def _out_schema(fmt: str, stage: int, grid_size: int, columns: dict[str, str | None]) -> pa.Schema:
    """spec_id, split, class, the label columns the input has (teff, logg, feh; or c_fe, ...), question, answer,
    format, stage, and for patch the flux and mask."""
    fields = [
        pa.field("spec_id", pa.string(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("class", pa.string()),
    ]
    fields += [pa.field(k, pa.float32()) for k in label_keys(stage) if k != "class" and columns.get(k)]
    fields += [
        pa.field("question", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("format", pa.string()),
        pa.field("stage", pa.int8()),
    ]
    if fmt == "patch":
        fields += [
            pa.field("flux", pa.list_(pa.float32(), grid_size)),
            pa.field("mask", pa.list_(pa.bool_(), grid_size)),
        ]
    return pa.schema(fields)


def _file_hash(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _prepare_out(out: str, shards: str) -> None:
    if os.path.abspath(out) == os.path.abspath(shards):
        raise SpecllmError(f"{out}: --out must differ from the input shards")
    if os.path.isdir(out) and os.listdir(out):
        manifest = read_manifest(out)
        if not manifest or manifest.get("kind") != "qa":
            raise SpecllmError(f"{out}: exists and is not a serialize output; choose another --out")
    elif os.path.exists(out) and not os.path.isdir(out):
        raise SpecllmError(f"{out}: exists and is not a directory")


def _publish(staging: str, out: str, shard_names: list[str], manifest: dict) -> None:
    """Move the finished shards into `out` (replacing an earlier serialize output), the manifest last."""
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if (name.startswith("part-") and name.endswith(".parquet")) or name == MANIFEST:
            os.unlink(os.path.join(out, name))
    for name in shard_names:
        os.replace(os.path.join(staging, name), os.path.join(out, name))
    atomic_write_json(os.path.join(out, MANIFEST), manifest)


def run_serialize(
    shards: str,
    stage: int,
    fmt: str,
    out: str,
    tokenizer_from: str | None = None,
    max_tokens: int | None = None,
    label_prefix: str = CONFIG.label_prefix,
    count: bool = True,
    config: SerializeConfig = CONFIG,
) -> SerializeResult:
    """Write question/answer shards for `stage` in format `fmt` from spectrum shards (ingest, crossmatch).

    Tokens per example are counted with the tokenizer of `tokenizer_from` (None: the embedded SmolLM2; count=False
    skips it); examples longer than `max_tokens` (default: the model's context) refuse the run. Every check happens
    before `out` is touched: a refused or failed run leaves `out` as it was.
    """
    _check_format(fmt)
    _check_stage(stage)
    paths = verified_shard_paths(shards, config.verify)
    columns, grid_size = _check_inputs(paths, fmt, stage, label_prefix)
    source = shards if os.path.isdir(shards) else os.path.dirname(os.path.abspath(shards))
    source_manifest = read_manifest(source) or {}
    grid = _grid_of(source_manifest, grid_size)
    _prepare_out(out, shards)
    check_output(out, sum(os.path.getsize(p) for p in paths))  # patch copies the flux; text is about as large
    absent = [c for c in label_keys(stage) if columns.get(c) is None]
    if stage == 2 and absent:
        say(f"serialize: the shards have no column for {', '.join(label_prefix + k for k in absent)}; left out")
    tokenizer, limit, context = None, max_tokens, None
    if count:
        try:
            tokenizer = load_tokenizer(tokenizer_from)
            context = model_context(tokenizer_from)
        except SpecllmError as exc:
            if tokenizer_from is not None:
                raise
            say(f"serialize: tokens not counted: {exc}")
        if limit is None:
            limit = context
    patches = PatchConfig().count(grid_size) if fmt == "patch" else 0

    read_cols = ["spec_id", "split", "class"] + [c for k, c in columns.items() if c and k != "class"] + ["flux"]
    read_cols += ["mask"] if fmt == "patch" else []
    schema = _out_schema(fmt, stage, grid_size, columns)
    result = SerializeResult(out=out, fmt=fmt, stage=stage)
    total = sum(parquet_file(p).metadata.num_rows for p in paths)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".serialize-", dir=parent)
    token_counts: list[int] = []
    shard_names: list[str] = []
    hashes: dict[str, str] = {}
    digests: list[str] = []
    pending: list[pa.Table] = []
    pending_rows = 0

    def flush() -> None:
        nonlocal pending, pending_rows
        if not pending_rows:
            return
        table = pa.concat_tables(pending).combine_chunks()
        name = f"part-{len(shard_names):05d}.parquet"
        digests.append(table_digest(table))
        hashes[name] = write_table(os.path.join(staging, name), table)
        shard_names.append(name)
        pending, pending_rows = [], 0

    try:
        with progress_bar("serialize", total=total) as advance:
            for batch in iter_batches(paths, columns=read_cols, batch_size=config.batch_size):
                table = _serialize_batch(batch, fmt, stage, columns, schema, grid, result)
                if tokenizer is not None:
                    for q, a in zip(
                        table.column("question").to_pylist(), table.column("answer").to_pylist(), strict=True
                    ):
                        token_counts.append(count_tokens(tokenizer, q, a) + patches)
                if table.num_rows:
                    pending.append(table)
                    pending_rows += table.num_rows
                if pending_rows >= config.shard_size:
                    flush()
                advance(batch.num_rows)
        flush()
        if not result.written:
            raise SpecllmError(
                f"{shards}: no spectrum has a stage-{stage} label "
                f"({', '.join(columns[k] or label_prefix + k for k in label_keys(stage))} all missing)"
            )
        if token_counts:
            result.tokens = _token_report(token_counts, tokenizer_from, context, limit, patches)
            say(_token_line(result.tokens))
            over = result.tokens["over_limit"]
            if over:
                where = f"the model's context of {limit} tokens" if max_tokens is None else f"--max-tokens {limit}"
                raise SpecllmError(
                    f"{over} examples exceed {where} (max {result.tokens['max']}); "
                    "use a model with a longer context or a shorter format (compact, patch)"
                )
        result.content_hash = hashlib.sha256("".join(digests).encode()).hexdigest()
        manifest = {
            "specllm": __version__,
            "kind": "qa",
            "format": fmt,
            "stage": stage,
            "label_prefix": label_prefix if stage == 2 else None,
            "labels": [k for k in label_keys(stage) if k == "class" or columns.get(k)],
            "source": os.path.abspath(shards),
            "source_manifest_hash": _file_hash(os.path.join(source, MANIFEST)),
            "source_content_hash": source_manifest.get("content_hash"),
            "grid_size": grid_size,
            "patch": dataclasses.asdict(PatchConfig()) | {"count": patches} if fmt == "patch" else None,
            "serialize": dataclasses.asdict(config) | {"label_prefix": label_prefix},
            "counts": {
                "read": result.read,
                "written": result.written,
                "skipped": dict(result.skipped),
                "splits": dict(result.splits),
                "labels": dict(result.labels),
            },
            "tokens": result.tokens,
            **integrity_fields(staging, shard_names, hashes),
            "content_hash": result.content_hash,
            "schema": {f.name: str(f.type) for f in schema},
        }
        _publish(staging, out, shard_names, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _grid_of(manifest: dict, grid_size: int) -> GridConfig:
    """The wavelength grid named in the questions: the source manifest's, else the default of that size."""
    spec = manifest.get("grid") or {}
    try:
        grid = GridConfig(start=float(spec["start"]), stop=float(spec["stop"]), step=float(spec["step"]))
    except (KeyError, TypeError, ValueError):
        grid = GridConfig()
    if grid.size != grid_size:
        raise SpecllmError(f"flux has {grid_size} values but the grid {grid.start:g}-{grid.stop:g} A has {grid.size}")
    return grid


def _serialize_batch(
    batch: pa.RecordBatch,
    fmt: str,
    stage: int,
    columns: dict[str, str | None],
    schema: pa.Schema,
    grid: GridConfig,
    result: SerializeResult,
) -> pa.Table:
    n = batch.num_rows
    result.read += n
    data = {name: batch.column(name).to_pylist() for name in batch.schema.names if name not in ("flux", "mask")}
    flux = arrow_to_vectors(batch.column("flux"), np.float64) if fmt != "patch" else None
    finite = None
    if fmt == "patch":
        finite = np.isfinite(arrow_to_vectors(batch.column("flux"), np.float32)).all(axis=1)
    keep, rows = [], []
    for i in range(n):
        labels = {k: clean_value(k, data[c][i]) if c else None for k, c in columns.items()}
        labels["class"] = clean_value("class", data["class"][i])
        asked = asked_labels(stage, labels)
        if not asked:
            result.skipped["no label"] += 1
            continue
        ok = finite[i] if finite is not None else bool(np.isfinite(flux[i]).all())
        if not ok:
            result.skipped["non-finite flux"] += 1
            continue
        row = {"spec_id": data["spec_id"][i], "split": data["split"][i], "class": labels["class"]}
        row |= {k: labels[k] for k in label_keys(stage) if k != "class" and columns.get(k)}
        row["question"] = question(fmt, stage, flux[i] if flux is not None else None, asked, grid)
        row["answer"] = answer(fmt, stage, labels)
        row["format"], row["stage"] = fmt, stage
        rows.append(row)
        keep.append(i)
        result.written += 1
        result.splits[row["split"]] += 1
        result.labels.update(asked)
    scalar = pa.schema([f for f in schema if f.name not in ("flux", "mask")])
    table = pa.Table.from_pylist(rows, schema=scalar)
    if fmt == "patch":
        idx = pa.array(keep, type=pa.int64())
        for name in ("flux", "mask"):
            column = batch.column(name).take(idx)
            table = table.append_column(schema.field(name), column.cast(schema.field(name).type))
    return table


def _token_report(counts: list[int], base: str | None, context: int | None, limit: int | None, patches: int) -> dict:
    array = np.asarray(counts)
    return {
        "tokenizer": base or "embedded SmolLM2-135M-Instruct",
        "examples": int(array.size),
        "mean": round(float(array.mean()), 1),
        "min": int(array.min()),
        "max": int(array.max()),
        "patch_embeddings": patches,
        "context": context,
        "limit": limit,
        "over_limit": int((array > limit).sum()) if limit else 0,
    }


def _token_line(report: dict) -> str:
    patches = f", incl. {report['patch_embeddings']} patch embeddings" if report["patch_embeddings"] else ""
    limit = f"; limit {report['limit']}" if report["limit"] else ""
    return (
        f"serialize: tokens per example (chat template, prompt + answer{patches}): mean {report['mean']:.1f}, "
        f"max {report['max']} over {report['examples']} examples ({report['tokenizer']}{limit})"
    )


def summary_lines(result: SerializeResult) -> list[str]:
    lines = [
        f"serialize: stage {result.stage}, format {result.fmt}: read {result.read}, wrote {result.written} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(result.splits.items()))})"
    ]
    lines += [f"  skipped, {reason}: {n}" for reason, n in result.skipped.most_common()]
    lines.append(f"  shards in {result.out}, content hash {result.content_hash[:16]}")
    return lines
