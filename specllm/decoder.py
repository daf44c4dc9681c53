"""A torch-only forward of a Llama-family decoder stack, for the one-pass numeric read-out at inference.

transformers' `LlamaModel` trains the model and generates with it (`--decode text`); importing it and its tokenizer
costs ~3 s of a one-file `specllm infer` (its modeling, masking and kernel-hub modules), longer than labelling a
hundred spectra. For `--decode head` this module computes the same thing, op for op as transformers'
`modeling_llama` (RMSNorm in fp32, rotary position embeddings with default or llama3 frequencies, grouped-query
attention through `scaled_dot_product_attention`, SwiGLU MLP), from the base model's config.json and safetensors,
reading only the decoder layers the model keeps. Parameter names are transformers' (`model.layers.0.self_attn.
q_proj.weight`, ...), so `runs.merge_lora` merges an adapter into it unchanged. `tests/test_decoder.py` holds it
equal to transformers' LlamaModel. Anything it does not cover (another architecture, biases, other rope scalings,
4-bit bases) is loaded through transformers as before (`unsupported` says why).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

ROPE_TYPES = ("default", "llama3")
EMBED = "model.embed_tokens.weight"


def rope_parameters(config: dict) -> dict:
    """The rope settings of a config.json (transformers 5 writes `rope_parameters`; older files `rope_theta` and
    `rope_scaling`)."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    rope["rope_type"] = rope.get("rope_type", rope.get("type", "default"))
    return rope


def unsupported(config: dict) -> str | None:
    """Why this module cannot run the model of `config` (None: it can)."""
    if config.get("model_type") != "llama":
        return f"model_type {config.get('model_type')!r}"
    if config.get("hidden_act", "silu") != "silu":
        return f"hidden_act {config.get('hidden_act')!r}"
    if config.get("attention_bias") or config.get("mlp_bias"):
        return "biases in attention or MLP"
    if config.get("quantization_config"):
        return "a quantised checkpoint"
    rope = rope_parameters(config)
    if rope["rope_type"] not in ROPE_TYPES or rope.get("partial_rotary_factor", 1.0) != 1.0:
        return f"rope_type {rope['rope_type']!r}"
    return None


def head_dim(config: dict) -> int:
    """Width of one attention head (a config.json may leave `head_dim` out or null)."""
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def inverse_frequencies(config: dict, dim: int) -> torch.Tensor:
    """Rotary inverse frequencies (fp32), as transformers' `ROPE_INIT_FUNCTIONS` computes them ('default', 'llama3')."""
    rope = rope_parameters(config)
    inv = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if rope["rope_type"] == "llama3":
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv
        inv_llama = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_llama / factor + smooth * inv_llama
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        inv = torch.where(medium, smoothed, inv_llama)
    return inv


def _empty(*shape: int) -> nn.Parameter:
    """A parameter without storage until the checkpoint's tensor is assigned (`load_state_dict(assign=True)`); made
    directly on "meta": initialising it there would import torch's compiler stack (~0.6 s)."""
    return nn.Parameter(torch.empty(*shape, device="meta"), requires_grad=False)


