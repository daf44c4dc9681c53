"""`specllm benchmark`: the LLM against the paper's baselines on one split, per class and per label, and as the
training set grows.

Every model is an object with `fit(train)` and `predict(test)` (see `specllm.baselines`). The baselines are trained
here on the train split (and on nested subsets of it for `--sizes`); the LLM is trained elsewhere (`specllm train`)
and only predicts, through `specllm.labelling.predict_table`, imported when it is needed. All models are evaluated
on the same test split; the report directory receives Markdown, CSV and JSON tables, residual plots and the scaling
plot.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._version import __version__
from .baselines import Prediction, SpectraSet, make_baseline
from .benchmark_report import BenchmarkResult, ModelRun, summary_csv, write_report  # noqa: F401 - summary_csv: the CLI prints it
from .config import BENCHMARK_MODELS, BenchmarkConfig, InferConfig, SerializeConfig
from .errors import SpecllmError, one_line
from .evaluate import (
    Stat,
    class_accuracy,
    compute_stats,
    label_decimals,
)
from .labels import CLASSES, PLACEHOLDER_MAX, STAGE1_NAMES, element_columns, is_missing
from .metrics import OVERALL
from .progress import say
from .shards import (
    arrow_to_vectors,
    check_output,
    exclusive_output,
    parquet_file,
    read_manifest,
    shards_sha256,
    verified_shard_paths,
)

LABEL_PREFIX = SerializeConfig.label_prefix  # stage-2 label columns of the shards: apogee_<x>_fe


# ---------------------------------------------------------------- configuration


def check_models(models: tuple[str, ...]) -> None:
    unknown = [m for m in models if m not in BENCHMARK_MODELS]
    if unknown:
        raise SpecllmError(f"unknown model(s) {', '.join(unknown)} (choose from {', '.join(BENCHMARK_MODELS)})")
    if not models:
        raise SpecllmError("no model to benchmark")


def resolve_labels(shards: str, labels: tuple[str, ...], paths: list[str] | None = None) -> tuple[str, ...]:
    """The label columns to evaluate; 'auto' = teff, logg, feh plus every `apogee_<x>_fe` column in the shards
    (`paths`: the shards as `verified_shard_paths(shards)` gave them; verified here where not given)."""
    if "auto" not in labels:
        return tuple(labels)
    names = parquet_file((paths or verified_shard_paths(shards))[0]).schema_arrow.names
    base = [lab for lab in labels if lab != "auto"] or list(STAGE1_NAMES)
    return tuple(dict.fromkeys([*base, *element_columns(names, LABEL_PREFIX)]))


# ---------------------------------------------------------------- data


def load_split(shards: str, split: str, labels: tuple[str, ...], paths: list[str] | None = None) -> SpectraSet:
    """Spectra of one split from the shards; label placeholders (<= -9999) and non-finite values become missing.
    `paths`: the shards as `verified_shard_paths(shards)` gave them (verified here where not given)."""
    columns = ["spec_id", "class", "split", "flux", *labels]
    parts = []
    for path in paths or verified_shard_paths(shards):
        names = parquet_file(path).schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise SpecllmError(f"{one_line(path)}: missing column(s) {', '.join(missing)}")
        try:
            table = pq.read_table(path, columns=columns, filters=[("split", "=", split)])
        except (pa.ArrowException, OSError) as exc:
            raise SpecllmError(f"{one_line(path)}: damaged Parquet data ({one_line(exc)})") from None
        if table.num_rows:
            parts.append(table)
    if not parts:
        raise SpecllmError(f"{shards}: no spectra in split {split!r}")
    table = pa.concat_tables(parts, promote_options="default")
    flux = arrow_to_vectors(table["flux"], np.float32)
    y = (
        np.column_stack([table[c].to_numpy(zero_copy_only=False).astype(np.float64) for c in labels])
        if labels
        else np.zeros((len(flux), 0))
    )
    placeholders = int((y <= PLACEHOLDER_MAX).sum())
    if placeholders:
        say(f"{shards}: {placeholders} label value(s) <= {PLACEHOLDER_MAX:g} in split {split!r} treated as missing")
    y[is_missing(y)] = np.nan
    good = np.isfinite(flux).all(axis=1)
    if not good.all():
        bad = table["spec_id"].to_numpy(zero_copy_only=False)[~good]
        say(f"{shards}: {len(bad)} spectrum/spectra with non-finite flux left out of split {split!r} (e.g. {bad[0]})")
    classes = np.array(table["class"].to_pylist(), dtype=object)
    ids = np.array(table["spec_id"].to_pylist(), dtype=object)
    return SpectraSet(ids, flux, classes, y, tuple(labels)).subset(np.flatnonzero(good))


def nested_subsets(n: int, sizes: tuple[int, ...], seed: int) -> tuple[list[int], dict[int, np.ndarray], list[str]]:
    """Training-set sizes (capped at n, de-duplicated, ascending, always including n) and nested index sets:
    the first k of one fixed permutation, so every smaller subset lies inside every larger one."""
    notes = []
    for s in sizes:
        if s < 2:
            raise SpecllmError(f"--sizes: {s} is too small (at least 2 training spectra)")
        if s > n:
            notes.append(f"training size {s} asked for, but the train split holds {n}: the full split is used")
    order = np.random.default_rng(seed).permutation(n)
    chosen = sorted({min(s, n) for s in sizes} | {n})
    return chosen, {s: np.sort(order[:s]) for s in chosen}, notes


def class_counts(data: SpectraSet) -> dict[str, int]:
    out = {c: int((data.classes == c).sum()) for c in CLASSES}
    out["unknown"] = int(sum(1 for c in data.classes if not isinstance(c, str)))
    return out


# ---------------------------------------------------------------- measuring


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class MemoryWatch:
    """Wall and CPU seconds, and peak resident memory (sampled every `interval` seconds), of this process while the
    block runs. CPU seconds are the fairer cost on a shared machine, where wall time depends on other jobs."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> MemoryWatch:
        self.start = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.cpu_seconds = time.process_time() - self.cpu0  # all threads of this process
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20

    @property
    def added_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def code_version() -> str:
    """specllm's version, plus `git describe` of its checkout where there is one."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        described = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        described = ""
    return f"{__version__} ({described})" if described else __version__


# ---------------------------------------------------------------- the LLM, trained elsewhere


class LLMModel:
    """Adapter for the fine-tuned LLM: `fit` does nothing (train it with `specllm train`); `predict` calls
    `specllm.labelling.predict_table(model_dir, shards, split)` and aligns its rows to the test spectra by spec_id.
    The predicted class is read from `class_pred` (or `class`, as `specllm infer` writes it).

    Label columns are looked up by name, then without an `apogee_` prefix (the LLM answers `mg_fe` for the shard
    column `apogee_mg_fe`); a label it does not answer is left missing.
    """

    name = "llm"

    def __init__(self, model_dir: str, shards: str, split: str = "test", verify: bool = True):
        self.model_dir = model_dir
        self.shards = shards
        self.split = split
        self.verify = verify
        self.notes: list[str] = []

    def fit(self, train: SpectraSet) -> LLMModel:
        return self

    def predict(self, data: SpectraSet) -> Prediction:
        try:
            from .labelling import predict_table
        except ImportError as exc:
            raise SpecllmError(f"llm: specllm.labelling.predict_table is not available ({exc})") from None
        kwargs = {} if self.verify else {"config": InferConfig(verify=False)}
        table = predict_table(self.model_dir, self.shards, split=self.split, **kwargs)
        if "spec_id" not in table.column_names:
            raise SpecllmError(f"{self.model_dir}: the LLM's predictions have no spec_id column")
        where = {sid: i for i, sid in enumerate(table["spec_id"].to_pylist())}
        rows = np.array([where.get(sid, -1) for sid in data.spec_id])
        found = rows >= 0
        if not found.all():
            self.notes.append(f"llm: no prediction for {int((~found).sum())} of {len(rows)} test spectra")
        if "flag" in table.column_names:
            self.notes.append(flag_note(table, rows[found]))
        classes = np.full(len(rows), None, dtype=object)
        class_column = next((c for c in ("class_pred", "class") if c in table.column_names), None)
        if class_column is not None:
            answers = np.array(table[class_column].to_pylist(), dtype=object)
            classes[found] = answers[rows[found]]
        labels = np.full((len(rows), len(data.label_names)), np.nan)
        for j, name in enumerate(data.label_names):
            column = name if name in table.column_names else name.removeprefix(LABEL_PREFIX)
            if column not in table.column_names:
                self.notes.append(f"llm: no {name} column in the predictions; left missing")
                continue
            values = table[column].to_numpy(zero_copy_only=False).astype(np.float64)
            labels[found, j] = values[rows[found]]
        return Prediction(classes, labels, data.label_names)


def flag_note(table, rows: np.ndarray) -> str:
    """The LLM rows' flags per keyword (`specllm.flags`): its figures include flagged rows, as every model's do."""
    from .flags import keyword_counts

    flag = np.array(table["flag"].to_pylist(), dtype=object)[rows]
    reason = (
        np.array(table["flag_reason"].to_pylist(), dtype=object)[rows] if "flag_reason" in table.column_names else None
    )
    usable = None
    if "usable" in table.column_names:
        usable = sum(bool(v) for v in np.array(table["usable"].to_pylist(), dtype=object)[rows])
    words = ", ".join(
        f"{w} {n}" for w, n in keyword_counts(list(flag), None if reason is None else list(reason)).items()
    )
    return (
        f"llm: flags on the {len(rows)} test spectra (figures include them): "
        + (f"{usable} usable; " if usable is not None else "")
        + (words or "none flagged")
    )


# ---------------------------------------------------------------- one benchmark run


@exclusive_output("out")
def run_benchmark(
    shards: str,
    out: str,
    config: BenchmarkConfig = BenchmarkConfig(),
    llm: str | None = None,
    command: str | None = None,
) -> BenchmarkResult:
    """Train the baselines, let every model predict the test split, and write the report into `out`."""
    check_models(config.models)
    cfg = config.resolved()
    import torch

    torch.set_num_threads(max(1, cfg.threads))
    paths = verified_shard_paths(shards, cfg.verify)
    check_output(out)
    labels = resolve_labels(shards, cfg.labels, paths)
    if not labels:
        raise SpecllmError("no label to evaluate (--labels)")
    train = load_split(shards, "train", labels, paths)
    test = load_split(shards, cfg.split, labels, paths)
    manifest = read_manifest(shards) or {}
    result = BenchmarkResult(
        out=out,
        config=cfg,
        labels=labels,
        meta={
            "shards": str(shards),
            "shards_sha256": shards_sha256(manifest),  # the verified shards read
            "code_version": code_version(),
            "command": command,
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightgbm": _lightgbm_version(),
            "platform": f"{platform.machine()}, {os.cpu_count()} CPU(s), {cfg.threads} thread(s)",
            "train_counts": class_counts(train),
            "test_counts": class_counts(test),
            "split": cfg.split,
        },
    )
    if not manifest:
        result.notes.append(f"{shards}: no manifest.json, so no content hash to name")
    models = list(dict.fromkeys(cfg.models))
    if "llm" in models and llm is None:
        say("benchmark: --model RUN not given, so the llm model is skipped (train it with `specllm train`)")
        result.notes.append("llm skipped: no --model run directory given")
        models.remove("llm")
    if not models:
        raise SpecllmError("no model left to benchmark (the llm needs --model RUN)")
    sizes, subsets, size_notes = nested_subsets(len(train), cfg.sizes, cfg.seed)
    result.notes += size_notes
    for note in size_notes:
        say(f"benchmark: {note}")
    result.n_train = len(train)
    say(
        f"benchmark: {len(train)} training and {len(test)} {cfg.split} spectra; labels {', '.join(labels)}; models {', '.join(models)}"
    )
    Path(out).mkdir(parents=True, exist_ok=True)
    for name in models:
        if name == "llm":
            _run_llm(result, LLMModel(llm, shards, cfg.split, cfg.verify), test)
        else:
            todo = sizes if cfg.sizes else [len(train)]
            for size in todo:
                _run_baseline(result, name, cfg, train.subset(subsets[size]), test, main=size == len(train))
        write_report(result, test, final=False)
    write_report(result, test)
    return result


def _lightgbm_version() -> str:
    try:
        import lightgbm

        return lightgbm.__version__
    except ImportError:
        return "not installed"


def _record(
    result: BenchmarkResult, name: str, n_train: int | None, test: SpectraSet, pred: Prediction, main: bool
) -> list[Stat]:
    stats = compute_stats(name, test.labels, pred.labels, test.classes, test.label_names)
    if main:
        result.stats = [s for s in result.stats if s.model != name] + stats
        result.predictions[name] = pred
    if n_train is not None and result.config.sizes:
        result.scaling += [dict(n_train=n_train, **dataclasses.asdict(s)) for s in stats]
    return stats


def _run_baseline(
    result: BenchmarkResult, name: str, cfg: BenchmarkConfig, train: SpectraSet, test: SpectraSet, main: bool
) -> None:
    say(f"benchmark: training {name} on {len(train)} spectra")
    model = make_baseline(name, cfg)
    with MemoryWatch() as fit_watch:
        model.fit(train)
    with MemoryWatch() as pred_watch:
        pred = model.predict(test)
    files = []
    if main and cfg.save_models:
        files = model.save(Path(result.out) / "models")
    _, acc = class_accuracy(test.classes, pred.classes)
    log = model.log
    result.runs.append(
        ModelRun(
            model=name,
            n_train=len(train),
            fit_seconds=fit_watch.seconds,
            predict_seconds=pred_watch.seconds,
            fit_cpu_seconds=fit_watch.cpu_seconds,
            predict_cpu_seconds=pred_watch.cpu_seconds,
            throughput=len(test) / max(pred_watch.seconds, 1e-9),
            peak_rss_fit_mib=fit_watch.peak_mib,
            peak_rss_predict_mib=pred_watch.peak_mib,
            added_rss_fit_mib=fit_watch.added_mib,
            added_rss_predict_mib=pred_watch.added_mib,
            epochs=log.epochs,
            best_epoch=log.best_epoch or None,
            class_accuracy=acc,
            files=[os.path.relpath(f, result.out) for f in files],
        )
    )
    stats = _record(result, name, len(train), test, pred, main)
    overall = ", ".join(f"{s.label} σ {s.sigma:.{label_decimals(s.label)}f}" for s in stats if s.group == OVERALL)
    say(
        f"benchmark: {name} (n_train {len(train)}): {overall}; fit {fit_watch.seconds:.0f} s ({fit_watch.cpu_seconds:.0f} s CPU)"
    )


def _run_llm(result: BenchmarkResult, model: LLMModel, test: SpectraSet) -> None:
    say(f"benchmark: llm predicting {len(test)} spectra with {model.model_dir}")
    with MemoryWatch() as watch:
        pred = model.predict(test)
    result.notes += model.notes
    _, acc = class_accuracy(test.classes, pred.classes)
    result.runs.append(
        ModelRun(
            "llm",
            None,
            0.0,
            watch.seconds,
            None,
            watch.cpu_seconds,
            len(test) / max(watch.seconds, 1e-9),
            None,
            watch.peak_mib,
            None,
            watch.added_mib,
            None,
            None,
            acc,
        )
    )
    _record(result, "llm", None, test, pred, main=True)


def command_line(argv: list[str] | None = None) -> str:
    return shlex.join(["specllm", *(sys.argv[1:] if argv is None else argv)])
