"""`specllm` under a launcher (torchrun, deepspeed) with two test hooks, set by environment variables.

SPECLLM_PROBE_SEEN=DIR: each rank appends the train-split indices it takes to DIR/rank-<r>.txt (one line a batch).
SPECLLM_PROBE_DIE_AFTER=N: every rank exits with status 3 right after the checkpoint of step N, as if killed.
SPECLLM_PROBE_CUDA_BF16=1: the dtype regime of a CUDA run emulated on the CPU: DeepSpeed's bf16 on (as train sets it
    on a bf16 GPU), bf16 autocast available (as `device.bf16_supported` says on such a GPU) and
    `torch.is_autocast_enabled()` without a device (what DeepSpeed asks; on the CPU it reads CUDA's, always off)
    reading the CPU's autocast, as it reads CUDA's on a GPU.
SPECLLM_PROBE_EVAL=DIR: each rank writes the number of examples it evaluates, per call, to DIR/eval-rank-<r>.txt.
Usage: torchrun --nproc-per-node 2 tests/distprobe.py train --stage 1 ...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import specllm.train as train
from specllm.cli import main

seen_dir = os.environ.get("SPECLLM_PROBE_SEEN")
die_after = int(os.environ.get("SPECLLM_PROBE_DIE_AFTER", "0"))
cuda_bf16 = os.environ.get("SPECLLM_PROBE_CUDA_BF16") == "1"
eval_dir = os.environ.get("SPECLLM_PROBE_EVAL")

if seen_dir:
    real_batch = train.rank_batch

    def rank_batch(order, step, micro, batch_size, grad_accum, ranks):
        idx = real_batch(order, step, micro, batch_size, grad_accum, ranks)
        with open(Path(seen_dir) / f"rank-{ranks.rank}.txt", "a") as fh:
            fh.write(" ".join(str(int(i)) for i in idx) + "\n")
        return idx

    train.rank_batch = rank_batch

if die_after:
    real_save = train.save_checkpoint

    def save_checkpoint(model, spec, optimizer, scheduler, step, out, **kw):
        real_save(model, spec, optimizer, scheduler, step, out, **kw)
        if step == die_after:
            if torch.distributed.is_initialized():
                torch.distributed.barrier()
            os._exit(3)

    train.save_checkpoint = save_checkpoint

if cuda_bf16:
    import specllm.device

    real_config = train._deepspeed_config

    def deepspeed_config(opts):
        config = real_config(opts)
        config.setdefault("bf16", {})["enabled"] = bool(opts.recipe.bf16)
        return config

    train._deepspeed_config = deepspeed_config
    specllm.device.bf16_supported = lambda device: True
    real_enabled = torch.is_autocast_enabled
    torch.is_autocast_enabled = lambda *device: real_enabled(*device) if device else real_enabled("cpu")

if eval_dir:
    import specllm.predict

    real_predict = train.predict

    def predict(model, spec, builder, questions, *args, **kwargs):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        with open(Path(eval_dir) / f"eval-rank-{rank}.txt", "a") as fh:
            fh.write(f"{len(questions)}\n")
        return real_predict(model, spec, builder, questions, *args, **kwargs)

    train.predict = predict
    specllm.predict.predict = predict  # evaluate_split's

sys.argv = ["specllm", *sys.argv[1:]]
main()