class Linear(nn.Module):
    """nn.Linear without a bias and without its initialisation (the weights come from the checkpoint)."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.weight = _empty(outputs, inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class Embedding(nn.Module):
    """nn.Embedding without its initialisation."""

    def __init__(self, count: int, size: int):
        super().__init__()
        self.weight = _empty(count, size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = _empty(size)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class KVCache:
    """Keys and values per layer, (B, kv heads, T, head dim); the interface `SpectralLM.hidden_states` uses."""

    def __init__(self, n_layers: int):
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers

    def length(self) -> int:
        return 0 if self.layers[0] is None else self.layers[0][0].shape[-2]

    def update(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layers[i] is not None:
            k, v = torch.cat([self.layers[i][0], k], dim=-2), torch.cat([self.layers[i][1], v], dim=-2)
        self.layers[i] = (k, v)
        return k, v

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.layers = [
            None if kv is None else (kv[0].repeat_interleave(repeats, 0), kv[1].repeat_interleave(repeats, 0))
            for kv in self.layers
        ]


class Attention(nn.Module):
    def __init__(self, c: SimpleNamespace, index: int):
        super().__init__()
        self.index, self.heads, self.kv_heads, self.head_dim = (
            index,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        )
        self.q_proj = Linear(c.hidden_size, self.heads * self.head_dim)
        self.k_proj = Linear(c.hidden_size, self.kv_heads * self.head_dim)
        self.v_proj = Linear(c.hidden_size, self.kv_heads * self.head_dim)
        self.o_proj = Linear(self.heads * self.head_dim, c.hidden_size)

    def forward(self, x, cos, sin, mask, cache: KVCache | None):
        shape = (*x.shape[:-1], -1, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q, k = (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)
        if cache is not None:
            k, v = cache.update(self.index, k, v)
        groups = self.heads // self.kv_heads
        if groups > 1:  # transformers' repeat_kv
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=self.head_dim**-0.5, is_causal=mask is None and q.shape[2] > 1
        )
        return self.o_proj(out.transpose(1, 2).contiguous().reshape(*x.shape[:-1], -1))


class MLP(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c: SimpleNamespace, index: int):
        super().__init__()
        self.self_attn = Attention(c, index)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


@dataclass
class DecoderOutput:
    last_hidden_state: torch.Tensor
    past_key_values: KVCache | None = None


class Decoder(nn.Module):
    """The decoder stack (token embeddings, layers, final norm); called as `SpectralLM.run_backbone` calls
    transformers' LlamaModel."""

    def __init__(self, c: SimpleNamespace, inv_freq: torch.Tensor):
        super().__init__()
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Layer(c, i) for i in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
    ) -> DecoderOutput:
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        past = past_key_values.length() if past_key_values is not None else 0
        B, T = x.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=x.device).unsqueeze(0).expand(B, -1)
        if use_cache and past_key_values is None:
            past_key_values = KVCache(len(self.layers))
        with torch.autocast(x.device.type, enabled=False):  # the angles in fp32, as transformers computes them
            freqs = (self.inv_freq[None, :, None].float() @ position_ids[:, None, :].float()).transpose(1, 2)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        mask = self._mask(attention_mask, past, T, x.device)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, past_key_values)
        return DecoderOutput(self.norm(x), past_key_values if use_cache else None)

    @staticmethod
    def _mask(attention_mask: torch.Tensor | None, past: int, T: int, device) -> torch.Tensor | None:
        """(B, 1, T, past + T) bool, True where a position may attend: causal and not padding (each position also
        sees itself, so a padding row attends to something); None where plain causal attention is the same."""
        if attention_mask is None and past == 0:
            return None
        keys = torch.arange(past + T, device=device)
        queries = torch.arange(past, past + T, device=device)
        mask = (keys[None, :] <= queries[:, None])[None, None]
        if attention_mask is not None:
            if past == 0 and bool(attention_mask.all()):
                return None
            mask = mask & attention_mask[:, None, None, :].bool()
            mask = mask | (keys[None, :] == queries[:, None])[None, None]
        return mask


class CausalLM(nn.Module):
    """What `SpectralLM` reads of a causal LM for the read-out: `config`, `model` (the decoder stack) and
    `get_input_embeddings()`. No LM head: text generation goes through transformers."""

    def __init__(self, config: dict, layers: int | None = None, inv_freq: torch.Tensor | None = None):
        super().__init__()
        values = dict(config)
        values["num_hidden_layers"] = layers or config["num_hidden_layers"]
        values["num_key_value_heads"] = config.get("num_key_value_heads") or config["num_attention_heads"]
        values["head_dim"] = head_dim(config)
        values["rms_norm_eps"] = config.get("rms_norm_eps") or 1e-6
        self.config = SimpleNamespace(**values)
        if inv_freq is None:
            inv_freq = inverse_frequencies(config, self.config.head_dim)
        self.model = Decoder(self.config, inv_freq)

    def get_input_embeddings(self) -> Embedding:
        return self.model.embed_tokens


def load_decoder(path: Path, layers: int | None = None) -> CausalLM | None:
    """The decoder stack of the Hugging Face model directory `path` (config.json + safetensors), its first `layers`
    decoder layers only, in the checkpoint's dtype; None where `unsupported` (the caller loads it with transformers).
    """
    from safetensors import safe_open

    config = json.loads((path / "config.json").read_text())
    if unsupported(config) is not None:
        return None
    lm = CausalLM(config, layers, inverse_frequencies(config, head_dim(config)))  # parameters on "meta" until assigned
    wanted = set(lm.state_dict())
    index = path / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    # Tied embeddings may be stored once, under the LM head's name (safetensors' `save_model` keeps one of the two).
    alias = {"lm_head.weight": EMBED} if config.get("tie_word_embeddings") else {}
    state = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            for key in f.keys():
                target = key if key in wanted else alias.get(key)
                if target in wanted and target not in state:
                    state[target] = f.get_tensor(key)
    if set(state) != wanted:
        return None  # named otherwise than transformers' LlamaForCausalLM: leave it to transformers
    lm.load_state_dict(state, assign=True)
    return lm.eval()
