"""Batch engines: the same work items on several local processes, or on a Ray cluster.

Both run :class:`~identitydp.jobs.Job` items with one :class:`AnonymizerConfig` that every worker
rebuilds (models load once per worker), and charge one ledger:

* ``local``: worker processes on this machine open the SQLite ledger themselves (SQLite's locking
  makes concurrent check-and-charge safe on a local disk).
* ``ray``: Ray Data ``map_batches`` over an actor pool (one anonymizer per actor, streaming
  execution with back-pressure, failed actors restarted, failed tasks retried); the ledger is one
  Ray actor on the driver's node that owns the SQLite file, so workers on other machines charge it
  through Ray and the ledger never sits on a network file system. ``ray.init()`` runs an embedded
  local Ray unless ``address`` names a cluster.

Resumable like the CLI: an item whose output exists is skipped, and a killed run's pending
releases are settled when the next run opens the ledger.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from ..errors import IdentityDPError
from ..io import MAX_PIXELS
from .config import AnonymizerConfig
from .job import ItemResult, Job, JobSummary, VideoOptions, timing_from
from .plan import WorkItem

log = logging.getLogger(__name__)

__all__ = ["ENGINES", "BatchError", "run_batch"]

ENGINES = ("local", "ray")


class BatchError(IdentityDPError):
    """The batch engine could not start (Ray missing, cluster unreachable, ...)."""


def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _set_threads(n: int) -> None:
    """A worker's share of the cores for ONNX Runtime (read when sessions are built), OpenCV and,
    if something loaded it, torch (not imported for this: the default path never needs it)."""
    import sys

    import cv2

    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    cv2.setNumThreads(n)


# -- local processes -------------------------------------------------------------------------
_WORKER_JOB: Job | None = None


def _local_init(config_json: str, ledger: str | None, overwrite: bool, video: dict, threads: int, max_pixels: int) -> None:
    global _WORKER_JOB
    _set_threads(threads)
    _WORKER_JOB = Job(AnonymizerConfig.from_json(config_json), ledger=ledger, overwrite=overwrite,
                      video=VideoOptions(**video), max_pixels=max_pixels)


def _local_run(item: dict) -> dict:
    assert _WORKER_JOB is not None
    return _WORKER_JOB.run_item(WorkItem.from_dict(item)).to_dict()


def _run_local(items, config, ledger, overwrite, video, workers, progress, max_pixels) -> list[ItemResult]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results = []
    # spawn: workers start clean (no torch/OpenMP state forked from the parent).
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_local_init,
                             initargs=(config.to_json(), None if ledger is None else str(ledger), overwrite,
                                       asdict(video), _threads_per_worker(workers), max_pixels)) as pool:
        futures = [pool.submit(_local_run, item.to_dict()) for item in items]
        for future in as_completed(futures):
            result = ItemResult.from_dict(future.result())
            results.append(result)
            if progress is not None:
                progress(result)
    return results


# -- Ray ---------------------------------------------------------------------------------------
class _RemoteLedger:
    """A LedgerStore look-alike whose calls go to the ledger actor (errors re-raised as themselves)."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def __getattr__(self, name: str):
        import ray

        method = getattr(self._handle, "call")

        def call(*args, **kwargs):
            ok, value = ray.get(method.remote(name, *args, **kwargs))
            if not ok:
                raise value
            return value

        return call

    def close(self) -> None:
        pass


def _ledger_actor_class():
    import ray

    @ray.remote(num_cpus=0, max_concurrency=1)
    class LedgerActor:
        """Owns the SQLite ledger; one call at a time (each is a transaction anyway)."""

        def __init__(self, path: str) -> None:
            from ..privacy.store import LedgerStore

            self.store = LedgerStore(path)

        def call(self, name: str, *args, **kwargs):
            # Library errors go back as values, so the worker re-raises the very same class.
            try:
                return True, getattr(self.store, name)(*args, **kwargs)
            except IdentityDPError as exc:
                return False, exc

    return LedgerActor


class _RayWorker:
    """One per Ray actor: builds the anonymizer once, then runs batches of work items."""

    def __init__(self, config_json: str, ledger_handle, overwrite: bool, video: dict, threads: int, max_pixels: int) -> None:
        _set_threads(threads)
        config = AnonymizerConfig.from_json(config_json)
        self.job = Job(config, ledger=None if ledger_handle is None else _RemoteLedger(ledger_handle),
                       overwrite=overwrite, video=VideoOptions(**video), max_pixels=max_pixels)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        out = []
        for source, output, kind in zip(batch["source"], batch["output"], batch["kind"]):
            result = self.job.run_item(WorkItem(Path(str(source)), Path(str(output)), str(kind)))
            out.append(json.dumps(result.to_dict(), default=str))
        return {"result": np.array(out, dtype=object)}


