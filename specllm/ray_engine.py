"""`--engine ray`: `ingest` and `infer` on a Ray cluster (or a Ray started on this machine), through Ray Data.

Imported only when `--engine ray` is asked for (`pip install 'specllm[ray]'`); the local engine never imports Ray.
This module knows nothing of spectra: `ingest` and `infer` hand it their own per-unit functions (the same ones
their local engines call), which Ray pickles by reference and runs in its workers.

- `ordered_map(units, fn, args)`: fn(unit, *args) on CPU tasks, results streamed back in unit order (ingest: one
  task per shard-sized chunk of files, which cleans them and writes the shard);
- `ordered_actor_map(units, read, read_args, factory, factory_args, ...)`: read(unit, *read_args) -> items on CPU
  tasks, then a pool of actors, each holding `factory(*factory_args)` (a model), fed batches of items; the
  actors' outputs streamed back in input order (infer).

Order never depends on scheduling (Ray Data's `preserve_order`), so results equal the local engine's. A task
whose worker dies is run again (`max_retries`); an actor that dies is restarted and its batch retried
(`max_restarts`, `max_task_retries`): each unit's result comes back exactly once. Ray Data's streaming executor
applies backpressure: at most a few blocks wait between stages, whatever the input size.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from .config import EngineConfig
from .errors import SpecllmError, one_line

RETRIES = 3
"""Times a task (or an actor and its batch) is run again after its worker process died."""
IN_FLIGHT_BYTES = 2**30
"""Object-store memory a run may hold between its stages (Ray Data's backpressure: the readers wait when the model
actors fall behind), so that memory stays flat instead of filling the object store (30% of RAM) on long inputs.
At ~25 KB per cleaned spectrum that is ~40,000 spectra, tens of seconds of work for a GPU."""
UNITS_PER_TASK = 16
"""Inputs per read task of `ordered_actor_map` (a DR10 file takes ~3 ms to read and clean)."""


class Box:
    """Carries any Python value through a Ray Data column unchanged (no conversion to Arrow types)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise SpecllmError("--engine ray needs Ray: pip install 'specllm[ray]' (or 'ray[data]>=2.40')") from None
    return ray


@contextmanager
def session(config: EngineConfig):
    """Joins the cluster at `config.ray_address`, or starts a local Ray with `config.ray_cpus` CPUs (default: the
    machine's), unless this process is already connected; Ray started here is stopped on exit."""
    ray = _import_ray()
    if config.ray_address and config.ray_cpus:
        raise SpecllmError("--ray-cpus sizes a local Ray; with --ray-address the cluster has its own CPUs")
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(
                address=config.ray_address,
                num_cpus=None if config.ray_address else config.ray_cpus,
                include_dashboard=False,
                log_to_driver=False,  # workers' messages stay in Ray's logs; the driver reports each bad input
                logging_level=logging.WARNING,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SpecllmError(
                f"ray: cannot start or join a cluster at {config.ray_address or 'local'}: {one_line(exc)}"
            ) from None
    _errors_to_stderr()
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # not its notes on how columns are stored
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    limits = context.execution_options.resource_limits
    for_limits = getattr(type(limits), "for_limits", None)  # older Ray: the constructor (None: no limit)
    context.execution_options.resource_limits = (
        for_limits(object_store_memory=IN_FLIGHT_BYTES)
        if for_limits
        else type(limits)(object_store_memory=IN_FLIGHT_BYTES)
    )
    context.enable_progress_bars = False  # specllm shows its own bar
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _errors_to_stderr() -> None:
    """Ray prints its raylet's messages (e.g. that a worker died and its task is retried) on stdout, where specllm
    writes data: they are sent to stderr (a wrapper around Ray's printer; without it, Ray is left as it is)."""
    try:
        from ray._private import worker
    except ImportError:
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "specllm", False):
        return

    def to_stderr(data, ignore_prefix):
        return original({**data, "is_err": True}, ignore_prefix)

    to_stderr.specllm = True
    worker.print_to_stdstream = to_stderr


