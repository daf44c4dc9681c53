"""Make the GPU runner folder (issue 27): what `benchmarks/gpu_check.py --runner DIR` needs on a bare GPU machine.

    python benchmarks/gpu_runner.py --out gpu-runner [--shared ../shared/data]      (make gpu-runner)

The machine it is for has python3 with torch (CUDA), transformers, peft, accelerate, pyarrow, scipy, typer, rich and
safetensors, but no astropy, gguf, deepspeed, bitsandbytes or base-model wheel, no network, and takes at most 64 MiB of
the working tree per call. The folder (git-ignored) holds:
- wheels/: deepspeed (PyPI has only its sdist: built here into a pure-Python wheel, no ops compiled), bitsandbytes
  with only its CUDA 13 and CPU libraries (the PyPI wheel carries every CUDA and ROCm build: 41 MiB), DeepSpeed's
  dependencies the image lacks (pure-Python ones once, compiled ones for CPython 3.10-3.14), requirements.txt naming
  them all;
- install.sh: `pip install --no-index --no-deps --find-links wheels --target DIR` of requirements.txt;
- data/, bases/, data.json: `gpu_check.py --prepare-runner` (ingested DR10 spectra, patch and paper QA shards; the
  SmolLM2 config and tokenizer, the Llama-3 tokenizer; no weights).
It reports the folder's size and refuses one over the limit.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MIB = 64  # what a device call carries
PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
# DeepSpeed's requirements that the GPU image lacks (torch, numpy, packaging, tqdm and psutil come with torch,
# transformers and accelerate); versions: those installed here, which work together.
PURE = ("einops", "hjson", "py-cpuinfo", "pydantic", "annotated-types", "typing-inspection", "typing-extensions")
COMPILED = ("pydantic-core", "msgpack")  # one wheel per CPython version
ANY_PYTHON = ("ninja",)  # py3-none manylinux
BNB_KEEP = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so")
INSTALL_SH = """#!/bin/sh
# The carried wheels into a directory of their own (no index, no network): PYTHONPATH=DIR then finds deepspeed and
# bitsandbytes. Usage: sh gpu-runner/install.sh [DIR]   (default /tmp/specllm-gpu-site)
set -e
here=$(dirname "$0")
target=${1:-/tmp/specllm-gpu-site}
python3 -m pip install -q --no-index --no-deps --find-links "$here/wheels" --target "$target" \\
    -r "$here/wheels/requirements.txt"
echo "installed into $target"
"""


def pip(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def version(name: str) -> str:
    return md.version(name)


def slim_wheel(wheel: Path, keep_so: tuple[str, ...], out_dir: Path) -> Path:
    """A copy of `wheel` without the shared libraries not in `keep_so`, its RECORD rewritten to match."""
    out = out_dir / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        lines = []
        for info in src.infolist():
            name = info.filename
            if name == record_name or (name.endswith(".so") and Path(name).name not in keep_so):
                continue
            data = src.read(name)
            dst.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{name},sha256={digest},{len(data)}")
        lines.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(lines) + "\n")
    return out


def make_wheels(wheels: Path) -> list[str]:
    """Fill `wheels` and return the requirement lines (name==version)."""
    wheels.mkdir(parents=True, exist_ok=True)
    requirements = []
    ds = version("deepspeed")
    # PyPI has no deepspeed wheel: build one from the sdist, ops left to DeepSpeed's JIT (ZeRO-3 with torch's AdamW,
    # as train uses it, needs none). pip reuses a wheel it built before.
    pip("wheel", "-q", "--no-deps", "--no-build-isolation", f"deepspeed=={ds}", "-w", str(wheels),
        env=dict(os.environ, DS_BUILD_OPS="0"))  # fmt: skip
    requirements.append(f"deepspeed=={ds}")
    bnb = version("bitsandbytes")
    with tempfile.TemporaryDirectory() as tmp:
        pip("download", "-q", "--no-deps", "--only-binary=:all:", f"bitsandbytes=={bnb}", "-d", tmp)
        slim_wheel(next(Path(tmp).glob("bitsandbytes-*.whl")), BNB_KEEP, wheels)
    requirements.append(f"bitsandbytes=={bnb}")
    for name in PURE + ANY_PYTHON:
        pip("download", "-q", "--no-deps", "--only-binary=:all:", f"{name}=={version(name)}", "-d", str(wheels))
        requirements.append(f"{name}=={version(name)}")
    for name in COMPILED:
        for py in PYTHONS:
            try:
                pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", py,
                    "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                    "--platform", "manylinux_2_28_x86_64", f"{name}=={version(name)}", "-d", str(wheels))  # fmt: skip
            except subprocess.CalledProcessError:
                print(f"gpu-runner: no {name} {version(name)} wheel for CPython {py}", file=sys.stderr)
        requirements.append(f"{name}=={version(name)}")
    (wheels / "requirements.txt").write_text("\n".join(requirements) + "\n")
    return requirements


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "gpu-runner"))
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--spectra", type=int, default=256, help="DR10 spectra carried (ingested, and as QA)")
    args = parser.parse_args()
    out = Path(args.out)
    shared = Path(args.shared)
    if not (shared / "lamost" / "dr10").is_dir():
        raise SystemExit(f"gpu-runner: no DR10 sample under {shared}")
    shutil.rmtree(out / "wheels", ignore_errors=True)
    make_wheels(out / "wheels")
    (out / "install.sh").write_text(INSTALL_SH)
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--prepare-runner", str(out),
                    "--shared", str(shared), "--runner-spectra", str(args.spectra)], check=True)  # fmt: skip
    mib = folder_mib(out)
    wheels = folder_mib(out / "wheels")
    print(f"gpu-runner: {out} holds {mib:.1f} MiB (wheels {wheels:.1f} MiB); a device call carries {LIMIT_MIB} MiB")
    if mib > LIMIT_MIB:
        raise SystemExit(f"gpu-runner: {out} is over {LIMIT_MIB} MiB")


if __name__ == "__main__":
    main()
