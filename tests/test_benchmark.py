"""`specllm benchmark` end to end on tiny synthetic shards: report files, layout, nested subsets, the LLM hook, CLI."""

from __future__ import annotations

import csv
import io
import json
import sys
import types

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from specllm import benchmark as bench
from specllm.cli import app
from specllm.config import (
    CLASSES,
    BenchmarkConfig,
    GRUConfig,
    LightGBMConfig,
    NetTrainConfig,
    ResNetConfig,
    SmallCNNConfig,
)
from specllm.errors import SpecllmError
from specllm.shards import seal_shards, vectors_to_arrow, write_table

GRID = 64
N = 60


def make_shards(
    directory, n: int = N, grid: int = GRID, seed: int = 0, extra: dict | None = None, drop: str | None = None
):
    """Two shards in the ingest schema (the columns benchmark reads), with a manifest naming a content hash."""
    rng = np.random.default_rng(seed)
    teff = rng.uniform(4000, 9000, n).astype(np.float32)
    logg = rng.uniform(1.0, 5.0, n).astype(np.float32)
    feh = rng.uniform(-2.0, 0.5, n).astype(np.float32)
    x = np.linspace(0, 1, grid)
    flux = 1 - 0.3 * ((teff[:, None] - 4000) / 5000) * np.exp(-0.5 * ((x - 0.3) / 0.05) ** 2)
    flux = (flux - 0.1 * (feh[:, None] + 2) * np.exp(-0.5 * ((x - 0.7) / 0.05) ** 2)).astype(np.float32)
    flux += rng.normal(0, 0.005, flux.shape).astype(np.float32)
    cols = {
        "spec_id": pa.array([f"id{i:03d}" for i in range(n)]),
        "class": pa.array([CLASSES[min(int((9000 - t) / 1000), 4)] for t in teff]),
        "teff": pa.array(teff),
        "logg": pa.array(logg),
        "feh": pa.array(feh),
        **(extra or {}),
        "split": pa.array(["test" if i % 4 == 0 else "train" for i in range(n)]),
        "flux": vectors_to_arrow(flux, pa.float32()),
        "mask": vectors_to_arrow(np.zeros_like(flux, dtype=bool), pa.bool_()),
    }
    if drop:
        cols.pop(drop)
    table = pa.table(cols)
    half = n // 2
    write_table(directory / "part-00000.parquet", table.slice(0, half))
    write_table(directory / "part-00001.parquet", table.slice(half))
    seal_shards(directory, {"content_hash": "feedc0de" * 8})
    return directory


def tiny(**kw) -> BenchmarkConfig:
    base = dict(
        models=("lightgbm", "smallcnn"),
        train=NetTrainConfig(max_epochs=2, batch_size=16),
        resnet=ResNetConfig(width=4),
        smallcnn=SmallCNNConfig(channels=(4, 8, 8), pooled_length=4, hidden=16),
        gru=GRUConfig(hidden=16, patch=16),
        lightgbm=LightGBMConfig(n_estimators=10, early_stopping_rounds=5),
        threads=1,
    )
    base.update(kw)
    return BenchmarkConfig(**base)


@pytest.fixture
def shards(tmp_path):
    return make_shards(tmp_path / "shards")


