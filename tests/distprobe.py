"""`specllm` under a launcher (torchrun, deepspeed) with two test hooks, set by environment variables.

SPECLLM_PROBE_SEEN=DIR: each rank appends the train-split indices it takes to DIR/rank-<r>.txt (one line a batch).
SPECLLM_PROBE_DIE_AFTER=N: every rank exits with status 3 right after the checkpoint of step N, as if killed.
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

sys.argv = ["specllm", *sys.argv[1:]]
main()
