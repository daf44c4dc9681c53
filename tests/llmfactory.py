"""Tiny models and QA shards for the LLM tests (built by the tests themselves; seconds to train)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from specllm.config import LoraConfig, TrainConfig, TrainOptions
from specllm.shards import seal_shards, vectors_to_arrow, write_table

TINY_GRID = 256


def tiny_llama_config(**overrides):
    """A 2-layer LlamaConfig with grouped-query attention (4 heads, 2 key/value heads), the embedded model's
    vocabulary size and tied embeddings; `overrides` change any field."""
    from transformers import LlamaConfig

    values = dict(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaConfig(**(values | overrides))


def tiny_llama_dir(root: Path, hidden: int = 32) -> Path:
    """A 2-layer Llama with the embedded model's tokenizer (and so its chat template), saved as safetensors.

    hidden=64 for 4-bit tests: bitsandbytes' CPU kernels need every layer's input width to be a multiple of its
    block size (64); narrower layers fail with "shape '[32, 0]' is invalid".
    """
    import torch
    from transformers import LlamaForCausalLM

    from specllm.models import resolve_base

    target = root / ("tiny-llama" if hidden == 32 else f"tiny-llama-{hidden}")
    if (target / "config.json").exists():
        return target
    tok_src = resolve_base(None)
    torch.manual_seed(0)
    config = tiny_llama_config(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        max_position_embeddings=65536,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        initializer_range=0.5,  # logits of a random tiny model must be able to move far from uniform
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(target, safe_serialization=True)
    for name in os.listdir(tok_src):
        if name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(tok_src / name, target / name)
    return target


def synthetic_spectra(n: int, grid: int = TINY_GRID, seed: int = 0):
    """Spectra whose shape follows their labels, so a model can learn them."""
    rng = np.random.default_rng(seed)
    teff = rng.uniform(4500, 8000, n)
    logg = rng.uniform(3.5, 4.8, n)
    feh = rng.uniform(-1.0, 0.3, n)
    x = np.linspace(0, 1, grid)
    slope = (teff[:, None] - 6000) / 3000
    flux = 0.6 + 0.3 * slope * (x - 0.5) - 0.2 * np.exp(-((x - 0.3) ** 2) / 0.001) * (1 + feh[:, None])
    flux = flux - 0.1 * (logg[:, None] - 4) * np.exp(-((x - 0.7) ** 2) / 0.002)
    flux = np.round(flux / flux.max(1, keepdims=True), 3).astype(np.float32)
    mask = np.zeros_like(flux, dtype=bool)
    classes = np.where(teff > 7000, "A", np.where(teff > 6000, "F", "G"))
    return flux, mask, teff, logg, feh, classes


def write_qa(out: Path, fmt: str, n: int = 16, grid: int = TINY_GRID, test_every: int = 4, seed: int = 0) -> Path:
    from specllm.qa import answer, question

    flux, mask, teff, logg, feh, classes = synthetic_spectra(n, grid, seed)
    rows = {"spec_id": [], "split": [], "class": [], "teff": [], "logg": [], "feh": [], "question": [], "answer": []}
    for i in range(n):
        labels = {"class": str(classes[i]), "teff": float(teff[i]), "logg": float(logg[i]), "feh": float(feh[i])}
        rows["spec_id"].append(f"s{i}")
        rows["split"].append("test" if i % test_every == test_every - 1 else "train")
        for k in ("class", "teff", "logg", "feh"):
            rows[k].append(labels[k])
        rows["question"].append(question(fmt, 1, None if fmt == "patch" else flux[i], list(labels)))
        rows["answer"].append(answer(fmt, 1, labels))
    table = pa.table(rows)
    table = table.append_column("format", pa.array([fmt] * n)).append_column("stage", pa.array([1] * n, pa.int32()))
    if fmt == "patch":
        table = table.append_column("flux", vectors_to_arrow(flux, pa.float32()))
        table = table.append_column("mask", vectors_to_arrow(mask, pa.bool_()))
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / "part-00000.parquet", table)
    seal_shards(out, {"kind": "qa"})
    return out


def tiny_llama3_dir(root: Path) -> Path:
    """A 1-layer long-context Llama (random weights) with the real Llama-3 tokenizer and chat template
    (`specllm.models.llama3_tokenizer_files`) and the LLaMA-3.1 config's vocabulary, rope and context."""
    import torch
    from transformers import LlamaForCausalLM

    from specllm.models import llama3_tokenizer_files, llama31_8b_config

    target = root / "tiny-llama3"
    if (target / "config.json").exists():
        return target
    torch.manual_seed(0)
    config = llama31_8b_config(
        vocab_size=128264,  # the tokenizer's 128,257 tokens, rounded up to a multiple of 8
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,  # head size 16: attention over ~24,600 tokens is the cost of a paper-format example
        num_key_value_heads=2,
        tie_word_embeddings=True,
        initializer_range=0.5,
    )
    LlamaForCausalLM(config).save_pretrained(target, safe_serialization=True)
    llama3_tokenizer_files(target)
    return target


# The tests' tiny LoRA recipe: a high learning rate, fp32, no gradient checkpointing.
TINY_RECIPE = TrainConfig(lr=1e-2, epochs=1, batch_size=4, grad_accum=1, bf16=False, gradient_checkpointing=False)


def tiny_train_options(data: Path, out: Path, base_model: Path, **overrides) -> TrainOptions:
    """Options of a tiny run of 2 optimizer steps (LoRA r=4) on `data`, every train example trained on (no validation
    split held out of a handful); `overrides` replace any field."""
    fields = dict(
        data=str(data), out=str(out), base_model=str(base_model), recipe=TINY_RECIPE, lora=LoraConfig(r=4, alpha=8),
        max_steps=2, validation=False,
    )  # fmt: skip
    fields.update(overrides)
    return TrainOptions(**fields)
