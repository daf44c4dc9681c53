"""Where the spectral LM runs and in which precision: chosen here, once, for train, predict, infer and benchmark."""

from __future__ import annotations

import os

import torch


def pick_device() -> torch.device:
    """This process's GPU when CUDA is present (`LOCAL_RANK` under a multi-process launcher, else the first), or
    the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively (CUDA: the GPU says so; CPU: oneDNN has bf16 kernels)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on `device` when asked for and supported; otherwise autocast off (full precision)."""
    if not bf16:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_supported(device))
