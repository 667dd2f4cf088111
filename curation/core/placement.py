"""Where the workers of a stage run: one per visible GPU, each pinned to its own device, and which shards a task takes.

Pinning is by ``CUDA_VISIBLE_DEVICES``, set in the worker process before anything there touches CUDA, so
``cuda`` inside the worker is its own GPU for torch and faiss-gpu alike (``index_cpu_to_all_gpus`` then
uses that one GPU). A batch scheduler's array task (SLURM, or any scheduler given ``--shard-index`` and
``--num-shards``) takes every ``n``-th shard of the sorted list, so the tasks of an array split the shards
without talking to each other and their outputs are exactly those of one run over all shards.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def visible_gpu_count() -> int:
    """GPUs torch can see in this process (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def wants_gpu(device: str | None) -> bool:
    """``None`` means "cuda when available"; an explicit ``cuda`` (any index) asks for a GPU too."""
    return device is None or device.startswith("cuda")


def worker_devices(workers: int, device: str | None) -> list[str] | None:
    """The ``CUDA_VISIBLE_DEVICES`` value of each worker slot, GPUs dealt round-robin; None when nothing is pinned.

    Nothing is pinned without a GPU, for ``--device cpu``, or for an explicit ``cuda:N`` (the user chose it).
    The values are the ids of the parent's own ``CUDA_VISIBLE_DEVICES`` list when it has one, so a job given
    GPUs 2 and 5 by its scheduler pins its workers to 2 and 5.
    """
    if not wants_gpu(device) or (device is not None and ":" in device):
        return None
    count = visible_gpu_count()
    if count == 0:
        return None
    inherited = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    ids = inherited[:count] if len(inherited) >= count else [str(i) for i in range(count)]
    return [ids[slot % count] for slot in range(workers)]


def pin_to_device(device_id: str) -> None:
    """Make one GPU the only one this process sees (call before the process first uses CUDA)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = device_id


@dataclass(frozen=True)
class ShardSlice:
    """Task ``index`` of ``count``: takes shards ``index, index + count, ...`` of the sorted shard list."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"--shard-index must be in [0, --num-shards); got {self.index} of {self.count}")

    @property
    def whole(self) -> bool:
        return self.count == 1

    def take(self, items: Sequence[T]) -> list[T]:
        return list(items[self.index :: self.count])

    def describe(self) -> str:
        return f"slice {self.index} of {self.count}"


def shard_slice(index: int | None, count: int | None, env: Mapping[str, str] | None = None) -> ShardSlice:
    """The slice given on the command line, else the SLURM array task's, else everything.

    SLURM numbers array tasks from ``SLURM_ARRAY_TASK_MIN`` (often 0, sometimes 1), so the index is taken
    relative to it; ``SLURM_ARRAY_TASK_COUNT`` is the number of tasks.
    """
    env = os.environ if env is None else env
    if index is not None or count is not None:
        if index is None or count is None:
            raise ValueError("give --shard-index and --num-shards together")
        return ShardSlice(index, count)
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return ShardSlice(task, int(env["SLURM_ARRAY_TASK_COUNT"]))
    return ShardSlice()
