"""`specllm serialize`: spectrum shards -> question/answer Parquet shards, spectra written as language.

The text of the three formats (paper, compact, patch), the answer grammar and its parser are `specllm.qa`; this
module streams the shards through them, counts tokens, and writes the shards and their manifest atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._version import __version__
from .config import GridConfig, PatchConfig, SerializeConfig
from .errors import SpecllmError
from .files import file_sha256
from .progress import progress_bar, say
from .qa import (
    CONFIG,
    STAGE1_KEYS,
    STAGE2_KEYS,
    answer,
    asked_labels,
    check_format,
    check_stage,
    clean_value,
    label_keys,
    question,
)
from .shards import (
    MANIFEST,
    arrow_to_vectors,
    check_output,
    exclusive_output,
    integrity_fields,
    iter_batches,
    parquet_file,
    publish,
    read_manifest,
    shards_sha256,
    staging_dir,
    table_digest,
    verified_shard_paths,
    write_table,
)

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


def _prepare_out(out: str, shards: str) -> None:
    if os.path.abspath(out) == os.path.abspath(shards):
        raise SpecllmError(f"{out}: --out must differ from the input shards")
    if os.path.isdir(out) and os.listdir(out):
        manifest = read_manifest(out)
        if not manifest or manifest.get("kind") != "qa":
            raise SpecllmError(f"{out}: exists and is not a serialize output; choose another --out")
    elif os.path.exists(out) and not os.path.isdir(out):
        raise SpecllmError(f"{out}: exists and is not a directory")


@exclusive_output("out")
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
    check_format(fmt)
    check_stage(stage)
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
    staging = staging_dir(out, "serialize")  # the staging folders of killed runs for `out` removed
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
        manifest_path = os.path.join(source, MANIFEST)
        manifest = {
            "specllm": __version__,
            "kind": "qa",
            "format": fmt,
            "stage": stage,
            "label_prefix": label_prefix if stage == 2 else None,
            "labels": [k for k in label_keys(stage) if k == "class" or columns.get(k)],
            "source": os.path.abspath(shards),
            "source_manifest_hash": file_sha256(manifest_path) if os.path.isfile(manifest_path) else None,
            "source_shards_sha256": shards_sha256(source_manifest),  # the verified shards read (not a copied claim)
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
        publish(staging, out, manifest)
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