def _run_ray(items, config, ledger, overwrite, video, workers, progress, address, quiet, max_pixels) -> list[ItemResult]:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise BatchError("--engine ray needs Ray Data: pip install 'identitydp[ray]' (or: pip install 'ray[data]')") from exc
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address:
                ray.init(address=address, log_to_driver=False, include_dashboard=False)
            else:
                ray.init(num_cpus=max(workers, 1), log_to_driver=False, include_dashboard=False,
                         configure_logging=True, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BatchError(f"cannot start Ray{' at ' + address if address else ''}: {exc}") from exc
    try:
        ctx = ray.data.DataContext.get_current()
        # Our own per-file progress bar says what matters; Ray Data's operator bars and status
        # logs would interleave with it on a terminal and flood a log file.
        ctx.enable_progress_bars = False
        for name in ("print_on_execution_start", "enable_operator_progress_bars", "enable_progress_bar_name_truncation"):
            if hasattr(ctx, name):
                setattr(ctx, name, False)
        for name in ("ray.data", "ray"):
            logging.getLogger(name).setLevel(logging.WARNING)
        handle = None
        if ledger is not None:
            # On the driver's node (num_cpus=0 places it anywhere; the driver's node is the head
            # of an embedded Ray, and on a cluster the path must be local to the head).
            handle = _ledger_actor_class().options(name=None).remote(str(ledger))
        # Small blocks: results (and the progress bar) stream item by item, and a lost block
        # costs little to redo; capped so that a million-file manifest stays manageable.
        ds = ray.data.from_items([item.to_dict() for item in items], override_num_blocks=max(1, min(len(items), 2000)))
        threads = 1 if address else _threads_per_worker(workers)
        ds = ds.map_batches(
            _RayWorker,
            fn_constructor_kwargs={"config_json": config.to_json(), "ledger_handle": handle, "overwrite": overwrite,
                                   "video": asdict(video), "threads": threads, "max_pixels": max_pixels},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
            # Ray Data's actor pools restart a crashed actor and retry its tasks by default;
            # an item's own errors never reach Ray (run_item reports them as failed).
        )
        results = []
        for row in ds.iter_rows():
            result = ItemResult.from_dict(json.loads(row["result"]))
            results.append(result)
            if progress is not None:
                progress(result)
        return results
    finally:
        if started_here:
            ray.shutdown()


def run_batch(
    items: Sequence[WorkItem],
    config: AnonymizerConfig,
    *,
    ledger: str | os.PathLike | None,
    budget: float | None = None,
    overwrite: bool = False,
    video: VideoOptions | None = None,
    engine: str = "local",
    workers: int = 2,
    address: str | None = None,
    progress: Callable[[ItemResult], None] | None = None,
    quiet: bool = False,
    max_pixels: int = MAX_PIXELS,
) -> JobSummary:
    """Run ``items`` on ``workers`` processes (``engine="local"``) or Ray actors (``"ray"``).

    The budget is applied to the ledger once, by the caller's process, before any worker starts;
    pending releases of a killed earlier run are settled at the same time. ``max_pixels`` is every
    worker's decoding limit (larger images fail with a message that says so, as in ``anonymize``).

    Returns:
        A :class:`JobSummary` with one result per item (in completion order) and the ledger summary.

    Raises:
        BatchError: unknown engine or the engine cannot start.
        PrivacyError: the ledger refuses the budget.
    """
    if engine not in ENGINES:
        raise BatchError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if workers < 1:
        raise BatchError(f"workers must be >= 1, got {workers}")
    video = video or VideoOptions()
    import time

    t_start = time.perf_counter()
    stamps: list[float] = []
    user_progress = progress

    def progress(result: ItemResult) -> None:
        stamps.append(time.perf_counter() - t_start)
        if user_progress is not None:
            user_progress(result)

    # Opens the ledger here first: budget, recovery, and an early error for a bad path or budget.
    with Job(config, ledger=ledger, budget=budget, overwrite=overwrite, video=video) as driver_job:
        recovered = driver_job.recovered
    if engine == "local":
        results = _run_local(items, config, ledger if config.is_dp else None, overwrite, video, workers, progress, max_pixels)
    else:
        results = _run_ray(items, config, ledger if config.is_dp else None, overwrite, video, workers, progress, address, quiet,
                           max_pixels)
    summary = JobSummary(results=results)
    summary.timing = timing_from(stamps)
    if config.is_dp and ledger is not None:
        from ..privacy.store import LedgerStore

        with LedgerStore(ledger) as store:
            summary.ledger = {**store.summary(), "recovered_at_start": recovered}
    return summary
