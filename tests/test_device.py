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
