"""The spectral language model: a causal LM (+ LoRA) that reads spectra as text or as spectral tokens.

Prompt layout (left-padded in a batch): [pad ...][chat prompt before <flux>][<flux>][P patch embeddings][</flux> ...
rest of prompt, assistant turn start][answer tokens + eos]. In the text formats (`paper`, `compact`) the flux is in
the prompt text and no patch embedding is spliced.

Outputs:
- the answer text, learned with cross-entropy on the answer tokens only (the paper's objective);
- a numeric read-out on the hidden state that predicts the first answer token: a Gaussian mean and log-variance per
  label (standardised) and class logits, trained jointly. Its values are written out as the answer text by default
  at inference (one forward pass, calibrated uncertainties); greedy constrained decoding of the text stays available.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def _cache_keyword(backbone_type: type) -> str:
    """The name a backbone's forward takes its KV cache under: transformers 5.x renamed `past_key_values` to `cache`
    (the old name warns). Resolved once per backbone class, not per decoding step."""
    return "cache" if "cache" in inspect.signature(backbone_type.forward).parameters else "past_key_values"


def output_cache(out):
    """The KV cache of a backbone output, under either transformers 5.x name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


CONV_CHANNELS = (16, 32, 64)  # the conv stem's channels per layer (config.SmallCNNConfig's)
CONV_KERNEL = 7


def conv_stem_pools(width: int) -> tuple[int, int, int]:
    """The conv stem's max-pool factors, 4 x 4 x width/16, so that one output position is one patch of `width`
    pixels; ValueError where `width` is not a multiple of 16 (the one place that rule is written)."""
    if width % 16:
        raise ValueError(f"a conv stem needs a patch width that is a multiple of 16, not {width}")
    return 4, 4, width // 16


