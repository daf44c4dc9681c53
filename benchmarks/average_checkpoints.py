"""Stochastic weight averaging after the fact: the average of a run's kept checkpoints from a fraction of its steps on
and its last step's weights, written as a model directory (for `rank_variants.py`; the same average as
`specllm train --average-from F` computes during the run, but from checkpoints, so one run yields several variants).

    python benchmarks/average_checkpoints.py RUN --from 0.75 --out RUN/avg75

RUN was trained with `--keep-checkpoints` large enough to hold the snapshots; its last step's weights are RUN/last
(a run with `--average-from`) or RUN/model (one without). The new directory takes RUN/model's spec.json with
`weight_average` recording what was averaged; its error_scale is the run model's unless `--calibrate QA` fits its own
on the validation split of those QA shards, as `train` does (`predict.calibrate_errors`; the test split is not read).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import torch

from specllm.runs import ModelSpec, read_weights, save_model_dir
from specllm.train import CHECKPOINTS, LAST, WeightAverage


def average(run: Path, start_fraction: float, out: Path) -> dict:
    spec = ModelSpec.from_json(run / "model" / "spec.json")
    total = int(spec.manifest["steps"])
    start = max(1, math.ceil(start_fraction * total))
    picked = sorted(p for p in (run / CHECKPOINTS).glob("step-*") if start <= int(p.name.split("-")[1]) < total)
    last = run / LAST if (run / LAST).exists() else run / "model"
    sources = [p / "model" for p in picked] + [last]
    snapshots = WeightAverage(start=start, every=0, total=total)  # the same running mean as `train --average-from`
    for source in sources:
        snapshots.add(read_weights(source))
    state = snapshots.mean()
    record = {"from_step": start, "snapshots": len(sources), "sources": [str(p) for p in sources]}
    spec = dataclasses.replace(spec, manifest={**spec.manifest, "weight_average": record})
    save_model_dir(None, spec, out, dtype=torch.bfloat16, state=state)
    return record


def calibrate(model: Path, data: str) -> dict:
    """Fit `model`'s uncertainty factors on the validation split of the QA shards `data` and rewrite its spec.json."""
    from specllm.predict import calibrate_errors, load_for_inference, predict
    from specllm.train import held_out, load_qa

    qa = load_qa(data, 1)
    val = qa.take(np.flatnonzero(held_out(qa, True)))
    loaded = load_for_inference(model, torch.device("cpu"))[0]
    preds = predict(loaded.model, loaded.spec, loaded.builder, val.question, val.flux, val.mask, torch.device("cpu"))
    spec = ModelSpec.from_json(model / "spec.json")
    spec.error_scale = calibrate_errors(preds, val, spec)
    save_model_dir(None, spec, model, state=read_weights(model))
    return spec.error_scale


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--from", dest="start", type=float, required=True, help="fraction of the steps (0-1)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--calibrate", metavar="QA", help="fit the uncertainty factors on this QA folder's validation split"
    )
    args = ap.parse_args(argv)
    record = average(args.run, args.start, args.out)
    print(f"{args.out}: the mean of {record['snapshots']} snapshots from step {record['from_step']}", file=sys.stderr)
    if args.calibrate:
        print(f"{args.out}: error_scale {calibrate(args.out, args.calibrate)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
