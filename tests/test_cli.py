"""The `specllm` command line: usage errors, help and options in-process (CliRunner); bad input, exit codes and
crash safety as a user runs it (subprocess)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import typer
from astropy.io import fits
from typer.testing import CliRunner

from specllm.cli import app
from specllm.cliopts import Opt, config_options, field_docs
from specllm.config import BenchmarkConfig, InferConfig, TrainOptions

from .fitsfactory import (
    log_grid,
    make_dataset,
    stellar_flux,
    write_catalog,
    write_coadd,
    write_dr1,
    write_image,
    write_medium_resolution,
    write_sdss,
)

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "300"
    return env


def specllm(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "specllm.cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=_env(), timeout=timeout,
    )  # fmt: skip


def _no_traceback(proc):
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------- bad input


def _bad_inputs(d: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (path, reason, a word the detail must contain). Every case is a distinct kind of bad file."""
    d.mkdir(parents=True, exist_ok=True)
    wave = log_grid()
    good = write_coadd(d / "truncated.fits.gz", obsid=501).read_bytes()
    (d / "truncated.fits.gz").write_bytes(good[: len(good) // 3])
    (d / "notes.fits").write_text("these are my observing notes, not FITS\n")
    (d / "empty.fits.gz").write_bytes(b"")
    fits.PrimaryHDU(np.ones((3, 500), np.float32)).writeto(d / "other-image.fits")
    write_medium_resolution(d / "med-58408-TD230151N343645T01_sp01-015.fits.gz")
    write_sdss(d / "spec-0266-51602-0031.fits.gz")
    write_coadd(d / "all-masked.fits.gz", obsid=502, ormask=np.ones(wave.size))
    write_coadd(d / "negative.fits.gz", obsid=503, flux=-stellar_flux(wave))
    nan_flux = stellar_flux(wave)
    nan_flux[1000:1010] = np.nan
    nan_flux[2000] = np.inf
    write_image(d / "nan.fits.gz", obsid=504, flux=nan_flux)
    red = wave[wave > 7200]
    write_coadd(d / "red-only.fits.gz", obsid=505, wave=red, flux=stellar_flux(red))
    write_coadd(d / "no-snr.fits.gz", obsid=506, snr={"g": 30.0, "r": -9999.0, "i": -9999.0})
    write_coadd(d / "dup-file-a.fits.gz", obsid=507)
    write_coadd(d / "dup-file-b.fits.gz", obsid=507)  # same OBSID as the one before: rejected
    write_coadd(d / "dup-catalogue.fits.gz", obsid=508)  # two catalogue rows have obsid 508
    cols = [fits.Column(name=n, format=f"{k}E", array=np.ones((1, k), np.float32))
            for n, k in (("FLUX", 3909), ("IVAR", 3909), ("WAVELENGTH", 3000), ("ORMASK", 3909))]  # fmt: skip
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"], primary.header["OBSID"] = "LAMOST", 509  # a LAMOST file, not an array table
    fits.HDUList([primary, fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(d / "ragged.fits")
    return {
        "truncated.fits.gz": ("unreadable", "gzip"),
        "notes.fits": ("unreadable", "not a readable FITS file"),
        "empty.fits.gz": ("unreadable", "not a readable FITS file"),
        "other-image.fits": ("unknown layout", "LAMOST"),
        "med-58408-TD230151N343645T01_sp01-015.fits.gz": ("unsupported layout", "medium-resolution"),
        "spec-0266-51602-0031.fits.gz": ("unsupported layout", "SDSS"),
        "all-masked.fits.gz": ("no good pixels", "unmasked"),
        "negative.fits.gz": ("non-positive normaliser", "max"),
        "nan.fits.gz": ("non-finite flux", "11 NaN/inf"),
        "red-only.fits.gz": ("poor coverage", "3800-8700"),
        "no-snr.fits.gz": ("no SNR", "-9999"),
        "dup-file-b.fits.gz": ("duplicate obsid", "dup-file-a.fits.gz"),
        "dup-catalogue.fits.gz": ("duplicate obsid", "more than once"),
        "ragged.fits": ("bad layout", "length"),
        "missing.fits.gz": ("unreadable", "no such file"),  # never written: a path that does not exist
    }


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    d = tmp / "spectra"
    cases = _bad_inputs(d)
    write_dr1(d / "good-dr1.fits.gz")
    write_image(d / "good-image.fits", obsid=601)
    write_coadd(d / "good-coadd.fits.gz", obsid=602)
    rows = [dict(obsid=o, teff=5000.0, logg=4.0, feh=0.0) for o in (501, 502, 503, 504, 505, 507, 508, 508, 601, 602)]
    catalog = write_catalog(tmp / "labels.csv", rows)
    args = [
        "ingest",
        d,
        d / "missing.fits.gz",
        "--catalog",
        catalog,
        "--out",
        tmp / "out",
        "--workers",
        2,
        "--shard-size",
        7,
    ]
    return tmp, cases, args, specllm(*args)


def test_bad_inputs_one_line_each_rejects_table_and_exit_0(bad_run):
    tmp, cases, _, proc = bad_run
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # stdout carries data only
    lines = proc.stderr.splitlines()
    for name, (reason, word) in cases.items():
        mine = [line for line in lines if os.path.basename(line.split(": rejected: ")[0]) == name]
        assert len(mine) == 1, (name, lines)
        assert mine[0].startswith(str(tmp / "spectra" / name)) or mine[0].startswith(str(tmp / "spectra" / "missing"))
        assert f": rejected: {reason}" in mine[0] and word in mine[0], mine[0]
    rejects = {os.path.basename(r["file"]): r for r in pq.read_table(tmp / "out" / "rejects.parquet").to_pylist()}
    assert set(rejects) == set(cases)
    for name, (reason, word) in cases.items():
        assert rejects[name]["reason"] == reason and word in rejects[name]["detail"]
    assert f"ingest: read {len(cases) + 4}, kept 4, rejected {len(cases)}" in proc.stderr  # 3 good + dup-file-a
    manifest = json.loads((tmp / "out" / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == 4 and sum(manifest["counts"]["rejected"].values()) == len(cases)
    assert len(cases) >= 10


def test_strict_exits_1_and_resume_reports_rejects_again(bad_run):
    tmp, cases, args, _ = bad_run
    proc = specllm(*args, "--strict")
    _no_traceback(proc)
    assert proc.returncode == 1
    assert "resumed: 3 shard(s)" in proc.stderr  # same options (strict and workers aside): nothing redone
    assert sum(": rejected: " in line for line in proc.stderr.splitlines()) == len(cases)


def test_nothing_kept_exits_1(tmp_path):
    d = tmp_path / "spectra"
    (d / "x").mkdir(parents=True)
    (d / "x" / "a.fits").write_text("not fits")
    write_sdss(d / "b.fits.gz")
    proc = specllm("ingest", d, "--out", tmp_path / "out")
    _no_traceback(proc)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == "specllm: error: no spectrum was kept"
    assert pq.read_table(tmp_path / "out" / "rejects.parquet").num_rows == 2


def test_catalogue_missing_column_exits_2_before_any_work(tmp_path):
    rows = make_dataset(tmp_path / "spectra", 2)
    catalog = write_catalog(tmp_path / "labels.csv", rows, ("filename", "obsid", "logg", "feh"))
    proc = specllm("ingest", tmp_path / "spectra", "--catalog", catalog, "--out", tmp_path / "out")
    _no_traceback(proc)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"specllm: error: {catalog}: catalogue lacks required column 'teff'"
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- usage (in-process, typer's CliRunner)

RUNNER_ENV = {"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
PIPELINE = ["ingest", "crossmatch", "serialize", "train", "infer", "benchmark", "compare-external"]


def invoke(*args):
    return CliRunner(env=RUNNER_ENV).invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    "make_args, words",
    [
        (lambda t: ["ingest", str(t / "*.nothing"), "--out", t / "o"], "matches no file"),
        (lambda t: ["ingest", t, "--catalog", t / "absent.csv", "--out", t / "o"], "no such catalogue"),
        (
            lambda t: ["ingest", t, "--norm", "mean", "--out", t / "o"],
            "'mean' is not one of 'max', 'quantile', 'median'",
        ),
        (lambda t: ["ingest", t], "--out"),
        (lambda t: ["infer", t, "--decode", "beam"], "'beam' is not one of 'head', 'text'"),
        (lambda t: ["infer", t, "--strict", "true"], "--strict is a flag and takes no value (got 'true')"),
        (lambda t: ["ingest", t, "--out", t / "o", "--no-mask-ormask", "0"], "--no-mask-ormask is a flag"),
        (lambda t: ["compare-external", t, "--catalog", t, "--out", t / "o", "--survey", "sdss"], "'sdss' is not one"),
        (lambda t: ["compare-external", t, "--catalog", t, "--out", t / "o", "--match", "name"], "'name' is not one"),
        (lambda t: ["train", "--stage", "3", "--data", t, "--out", t / "o"], "'3' is not one of '1', '2'"),
        (lambda t: ["train", "--stage", "1", "--data", t, "--out", t / "o", "--save-dtype", "int8"], "'int8'"),
        (lambda t: ["train", "--stage", "1", "--data", t, "--out", t / "o", "--recipe", "nope"], "no such recipe"),
        (lambda t: ["serialize", t, "--stage", "1", "--format", "haiku", "--out", t / "o"], "'haiku' is not one"),
        (lambda t: ["benchmark", t, "--out", t / "o", "--sizes", "10,x"], "--sizes must be comma-separated integers"),
    ],
    ids=[
        "glob",
        "catalogue",
        "norm",
        "no-out",
        "decode",
        "strict-true",
        "no-flag-0",
        "survey",
        "match",
        "stage",
        "save-dtype",
        "recipe",
        "format",
        "sizes",
    ],  # fmt: skip
)
def test_usage_errors_exit_2(tmp_path, make_args, words):
    res = invoke(*make_args(tmp_path))
    assert res.exit_code == 2, res.output
    assert words in " ".join(res.output.replace("│", " ").split()), res.output
    assert "Traceback" not in res.output


def test_help_lists_commands_in_pipeline_order_and_plain_flags():
    res = invoke("--help")
    assert res.exit_code == 0
    listed = [
        line.split()[1] for line in res.output.splitlines() if line.startswith("│ ") and line.split()[1] in PIPELINE
    ]
    assert listed == PIPELINE
    for command in ["", *PIPELINE]:
        text = invoke(*([command] if command else []), "--help").output
        assert "<bool>" not in text, command  # flags take no value


def test_help_lists_the_paper_options_and_choices():
    text = invoke("ingest", "--help").output
    for option in ("--catalog", "--out", "--workers", "--balance", "--snr-min-r", "--snr-min-i", "--norm", "--decimals",
                   "--min-coverage", "--test-fraction", "--shard-size", "--strict", "--no-mask-ormask"):  # fmt: skip
        assert option in text
    choices = {
        "ingest": "<max|quantile|median>",
        "serialize": "<paper|compact|patch>",
        "train": "<float32|bfloat16|float16>",
        "infer": "<head|text>",
        "compare-external": "<generic|galah|gaia-eso|apogee|miles|lamost>",
    }
    for command, choice in choices.items():
        assert choice in invoke(command, "--help").output, command
    assert "<auto|id|sky>" in invoke("compare-external", "--help").output


def test_every_command_writes_with_out_and_dash_o():
    for command in PIPELINE:
        params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
        assert {"--out", "-o"} <= set(params["out"].opts), command
        assert all("--output" not in p.opts or p.hidden for p in params.values())


def test_option_help_and_defaults_come_from_the_dataclasses():
    assert field_docs(TrainOptions)["class_weight"] == "Weight of the class read-out's cross-entropy."
    train = {p.name: p for p in typer.main.get_command(app).commands["train"].params}
    assert train["class_weight"].default == TrainOptions.class_weight
    assert train["class_weight"].help == field_docs(TrainOptions)["class_weight"]
    serialize = {p.name: p for p in typer.main.get_command(app).commands["serialize"].params}
    assert serialize["base_model"].help == train["base_model"].help  # one text for one concept
    for command in typer.main.get_command(app).commands.values():
        for param in command.params:
            assert param.help, (command.name, param.name)
    assert config_options(Documented, "x", Opt("x", "--why"))  # a field with a docstring: an option
    with pytest.raises(TypeError, match="Documented.y has no docstring"):
        config_options(Documented, "y")


@dataclasses.dataclass
class Documented:
    x: int = 1
    """A documented field."""
    y: int = 2


def _captured_train(monkeypatch, *args):
    import specllm.train

    seen = []
    monkeypatch.setattr(specllm.train, "run_train", seen.append)
    res = invoke("train", "--stage", "1", "--data", "qa", "--out", "run", *args)
    assert res.exit_code == 0, res.output
    return seen[0]


# The shipped model's options as `make model` passed them before the recipe became a file (v1: trained on the whole
# train split, no validation split held out, uncertainties not rescaled).
SHIPPED_OPTIONS = (
    "--layers 8 --lora-r 16 --lora-alpha 32 --epochs 10 --batch-size 8 --grad-accum 1 --lr 5e-4 --head-lr-mult 3 "
    "--no-gradient-checkpointing --noise 0.02 --scale 0.1 --span-probability 0.25 --save-every 100 --save-dtype bfloat16 "
    "--no-validation --no-calibrate --quantize none"
).split()


def test_shipped_recipe_is_the_recipe_the_options_gave(monkeypatch, tmp_path):
    by_options = _captured_train(monkeypatch, *SHIPPED_OPTIONS)
    by_recipe = _captured_train(monkeypatch, "--recipe", "shipped-stage1")
    assert by_recipe == by_options and by_recipe.recipe.epochs == 10 and by_recipe.lora.r == 16
    assert by_recipe.patch.width == 64 and not by_recipe.validation and not by_recipe.report_test
    candidate = _captured_train(monkeypatch, "--recipe", "v2-candidate")
    assert candidate.patch.width == 128 and candidate.nll_beta == 0.5 and candidate.validation
    overridden = _captured_train(monkeypatch, "--recipe", "shipped-stage1", "--epochs", "2", "--gradient-checkpointing")
    assert overridden.recipe.epochs == 2 and overridden.recipe.gradient_checkpointing and overridden.lora.r == 16
    assert _captured_train(monkeypatch) == TrainOptions(data="qa", out="run")  # no recipe: the dataclass defaults
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"lora-r": 4, "class_weight": 0.5}))
    mine = _captured_train(monkeypatch, "--recipe", own)
    assert mine.lora.r == 4 and mine.class_weight == 0.5 and mine.recipe == TrainOptions("", "").recipe
    own.write_text(json.dumps({"lora_rank": 4}))
    res = invoke("train", "--stage", "1", "--data", "qa", "--out", "run", "--recipe", own)
    assert res.exit_code == 2 and "unknown option(s) lora_rank" in res.output


def test_old_names_are_hidden_aliases(monkeypatch, tmp_path):
    import specllm.benchmark
    import specllm.infer

    calls = []
    monkeypatch.setattr(specllm.infer, "run_infer", lambda *a, **k: calls.append(a) or (0, 1))
    assert invoke("infer", "x.fits", "--output", "a.csv").exit_code == 0
    assert invoke("infer", "x.fits", "-o", "b.csv", "--batch-size", "3").exit_code == 0
    assert [c[2] for c in calls] == ["a.csv", "b.csv"] and calls[1][3] == InferConfig(batch_size=3)
    runs = []
    monkeypatch.setattr(specllm.benchmark, "run_benchmark", lambda *a, **k: runs.append((a, k)))
    monkeypatch.setattr(specllm.benchmark, "summary_csv", lambda result: "")
    assert invoke("benchmark", tmp_path, "--out", tmp_path / "r", "--llm", "run1").exit_code == 0
    assert invoke("benchmark", tmp_path, "-o", tmp_path / "r", "--model", "run2", "--quick").exit_code == 0
    assert [k["llm"] for _, k in runs] == ["run1", "run2"]
    assert runs[1][0][2] == BenchmarkConfig(quick=True) and runs[0][0][2] == BenchmarkConfig()


# ---------------------------------------------------------------- crash safety

# Runs the CLI with one hook: "slow" sleeps after each shard; "hang" writes half of shard 4's temporary file and
# hangs there. Either way the test kills the process with SIGKILL.
RUNNER = r"""
import sys, time
import pyarrow.parquet as pq
import specllm.ingest as ingest
from specllm.files import atomic_write
mode = sys.argv.pop(1)
if mode == "slow":
    original = ingest.settle_chunk
    def slow(*args, **kwargs):
        record = original(*args, **kwargs)
        time.sleep(0.3)
        return record
    ingest.settle_chunk = slow
elif mode == "hang":
    original_write = ingest.write_table
    def write_table(path, table):
        if not str(path).endswith("part-00004.parquet"):
            return original_write(path, table)
        def half(tmp):
            pq.write_table(table, tmp)
            size = len(open(tmp, "rb").read())
            with open(tmp, "r+b") as fh:
                fh.truncate(size // 2)
            print("HALF-WRITTEN", flush=True)
            time.sleep(120)
        atomic_write(path, half)
    ingest.write_table = write_table
sys.argv[0] = "specllm"
from specllm.cli import main
main()
"""


def _start(mode, args):
    cmd = [sys.executable, "-c", RUNNER, mode, *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)


def _wait_for(proc, condition, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    raise AssertionError("timed out")


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _check_visible_shards(out: Path) -> int:
    """Every visible shard opens and holds what its record says; returns how many there are."""
    shards = sorted(out.glob("part-*.parquet"))
    for shard in shards:
        table = pq.read_table(shard)  # a half shard would fail here
        assert table.num_rows > 0 and len(table.column("flux")[0]) == 4901
        record = shard.with_suffix(".json")
        if record.exists():
            assert json.loads(record.read_text())["ids"] == table.column("spec_id").to_pylist()
    assert not (out / "manifest.json").exists()  # the run did not finish
    return len(shards)


def test_kill_9_then_rerun_gives_the_same_content_hash(tmp_path):
    rows = make_dataset(tmp_path / "spectra", 24, layouts=("coadd", "image"))
    catalog = write_catalog(
        tmp_path / "labels.csv", rows, ("filename", "obsid", "subclass", "snrr", "snri", "teff", "logg", "feh")
    )
    out = tmp_path / "out"
    args = ["ingest", tmp_path / "spectra", "--catalog", catalog, "--out", out, "--shard-size", 3]  # 8 shards

    proc = _start("slow", args)  # killed between shards, once shards 0 and 1 are complete
    _wait_for(proc, lambda: (out / "part-00001.json").exists())
    _kill(proc)
    assert 2 <= _check_visible_shards(out) < 8

    proc = _start("hang", args)  # killed while shard 4 is half written
    _wait_for(proc, lambda: proc.stdout.readline().strip() == "HALF-WRITTEN")
    temporaries = list(out.glob(".part-00004.parquet.*.tmp"))
    assert len(temporaries) == 1 and temporaries[0].stat().st_size > 0
    _kill(proc)
    assert not (out / "part-00004.parquet").exists() and _check_visible_shards(out) == 4

    rerun = specllm(*args)
    _no_traceback(rerun)
    assert rerun.returncode == 0 and "resumed: 4 shard(s)" in rerun.stderr
    assert not list(out.glob(".*.tmp"))  # the half-written temporary is cleaned up

    fresh = specllm(*args[:-4], "--out", tmp_path / "fresh", "--shard-size", 3)
    assert fresh.returncode == 0
    resumed, uninterrupted = (json.loads((d / "manifest.json").read_text()) for d in (out, tmp_path / "fresh"))
    assert resumed["content_hash"] == uninterrupted["content_hash"]
    assert resumed["counts"] == uninterrupted["counts"] == {"read": 24, "kept": 24, "rejected": {}}
    assert resumed["shards"] == [p.name for p in sorted(out.glob("part-*.parquet"))] == uninterrupted["shards"]


def test_every_file_specllm_writes_is_world_readable_under_umask_022(tmp_path, tiny_run):
    """Shards, manifests, rejects, QA shards, predictions in every format, reports, PNGs and a saved model: 0644
    files and 0755 folders with umask 022 (mkstemp/mkdtemp would have made them 0600/0700)."""
    import os
    import stat

    from specllm.config import ExternalConfig
    from specllm.external import compare_external
    from specllm.outputs import FORMATS
    from specllm.runs import load_model_dir, save_model_dir
    from specllm.serialize import run_serialize
    from tests.fitsfactory import make_shards

    work = tmp_path / "work"
    work.mkdir()
    old = os.umask(0o022)
    try:
        shards = make_shards(work, n=10)
        run_serialize(str(shards), 1, "patch", str(work / "qa"), count=False)
        for ext in sorted(FORMATS):
            result = invoke("infer", shards, "--model", tiny_run, "-o", work / f"predictions{ext}", "-q")
            assert result.exit_code == 0, result.output
        compare_external(
            str(work / "predictions.parquet"),
            str(work / "shards-catalog.csv"),
            str(work / "external"),
            ExternalConfig(survey="lamost", min_n=1),
        )
        model, spec, _ = load_model_dir(tiny_run)
        save_model_dir(model, spec, work / "model")
    finally:
        os.umask(old)
    seen = set()
    for root, dirs, files in os.walk(work):
        for d in dirs:
            mode = stat.S_IMODE(os.stat(os.path.join(root, d)).st_mode)
            assert mode & 0o755 == 0o755, (d, oct(mode))
        for f in files:
            mode = stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode)
            assert mode & 0o644 == 0o644, (os.path.join(root, f), oct(mode))
            seen.add(os.path.splitext(f)[1])
    assert {".parquet", ".json", ".csv", ".ecsv", ".fits", ".vot", ".xml", ".png", ".md", ".safetensors"} <= seen


# ---------------------------------------------------------------- hostile names and outputs (issue 24, writers)


def test_infer_with_non_ascii_and_non_utf8_names_writes_and_resumes_every_format(tmp_path, tiny_run, spectrum_file):
    """`ü.fits.gz` (and a name that is not UTF-8) with `-o x.fits`: a traceback after inference, nothing written,
    before; now every format is written, and --resume finds every name again (nothing labelled twice)."""
    from specllm.outputs import read_rows

    names = []
    for name in ("ü.fits.gz", "spec-\udcff.fits.gz"):  # written under an ASCII name (its header holds it), renamed
        names.append(spectrum_file("coadd").rename(tmp_path / name))
    for ext in (".csv", ".ecsv", ".parquet", ".fits", ".vot"):
        out = tmp_path / f"ö{ext}"
        result = invoke("infer", *names, "--model", tiny_run, "-o", out, "-q")
        assert result.exit_code == 0, (ext, result.output)
        rows = read_rows(str(out))
        assert [r["file"] for r in rows] == [str(names[0]), str(names[1]).replace("\udcff", "\\udcff")], ext
        assert all(r["status"] == "ok" for r in rows)
        if ext not in (".fits", ".csv"):  # every format's resume: test_outputs (here: end to end, two of them)
            continue
        again = invoke("infer", *names, "--model", tiny_run, "-o", out, "--resume")
        assert again.exit_code == 0 and "2 kept from before" in again.output and "Traceback" not in again.output
        assert read_rows(str(out)) == rows, ext


def test_dash_h_readable_value_names_and_each_help_its_own():
    """`-h` for every command; FILE/N/X/PATH instead of `<list[str]>`, `<int>`, `<str>`; one concept, one text, but
    no command shows another's (ingest --engine is not infer's)."""
    group = typer.main.get_command(app)
    for command in ["", *group.commands]:
        res = invoke(*([command] if command else []), "-h")
        assert res.exit_code == 0 and "Usage:" in res.output, command
        for placeholder in ("<list[str]>", "<str>", "<int>", "<float>", "<bool>"):
            assert placeholder not in res.output, (command, placeholder)
    infer_help = " ".join(invoke("infer", "-h").output.replace("│", " ").split())
    assert "FILE" in infer_help and "--batch-size N " in infer_help and "--snr-min-r X " in infer_help
    engines = {c: {p.name: p for p in group.commands[c].params}["engine"].help for c in ("ingest", "infer")}
    assert engines["ingest"] != engines["infer"] and "shards" in engines["ingest"] and "actors" in engines["infer"]


def test_readme_quick_start_names_files_that_exist_and_shows_a_small_picture():
    """The quick start runs on the shared data as written ($L = ../shared/data/lamost); its picture is committed."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Quick start")
    block = readme[start : readme.index("## Pipeline", start)]
    picture = ROOT / re.search(r"!\[[^\]]*\]\(([^)]+)\)", block).group(1)
    assert picture.exists() and 10_000 < picture.stat().st_size < 150_000
    assert "L=../shared/data/lamost" in block and "specllm plot" in block
    shared = ROOT.parent / "shared" / "data" / "lamost"
    if not shared.is_dir():
        pytest.skip("../shared/data not present")
    paths = re.findall(r"\$L/([\w./-]+)", block)
    assert paths and all((shared / p).exists() for p in paths), paths
    assert "--install-completion" in readme and "## Citation" in readme and "Spectra as Language" in readme


def test_an_interrupt_says_what_that_command_keeps(monkeypatch, tmp_path):
    import specllm.plot

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(specllm.plot, "plot_predictions", stop)
    res = invoke("plot", tmp_path / "p.csv", "-o", tmp_path / "k.png")
    assert res.exit_code == 130 and "specllm plot: interrupted; the figure is written whole" in res.output
    assert "shards" not in res.output


@pytest.mark.parametrize(
    "args, option",
    [
        (["ingest", "x", "--out", "o", "--shard-size", "0"], "--shard-size"),
        (["ingest", "x", "--out", "o", "--decimals", "-5"], "--decimals"),
        (["ingest", "x", "--out", "o", "--test-fraction", "1.5"], "--test-fraction"),
        (["infer", "x", "--batch-size", "0"], "--batch-size"),
        (["infer", "x", "--batch-size", "-3"], "--batch-size"),
        (["crossmatch", "s", "--out", "o", "--radius", "-1"], "--radius"),
        (["benchmark", "s", "--out", "o", "--sizes", "10,0"], "--sizes"),
        (["train", "--stage", "1", "--data", "d", "--out", "o", "--lora-dropout", "2"], "--lora-dropout"),
    ],
)
def test_numeric_options_outside_their_declared_range_are_usage_errors(args, option):
    result = invoke(*args)
    assert result.exit_code == 2 and option in result.output and "Traceback" not in result.output, result.output


def test_every_declared_range_names_a_field_and_holds_its_default():
    import specllm.config as config

    for name, fields in config.RANGES.items():
        cls = getattr(config, name)
        known = {f.name: f for f in dataclasses.fields(cls)}
        assert set(fields) <= set(known), (name, set(fields) - set(known))
        for field_name, (low, high) in fields.items():
            f = known[field_name]
            if f.default is not dataclasses.MISSING and f.default not in (None, ()):
                values = f.default if isinstance(f.default, tuple) else (f.default,)
                assert all((low is None or v >= low) and (high is None or v <= high) for v in values), field_name