class Fp32Linear(nn.Linear):
    """A linear layer computed in fp32 whatever its weights' dtype (bf16 under DeepSpeed's bf16 engine, which casts
    every parameter) and whatever autocast is on (bf16 on a GPU): the read-out's mean, log-variance and class logits
    keep fp32 resolution on every device (a bf16 mean would move Teff in steps of ~8 K). The weights are upcast inside
    the module's own forward, so ZeRO-3 has gathered them by then; the state-dict keys are nn.Linear's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            bias = self.bias.float() if self.bias is not None else None
            return F.linear(x.float(), self.weight.float(), bias)


class PatchEmbedder(nn.Module):
    """(B, G) flux + mask -> (B, P, H): fixed-width patches, each normalised on its own, projected by a 2-layer MLP.

    Per patch the MLP sees the patch's shape (flux minus its mean, over its std), its mask, its mean and log std, so
    both the line profile and the continuum level reach the model; a learned position embedding per patch is added.
    With `stem="conv"` a convolutional trunk over the whole spectrum (flux with unobserved pixels at 0, and the mask:
    three conv k7 + GELU + max-pool layers of 16/32/64 channels, the benchmark's small CNN, pooled 4 x 4 x width/16 so
    that one position is one patch) adds a linear projection of its features to each patch's embedding; the
    projection starts at zero, so training starts from the MLP's embeddings.
    """

    def __init__(self, grid_size: int, width: int, hidden: int, inner: int = 512, stem: str = "mlp"):
        super().__init__()
        self.grid_size, self.width = grid_size, width
        self.count = -(-grid_size // width)
        self.net = nn.Sequential(nn.Linear(2 * width + 2, inner), nn.GELU(), nn.Linear(inner, hidden))
        self.position = nn.Parameter(torch.zeros(self.count, hidden))
        self.conv = self.conv_proj = None
        if stem == "conv":
            layers, cin = [], 2
            for cout, pool in zip(CONV_CHANNELS, conv_stem_pools(width)):
                layers += [nn.Conv1d(cin, cout, CONV_KERNEL, padding=CONV_KERNEL // 2), nn.GELU(), nn.MaxPool1d(pool)]
                cin = cout
            self.conv = nn.Sequential(*layers)
            self.conv_proj = nn.Linear(cin, hidden)
            nn.init.zeros_(self.conv_proj.weight)
            nn.init.zeros_(self.conv_proj.bias)
        elif stem != "mlp":
            raise ValueError(f"unknown patch stem {stem!r} (mlp or conv)")

    def forward(self, flux: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pad = self.count * self.width - self.grid_size
        padded = F.pad(flux.float(), (0, pad))
        f = padded.view(flux.shape[0], self.count, self.width)
        m = F.pad(mask.float(), (0, pad), value=1.0).view(flux.shape[0], self.count, self.width)
        w = 1.0 - m
        n = w.sum(-1, keepdim=True).clamp_min(1.0)
        mean = (f * w).sum(-1, keepdim=True) / n
        std = (((f - mean) ** 2 * w).sum(-1, keepdim=True) / n).sqrt() + 1e-3
        shape = (f - mean) / std * w
        x = torch.cat([shape, m, mean, std.log()], dim=-1)
        # Fed in its weights' dtype (bf16 under DeepSpeed's bf16 engine; under autocast the weights stay fp32): the
        # per-patch statistics above are always fp32, the projection joins the backbone's embeddings.
        dtype = self.net[0].weight.dtype
        out = self.net(x.to(dtype)) + self.position
        if self.conv is not None:
            channels = torch.stack([padded * w.flatten(1), m.flatten(1)], dim=1)  # (B, 2, P * width)
            out = out + self.conv_proj(self.conv(channels.to(dtype)).transpose(1, 2))
        return out


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L) token ids (pad where patches go)
    attention_mask: torch.Tensor  # (B, L)
    patch_slots: torch.Tensor | None  # (B, L) bool, True where a patch embedding goes
    flux: torch.Tensor | None  # (B, G)
    mask: torch.Tensor | None  # (B, G)
    readout_index: torch.Tensor  # (B,) position whose hidden state predicts the first answer token
    target_ids: torch.Tensor | None = None  # (B, L) answer token ids at positions predicting them, -100 elsewhere
    values: torch.Tensor | None = None  # (B, K) standardised labels, NaN where missing
    weights: torch.Tensor | None = None  # (B,) weight of each example's read-out loss (None: all 1)
    prefix_len: int = 0  # leading positions identical in every row (the chat prompt before the flux): run once
    classes: torch.Tensor | None = None  # (B,) class index, -100 where missing


class SpectralLM(nn.Module):
    def __init__(self, lm: nn.Module, n_values: int, n_classes: int, patcher: PatchEmbedder | None):
        super().__init__()
        self.lm = lm  # a PeftModel (LoRA) or a plain causal LM
        self.patcher = patcher
        hidden = self._config().hidden_size
        # The read-out runs in fp32 on every device and under every engine (Fp32Linear): one dtype regime.
        self.value_head = nn.Sequential(Fp32Linear(hidden, 256), nn.GELU(), Fp32Linear(256, 2 * n_values))
        self.class_head = Fp32Linear(hidden, n_classes) if n_classes else None
        self.n_values = n_values

    def _config(self):
        return self.lm.config

    def param_groups(self, lr: float, head_lr_mult: float = 1.0) -> list[dict]:
        """The optimizer's parameter groups: the adapter inside the LM at `lr`, the patch projector and read-out
        heads (everything trainable outside `lm`) at `lr * head_lr_mult`."""
        adapter = [p for n, p in self.named_parameters() if p.requires_grad and n.startswith("lm.")]
        heads = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("lm.")]
        return [{"params": adapter, "lr": lr}, {"params": heads, "lr": lr * head_lr_mult}]

    def _inner(self):
        """The causal LM under any PEFT wrapper."""
        lm = self.lm
        return lm.get_base_model() if hasattr(lm, "get_base_model") else lm

    def embed(self, batch: Batch) -> torch.Tensor:
        inner = self._inner()
        embeds = inner.get_input_embeddings()(batch.input_ids)
        if batch.patch_slots is not None and self.patcher is not None:
            patches = self.patcher(batch.flux, batch.mask).to(embeds.dtype)
            embeds = embeds.masked_scatter(batch.patch_slots.unsqueeze(-1), patches.reshape(-1, patches.shape[-1]))
        return embeds

    def run_backbone(self, cache=None, **kwargs):
        """The decoder stack (no LM head) on input ids or embeddings, with the KV cache passed under the name it
        takes, and left out when there is none."""
        backbone = self._inner().model
        if cache is not None:
            kwargs[_cache_keyword(type(backbone))] = cache
        return backbone(**kwargs)

    def _checkpointing(self) -> bool:
        return bool(getattr(self._inner(), "is_gradient_checkpointing", False)) and self.training

    def hidden_states(self, batch: Batch, cache=None, use_cache: bool = False):
        """The backbone's output over the batch; its `last_hidden_state` starts at position `prefix_offset(batch)`.

        The leading `batch.prefix_len` positions (the chat prompt up to `<flux>`, the same for every spectrum) are
        run once, for the first row, and their keys and values are repeated over the batch: the same result as
        running every row in full (causal attention: those positions never see what follows), at a fraction of
        the cost (58 of 144 positions per spectrum with the embedded model). Gradients flow through the repeat."""
        embeds = self.embed(batch)
        position_ids = (batch.attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        p = self.prefix_offset(batch) if cache is None else 0
        if p:
            head = self.run_backbone(
                None,
                inputs_embeds=embeds[:1, :p],
                attention_mask=batch.attention_mask[:1, :p],
                position_ids=position_ids[:1, :p],
                use_cache=True,
            )
            cache = output_cache(head)
            cache.batch_repeat_interleave(embeds.shape[0])
            embeds, position_ids = embeds[:, p:], position_ids[:, p:]
        return self.run_backbone(
            cache,
            inputs_embeds=embeds,
            attention_mask=batch.attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
        )

    def prefix_offset(self, batch: Batch) -> int:
        """Positions of the shared prefix that `hidden_states` leaves out of its output (0: none shared)."""
        shared = batch.prefix_len and batch.input_ids.shape[0] > 1 and not self._checkpointing()
        return int(batch.prefix_len) if shared else 0

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._inner().lm_head(hidden)

    def readout(self, hidden_last: torch.Tensor):
        """(mean, log-variance, class logits) in fp32 from the hidden state of the read-out position, whatever its
        dtype, the heads' weight dtype and the autocast state."""
        with torch.autocast(hidden_last.device.type, enabled=False):  # the GELU between the heads' layers too
            out = self.value_head(hidden_last.float())
            logits = self.class_head(hidden_last.float()) if self.class_head is not None else None
        mean, log_var = out[:, : self.n_values], out[:, self.n_values :].clamp(-12.0, 6.0)
        return mean, log_var, logits

    def forward(
        self, batch: Batch, text_weight: float, value_weight: float, class_weight: float, nll_beta: float = 0.0
    ):
        """Loss weights and the beta of the beta-NLL: `config.TrainOptions` (text_weight, value_weight, class_weight,
        nll_beta)."""
        hidden = self.hidden_states(batch).last_hidden_state
        p = self.prefix_offset(batch)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        mean, log_var, class_logits = self.readout(hidden[rows, batch.readout_index - p])
        losses = {}
        if batch.target_ids is not None and text_weight > 0:
            where = batch.target_ids[:, p:] != -100
            logits = self.lm_logits(hidden[where]).float()
            losses["text"] = F.cross_entropy(logits, batch.target_ids[:, p:][where])
        if batch.values is not None and value_weight > 0:
            known = ~torch.isnan(batch.values)
            target = torch.nan_to_num(batch.values)
            nll = 0.5 * (log_var + (target - mean) ** 2 * torch.exp(-log_var) + math.log(2 * math.pi))
            if nll_beta > 0:  # beta-NLL: high-variance examples keep their pull on the mean
                nll = nll * torch.exp(nll_beta * log_var.detach())
            weight = known.float()
            if batch.weights is not None:
                weight = weight * batch.weights.unsqueeze(-1)
            losses["value"] = (nll * weight).sum() / weight.sum().clamp_min(1e-6)
        if batch.classes is not None and class_logits is not None and class_weight > 0:
            if (batch.classes != -100).any():
                losses["class"] = F.cross_entropy(class_logits, batch.classes, ignore_index=-100)
        weights = {"text": text_weight, "value": value_weight, "class": class_weight}
        total = sum(weights[k] * v for k, v in losses.items())
        return total, {k: float(v.detach()) for k, v in losses.items()}, (mean, log_var, class_logits)
