"""Run a per-shard stage over many shards: skip finished ones, run the rest in parallel, count.

Every cocu stage is a pure function of one input shard that writes one output file atomically.
A small manifest written *after* the output marks the shard done; it records what the output was
made from (input fingerprint, parameters, tool version), so a rerun skips exactly the shards whose
inputs and parameters are unchanged and redoes the rest. Killing a stage at any moment therefore
costs at most the shards in flight, and the rerun's result equals one clean run.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import queue
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cocu.curation.core.placement import pin_to_device
from cocu.curation.core.shards import (
    ShardError,
    atomic_write_json,
    count_rows,
    manifest_path,
    remove_stale_temporaries,
    sha256_file,
)

Progress = Callable[[int], None]
ShardFunction = Callable[..., Mapping[str, int]]  # (task, params, progress[, worker context])


def tool_version() -> str:
    try:
        return version("cocu")
    except PackageNotFoundError:
        return "0+unknown"


def params_digest(params: Mapping[str, Any]) -> str:
    """A stable hash of the parameters that determine a stage's output."""
    canonical = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: read ``source``, write ``target`` (atomically)."""

    source: Path
    target: Path

    @property
    def manifest(self) -> Path:
        return manifest_path(self.target)


@dataclass
class StageSummary:
    stage: str
    done: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def line(self) -> str:
        parts = [
            f"{self.stage}: {self.done} shard(s) written, {self.skipped} skipped (already done), "
            f"{len(self.failures)} failed"
        ]
        parts += [f"{name} {value}" for name, value in sorted(self.counts.items())]
        parts.append(f"{self.seconds:.1f}s")
        return "; ".join(parts)


def _fingerprint(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def source_sha256(source: Path, previous: Mapping[str, Any] | None = None) -> str:
    """The source's sha256, reusing a manifest's value when size and mtime say the file is unchanged."""
    if previous and previous.get("source_stat") == _fingerprint(source) and previous.get("source_sha256"):
        return previous["source_sha256"]
    return sha256_file(source)


def read_manifest(task: ShardTask) -> dict[str, Any] | None:
    try:
        return json.loads(task.manifest.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_done(task: ShardTask, digest: str) -> bool:
    """True when the target exists as recorded and was made from this very source with these parameters."""
    manifest = read_manifest(task)
    if manifest is None or manifest.get("params_digest") != digest or not task.target.exists():
        return False
    recorded, stat = manifest.get("target_stat", {}), _fingerprint(task.target)
    if recorded.get("size") != stat["size"]:
        return False
    if recorded != stat and sha256_file(task.target) != manifest.get("target_sha256"):
        return False  # rewritten in place since it was made
    return source_sha256(task.source, manifest) == manifest.get("source_sha256")


def _write_manifest(
    task: ShardTask, stage: str, params: Mapping[str, Any], digest: str, counts: Mapping[str, int], seconds: float
) -> None:
    atomic_write_json(
        task.manifest,
        {
            "stage": stage,
            "source": str(task.source),
            "source_stat": _fingerprint(task.source),
            "source_sha256": sha256_file(task.source),
            "target": task.target.name,
            "target_stat": _fingerprint(task.target),
            "target_sha256": sha256_file(task.target),
            "params_digest": digest,
            "params": dict(params),
            "counts": dict(counts),
            "seconds": round(seconds, 3),
            "cocu_version": tool_version(),
        },
    )


def run_stage(
    stage: str,
    tasks: Sequence[ShardTask],
    fn: ShardFunction,
    params: Mapping[str, Any],
    workers: int = 1,
    unit: str = "img",
    progress: bool = True,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
    devices: Sequence[str] | None = None,
    executor: Any = None,
) -> StageSummary:
    """Run ``fn`` on every task not already done; a failing shard is reported, the others go on.

    ``fn`` must be a module-level function (it is sent to worker processes) that writes
    ``task.target`` atomically and returns counts; it calls ``progress(n)`` after each batch.
    With an ``initializer`` (run once per worker), ``fn`` takes a fourth argument: what the initializer
    returned in that worker (its context: a loaded model, an open bank), so no module state is needed.
    ``devices`` pins parallel worker ``i`` to GPU ``devices[i]`` (``placement.worker_devices``);
    ``executor`` (e.g. ``ray_executor.RayExecutor``) runs the pending shards elsewhere instead of here.
    """
    started = time.perf_counter()
    digest = params_digest({"stage": stage, **params})
    summary = StageSummary(stage)
    owners = {name for task in tasks for name in (task.target.name, task.manifest.name)}
    for directory in {task.target.parent for task in tasks}:
        if directory.exists():
            remove_stale_temporaries(directory, owners)  # this run's files only: other array tasks may be writing
    pending = []
    for task in tasks:
        if is_done(task, digest):
            summary.skipped += 1
        else:
            pending.append(task)
    total = 0
    for task in pending:
        try:
            total += count_rows(task.source)
        except ShardError:
            pass  # reported when the shard itself runs
    bar = tqdm(total=total, unit=unit, unit_scale=True, desc=stage, disable=not progress, dynamic_ncols=True)

    def finish(task: ShardTask, outcome: tuple[Mapping[str, int], float] | BaseException) -> None:
        if isinstance(outcome, BaseException):
            summary.failures.append(
                str(outcome)
                if isinstance(outcome, ShardError)
                else f"{task.source}: {type(outcome).__name__}: {outcome}"
            )
            return
        counts, seconds = outcome
        _write_manifest(task, stage, params, digest, counts, seconds)
        summary.done += 1
        summary.counts.update(counts)
        bar.set_postfix_str(f"shards {summary.done + summary.skipped}/{len(tasks)}", refresh=False)

    if executor is not None:
        executor.run(pending, fn, params, bar.update, finish, initializer, initargs)
    elif workers <= 1 or len(pending) <= 1:
        context = (initializer(*initargs),) if initializer is not None else ()
        for task in pending:
            try:
                finish(task, _timed(fn, task, params, bar.update, context))
            except Exception as err:  # one bad shard must not stop the others
                finish(task, err)
    else:
        _run_parallel(pending, fn, params, workers, bar, finish, initializer, initargs, devices)
    bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _timed(
    fn: ShardFunction, task: ShardTask, params: Mapping[str, Any], progress: Progress, context: tuple = ()
) -> tuple[Mapping[str, int], float]:
    started = time.perf_counter()
    counts = fn(task, params, progress, *context)
    return counts, time.perf_counter() - started


_worker: dict[str, Any] = {}  # this pool process's progress queue and initializer context, set by _worker_init


def _worker_init(
    progress_queue: Any, initializer: Callable[..., Any] | None, initargs: tuple, device_queue: Any
) -> None:
    if device_queue is not None:  # before the initializer loads a model: it must see only its own GPU
        pin_to_device(device_queue.get())
    context = (initializer(*initargs),) if initializer is not None else ()
    _worker.update(progress=progress_queue.put, context=context)


def _worker_run(fn: ShardFunction, task: ShardTask, params: Mapping[str, Any]) -> tuple[Mapping[str, int], float]:
    return _timed(fn, task, params, _worker["progress"], _worker["context"])


def _run_parallel(pending, fn, params, workers, bar, finish, initializer, initargs, devices=None) -> None:
    context = mp.get_context("spawn")  # fork after torch/faiss threads have started can deadlock
    workers = min(workers, len(pending))
    with context.Manager() as manager:
        progress_queue = manager.Queue()
        device_queue = None
        if devices:
            device_queue = manager.Queue()
            for slot in range(workers):  # one per worker process, each started once
                device_queue.put(devices[slot % len(devices)])
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_worker_init,
            initargs=(progress_queue, initializer, initargs, device_queue),
        ) as pool:
            futures: dict[Future, ShardTask] = {pool.submit(_worker_run, fn, task, params): task for task in pending}
            while futures:
                finished, _ = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(progress_queue, bar)
                for future in finished:
                    task = futures.pop(future)
                    error = future.exception()
                    finish(task, error if error is not None else future.result())
            _drain(progress_queue, bar)


def _drain(progress_queue: Any, bar: tqdm) -> None:
    while True:
        try:
            bar.update(progress_queue.get_nowait())
        except queue.Empty:
            return


def worker_threads(workers: int) -> int:
    """Threads each worker process may use so that all of them together fill the machine once."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
