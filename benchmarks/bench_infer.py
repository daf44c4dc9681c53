"""Throughput of `specllm infer` with the shipped model, FITS in -> CSV out, and the cost of the paper's text format.

    python benchmarks/bench_infer.py [--n 300] [--paper 2]

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


def end_to_end(n: int) -> dict:
    files = [str(p) for p in sorted(SHARED.glob("*.fits.gz"))[:n]]
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", "specllm", "infer", *files], capture_output=True, text=True)
    wall = time.time() - t
    if proc.returncode:
        sys.exit(proc.stderr)
    rows = proc.stdout.count("\n") - 1
    t = time.time()
    subprocess.run([sys.executable, "-m", "specllm", "infer", files[0]], capture_output=True, text=True)
    startup = time.time() - t
    return {
        "spectra": rows,
        "wall_s": wall,
        "per_s_wall": rows / wall,
        "startup_one_file_s": startup,
        "per_s_after_load": (rows - 1) / max(1e-9, wall - startup),
    }


def paper_format(k: int) -> dict:
    import numpy as np
    import torch

    from specllm.config import CleanConfig, GridConfig
    from specllm.device import autocast
    from specllm.infer import iter_items
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
    patch_tokens = PromptBuilder(tokenizer, 77).length(PromptBuilder(tokenizer, 77).encode(patch_q, None))
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
    args = ap.parse_args()
    result = {"end_to_end": end_to_end(args.n)}
    if args.paper:
        result["paper"] = paper_format(args.paper)
        result["ratio_seconds_per_spectrum"] = (
            result["paper"]["paper_forward_s_mean"] * result["end_to_end"]["per_s_after_load"]
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
