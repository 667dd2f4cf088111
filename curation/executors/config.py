"""``ExecutorConfig``: where a per-shard stage runs (this machine or a Ray cluster) and which slice of an array job.

``build-bank`` and ``enrich`` take the same options from it, so the two commands cannot drift apart.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from cocu.curation.core.configs import option
from cocu.curation.core.placement import ShardSlice, shard_slice
from cocu.curation.core.stage import Executor
from cocu.curation.executors.local import LocalExecutor
from cocu.curation.executors.ray_actors import RayExecutor

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ExecutorConfig:
    workers: int | None = option(
        None,
        "Shards processed in parallel, each worker on its own GPU (default: one per visible GPU, else 1; "
        "with Ray: per GPU, else per CPU).",
        minimum=1,
    )
    executor: str = option("local", "local: processes here; ray: actors on a Ray cluster.", choices=EXECUTORS)
    ray_address: str | None = option(
        None,
        "Ray cluster to join (auto or HOST:PORT; default: $RAY_ADDRESS, else this node's running cluster, "
        "else a new local one).",
    )
    shard_index: int | None = option(
        None,
        "Array task: take only shards index, index+n, ... (default: the SLURM array task's position, from "
        "$SLURM_ARRAY_TASK_ID, _MIN, _MAX and _STEP).",
        minimum=0,
    )
    num_shards: int | None = option(
        None, "Array task: the number n of tasks (default: $SLURM_ARRAY_TASK_COUNT).", minimum=1
    )

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"--executor {self.executor!r}: choose one of {', '.join(EXECUTORS)}")
        if self.ray_address is not None and self.executor != "ray":
            raise ValueError("--ray-address needs --executor ray")

    def build(self, connect: bool = True) -> Executor:
        """The executor: a local pool, or Ray actors (the ``ray`` extra), joined to their cluster now (``connect``)
        so that an address that does not answer is one line before any work starts."""
        if self.executor == "local":
            return LocalExecutor(self.workers)
        if importlib.util.find_spec("ray") is None:
            raise ValueError("--executor ray needs Ray: pip install 'cocu[ray]'")
        executor = RayExecutor(address=self.ray_address, workers=self.workers)
        if connect:
            executor.connect()
        return executor

    def part(self) -> ShardSlice:
        """This task's slice of the shards (from the options, else the SLURM array task's, else all)."""
        return shard_slice(self.shard_index, self.num_shards)
