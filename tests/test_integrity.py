"""Data integrity between stages (issue 19): bad inputs and faults, each a test on real or generated files.

Every case ends in one line naming the file and the reason, no traceback, the documented exit code
(`specllm.errors`) and nothing partial downstream.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from specllm.cli import app
from specllm.config import IngestConfig
from specllm.errors import EXIT_OUTPUT, EXIT_USAGE, SpecllmError, one_line
from specllm.files import file_sha256
from specllm.ingest import run_ingest
from specllm.serialize import run_serialize
from specllm.shards import MANIFEST, seal_shards, verified_shard_paths

from .fitsfactory import CATALOG_COLUMNS, make_dataset, write_catalog

SHARD_SIZE = 3
N = 9  # three shards of three spectra


def cli(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(res, code: int = EXIT_USAGE) -> str:
    """The run failed with `code`, one error line on stderr and no traceback; returns that line."""
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    errors = [line for line in res.stderr.splitlines() if line.startswith("specllm: error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    return errors[0]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """FITS files + catalogue, an uninterrupted ingest (3 shards) and its serialize content hash."""
    root = tmp_path_factory.mktemp("integrity")
    rows = make_dataset(root / "fits", N, layouts=("coadd", "image"))
    catalog = write_catalog(root / "labels.csv", rows, CATALOG_COLUMNS)
    shards = root / "shards"
    run_ingest([str(root / "fits")], str(shards), str(catalog), IngestConfig(shard_size=SHARD_SIZE))
    qa = run_serialize(str(shards), 1, "patch", str(root / "qa"), count=False)
    return {"root": root, "fits": root / "fits", "catalog": catalog, "shards": shards, "qa_hash": qa.content_hash}


def ingest_args(p, out) -> list:
    return ["ingest", p["fits"], "--catalog", p["catalog"], "--out", out, "--shard-size", SHARD_SIZE]


def copy_shards(p, tmp_path, name="s") -> Path:
    dest = tmp_path / name
    shutil.copytree(p["shards"], dest)
    return dest


# ---------------------------------------------------------------- 1. killed ingest, incomplete or changed folders


def killed_ingest(p, out: Path, when: str) -> None:
    """The folder a `kill -9` of ingest leaves, made deterministically from a finished one (shards are written
    one by one, each followed by its part-k.json record; the manifest is written last, and removed when a run
    starts): 'first' after shard 0, 'middle' with shard 1 half written to its temporary name, 'end' with every
    shard written but no manifest yet."""
    shutil.copytree(p["shards"], out)
    os.unlink(out / MANIFEST)
    os.unlink(out / "rejects.parquet")
    keep = {"first": 1, "middle": 1, "end": 3}[when]
    for k in range(keep, 3):
        os.unlink(out / f"part-{k:05d}.parquet")
        os.unlink(out / f"part-{k:05d}.json")
    if when == "middle":
        data = (p["shards"] / "part-00001.parquet").read_bytes()
        (out / ".part-00001.parquet.x7k2.tmp").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("when", ["first", "middle", "end"])
def test_killed_ingest_is_refused_then_resumes_to_the_same_hash(pipeline, tmp_path, when):
    out = tmp_path / "k"
    killed_ingest(pipeline, out, when)
    line = one_error_line(cli("serialize", out, "--stage", 1, "--format", "patch", "--out", tmp_path / "qa"))
    assert str(out) in line and "no manifest.json" in line
    assert "rerun specllm ingest" in line and "resumes" in line
    assert not (tmp_path / "qa").exists()  # nothing downstream
    res = cli(*ingest_args(pipeline, out))
    assert res.exit_code == 0, res.output
    qa = run_serialize(str(out), 1, "patch", str(tmp_path / "qa"), count=False)
    assert qa.content_hash == pipeline["qa_hash"]
    assert (
        json.loads((out / MANIFEST).read_text())["content_hash"]
        == json.loads((pipeline["shards"] / MANIFEST).read_text())["content_hash"]
    )


def test_real_kill_9_of_ingest_then_serialize(pipeline, tmp_path):
    from .test_cli import _kill, _start, _wait_for

    out = tmp_path / "k"
    proc = _start("slow", ingest_args(pipeline, out))  # sleeps after each shard: killed between shards 0 and 2
    _wait_for(proc, lambda: (out / "part-00000.json").exists())
    _kill(proc)
    assert not (out / MANIFEST).exists()
    line = one_error_line(cli("serialize", out, "--stage", 1, "--format", "patch", "--out", tmp_path / "qa"))
    assert "rerun specllm ingest" in line
    assert cli(*ingest_args(pipeline, out)).exit_code == 0
    assert run_serialize(str(out), 1, "patch", str(tmp_path / "qa"), count=False).content_hash == pipeline["qa_hash"]


def test_a_new_run_unseals_the_folder_until_it_finishes(pipeline, tmp_path, monkeypatch):
    """A rerun into a finished folder that is killed must not leave the earlier manifest standing beside new shards."""
    import specllm.ingest as ingest

    out = copy_shards(pipeline, tmp_path)
    for name in out.glob("part-*.json"):
        name.unlink()  # every chunk is made again

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ingest, "settle_chunk", killed)
    with pytest.raises(KeyboardInterrupt):
        run_ingest([str(pipeline["fits"])], str(out), str(pipeline["catalog"]), IngestConfig(shard_size=SHARD_SIZE))
    with pytest.raises(SpecllmError, match="no manifest.json"):
        verified_shard_paths(out)


def test_manifest_naming_a_missing_shard(pipeline, tmp_path):
    out = copy_shards(pipeline, tmp_path)
    os.unlink(out / "part-00001.parquet")
    line = one_error_line(cli("serialize", out, "--stage", 1, "--format", "patch", "--out", tmp_path / "qa"))
    assert "part-00001.parquet" in line and "missing" in line and "rerun specllm ingest" in line
    # --no-verify reads what the manifest names: the missing file is one line too
    line = one_error_line(
        cli("serialize", out, "--stage", 1, "--format", "patch", "--out", tmp_path / "qa", "--no-verify")
    )
    assert "part-00001.parquet" in line
    assert not (tmp_path / "qa").exists()


def test_a_shard_not_in_the_manifest(pipeline, tmp_path):
    out = copy_shards(pipeline, tmp_path)
    shutil.copy(out / "part-00000.parquet", out / "part-00007.parquet")
    line = one_error_line(cli("serialize", out, "--stage", 1, "--format", "patch", "--out", tmp_path / "qa"))
    assert "part-00007.parquet" in line and "not listed" in line


def test_manifest_without_hashes_or_unreadable(pipeline, tmp_path):
    out = copy_shards(pipeline, tmp_path)
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["shard_sha256"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SpecllmError, match="records no SHA-256"):
        verified_shard_paths(out)
    assert len(verified_shard_paths(out, verify=False)) == 3
    (out / MANIFEST).write_text('{"shards": [')
    with pytest.raises(SpecllmError, match="manifest.json: unreadable"):
        verified_shard_paths(out)


def changed_shard(p, tmp_path) -> Path:
    """The shards with one value (one star's teff) changed in one shard, the manifest untouched."""
    out = copy_shards(p, tmp_path, "changed")
    path = out / "part-00001.parquet"
    table = pq.read_table(path)
    teff = table.column("teff").to_pylist()
    teff[0] = (teff[0] or 0) + 1.0
    table = table.set_column(table.schema.get_field_index("teff"), "teff", pa.array(teff, pa.float32()))
    pq.write_table(table, path, compression="zstd")
    return out


def test_one_changed_value_makes_every_consumer_refuse_until_no_verify(pipeline, tmp_path):
    shards = changed_shard(pipeline, tmp_path)
    where = str(shards / "part-00001.parquet")
    qa, xm = tmp_path / "qa", tmp_path / "xm"
    apogee = tmp_path / "apogee.csv"
    apogee.write_text("APOGEE_ID,RA,DEC,TEFF,LOGG,FE_H\n2M00000000+0000000,0,0,5000,4.5,0\n")
    commands = {
        "serialize": ["serialize", shards, "--stage", 1, "--format", "patch", "--out", qa, "--no-count-tokens"],
        "crossmatch": ["crossmatch", shards, "--apogee", apogee, "--out", xm],
        # past the check, these two stop at once on a later, cheaper error: proof that --no-verify skipped it
        "benchmark": ["benchmark", shards, "--out", tmp_path / "b", "--models", "smallcnn", "--labels", "nolabel"],
        "train": ["train", "--stage", 1, "--data", shards, "--out", tmp_path / "t"],
    }
    for name, args in commands.items():
        line = one_error_line(cli(*args))
        assert where in line and "differs from the SHA-256" in line and "--no-verify" in line, name
    assert not qa.exists() and not xm.exists() and not (tmp_path / "b").exists() and not (tmp_path / "t").exists()
    assert cli(*commands["serialize"], "--no-verify").exit_code == 0
    assert cli(*commands["crossmatch"], "--no-verify").exit_code in (0, 1)  # 1: nothing matched
    assert "nolabel" in one_error_line(cli(*commands["benchmark"], "--no-verify"))
    assert "not QA shards" in one_error_line(cli(*commands["train"], "--no-verify"))


def test_qa_shards_changed_refuse_train(pipeline, tmp_path):
    qa = tmp_path / "qa"
    run_serialize(str(pipeline["shards"]), 1, "patch", str(qa), count=False)
    assert verified_shard_paths(qa)  # serialize's own manifest verifies
    with open(qa / "part-00000.parquet", "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 1]))
    line = one_error_line(cli("train", "--stage", 1, "--data", qa, "--out", tmp_path / "t"))
    assert "part-00000.parquet" in line and "rerun specllm serialize" in line


def test_a_single_parquet_file_is_verified_against_its_folder(pipeline, tmp_path):
    shard = pipeline["shards"] / "part-00000.parquet"
    assert verified_shard_paths(shard) == [str(shard)]
    alone = tmp_path / "alone.parquet"
    shutil.copy(shard, alone)
    with pytest.raises(SpecllmError, match="its folder has no manifest.json; give the shard folder, or --no-verify"):
        verified_shard_paths(alone)
    assert verified_shard_paths(alone, verify=False) == [str(alone)]
    changed = changed_shard(pipeline, tmp_path)
    with pytest.raises(SpecllmError, match="differs from the SHA-256"):
        verified_shard_paths(changed / "part-00001.parquet")


def test_seal_shards_and_manifest_fields(pipeline, tmp_path):
    manifest = json.loads((pipeline["shards"] / MANIFEST).read_text())
    assert manifest["shards"] == [f"part-{k:05d}.parquet" for k in range(3)]
    for name in manifest["shards"]:
        assert manifest["shard_sha256"][name] == file_sha256(pipeline["shards"] / name)
    changed = changed_shard(pipeline, tmp_path)
    seal_shards(changed)  # a deliberate change, sealed again, verifies
    assert len(verified_shard_paths(changed)) == 3


def test_one_line_escapes_control_characters():
    assert one_line("a\nb\tc") == "a\\nb\\tc" and one_line("é ok") == "é ok"


# ---------------------------------------------------------------- 5, 7. damaged shards, checkpoints, weights


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny patch-format run of 2 steps with a checkpoint after step 1 (for --resume) and a final model."""
    from specllm.config import GridConfig
    from specllm.train import run_train

    from .llmfactory import TINY_RECIPE, tiny_llama_dir, tiny_train_options, write_qa

    root = tmp_path_factory.mktemp("run")
    data = write_qa(root / "qa", "patch", n=8, grid=GridConfig().size, test_every=8)
    options = tiny_train_options(
        data, root / "run", tiny_llama_dir(root), recipe=dataclass_replace(TINY_RECIPE, save_every=1)
    )
    run_train(options)
    return root / "run"


def dataclass_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_corrupt_shard_is_one_line(pipeline, tmp_path):
    out = copy_shards(pipeline, tmp_path)
    (out / "part-00002.parquet").write_bytes(b"PAR1 this is no parquet file")
    seal_shards(out)  # sealed as it is: the check passes, the reader meets the damage
    for args in (
        ["serialize", out, "--stage", 1, "--format", "patch", "--out", tmp_path / "qa", "--no-count-tokens"],
        ["benchmark", out, "--out", tmp_path / "b", "--models", "smallcnn"],
    ):
        line = one_error_line(cli(*args))
        assert "part-00002.parquet: not a readable Parquet" in line
    assert not (tmp_path / "qa").exists() and not (tmp_path / "b").exists()
    truncated = copy_shards(pipeline, tmp_path, "truncated")
    data = (truncated / "part-00001.parquet").read_bytes()
    (truncated / "part-00001.parquet").write_bytes(data[: len(data) - 200])
    line = one_error_line(cli("crossmatch", truncated, "--apogee", tmp_path / "a.csv", "--out", tmp_path / "x"))
    assert "part-00001.parquet" in line and "differs from the SHA-256" in line


def test_truncated_checkpoint_for_resume_is_one_line(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "model")  # resume continues a run that has no final model yet
    ckpt = run / "checkpoints" / json.loads((run / "checkpoints" / "latest").read_text())["checkpoint"]
    args = ["train", "--stage", 1, "--data", tiny_run.parent / "qa", "--out", run, "--resume"]
    args += ["--base-model", tiny_run.parent / "tiny-llama", "--lora-r", 4, "--lora-alpha", 8]
    optimizer = ckpt / "optimizer.safetensors"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    line = one_error_line(cli(*args))
    assert str(optimizer) in line and "not a readable safetensors file" in line
    (ckpt / "trainer.json").write_text('{"step": 1, "param')
    (run / "checkpoints" / "latest").write_text("{")
    line = one_error_line(cli(*args))
    assert str(run / "checkpoints" / "latest") in line and "unreadable" in line


def test_garbage_weights_are_one_line(tiny_run, tmp_path, pipeline):
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "model", model)
    (model / "weights.safetensors").write_bytes(os.urandom(64))
    line = one_error_line(cli("infer", pipeline["shards"], "--model", model))
    assert str(model / "weights.safetensors") in line and "differs from the SHA-256 in spec.json" in line
    spec = json.loads((model / "spec.json").read_text())  # garbage whose hash was re-recorded: still one line
    (model / "spec.json").write_text(json.dumps(spec | {"weights_sha256": file_sha256(model / "weights.safetensors")}))
    line = one_error_line(cli("infer", pipeline["shards"], "--model", model))
    assert str(model / "weights.safetensors") in line and "not a readable safetensors file" in line
    (model / "spec.json").write_text("[1, 2")
    assert str(model / "spec.json") in one_error_line(cli("infer", pipeline["shards"], "--model", model))


def test_infer_gives_a_failed_row_per_unusable_input_and_goes_on(tiny_run, pipeline, tmp_path):
    import csv
    import io

    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"name": ["x", "y"], "value": [1.0, 2.0]}), foreign)
    changed = changed_shard(pipeline, tmp_path)
    unfinished = copy_shards(pipeline, tmp_path, "unfinished")
    os.unlink(unfinished / MANIFEST)
    inputs = [foreign, changed, pipeline["shards"], unfinished]
    res = cli("infer", *inputs, "--model", tiny_run)
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["file"] for r in rows[:2]] == [str(foreign), str(changed)] and rows[-1]["file"] == str(unfinished)
    assert len(rows) == 3 + N and [r["status"] for r in rows[2:-1]] == ["ok"] * N
    assert "verified against its folder" in rows[0]["status"] and "differs from the SHA-256" in rows[1]["status"]
    assert "no manifest.json" in rows[-1]["status"]
    res = cli("infer", foreign, "--model", tiny_run, "--no-verify")  # read as shards: not one
    assert res.exit_code == 1 and "missing column(s) spec_id, flux, mask" in res.stdout


def test_newline_in_a_file_name_stays_on_one_line(pipeline, tmp_path):
    odd = tmp_path / "in"
    odd.mkdir()
    bad = odd / "bad\nname.fits"
    bad.write_bytes(b"SIMPLE  = garbage")
    shutil.copy(next(pipeline["fits"].iterdir()), odd / "good.fits.gz")
    res = cli("ingest", odd, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if "rejected" in line and "bad" in line]
    assert len(lines) == 1 and "bad\\nname.fits" in lines[0]
    line = one_error_line(cli("serialize", tmp_path / "no\nwhere", "--stage", 1, "--format", "patch", "--out", "q"))
    assert "no\\nwhere" in line


# ---------------------------------------------------------------- 4. ids and positions a column cannot hold


def bad_header_inputs(p, directory: Path) -> dict[str, str]:
    """Three good files and four with a header the shards cannot hold: file name -> expected reject reason."""
    from .fitsfactory import write_coadd

    directory.mkdir()
    good = sorted(p["fits"].iterdir())[:3]
    for f in good:
        shutil.copy(f, directory / f.name)
    cases = {
        "huge.fits": ({"obsid": 10**30}, "bad obsid"),
        "half.fits": ({"obsid": 1.5}, "bad obsid"),
        "ra.fits": ({"obsid": 1, "ra": 1e308}, "bad position"),
        "dec.fits": ({"obsid": 2, "dec": -1e308}, "bad position"),
    }
    for name, (kw, _) in cases.items():
        write_coadd(directory / name, **kw)
    return {name: reason for name, (_, reason) in cases.items()}


def test_obsid_beyond_int64_and_bad_positions_are_rejected_per_spectrum(pipeline, tmp_path):
    cases = bad_header_inputs(pipeline, tmp_path / "in")
    res = cli("ingest", tmp_path / "in", "--out", tmp_path / "o")
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    rejects = pq.read_table(tmp_path / "o" / "rejects.parquet").to_pylist()
    assert {Path(r["file"]).name: r["reason"] for r in rejects} == cases
    assert "1000000000000000000000000000000" in " ".join(r["detail"] for r in rejects)
    manifest = json.loads((tmp_path / "o" / MANIFEST).read_text())
    assert manifest["counts"]["kept"] == 3  # the good spectra are all kept
    assert len(verified_shard_paths(tmp_path / "o")) == 1


def test_infer_parquet_output_survives_a_huge_obsid(tiny_run, pipeline, tmp_path):
    cases = bad_header_inputs(pipeline, tmp_path / "in")
    out = tmp_path / "labels.parquet"
    res = cli("infer", tmp_path / "in", "--model", tiny_run, "--output", out)
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    rows = {Path(r["file"]).name: r for r in pq.read_table(out).to_pylist()}
    assert len(rows) == 7 and sum(r["status"] == "ok" for r in rows.values()) == 3
    for name, reason in cases.items():
        assert rows[name]["status"].startswith(reason) and rows[name]["obsid"] is None


# ---------------------------------------------------------------- 6. output trouble: read-only, no space, disk full


def test_unwritable_out_is_one_line_before_any_work(pipeline, tmp_path, monkeypatch):
    import errno
    import tempfile

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    line = one_error_line(cli(*ingest_args(pipeline, a_file / "out")), EXIT_OUTPUT)
    assert str(a_file) in line and "is not a directory" in line

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # what a read-only mount answers (root ignores chmod)
    out = tmp_path / "ro"
    for args in (
        ingest_args(pipeline, out),
        ["serialize", pipeline["shards"], "--stage", 1, "--format", "patch", "--out", out],
        ["crossmatch", pipeline["shards"], "--apogee", pipeline["catalog"], "--out", out],
        ["infer", pipeline["shards"], "--model", tmp_path / "no-model", "--output", out / "x.csv"],
        ["train", "--stage", 1, "--data", pipeline["shards"], "--out", out],
        ["benchmark", pipeline["shards"], "--out", out],
    ):
        line = one_error_line(cli(*args), EXIT_OUTPUT)
        assert "Read-only file system" in line and str(out) in line, args[0]
    assert not out.exists()


def test_too_little_free_space_is_refused_before_the_work(pipeline, tmp_path, monkeypatch):
    import shutil as shutil_module
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**9, 10**9 - 5000, 5000))
    line = one_error_line(cli(*ingest_args(pipeline, tmp_path / "o")), EXIT_OUTPUT)
    assert "needs about 0.1 MB" in line and "0.0 MB free" in line
    line = one_error_line(
        cli("serialize", pipeline["shards"], "--stage", 1, "--format", "patch", "--out", tmp_path / "q"), EXIT_OUTPUT
    )
    assert "free some space" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "q").exists()


def test_disk_full_mid_run_leaves_no_partial_output(pipeline, tmp_path, monkeypatch):
    import errno

    real = pq.write_table
    calls = {"n": 0}

    def fills_up(table, where, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            real(table, where, **kwargs)  # a part of the file reached the disk, then it was full
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", fills_up)
    out = tmp_path / "o"
    line = one_error_line(cli(*ingest_args(pipeline, out)), EXIT_OUTPUT)
    assert "No space left on device" in line and ".part-00001.parquet" in line
    assert sorted(p.name for p in out.glob("*parquet*")) == ["part-00000.parquet"]  # no temporary, no half shard
    assert not (out / MANIFEST).exists()
    monkeypatch.setattr(pq, "write_table", real)
    assert cli(*ingest_args(pipeline, out)).exit_code == 0  # resumes
    assert (
        json.loads((out / MANIFEST).read_text())["content_hash"]
        == json.loads((pipeline["shards"] / MANIFEST).read_text())["content_hash"]
    )

    qa = tmp_path / "qa"
    run_serialize(str(out), 1, "patch", str(qa), count=False)
    before = {p.name: p.read_bytes() for p in qa.iterdir()}
    calls["n"] = 1  # its first shard meets the full disk
    monkeypatch.setattr(pq, "write_table", fills_up)
    args = ["serialize", out, "--stage", 1, "--format", "compact", "--out", qa, "--no-count-tokens"]
    line = one_error_line(cli(*args), EXIT_OUTPUT)
    assert "No space left on device" in line
    assert {p.name: p.read_bytes() for p in qa.iterdir()} == before  # the earlier output is as it was
    assert not list(tmp_path.glob(".*serialize-*"))


# ---------------------------------------------------------------- 3, 5. catalogue values and spectrum identity


def catalogue_case(tmp_path, edit: dict[int, dict]) -> tuple[Path, Path, list[dict]]:
    """8 COADD spectra (each with its OBSID) and a catalogue of them, rows edited as `edit` says (row index ->
    new values, written as text)."""
    rows = make_dataset(tmp_path / "fits", 8, layouts=("coadd",))
    for i, values in edit.items():
        rows[i] = rows[i] | values
    return tmp_path / "fits", write_catalog(tmp_path / "labels.csv", rows, CATALOG_COLUMNS), rows


def test_catalogue_obsid_never_rewrites_the_spectrum_identity(tmp_path):
    fits_dir, catalog, rows = catalogue_case(tmp_path, {2: {"obsid": 12345}, 5: {"obsid": 1.5}})
    res = cli("ingest", fits_dir, "--catalog", catalog, "--out", tmp_path / "o")
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    rejects = {Path(r["file"]).name: r for r in pq.read_table(tmp_path / "o" / "rejects.parquet").to_pylist()}
    conflict = rejects[rows[2]["filename"]]
    assert conflict["reason"] == "obsid conflict"
    assert "the file's OBSID is 900000003, row 3 of" in conflict["detail"] and "has obsid 12345" in conflict["detail"]
    assert rejects[rows[5]["filename"]]["reason"] == "bad catalogue value"
    assert "row 6, column obsid: 1.5 is not an integer id" in rejects[rows[5]["filename"]]["detail"]
    kept = pq.read_table(tmp_path / "o" / "part-00000.parquet").to_pylist()
    assert len(kept) == 6 and 12345 not in {r["obsid"] for r in kept} and 1 not in {r["obsid"] for r in kept}
    assert all(r["spec_id"] == str(r["obsid"]) for r in kept)
    assert "obsid conflict" in res.stderr and "1 row(s) hold values that do not parse" in res.stderr


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("teff", "abc", "'abc' is not a number"),
        ("obsid", "1e30", "is outside 0..2**63-1"),
        ("obsid", "x", "'x' is not an integer id"),
    ],
)
def test_a_value_that_does_not_parse_is_a_per_row_reject_or_with_strict_a_usage_error(tmp_path, column, value, reason):
    fits_dir, catalog, rows = catalogue_case(tmp_path, {4: {column: value}})
    res = cli("ingest", fits_dir, "--catalog", catalog, "--out", tmp_path / "o")
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    summary = [line for line in res.stderr.splitlines() if "do not parse" in line]
    assert len(summary) == 1 and f"row 5, column {column}:" in summary[0] and reason in summary[0]
    rejects = pq.read_table(tmp_path / "o" / "rejects.parquet").to_pylist()
    assert [(Path(r["file"]).name, r["reason"]) for r in rejects] == [(rows[4]["filename"], "bad catalogue value")]
    assert json.loads((tmp_path / "o" / MANIFEST).read_text())["counts"]["kept"] == 7
    line = one_error_line(cli("ingest", fits_dir, "--catalog", catalog, "--out", tmp_path / "s", "--strict"))
    assert str(catalog) in line and f"row 5, column {column}:" in line and reason in line
    assert not (tmp_path / "s").exists()  # refused before any spectrum was read


def test_a_boolean_log_g_column_never_becomes_one(tmp_path):
    fits_dir, catalog, rows = catalogue_case(tmp_path, {i: {"logg": "true" if i % 2 else "false"} for i in range(8)})
    res = cli("ingest", fits_dir, "--catalog", catalog, "--out", tmp_path / "o")
    assert res.exit_code == 1 and "no spectrum was kept" in res.stderr and "Traceback" not in res.output
    assert "column logg: True is not a number" in res.stderr
    assert not list((tmp_path / "o").glob("part-*.parquet"))


def test_catalogue_positions_outside_the_sky_are_rejected(tmp_path):
    fits_dir, catalog, rows = catalogue_case(tmp_path, {1: {"ra": 1e308}, 3: {"dec": -1e308}, 6: {"ra": 360.0}})
    res = cli("ingest", fits_dir, "--catalog", catalog, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    rejects = {Path(r["file"]).name: r for r in pq.read_table(tmp_path / "o" / "rejects.parquet").to_pylist()}
    assert {rows[i]["filename"] for i in (1, 3, 6)} == set(rejects)
    assert {r["reason"] for r in rejects.values()} == {"bad position"}
    assert "dec = -1e+308 is outside [-90, 90]" in rejects[rows[3]["filename"]]["detail"]


def test_crossmatch_failing_mid_run_leaves_its_earlier_output(pipeline, tmp_path, monkeypatch):
    import errno

    spectra = pq.read_table(pipeline["shards"] / "part-00000.parquet", columns=["ra", "dec"]).to_pylist()
    apogee = tmp_path / "apogee.csv"
    lines = [f"2M0000000{i}+0000000,{s['ra']},{s['dec']},5000,4.5,0.1" for i, s in enumerate(spectra)]
    apogee.write_text("APOGEE_ID,RA,DEC,TEFF,LOGG,FE_H\n" + "\n".join(lines) + "\n")
    xm = tmp_path / "xm"
    assert cli("crossmatch", pipeline["shards"], "--apogee", apogee, "--out", xm).exit_code == 0
    before = {p.name: p.read_bytes() for p in xm.iterdir()}
    assert len(verified_shard_paths(xm)) == 3
    real = pq.write_table

    def full(table, where, **kwargs):
        if "part-00001" in str(where):
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", full)
    line = one_error_line(cli("crossmatch", pipeline["shards"], "--apogee", apogee, "--out", xm), EXIT_OUTPUT)
    assert "No space left on device" in line
    assert {p.name: p.read_bytes() for p in xm.iterdir()} == before
    assert not list(tmp_path.glob(".*crossmatch-*"))


# ---------------------------------------------------------------- model folders verified like shards (issue 24, item 7)


def _model_copy(tiny_run, tmp_path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "model", model)
    return model


def _respec(model: Path, **changes) -> None:
    spec = json.loads((model / "spec.json").read_text())
    (model / "spec.json").write_text(json.dumps(spec | changes))


def test_model_weights_hash_is_recorded_and_a_flipped_bit_refused(tiny_run, tmp_path, pipeline):
    from specllm.runs import ModelSpec

    model = _model_copy(tiny_run, tmp_path)
    assert ModelSpec.from_json(model / "spec.json").weights_sha256 == file_sha256(model / "weights.safetensors")
    weights = model / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit of one tensor value: still a valid safetensors file
    weights.write_bytes(bytes(data))
    line = one_error_line(cli("infer", pipeline["shards"], "--model", model))
    assert str(weights) in line and "differs from the SHA-256 in spec.json" in line


def test_the_shipped_model_records_its_weights_hash():
    from specllm.predict import default_model_dir
    from specllm.runs import ModelSpec, read_weights

    path = default_model_dir()
    assert ModelSpec.from_json(path / "spec.json").weights_sha256 == file_sha256(path / "weights.safetensors")
    assert read_weights(path)  # verified


def test_domain_check_hash_is_recorded_and_a_flipped_bit_refused(tmp_path):
    from specllm.domain import DOMAIN_JSON, DOMAIN_WEIGHTS, load_domain
    from specllm.predict import default_model_dir

    shipped = default_model_dir()
    assert json.loads((shipped / DOMAIN_JSON).read_text())["weights_sha256"] == file_sha256(shipped / DOMAIN_WEIGHTS)
    model = tmp_path / "m"
    model.mkdir()
    for name in (DOMAIN_JSON, DOMAIN_WEIGHTS):
        (model / name).write_bytes((shipped / name).read_bytes())
    assert load_domain(model) is not None
    data = bytearray((model / DOMAIN_WEIGHTS).read_bytes())
    data[-3] ^= 0x01  # one bit of one value: still a readable safetensors file
    (model / DOMAIN_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(SpecllmError, match="domain.safetensors: its SHA-256 differs"):
        load_domain(model)


def test_non_finite_weights_are_refused_in_one_line(tiny_run, tmp_path, pipeline):
    import torch
    from safetensors.torch import load_file, save_file

    model = _model_copy(tiny_run, tmp_path)
    weights = model / "weights.safetensors"
    state = load_file(str(weights))
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(weights))
    _respec(model, weights_sha256=file_sha256(weights))  # sealed as if written so: the values are still refused
    line = one_error_line(cli("infer", pipeline["shards"], "--model", model))
    assert str(weights) in line and "NaN or infinite" in line


def test_non_finite_outputs_give_a_failed_row_never_ok(tiny_run, tmp_path, pipeline):
    import csv
    import io

    model = _model_copy(tiny_run, tmp_path)
    spec = json.loads((model / "spec.json").read_text())
    _respec(model, value_std=[float("nan")] * len(spec["value_std"]))  # the read-out in label units is NaN
    res = cli("infer", pipeline["shards"], "--model", model)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output  # every row failed
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == N and {r["status"] for r in rows} == {"non-finite model output"}
    assert all(r["class"] == "" and r["teff"] == "" for r in rows)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"stage": "1"}, "'stage' should be int, got str"),
        ({"value_names": "teff"}, "'value_names' should be list[str], got str"),
        ({"value_mean": [None, 1, 2]}, "'value_mean' should be list[float]"),
        ({"value_std": [1.0]}, "differ in length"),
        ({"lora": {"r": "4"}}, "'lora' needs 'r' as int"),
        ({"patch_width": -64}, "'patch_width' is -64"),
        ({"stage": 7}, "'stage' is 7"),
        ({"weights_sha256": 5}, "'weights_sha256' should be"),
        ({"quantize": "int3"}, "'quantize' should be one of 'nf4', 'none', got 'int3'"),
    ],
)
def test_spec_json_with_wrong_types_is_one_line(tiny_run, tmp_path, pipeline, change, words):
    model = _model_copy(tiny_run, tmp_path)
    _respec(model, **change)
    line = one_error_line(cli("infer", pipeline["shards"], "--model", model))
    assert str(model / "spec.json") in line and words in line


def test_spec_json_without_a_required_field_is_one_line(tiny_run, tmp_path, pipeline):
    model = _model_copy(tiny_run, tmp_path)
    spec = json.loads((model / "spec.json").read_text())
    del spec["value_names"]
    (model / "spec.json").write_text(json.dumps(spec))
    assert "no 'value_names'" in one_error_line(cli("infer", pipeline["shards"], "--model", model))


# ---------------------------------------------------------------- hostile inputs (issue 24): caps, FIFOs, devices


def hostile_folder(p, directory: Path) -> dict[str, str]:
    """The pipeline's FITS files plus a gzip bomb, a header declaring NAXIS2 = 10^9 and a FIFO named like a
    spectrum, all in one folder: {file name: the reason expected}."""
    from .fitsfactory import write_declared_naxis2, write_gzip_bomb

    shutil.copytree(p["fits"], directory)
    write_gzip_bomb(directory / "bomb.fits.gz", inflated_mb=12)  # beyond --max-input-mb 8
    write_declared_naxis2(directory / "naxis2.fits.gz")
    os.mkfifo(directory / "a.fits.gz")
    return {
        "bomb.fits.gz": "too large: the gzip inflates to more than 8 MB",
        "naxis2.fits.gz": "too large: HDU 1 declares",
        "a.fits.gz": "not a regular file: a FIFO",
    }


def run_bounded(args: list, timeout: float = 240) -> subprocess.CompletedProcess:
    """The real command in a subprocess with a time limit: a FIFO read would hang it, not the suite."""
    specllm = Path(sys.executable).with_name("specllm")
    try:
        return subprocess.run([str(specllm), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"specllm {args[0]} still running after {timeout} s (a FIFO or device was read)")


def test_infer_and_ingest_refuse_bombs_huge_headers_and_fifos_in_one_line_each(tiny_run, pipeline, tmp_path):
    import csv

    folder = tmp_path / "in"
    expected = hostile_folder(pipeline, folder)
    out = tmp_path / "out.csv"
    res = run_bounded(["infer", folder, "--model", tiny_run, "-o", out, "--max-input-mb", 8])
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    rows = {Path(r["file"]).name: r for r in csv.DictReader(out.open())}
    assert len(rows) == N + 3 and sum(r["status"] == "ok" for r in rows.values()) == N  # the others all written
    for name, reason in expected.items():
        assert reason in rows[name]["status"]
        [line] = [ln for ln in res.stderr.splitlines() if name in ln]
        assert line.startswith(str(folder / name)) and reason in line
    args = ["ingest", folder, "--catalog", pipeline["catalog"], "--out", tmp_path / "shards", "--max-input-mb", 8]
    res = run_bounded(args)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    for name, reason in expected.items():
        [line] = [ln for ln in res.stderr.splitlines() if name in ln]
        assert (
            line.startswith(f"{folder / name}: rejected: {reason.split(':')[0]}") and reason.split(": ", 1)[1] in line
        )
    assert f"read {N + 3}, kept {N}, rejected 3" in res.stderr


# ---------------------------------------------------------------- real limits (issue 24, item 4)


def _file_size_limit(max_bytes: int):
    """preexec_fn of a child process whose files cannot grow past `max_bytes` (RLIMIT_FSIZE, as `ulimit -f`), with
    SIGXFSZ ignored so that the write past it fails with EFBIG ('File too large') instead of killing the process."""

    def limit() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit


def _run_limited(args, max_bytes: int):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "specllm", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, preexec_fn=_file_size_limit(max_bytes))


def _one_output_error(proc) -> str:
    assert proc.returncode == EXIT_OUTPUT, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("specllm: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_output_past_the_file_size_limit_is_one_line_and_the_previous_output_stays(tiny_run, pipeline, tmp_path):
    out = tmp_path / "o.csv"  # (a binary format's limit: the full filesystem below)
    one = next(pipeline["fits"].iterdir())
    assert cli("infer", one, "--model", tiny_run, "-o", out, "-q").exit_code == 0  # the previous output
    before = out.read_bytes()
    proc = _run_limited(["infer", pipeline["fits"], "--model", tiny_run, "-o", out, "-q"], len(before) + 200)
    line = _one_output_error(proc)
    assert "File too large" in line and str(out) in line and "--resume" in line
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary left beside it


def test_serialize_past_the_file_size_limit_leaves_the_previous_qa_shards(pipeline, tmp_path):
    qa = tmp_path / "qa"
    shutil.copytree(pipeline["root"] / "qa", qa)
    before = {p.name: p.read_bytes() for p in qa.iterdir()}
    args = ["serialize", pipeline["shards"], "--stage", 1, "--format", "patch", "--out", qa, "--no-count-tokens"]
    line = _one_output_error(_run_limited(args, 4096))
    assert "File too large" in line
    assert {p.name: p.read_bytes() for p in qa.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["qa"]  # no staging folder, no lock left


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1 MiB tmpfs mounted for the test, where the sandbox allows it (root with CAP_SYS_ADMIN), else skipped."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_small_filesystem_is_one_line_and_the_previous_output_stays(tiny_run, pipeline, small_filesystem):
    import subprocess
    import sys

    out = small_filesystem / "o.parquet"
    one = next(pipeline["fits"].iterdir())
    assert cli("infer", one, "--model", tiny_run, "-o", out, "-q").exit_code == 0
    before = out.read_bytes()
    free = shutil.disk_usage(small_filesystem).free
    (small_filesystem / "filler").write_bytes(b"x" * (free - 3 * 4096))  # three pages left
    inputs = [pipeline["fits"]] * 4  # 36 rows: more than three pages
    cmd = [sys.executable, "-m", "specllm", "infer", *map(str, inputs), "--model", str(tiny_run), "-o", str(out), "-q"]
    line = _one_output_error(subprocess.run(cmd, capture_output=True, text=True, timeout=600))
    assert "No space left on device" in line and str(out) in line
    assert out.read_bytes() == before


# ---------------------------------------------------------------- consumers record what they verified (issue 24, item 8)


def test_a_resealed_edit_changes_what_the_next_stage_records(pipeline, tmp_path):
    """A shard edited and its sha256 re-sealed passes the check (the manifest says so), but the next stage no longer
    copies the stale `content_hash` claim: it records the hash of the shards it verified, which changed."""
    from specllm.shards import read_manifest, shards_sha256

    shards = changed_shard(pipeline, tmp_path)
    manifest = read_manifest(shards)
    seal_shards(shards, {k: v for k, v in manifest.items() if k not in ("shards", "shard_sha256")})
    assert read_manifest(shards)["content_hash"] == manifest["content_hash"]  # the stale claim stays
    edited = run_serialize(str(shards), 1, "patch", str(tmp_path / "qa"), count=False)
    recorded = json.loads((tmp_path / "qa" / MANIFEST).read_text())
    original = json.loads((pipeline["root"] / "qa" / MANIFEST).read_text())
    assert recorded["source_shards_sha256"] == shards_sha256(read_manifest(shards))
    assert recorded["source_shards_sha256"] != original["source_shards_sha256"]
    assert "source_content_hash" not in recorded
    assert edited.content_hash != pipeline["qa_hash"]  # its own content hash follows the data it wrote


# ---------------------------------------------------------------- the Python API: one error type (issue 24, item 8)


@pytest.mark.parametrize(
    "args, words",
    [
        ((None,), "not None"),
        ((42,), "not int"),
        (("WAVE", [[[1.0] * 3] * 2] * 2), "flux is 3-D"),
        (("WAVE", [1.0] * 3, [1.0] * 2), "ivar has shape (2,)"),
        (("WAVE", [1.0] * 3, None, [True] * 5), "mask has shape (5,)"),
        (("WAVE", ["a", "b", "c"]), "flux: not an array of numbers"),
    ],
)
def test_bad_api_arguments_raise_one_specllm_error(args, words):
    import numpy as np

    from specllm.api import _items
    from specllm.config import CleanConfig, GridConfig

    wave = np.array([4000.0, 5000.0, 6000.0])
    args = tuple(wave if a == "WAVE" else a for a in args)
    spectra = args[0] if len(args) == 1 else args
    with pytest.raises(SpecllmError, match=words.replace("(", r"\(").replace(")", r"\)")):
        list(_items(spectra, GridConfig(), CleanConfig()))


def test_decreasing_wavelengths_fail_that_spectrum_only():
    import numpy as np

    from specllm.api import _items
    from specllm.config import CleanConfig, GridConfig

    wave = np.linspace(3700.0, 9000.0, 3000)
    flux = np.vstack([np.ones(3000), np.ones(3000)])
    items = list(_items((np.vstack([wave, wave[::-1]]), flux), GridConfig(), CleanConfig()))
    assert [i.status for i in items] == ["ok", "bad wavelength: wavelengths are not increasing"]


def test_api_config_outside_its_declared_range_is_one_specllm_error():
    from specllm.api import Model
    from specllm.config import CleanConfig, InferConfig, check_ranges

    with pytest.raises(SpecllmError, match=r"InferConfig.batch_size must be >= 1 \(got 0\)"):
        Model(None, config=InferConfig(batch_size=0))
    with pytest.raises(SpecllmError, match=r"InferConfig.clean.decimals must be between 0 and 10 \(got -5\)"):
        check_ranges(InferConfig(clean=CleanConfig(decimals=-5)))
    with pytest.raises(SpecllmError, match="an InferConfig is expected"):
        Model(None, config={"batch_size": 4})
    check_ranges(InferConfig())  # the defaults are inside their ranges


def test_the_same_weights_are_the_same_file(tmp_path):
    """Two processes writing equal tensors write equal bytes (safetensors' metadata map is serialised in a
    per-process random order: one key keeps the file, and so the weights' SHA-256, reproducible)."""
    import subprocess
    import sys

    code = (
        "import sys, torch; from specllm.domain import Domain, save_domain; import numpy as np; "
        "from specllm.runs import WEIGHTS; from safetensors.torch import save_file; "
        "from specllm.files import atomic_write; from pathlib import Path; out = Path(sys.argv[1]); out.mkdir(); "
        "d = Domain(np.zeros(3), np.ones((2, 3)), np.zeros((4, 2)), 1.0, 2, ['teff'], [0.0], [1.0], ['G'], 0.0, "
        "scale=np.ones(2), residual_threshold=1.0); save_domain(d, out)"
    )
    names = ("a", "b", "c", "d", "e", "f")  # two metadata keys: all six alike by chance 1 time in 32
    for name in names:
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True)
    blobs = {(tmp_path / n / "domain.safetensors").read_bytes() for n in names}
    assert len(blobs) == 1
