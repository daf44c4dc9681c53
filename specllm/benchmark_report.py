"""The report of `specllm benchmark`: the results of a run (`BenchmarkResult`) and the files written from them
(Markdown, CSV and JSON tables, residual and scaling plots, the test predictions). Imported by `benchmark`, which
fills the result; this module never imports it back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from .baselines import Prediction, SpectraSet
from .config import BenchmarkConfig
from .evaluate import (
    GROUPS,
    Stat,
    element_table,
    label_decimals,
    markdown_table,
    per_class_table,
    residual_plot,
    rmse_table,
    scaling_plot,
    stats_json,
    stats_rows,
)
from .files import atomic_write_json, atomic_write_text, csv_text, write_csv
from .labels import label_title
from .metrics import OVERALL
from .shards import write_table

TABLE_NUMBERS = {"teff": 2, "logg": 3, "feh": 4}


@dataclass
class ModelRun:
    model: str
    n_train: int | None
    fit_seconds: float
    predict_seconds: float
    fit_cpu_seconds: float | None
    predict_cpu_seconds: float
    throughput: float  # test spectra per second of prediction
    peak_rss_fit_mib: float | None
    peak_rss_predict_mib: float
    added_rss_fit_mib: float | None
    added_rss_predict_mib: float
    epochs: int | None
    best_epoch: int | None
    class_accuracy: float
    files: list[str] = field(default_factory=list)


@dataclass
class BenchmarkResult:
    out: str
    config: BenchmarkConfig
    labels: tuple[str, ...]
    meta: dict
    n_train: int = 0
    stats: list[Stat] = field(default_factory=list)  # main run (full train split)
    runs: list[ModelRun] = field(default_factory=list)  # every fit, scaling ones included
    scaling: list[dict] = field(default_factory=list)  # model, n_train, label, group, n, mu, sigma, rmse
    predictions: dict[str, Prediction] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _fmt(value, spec: str, missing: str = "—") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return missing
    return format(value, spec)


def _runs_table(result: BenchmarkResult) -> tuple[list[str], list[list[str]]]:
    header = [
        "model",
        "trained on",
        "epochs or trees (best)",
        "fit s wall (CPU)",
        "predict spectra/s",
        "peak RSS fit MiB (+added)",
        "peak RSS predict MiB (+added)",
        "class accuracy",
    ]
    rows = []
    for r in result.runs:
        if r.n_train not in (None, result.n_train):
            continue
        epochs = "—" if r.epochs is None else (f"{r.epochs} ({r.best_epoch})" if r.best_epoch else str(r.epochs))
        fit_mem = "—" if r.peak_rss_fit_mib is None else f"{r.peak_rss_fit_mib:.0f} (+{r.added_rss_fit_mib:.0f})"
        rows.append(
            [
                r.model,
                "outside (specllm train)" if r.n_train is None else str(r.n_train),
                epochs,
                f"{r.fit_seconds:.1f} ({r.fit_cpu_seconds:.1f})" if r.n_train is not None else "—",
                _fmt(r.throughput, ".1f"),
                fit_mem,
                f"{r.peak_rss_predict_mib:.0f} (+{r.added_rss_predict_mib:.0f})",
                _fmt(r.class_accuracy, ".3f"),
            ]
        )
    return header, rows


def scaling_table(result: BenchmarkResult) -> tuple[list[str], list[list[str]]]:
    """rows = model x label, columns = training sizes, cells = overall sigma."""
    sizes = sorted({p["n_train"] for p in result.scaling})
    look = {(p["model"], p["label"], p["n_train"]): p for p in result.scaling if p["group"] == OVERALL}
    rows = []
    for label in result.labels:
        for model in dict.fromkeys(p["model"] for p in result.scaling):
            cells = []
            for s in sizes:
                p = look.get((model, label, s))
                cells.append("—" if p is None or not p["n"] else f"{p['sigma']:.{label_decimals(label)}f}")
            rows.append([label_title(label), model, *cells])
    return ["label", "model", *(str(s) for s in sizes)], rows


def _settings(cfg: BenchmarkConfig) -> str:
    t, r = cfg.train, cfg.resnet
    return (
        f"nets: Adam lr {t.lr:g}, batch {t.batch_size}, loss CE + {t.mse_weight:g} x MSE (min-max labels, missing masked), "
        f"ReduceLROnPlateau x{t.plateau_factor:g} after {t.plateau_patience}, early stop after {t.patience} epochs "
        f"without a better validation loss (validation {t.val_fraction:.0%} of the training set), at most {t.max_epochs} epochs; "
        f"ResNet-50 blocks {list(r.blocks)} width {r.width} stem stride {r.stem_stride}; "
        f"small CNN channels {list(cfg.smallcnn.channels)}; GRU {cfg.gru.layers} layers x {cfg.gru.hidden} over patches of {cfg.gru.patch} px; "
        f"LightGBM at most {cfg.lightgbm.n_estimators} trees, lr {cfg.lightgbm.learning_rate:g}, {cfg.lightgbm.num_leaves} leaves, "
        f"early stop {cfg.lightgbm.early_stopping_rounds}"
    )


def report_markdown(result: BenchmarkResult, complete: bool = True) -> str:
    m, cfg = result.meta, result.config
    counts = lambda c: ", ".join(f"{k} {v}" for k, v in c.items() if v)  # noqa: E731
    lines = ["# specllm benchmark", ""]
    if not complete:
        lines += [
            f"**Incomplete**: written after {len({s.model for s in result.stats})} of its models (the run stopped "
            "or is still running); rerun it for the whole report.",
            "",
        ]
    lines += [
        f"- data: `{m['shards']}`, shards SHA-256 `{m.get('shards_sha256')}`",
        f"- train split: {result.n_train} spectra ({counts(m['train_counts'])}); {m['split']} split: {counts(m['test_counts'])}",
        f"- code: specllm {m['code_version']}; torch {m['torch']}, lightgbm {m['lightgbm']}, Python {m['python']}; {m['platform']}",
        f"- date: {m['date']}; seed {cfg.seed}; {'--quick' if cfg.quick else 'full settings'}",
        f"- settings: {_settings(cfg)}",
    ]
    if m.get("command"):
        lines.append(f"- command: `{m['command']}`")
    lines += [
        "",
        "Residual = prediction − label; μ = mean, σ = standard deviation (over spectra with both a label and a prediction).",
        "",
        "## Models",
        "",
        markdown_table(_runs_table(result)),
        "Throughput: test spectra predicted per second of wall time (batch prediction, after loading). Fit time in wall "
        "and CPU seconds (CPU = all threads of the process; on a shared machine wall time depends on other jobs). "
        "Peak RSS: resident memory of the benchmark process while the model trained / predicted, and what it added over "
        "the start of that step. LightGBM: trees grown (kept after early stopping), the most of any of its boosters.",
        "",
    ]
    for label in result.labels:
        number = TABLE_NUMBERS.get(label)
        title = f"Table {number}" if number else "Per-class table"
        lines += [
            f"## {title}: μ ± σ of {label_title(label)} per class",
            "",
            markdown_table(per_class_table(result.stats, label)),
        ]
    lines += ["## Table 5: μ ± σ per element / label (all classes)", "", markdown_table(element_table(result.stats))]
    lines += ["## Table 6: RMSE per element / label and class", "", markdown_table(rmse_table(result.stats))]
    lines += ["## Residual plots", ""]
    lines += [f"![residuals {label}](residuals_{label}.png)" for label in result.labels]
    lines.append("")
    if result.scaling:
        lines += ["## Scaling: overall σ against training-set size (nested subsets, same test split)", ""]
        lines += [markdown_table(scaling_table(result)), "![scaling](scaling.png)", ""]
    if result.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in dict.fromkeys(result.notes)), ""]
    return "\n".join(lines)


def write_report(result: BenchmarkResult, test: SpectraSet, final: bool = True) -> None:
    """Everything into `result.out`, each file written atomically. Called after every model (`final` False: no plots,
    and report.json says `"complete": false`, report.md opens with a warning), so a stopped run still leaves the
    tables of the models done so far, never taken for a whole report; and once at the end (`final`)."""
    out = Path(result.out)
    stats = result.stats
    header, rows = stats_rows(stats)
    write_csv(out / "metrics.csv", header, rows)
    for label in result.labels:
        number = TABLE_NUMBERS.get(label)
        write_csv(
            out / (f"table{number}_{label}.csv" if number else f"table_{label}.csv"), *per_class_table(stats, label)
        )
    write_csv(out / "table5_elements.csv", *element_table(stats))
    write_csv(out / "table6_rmse.csv", *rmse_table(stats))
    runs = [dataclasses.asdict(r) for r in result.runs]
    run_header = [k for k in runs[0] if k != "files"] if runs else []
    write_csv(out / "models.csv", run_header, [[r[k] for k in run_header] for r in runs])
    if result.scaling:
        keys = ["model", "n_train", "label", "group", "n", "mu", "sigma", "rmse"]
        write_csv(out / "scaling.csv", keys, [[p[k] for k in keys] for p in result.scaling])
        if final:
            scaling_plot(out / "scaling.png", [p for p in result.scaling if p["group"] == OVERALL], result.labels)
    atomic_write_json(
        out / "report.json",
        {
            "complete": final,  # False: a run stopped (or still running) before its last model
            "meta": result.meta,
            "config": dataclasses.asdict(result.config),
            "labels": list(result.labels),
            "groups": list(GROUPS),
            "models": runs,
            "metrics": stats_json(stats),
            "scaling": [
                {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in p.items()}
                for p in result.scaling
            ],
            "notes": list(dict.fromkeys(result.notes)),
        },
    )
    for j, label in enumerate(result.labels if final else ()):
        residual_plot(
            out / f"residuals_{label}.png",
            label,
            test.labels[:, j],
            test.classes,
            {k: p.labels[:, j] for k, p in result.predictions.items()},
        )
    _write_predictions(out / "predictions.parquet", result, test)
    atomic_write_text(out / "report.md", report_markdown(result, final))


def _write_predictions(path: Path, result: BenchmarkResult, test: SpectraSet) -> None:
    cols = {"spec_id": pa.array(list(test.spec_id), pa.string()), "class": pa.array(list(test.classes), pa.string())}
    for j, label in enumerate(result.labels):
        cols[label] = pa.array(test.labels[:, j], pa.float64(), from_pandas=True)
    for name, pred in result.predictions.items():
        cols[f"{name}_class"] = pa.array(list(pred.classes), pa.string())
        for j, label in enumerate(result.labels):
            cols[f"{name}_{label}"] = pa.array(pred.labels[:, j], pa.float64(), from_pandas=True)
    write_table(path, pa.table(cols))


def summary_csv(result: BenchmarkResult) -> str:
    """The main run's statistics as CSV (what `specllm benchmark` prints on stdout)."""
    return csv_text(*stats_rows(result.stats))
