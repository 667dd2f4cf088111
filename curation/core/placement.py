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

from cocu.curation.core.errors import CocuError

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


SLURM_ARRAY = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP")


def shard_slice(index: int | None, count: int | None, env: Mapping[str, str] | None = None) -> ShardSlice:
    """The slice given on the command line, else the SLURM array task's, else everything (see ``slurm_slice``)."""
    env = os.environ if env is None else env
    if index is not None or count is not None:
        if index is None or count is None:
            raise ValueError("give --shard-index and --num-shards together")
        return ShardSlice(index, count)
    if "SLURM_ARRAY_TASK_ID" in env:
        return slurm_slice(env)
    return ShardSlice()


def slurm_slice(env: Mapping[str, str]) -> ShardSlice:
    """The slice of a SLURM array task: its position among the array's task ids, and the number of tasks.

    An array's ids are ``MIN, MIN + STEP, ..., MAX`` (``--array=0-15``, ``1-16``, ``0-14:2``); a list such as
    ``--array=1,3,5`` is taken when its ids are evenly spaced (step ``(MAX - MIN) / (COUNT - 1)``, whatever
    ``SLURM_ARRAY_TASK_STEP`` says). COUNT ids that all sit on that grid of COUNT points are the grid itself, so
    every task of a regular array gets its own slice, and in an irregular one (``1,2,5``) at least one task
    refuses, in one line naming the variables, instead of leaving its slice's shards unembedded in silence.
    """
    values: dict[str, int] = {}
    for name in (*SLURM_ARRAY, "SLURM_ARRAY_TASK_COUNT"):
        if env.get(name, "").strip():
            try:
                values[name] = int(env[name])
            except ValueError:
                raise CocuError(f"{name}={env[name]!r} is not a whole number; {USE_FLAGS}") from None
    task, count = values["SLURM_ARRAY_TASK_ID"], values.get("SLURM_ARRAY_TASK_COUNT")
    shown = ", ".join(f"{name}={values[name]}" for name in (*SLURM_ARRAY, "SLURM_ARRAY_TASK_COUNT") if name in values)
    if count is None:
        raise CocuError(f"{shown}: SLURM_ARRAY_TASK_COUNT is not set, so the number of tasks is unknown; {USE_FLAGS}")
    first = values.get("SLURM_ARRAY_TASK_MIN", 0)
    step = values.get("SLURM_ARRAY_TASK_STEP", 1)
    last = values.get("SLURM_ARRAY_TASK_MAX", first + step * (count - 1))
    if count > 1 and (last - first) % (count - 1) == 0:
        step = (last - first) // (count - 1)  # the one even spacing of COUNT ids from MIN to MAX
    elif count > 1:
        step = 0
    if count < 1 or (count > 1 and step < 1) or not first <= task <= last or (task - first) % max(step, 1):
        raise CocuError(
            f"{shown}: this task's id is not one of {count} evenly spaced ids from MIN to MAX (an irregular "
            f"--array list?), so it maps to no slice; {USE_FLAGS}"
        )
    return ShardSlice((task - first) // max(step, 1), count)


USE_FLAGS = (
    "give the slice with --shard-index I --num-shards N (I in 0..N-1, every I run once), "
    "or submit the array as --array=0-N, 1-N or 0-N:S"
)
