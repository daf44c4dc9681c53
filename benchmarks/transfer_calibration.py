"""Uncertainty factors for a model trained without a validation split, from held-out runs of its recipe.

    python benchmarks/transfer_calibration.py RUN [RUN ...] --out specllm/recipes/calibration/NAME.json

Each RUN is a model or run directory trained with the validation split held out (`specllm train --validation`, the
default), whose `error_scale` was fitted on that split (`predict.calibrate_errors`: per label and predicted class,
68.3% of validation spectra within 1 sigma). The factors written are their geometric mean over the runs (seeds of
one recipe), per label and class, a class kept only where every run has its own factor. `specllm train
--calibration-from NAME` (or the recipe's `calibration_from`) applies them to a run on train + validation, which has
no validation spectra left to fit its own. Only validation figures go in: nothing of the test split is read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from specllm.files import atomic_write_text
from specllm.metrics import OVERALL
from specllm.runs import ModelSpec, model_dir, read_error_scale


def transferred(runs: list[str]) -> dict:
    """{"error_scale": geometric means over `runs`, "fitted_on": where each run's factors came from}."""
    specs = [ModelSpec.from_json(model_dir(r) / "spec.json") for r in runs]
    names = specs[0].value_names
    scales = [read_error_scale(r, names) for r in runs]
    scale = {}
    for name in names:
        groups = [OVERALL] + sorted(set.intersection(*(set(s[name]) for s in scales)) - {OVERALL})
        scale[name] = {g: float(np.exp(np.mean([np.log(s[name][g]) for s in scales]))) for g in groups}
    fitted_on = [
        {
            "model": str(r),
            "seed": (s.manifest.get("recipe") or {}).get("seed"),
            "validation_examples": s.manifest.get("validation_examples"),
            "data_content_hash": s.manifest.get("data_content_hash"),
            "error_scale": e,
            "validation_metrics": s.manifest.get("validation_metrics"),  # for the model card
        }
        for r, s, e in zip(runs, specs, scales)
    ]
    return {
        "error_scale": scale,
        "method": "geometric mean over held-out runs of each run's validation factors (benchmarks/transfer_calibration.py)",
        "fitted_on": fitted_on,
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="model or run directories trained with the validation split held out")
    ap.add_argument("--out", required=True, help="the JSON file to write")
    args = ap.parse_args(argv)
    result = transferred(args.runs)
    atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")
    for name, groups in result["error_scale"].items():
        print(f"{name}: " + ", ".join(f"{g} x{v:.3f}" for g, v in groups.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
