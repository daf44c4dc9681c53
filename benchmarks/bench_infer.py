"""Throughput of `specllm infer` with the shipped model, FITS in -> CSV out, and the cost of the paper's text format.

    python benchmarks/bench_infer.py [--n 300] [--paper 2] [--reference DIR] [--repeats 2]

--reference DIR: also time another checkout of specllm (e.g. `git worktree add /tmp/ref <commit>`: its code and its
    shipped model) on the same files in the same run, alternating reference and this tree `--repeats` times, so
    that a speed-up is a ratio measured under the same machine load (the load average is recorded beside it).

(a) end to end: `specllm infer` over the first N DR10 files (process start and model load included, and the rate
    once loaded, from the CLI's own timing); (b) the same base model (same layers kept) reading the paper's text
    format for a few of the same spectra: tokens per spectrum and the time of one forward pass over the prompt (the
    answer is not even generated), for the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "lamost" / "dr10" / "spectra"


def end_to_end(n: int, tree: Path | None = None) -> dict:
    """`specllm infer` over the first `n` DR10 files, and over one file (start-up), with this tree's code or with
    the checkout at `tree` (first on PYTHONPATH)."""
    import os

    files = [str(p) for p in sorted(SHARED.glob("*.fits.gz"))[:n]]
    # `python -m` puts the working directory first on sys.path: run from the tree whose code is to be timed
    env = dict(os.environ, PYTHONPATH=str(tree)) if tree else None
    cwd = str(tree or ROOT)
    t = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "specllm", "infer", *files], capture_output=True, text=True, env=env, cwd=cwd
    )
    wall = time.time() - t
    if proc.returncode:
        sys.exit(proc.stderr)
    rows = proc.stdout.count("\n") - 1
    t = time.time()
    subprocess.run(
        [sys.executable, "-m", "specllm", "infer", files[0]], capture_output=True, text=True, env=env, cwd=cwd
    )
    startup = time.time() - t
    return {
        "code": str(tree or ROOT),
        "load_average": os.getloadavg(),
        "spectra": rows,
        "wall_s": wall,
        "per_s_wall": rows / wall,
        "startup_one_file_s": startup,
        "per_s_after_load": (rows - 1) / max(1e-9, wall - startup),
    }


def paper_format(k: int) -> dict:
    import numpy as np
    import torch

    from specllm.config import CleanConfig, GridConfig, PatchConfig
    from specllm.device import autocast
    from specllm.labelling import iter_items
    from specllm.predict import default_model_dir
    from specllm.prompting import PromptBuilder
    from specllm.runs import load_model_dir
    from specllm.serialize import question

    model, spec, tokenizer = load_model_dir(default_model_dir())
    builder = PromptBuilder(tokenizer, None)
    files = [str(p) for p in sorted(SHARED.glob("*.fits.gz"))[:k]]
    items = list(iter_items(files, GridConfig(), CleanConfig()))
    tokens, seconds = [], []
    for it in items:
        q = question("paper", 1, np.asarray(it.flux), ["class", "teff", "logg", "feh"])
        enc = builder.encode(q, None)
        batch = builder.collate([enc])
        tokens.append(batch.input_ids.shape[1])
        t = time.time()
        with torch.no_grad(), autocast(torch.device("cpu"), True):
            model.hidden_states(batch)
        seconds.append(time.time() - t)
    patch_q = question("patch", 1, None, ["class", "teff", "logg", "feh"])
    patches = PatchConfig(spec.patch_width).count(spec.grid_size)
    patch_tokens = PromptBuilder(tokenizer, patches).length(PromptBuilder(tokenizer, patches).encode(patch_q, None))
    return {
        "paper_tokens_mean": float(np.mean(tokens)),
        "paper_forward_s_mean": float(np.mean(seconds)),
        "patch_prompt_tokens": patch_tokens,
        "layers": spec.layers,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--paper", type=int, default=2)
    ap.add_argument("--reference", type=Path, help="another specllm checkout, timed alternately on the same files")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.reference:
        runs = {"reference": [], "this": []}
        for _ in range(args.repeats):
            runs["reference"].append(end_to_end(args.n, args.reference))
            runs["this"].append(end_to_end(args.n))
        best = {k: max(r["per_s_wall"] for r in v) for k, v in runs.items()}
        print(
            json.dumps({"runs": runs, "best_per_s_wall": best, "speedup": best["this"] / best["reference"]}, indent=2)
        )
        return
    result = {"end_to_end": end_to_end(args.n)}
    if args.paper:
        result["paper"] = paper_format(args.paper)
        result["ratio_seconds_per_spectrum"] = (
            result["paper"]["paper_forward_s_mean"] * result["end_to_end"]["per_s_after_load"]
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