@contextmanager
def _quiet():
    """Ray >= 2.60 warns that retry counts given as remote arguments are deprecated (no named parameter replaces
    them yet)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        yield


def _rows(ds) -> Iterator:
    ray = _import_ray()
    try:
        for row in ds.iter_rows():
            yield row["out"].value
    except ray.exceptions.RayError as exc:
        raise SpecllmError(f"ray: {one_line(str(exc).strip().splitlines()[-1] if str(exc).strip() else exc)}") from None


def _apply(row: dict, fn: Callable, args: tuple) -> dict:
    return {"out": Box(fn(row["item"].value, *args))}


def ordered_map(units: Iterable, fn: Callable, args: tuple = (), per_task: int = 1) -> Iterator:
    """fn(unit, *args) for each unit, `per_task` units per Ray task (run again if its worker dies), in unit
    order."""
    ray = _import_ray()
    boxes = [Box(u) for u in units]
    if not boxes:
        return
    with _quiet():
        ds = ray.data.from_items(boxes, override_num_blocks=math.ceil(len(boxes) / per_task)).map(
            _apply, fn_args=(fn, args), num_cpus=1, max_retries=RETRIES
        )
    yield from _rows(ds)


def _expand(row: dict, read: Callable, args: tuple) -> list[dict]:
    return [{"item": Box(item)} for item in read(row["item"].value, *args)]


class ActorCall:
    """A model actor: `factory(*args)` is built once per actor; each batch of items goes through it, and its
    outputs (one per item, in order) come back."""

    def __init__(self, factory: Callable, args: tuple):
        self.fn = factory(*args)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        outs = self.fn([b.value for b in batch["item"]])
        column = np.empty(len(outs), dtype=object)
        column[:] = [Box(o) for o in outs]
        return {"out": column}


ACTOR = ActorCall
"""The actor class `ordered_actor_map` uses (tests put a subclass here that dies on a chosen batch)."""


def actor_plan(ray, actors: int | None) -> tuple[int, float]:
    """(actors, GPUs per actor): one per GPU of the cluster unless `actors` is given; on CPUs, `actors` (default
    1), leaving at least one CPU for the readers."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 0))
    if gpus:
        n = actors or gpus
        return n, min(1.0, gpus / n)
    n = actors or 1
    if n >= cpus:
        raise SpecllmError(
            f"--actors {n} on a cluster of {cpus} CPU(s) and no GPU leaves no CPU for reading spectra: "
            "give fewer actors or more CPUs (--ray-cpus)"
        )
    return n, 0.0


def ordered_actor_map(
    units: Iterable,
    read: Callable,
    read_args: tuple,
    factory: Callable,
    factory_args: tuple,
    *,
    batch_size: int,
    actors: int | None = None,
) -> Iterator:
    """read(unit, *read_args) -> items on CPU tasks (UNITS_PER_TASK units each), then batches of `batch_size` items
    through a pool of actors built by `factory(*factory_args)`: their outputs, one per item, in input order."""
    ray = _import_ray()
    boxes = [Box(u) for u in units]
    if not boxes:
        return
    n, gpus = actor_plan(ray, actors)

    class Actor(ACTOR):  # the factory travels with the class, not as constructor arguments in the object store
        def __init__(self):
            super().__init__(factory, factory_args)

    with _quiet():
        ds = (
            ray.data.from_items(boxes, override_num_blocks=math.ceil(len(boxes) / UNITS_PER_TASK))
            .flat_map(_expand, fn_args=(read, read_args), num_cpus=1, max_retries=RETRIES)
            .map_batches(
                Actor,
                compute=ray.data.ActorPoolStrategy(size=n),
                batch_size=batch_size,
                batch_format="numpy",
                num_cpus=1,
                num_gpus=gpus,
                max_restarts=RETRIES,
                max_task_retries=RETRIES,
            )
        )
    yield from _rows(ds)
