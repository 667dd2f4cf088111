"""Run a stage's pending shards as Ray actor calls: one model load per actor, bounded retries, bounded waits.

``run_stage`` keeps everything that makes a run resumable on the driver: it skips the shards whose
manifest matches before any actor starts, and it writes each shard's manifest after the actor's call
returns. The actors run the very per-shard function of the local executor, which writes its output
under the same deterministic name with the same atomic rename, so a Ray run's outputs are the local
run's bytes (the filesystem must be shared by the driver and the workers, as on any cluster).

Paths are made absolute in the driver before a task travels, and each actor works in the driver's working
directory when its node has it, so a relative ``--shards`` or ``--out`` means on every node what it means
to the driver; a path a worker cannot see is one line naming the path and the node.

Each actor runs the stage's setup once (the model is loaded once per actor, then cached there) and takes
one shard at a time, so fast actors take more shards. Only an actor that has started (its setup done) is
given a shard: a replacement that the cluster has no room for waits without holding work, and is dropped
when the others finish. Every wait is bounded (``ray.wait`` with a timeout), and between waits the driver
reads the cluster's node table: a shard whose actor died, or whose node left the cluster, is retried on a
fresh actor up to ``max_retries`` times; a ``ShardError`` is the data's fault and is reported at once. Every
shard ends either written or in the summary's failures, and the summary counts the retries and lost workers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cocu.curation.core.stage import Finish, Progress, ShardTask, Stage
from cocu.curation.executors.ray_cluster import connect_ray
from cocu.curation.executors.ray_scheduler import ShardScheduler, describe_resources
from cocu.curation.executors.ray_worker import ShardWorker


@dataclass(frozen=True)
class RayExecutor:
    """How to run on Ray. ``address``: "auto", HOST:PORT or ray://...; None: see ``connect_ray``."""

    address: str | None = None
    workers: int | None = None  # actors; None: one per GPU when they use GPUs, else one per CPU they ask for
    num_cpus: float | None = None  # per actor; None: what the stage declares (its image decoders run inside it)
    num_gpus: float | None = None  # per actor; None: the stage's GPUs when the cluster has any, else 0
    max_retries: int = 2  # extra tries of a shard after its first failed one
    start_seconds: float = 600.0  # an actor not started by then, while no other is, fails the shards left
    poll_seconds: float = 1.0  # the longest single wait; the node table is read between waits

    def connect(self) -> None:
        """Join or start the cluster (once per driver process)."""
        connect_ray(self.address)

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

    def run(self, stage: Stage, pending: Sequence[ShardTask], progress: Progress, finish: Finish) -> Mapping[str, int]:
        """Run the stage on every pending task; call ``finish(task, (counts, seconds) | error)`` once per task.

        Returns what happened on the way: ``attempt(s) retried`` and ``worker(s) lost`` (actors that died
        or whose node left the cluster)."""
        import ray

        actors_wanted, cpus, gpus = self.resources(stage)
        options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": 0}
        if stage.resources.memory_gb:
            options["memory"] = int(stage.resources.memory_gb * 2**30)
        if not _fits_a_node(cpus, gpus):
            error = RuntimeError(
                f"no node of the Ray cluster has {cpus:g} CPU and {gpus:g} GPU free for one actor "
                f"(cluster: {describe_resources(ray.cluster_resources())}); give --workers fewer or a bigger cluster"
            )
            for task in pending:
                finish(task, error)
            return {}
        scheduler = ShardScheduler(
            self,
            ray.remote(**options)(ShardWorker),
            (stage.setup, stage.setup_args, max(1, int(cpus)), os.getcwd()),
            (stage.process, stage.params),
            pending,
            progress,
            finish,
        )
        try:
            scheduler.run(min(actors_wanted, len(pending)))
        finally:
            scheduler.stop()
        return dict(scheduler.stats)


def _fits_a_node(cpus: float, gpus: float) -> bool:
    import ray

    try:
        nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    except Exception:  # noqa: BLE001 - cannot tell: let the scheduler find out
        return True
    return any(res.get("CPU", 0) >= cpus and res.get("GPU", 0) >= gpus for res in nodes)
