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
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from cocu.curation.core.errors import DiskFull
from cocu.curation.core.placement import wants_gpu
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
Outcome = tuple[Mapping[str, int], float] | BaseException  # a shard's counts and seconds, or why it failed


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


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs. The executor places the workers: one per GPU, or Ray's resource requests."""

    gpus: float = 0.0  # per worker; a stage with GPUs gets one worker per visible GPU by default, each pinned
    cpus: float = 1.0  # per worker: its share of cores (threads of torch, faiss and the image decoders)
    memory_gb: float | None = None  # reserved per worker where the executor can (Ray); None: no reservation
    device: str | None = "cpu"  # the stage's --device; a device the user named (cuda:N) is not re-pinned

    @classmethod
    def for_device(cls, device: str | None, cpus: float = 1.0, memory_gb: float | None = None) -> Resources:
        """One GPU per worker when ``device`` may use one (None or cuda), none for cpu."""
        return cls(gpus=1.0 if wants_gpu(device) else 0.0, cpus=cpus, memory_gb=memory_gb, device=device)


@dataclass(frozen=True)
class Stage:
    """A per-shard stage as it declares itself: name, needs, per-worker setup, per-shard work.

    ``process(task, params, progress[, context])`` is a module-level function (it travels to worker processes and
    Ray actors) that writes ``task.target`` atomically and returns counts; it calls ``progress(n)`` after each batch.
    ``setup(threads, *setup_args)`` runs once per worker, given that worker's share of cores; what it returns (a
    loaded model, an open bank) is the context ``process`` then takes as its fourth argument. ``prepared`` holds
    keyword arguments ``setup`` gets only when it runs in this process: objects already loaded here (an open bank)
    that a worker elsewhere loads itself.
    """

    name: str
    process: ShardFunction
    params: Mapping[str, Any]
    setup: Callable[..., Any] | None = None
    setup_args: tuple = ()
    resources: Resources = Resources()
    unit: str = "img"
    prepared: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def start_worker(self, threads: int, here: bool = False) -> tuple:
        """The worker's context as ``process`` takes it (empty without a setup); ``here``: in this process."""
        if self.setup is None:
            return ()
        return (self.setup(threads, *self.setup_args, **(self.prepared if here else {})),)


Finish = Callable[[ShardTask, Outcome], None]


class StageStopped(Exception):
    """Raised by ``finish`` to stop the executor: the shards left cannot succeed (the disk is full)."""


class Executor(Protocol):
    """Where a stage's pending shards run (``cocu.curation.executors``): this machine, or a Ray cluster.

    ``run`` calls ``finish(task, outcome)`` exactly once per task and ``progress(rows)`` as rows are done; the
    driver (``run_stage``) keeps what makes a run resumable: the skip decision and the manifests. It may return
    counts of what happened on the way (``retried``, ``workers lost``), which the summary line shows.
    """

    def run(
        self, stage: Stage, pending: Sequence[ShardTask], progress: Progress, finish: Finish
    ) -> Mapping[str, int] | None: ...


@dataclass
class StageSummary:
    stage: str
    done: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    events: Counter = field(default_factory=Counter)  # what the executor met: retried attempts, workers lost

    @property
    def ok(self) -> bool:
        return not self.failures

    def line(self) -> str:
        parts = [
            f"{self.stage}: {self.done} shard(s) written, {self.skipped} skipped (already done), "
            f"{len(self.failures)} failed"
        ]
        parts += [f"{value} {name}" for name, value in sorted(self.events.items()) if value]
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


def run_stage(stage: Stage, tasks: Sequence[ShardTask], executor: Executor, progress: bool = True) -> StageSummary:
    """Run ``stage`` on every task not already done; a failing shard is reported, the others go on."""
    started = time.perf_counter()
    digest = params_digest({"stage": stage.name, **stage.params})
    summary = StageSummary(stage.name)
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
    bar = tqdm(total=total, unit=stage.unit, unit_scale=True, desc=stage.name, disable=not progress, dynamic_ncols=True)

    def finish(task: ShardTask, outcome: Outcome) -> None:
        if isinstance(outcome, DiskFull):  # every shard after it would fail the same way: stop, say it once
            summary.failures.append(str(outcome))
            raise StageStopped
        if isinstance(outcome, BaseException):
            summary.failures.append(
                str(outcome)
                if isinstance(outcome, ShardError)
                else f"{task.source}: {type(outcome).__name__}: {outcome}"
            )
            return
        counts, seconds = outcome
        _write_manifest(task, stage.name, stage.params, digest, counts, seconds)
        summary.done += 1
        summary.counts.update(counts)
        bar.set_postfix_str(f"shards {summary.done + summary.skipped}/{len(tasks)}", refresh=False)

    if pending:
        try:
            summary.events.update(executor.run(stage, pending, bar.update, finish) or {})
        except StageStopped:
            left = len(pending) - summary.done - len(summary.failures)
            summary.failures.append(
                f"{stage.name}: stopped at the full disk, {left} shard(s) not tried; free space and rerun "
                "(finished shards are kept)"
            )
        for directory in {task.target.parent for task in pending}:  # a worker killed mid-shard left its temporary
            if directory.exists():
                remove_stale_temporaries(directory, owners)
    bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def run_shard(
    process: ShardFunction, task: ShardTask, params: Mapping[str, Any], progress: Progress, context: tuple = ()
) -> tuple[Mapping[str, int], float]:
    """One shard through the stage's work, timed; what every executor calls, wherever it runs."""
    started = time.perf_counter()
    counts = process(task, params, progress, *context)
    return counts, time.perf_counter() - started


def worker_threads(workers: int) -> int:
    """Threads each worker process may use so that all of them together fill the machine once."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