def test_benchmark_writes_the_paper_tables_and_plots(shards, tmp_path, capsys):
    out = tmp_path / "report"
    result = bench.run_benchmark(str(shards), str(out), tiny(models=("llm", "lightgbm", "resnet50", "smallcnn", "gru")))
    assert "llm model is skipped" in capsys.readouterr().err
    for name in ("report.md", "report.json", "metrics.csv", "table2_teff.csv", "table3_logg.csv", "table4_feh.csv",
                 "table5_elements.csv", "table6_rmse.csv", "models.csv", "predictions.parquet",
                 "residuals_teff.png", "residuals_logg.png", "residuals_feh.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    assert (out / "residuals_teff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "models" / "resnet50.safetensors").exists() and (out / "models" / "lightgbm-teff.txt").exists()
    rows = list(csv.reader(io.StringIO((out / "table2_teff.csv").read_text())))
    assert rows[0] == ["model", "A", "F", "G", "K", "M", "all"]
    assert [r[0] for r in rows[1:]] == ["lightgbm", "resnet50", "smallcnn", "gru"]
    report = (out / "report.md").read_text()
    from specllm.shards import read_manifest, shards_sha256

    sealed = shards_sha256(read_manifest(shards))  # the verified shards read, not the manifest's content_hash claim
    assert sealed in report and "feedc0de" not in report
    assert "Table 2" in report and "Table 6" in report and "llm skipped" in report
    assert "spectra/s" in report
    meta = json.loads((out / "report.json").read_text())
    assert meta["complete"] is True and "Incomplete" not in report
    assert meta["meta"]["shards_sha256"] == sealed
    assert meta["meta"]["code_version"].startswith("0.")
    assert {m["model"] for m in meta["models"]} == {"lightgbm", "resnet50", "smallcnn", "gru"}
    assert all(
        m["throughput"] > 0 and m["peak_rss_predict_mib"] > 0 and m["fit_cpu_seconds"] > 0 for m in meta["models"]
    )
    assert "fit s wall (CPU)" in report
    assert result.n_train == 45 and len(result.stats) == 4 * 3 * 6
    assert not result.scaling and not (out / "scaling.png").exists()


def test_scaling_uses_nested_subsets_of_the_train_split(shards, tmp_path):
    out = tmp_path / "report"
    result = bench.run_benchmark(str(shards), str(out), tiny(models=("smallcnn",), sizes=(10, 20, 1000)))
    sizes = sorted({p["n_train"] for p in result.scaling})
    assert sizes == [10, 20, 45]
    assert any("1000" in n for n in result.notes)
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.reader(io.StringIO((out / "scaling.csv").read_text())))
    assert rows[0] == ["model", "n_train", "label", "group", "n", "mu", "sigma", "rmse"]
    assert "## Scaling" in (out / "report.md").read_text()
    # every model was evaluated on the same test spectra
    assert {int(r[4]) for r in rows[1:] if r[3] == "all"} == {15}


def test_nested_subsets():
    sizes, subsets, notes = bench.nested_subsets(100, (200, 10, 40), seed=0)
    assert sizes == [10, 40, 100] and len(notes) == 1
    assert set(subsets[10]) <= set(subsets[40]) <= set(subsets[100])
    again = bench.nested_subsets(100, (10,), seed=0)[1][10]
    assert (again == subsets[10]).all()
    with pytest.raises(SpecllmError):
        bench.nested_subsets(100, (1,), seed=0)


