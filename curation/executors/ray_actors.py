"""Run a stage's pending shards as Ray actor calls: one model load per actor, bounded retries, nothing dropped.

``run_stage`` keeps everything that makes a run resumable on the driver: it skips the shards whose
manifest matches before any actor starts, and it writes each shard's manifest after the actor's call
returns. The actors run the very per-shard function of the local executor, which writes its output
under the same deterministic name with the same atomic rename, so a Ray run's outputs are the local
run's bytes (the filesystem must be shared by the driver and the workers, as on any cluster).

Each actor runs the stage's setup once (the model is loaded once per actor, then cached there)
and takes one shard at a time, so fast actors take more shards. A shard whose call fails is retried on
a fresh actor up to ``max_retries`` times when the failure is the machine's (actor died, out of memory,
an unexpected exception); a ``ShardError`` is the data's fault and is reported at once. Every shard
ends either written or in the summary's failures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cocu.curation.core.shards import ShardError, count_rows
from cocu.curation.core.stage import Finish, Progress, ShardFunction, ShardTask, Stage, run_shard

log = logging.getLogger(__name__)
OBJECT_STORE_BYTES = 256 * 1024 * 1024  # shards travel by path, not through the object store


@dataclass(frozen=True)
class RayExecutor:
    """How to run on Ray. ``address``: None starts a local cluster, "auto" joins the one this node belongs to."""

    address: str | None = None
    workers: int | None = None  # actors; None: one per GPU when they use GPUs, else one per CPU they ask for
    num_cpus: float | None = None  # per actor; None: what the stage declares (its image decoders run inside it)
    num_gpus: float | None = None  # per actor; None: the stage's GPUs when the cluster has any, else 0
    max_retries: int = 2  # extra tries of a shard after its first failed one

    def connect(self) -> None:
        """Join or start the cluster (once per driver process)."""
        import ray

        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address is None:
                options["object_store_memory"] = OBJECT_STORE_BYTES
            ray.init(address=self.address, **options)

    def resources(self, stage: Stage) -> tuple[int, float, float]:
        """(actors, cpus per actor, gpus per actor) for this stage on this cluster."""
        import ray

        self.connect()
        cluster = ray.cluster_resources()
        cpus = self.num_cpus if self.num_cpus is not None else stage.resources.cpus
        if self.num_gpus is not None:
            gpus = self.num_gpus
        else:
            gpus = stage.resources.gpus if cluster.get("GPU", 0) else 0.0
        if self.workers is not None:
            return self.workers, cpus, gpus
        by_gpu = int(cluster.get("GPU", 0) // gpus) if gpus else 0
        return max(1, by_gpu or int(cluster.get("CPU", 1) // max(cpus, 1e-9))), cpus, gpus

    def run(self, stage: Stage, pending: Sequence[ShardTask], progress: Progress, finish: Finish) -> None:
        """Run the stage on every pending task; call ``finish(task, (counts, seconds) | error)`` once per task."""
        import ray

        actors_wanted, cpus, gpus = self.resources(stage)
        options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": 0}
        if stage.resources.memory_gb:
            options["memory"] = int(stage.resources.memory_gb * 2**30)
        actor_class = ray.remote(**options)(ShardWorker)
        setup = (stage.setup, stage.setup_args, max(1, int(cpus)))
        fn, params = stage.process, stage.params
        queue = list(reversed(pending))  # pop() takes them in order
        attempts: dict[Any, int] = {}
        running: dict[Any, tuple[Any, Any]] = {}  # object ref -> (task, actor)
        idle = [actor_class.remote(*setup) for _ in range(min(actors_wanted, len(pending)))]

        def submit(actor) -> None:
            task = queue.pop()
            running[actor.run.remote(fn, task, params)] = (task, actor)

        while queue or running:
            while queue and idle:
                submit(idle.pop())
            done, _ = ray.wait(list(running), num_returns=1)
            task, actor = running.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except Exception as err:  # the actor's exception, or its death
                cause = _cause(err)
                attempts[task] = attempts.get(task, 0) + 1
                retry = not isinstance(cause, ShardError) and attempts[task] <= self.max_retries
                log.warning(
                    "%s: attempt %d failed (%s)%s",
                    task.source,
                    attempts[task],
                    _first_line(cause),
                    "; retrying" if retry else "",
                )
                if not _alive(actor):
                    ray.kill(actor, no_restart=True)
                    actor = actor_class.remote(*setup)
                if retry:
                    queue.append(task)
                else:  # one line for the summary, however long Ray's own message is
                    finish(
                        task,
                        cause
                        if isinstance(cause, ShardError)
                        else RuntimeError(f"failed {attempts[task]} time(s), last: {_first_line(cause)}"),
                    )
            else:
                finish(task, outcome)
                _report_rows(task, progress)
            idle.append(actor)
        for actor in idle:
            ray.kill(actor, no_restart=True)  # type: ignore[arg-type]  # ray.remote's overloads type it as the class


class ShardWorker:
    """A Ray actor: runs the stage's setup once (given its share of cores), then one shard per call."""

    def __init__(self, setup: Callable[..., Any] | None, setup_args: tuple, threads: int):
        self.context = (setup(threads, *setup_args),) if setup is not None else ()

    def ping(self) -> bool:
        return True

    def run(self, process: ShardFunction, task: ShardTask, params: Any) -> tuple[Any, float]:
        return run_shard(process, task, params, lambda n: None, self.context)


def _cause(err: BaseException) -> BaseException:
    """The shard function's own exception inside Ray's wrapper; the wrapper itself when an actor died."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


def _alive(actor) -> bool:
    import ray

    try:
        return ray.get(actor.ping.remote(), timeout=60)
    except Exception:  # noqa: BLE001 - any failure to answer means the actor is gone
        return False


def _report_rows(task: Any, progress: Callable[[int], None]) -> None:
    try:
        progress(count_rows(task.source))
    except ShardError:
        pass


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
