"""Rank training runs on the validation split (never the test split): the figures `docs/BENCHMARKS.md` records for
each variant of the model recipe.

    python benchmarks/rank_variants.py out/model-qa RUN [RUN ...] [--json out.json]
    python benchmarks/rank_variants.py out/model-qa RUN --split test   # once, for the chosen model's report

For each run (a `specllm train --out` directory): sigma per class and overall of Teff, log g and [Fe/H], the share
within 1 sigma (after the run's own calibration, which was fitted on this same split: ~68% by construction), the
Teff bias per 1,000 K bin and of the stars >= 9,000 K together, the class accuracy, and the training rate.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from specllm.predict import evaluate_split, load_for_inference
from specllm.progress import console
from specllm.train import held_out, load_qa


def rank(data_dir: str, runs: list[str], split: str = "validation") -> list[dict]:
    data = load_qa(data_dir, 1)
    pick = held_out(data, True) if split == "validation" else np.asarray(data.split) == "test"
    val = data.take(np.flatnonzero(pick))
    device = torch.device("cpu")
    rows = []
    for run in runs:
        loaded = load_for_inference(run, device)[0]
        console.quiet = True
        metrics = evaluate_split(loaded.model, loaded.spec, loaded.builder, val, device, split)
        console.quiet = False
        manifest = loaded.spec.manifest
        rows.append({"run": run, "metrics": metrics, "samples_per_second": manifest.get("samples_per_second")})
        m = metrics
        print(
            f"{run}: teff {m['teff']['all']['sigma']:.0f} (A {m['teff']['A']['sigma']:.0f} F {m['teff']['F']['sigma']:.0f}"
            f" G {m['teff']['G']['sigma']:.0f}) logg {m['logg']['all']['sigma']:.3f} (A {m['logg']['A']['sigma']:.3f}"
            f" F {m['logg']['F']['sigma']:.3f} G {m['logg']['G']['sigma']:.3f}) feh {m['feh']['all']['sigma']:.3f}"
            f" (A {m['feh']['A']['sigma']:.3f} F {m['feh']['F']['sigma']:.3f} G {m['feh']['G']['sigma']:.3f})"
            f" hot {m['teff_hot']['mu']:+.0f} (n={m['teff_hot']['n']}) bins "
            + " ".join(f"{k}:{b['mu']:+.0f}" for k, b in m["teff_bins"].items())
            + f" class {m.get('class_accuracy', float('nan')):.3f} rate {manifest.get('samples_per_second', 0):.2f}/s",
            flush=True,
        )
    return rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", help="QA shards (stage 1, patch format)")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--split", choices=["validation", "test"], default="validation",
                    help="test: only to report a model already chosen on validation")  # fmt: skip
    args = ap.parse_args(argv)
    rows = rank(args.data, args.runs, args.split)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