def test_missing_labels_and_placeholders_are_masked(tmp_path):
    feh = np.random.default_rng(5).uniform(-1, 0, N).astype(np.float32)
    feh[::5] = -9999.99
    mg = [None if i % 3 else 0.1 * i for i in range(N)]
    shards = make_shards(tmp_path / "s", extra={"apogee_mg_fe": pa.array(mg, pa.float32())})
    import pyarrow.parquet as pq

    for part in ("part-00000.parquet", "part-00001.parquet"):  # overwrite feh with placeholders
        t = pq.read_table(shards / part)
        rows = slice(0, N // 2) if part.endswith("0.parquet") else slice(N // 2, N)
        write_table(shards / part, t.set_column(t.schema.get_field_index("feh"), "feh", pa.array(feh[rows])))
    seal_shards(shards)  # changed on purpose: a new manifest for the changed shards
    assert bench.resolve_labels(str(shards), ("auto",)) == ("teff", "logg", "feh", "apogee_mg_fe")
    test = bench.load_split(str(shards), "test", ("feh", "apogee_mg_fe"))
    assert np.isnan(test.labels[:, 0]).sum() == sum(1 for i in range(0, N, 4) if i % 5 == 0)
    assert np.isnan(test.labels[:, 1]).sum() == sum(1 for i in range(0, N, 4) if i % 3)
    out = tmp_path / "r"
    result = bench.run_benchmark(str(shards), str(out), tiny(models=("smallcnn",), labels=("auto",)))
    overall = {s.label: s for s in result.stats if s.group == "all"}
    assert overall["feh"].n == int(np.isfinite(test.labels[:, 0]).sum())
    assert overall["apogee_mg_fe"].n == int(np.isfinite(test.labels[:, 1]).sum())
    assert abs(overall["feh"].mu) < 5  # a -9999.99 counted as a label would give a mean residual of ~1000
    assert "[Mg/Fe]" in (out / "table5_elements.csv").read_text()


def test_llm_adapter_aligns_by_spec_id(shards, tmp_path, monkeypatch):
    calls = []

    def predict_table(model_dir, shards_path, split="test"):
        calls.append((model_dir, split))
        t = bench.load_split(shards_path, split, ("teff", "logg", "feh"))
        order = np.arange(len(t))[::-1][:-2]  # reversed, two spectra unanswered
        return pa.table({
            "spec_id": pa.array(list(t.spec_id[order])),
            "class_pred": pa.array(list(t.classes[order])),
            "teff": pa.array(t.labels[order, 0] + 10.0),
            "logg": pa.array(t.labels[order, 1]),
            "feh": pa.array(t.labels[order, 2] - 0.1),
            "teff_err": pa.array(np.ones(len(order))),
        })  # fmt: skip

    monkeypatch.setitem(sys.modules, "specllm.labelling", types.SimpleNamespace(predict_table=predict_table))
    result = bench.run_benchmark(str(shards), str(tmp_path / "r"), tiny(models=("llm",)), llm="runs/x")
    assert calls == [("runs/x", "test")]
    overall = {s.label: s for s in result.stats if s.group == "all"}
    assert overall["teff"].n == 13 and overall["teff"].mu == pytest.approx(10.0, abs=1e-3)
    assert overall["teff"].sigma == pytest.approx(0.0, abs=1e-3)
    assert overall["feh"].mu == pytest.approx(-0.1, abs=1e-5)
    assert any("no prediction for 2" in n for n in result.notes)
    run = result.runs[0]
    assert run.model == "llm" and run.n_train is None and run.class_accuracy == pytest.approx(13 / 15)


def test_cli_prints_csv_on_stdout(shards, tmp_path):
    out = tmp_path / "r"
    res = CliRunner().invoke(
        app, ["benchmark", str(shards), "--out", str(out), "--models", "lightgbm", "--threads", "1", "--no-save-models"]
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.reader(io.StringIO(res.stdout)))
    assert rows[0] == ["model", "label", "class", "n", "mu", "sigma", "rmse"] and len(rows) == 1 + 3 * 6
    assert (out / "report.md").exists() and not (out / "models").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "xgboost"], "unknown model"),
        (["--models", "llm"], "no model left"),
        (["--sizes", "10,abc"], "--sizes"),
        (["--labels", "teff,nope"], "missing column(s) nope"),
    ],
)
def test_cli_usage_errors_are_one_line(shards, tmp_path, args, message):
    res = CliRunner().invoke(app, ["benchmark", str(shards), "--out", str(tmp_path / "r"), *args])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


def test_missing_flux_column_names_the_file(tmp_path):
    shards = make_shards(tmp_path / "s", drop="flux")
    with pytest.raises(SpecllmError, match=r"part-00000\.parquet: missing column\(s\) flux"):
        bench.load_split(str(shards), "train", ("teff",))


def test_a_report_written_between_models_says_it_is_incomplete(shards, tmp_path, monkeypatch):
    from specllm import benchmark_report

    written = []
    real = benchmark_report.write_report

    def spy(result, test, final=True):
        real(result, test, final)
        report = json.loads((tmp_path / "report" / "report.json").read_text())
        written.append((final, report["complete"], "**Incomplete**" in (tmp_path / "report" / "report.md").read_text()))

    monkeypatch.setattr(bench, "write_report", spy)
    bench.run_benchmark(str(shards), str(tmp_path / "report"), tiny(models=("lightgbm", "smallcnn")))
    assert written == [(False, False, True), (False, False, True), (True, True, False)]
