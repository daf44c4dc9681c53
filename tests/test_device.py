"""`specllm.device`: one device choice (LOCAL_RANK's GPU, else the CPU) and one precision rule."""

from __future__ import annotations

import torch

from specllm import device as device_mod
from specllm.device import autocast, bf16_supported, pick_device


def test_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pick_device() == torch.device("cpu")


def test_local_rank_picks_the_gpu(monkeypatch):
    monkeypatch.setattr(device_mod.torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert pick_device() == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert pick_device() == torch.device("cuda", 2)


def test_autocast_follows_request_and_hardware():
    cpu = torch.device("cpu")
    assert not autocast(cpu, False)._enabled
    on = autocast(cpu, True)
    assert on._enabled == bf16_supported(cpu)
    if on._enabled:
        with on:
            out = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
        assert out.dtype == torch.bfloat16


def test_readout_is_fp32_whatever_the_weights_and_autocast():
    """One dtype regime: with bf16 weights (DeepSpeed's bf16 engine casts every parameter) and with or without bf16
    autocast around it (a GPU's), the projector takes fp32 flux and the read-out's mean, log-variance and logits come
    out in fp32, at fp32 resolution (not bf16 values widened)."""
    from types import SimpleNamespace

    from specllm.spectral import PatchEmbedder, SpectralLM

    lm = torch.nn.Module()
    lm.config = SimpleNamespace(hidden_size=16)
    torch.manual_seed(0)
    model = SpectralLM(lm, 3, 5, PatchEmbedder(64, 16, 16, inner=32))
    hidden = torch.randn(4, 16)
    reference = model.readout(hidden)
    model.to(torch.bfloat16)
    flux, mask = torch.rand(4, 64), torch.zeros(4, 64, dtype=torch.bool)
    for enabled in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            mean, log_var, logits = model.readout(hidden.bfloat16())
            patches = model.patcher(flux, mask)
        assert mean.dtype == log_var.dtype == logits.dtype == torch.float32
        assert patches.dtype == torch.bfloat16 and patches.shape == (4, 4, 16)
        assert (mean != mean.bfloat16().float()).any()  # fp32 resolution
        torch.testing.assert_close(mean, reference[0], rtol=0.05, atol=0.05)  # the same heads, bf16-rounded inputs
