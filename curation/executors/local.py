"""Run a stage's pending shards on this machine: in this process, or in a pool of worker processes, one per GPU.

The pool uses ``spawn`` (a fork after torch or faiss started their threads can deadlock). Each worker is pinned
to its GPU before the stage's setup loads a model (``placement.worker_devices``), runs the setup once, and then
takes shards one at a time; its progress comes back to the driver's bar through a queue.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from cocu.curation.core.placement import pin_to_device, visible_gpu_count, worker_devices
from cocu.curation.core.stage import (
    Finish,
    Progress,
    ShardFunction,
    ShardTask,
    Stage,
    StageStopped,
    run_shard,
    worker_threads,
)


@dataclass(frozen=True)
class LocalExecutor:
    """This machine. ``workers`` None: one worker per visible GPU for a stage that uses GPUs, else one."""

    workers: int | None = None

    def workers_for(self, stage: Stage, pending: int) -> int:
        wanted = self.workers
        if wanted is None:
            wanted = max(1, visible_gpu_count()) if stage.resources.gpus else 1
        return max(1, min(wanted, pending))

    def run(self, stage: Stage, pending: Sequence[ShardTask], progress: Progress, finish: Finish) -> None:
        workers = self.workers_for(stage, len(pending))
        if workers == 1:
            context = stage.start_worker(os.cpu_count() or 1, here=True)
            for task in pending:
                try:
                    finish(task, run_shard(stage.process, task, stage.params, progress, context))
                except Exception as err:  # one bad shard must not stop the others
                    finish(task, err)
            return
        devices = worker_devices(workers, stage.resources.device) if stage.resources.gpus else None
        _run_pool(stage, pending, workers, devices, progress, finish)


def _run_pool(
    stage: Stage,
    pending: Sequence[ShardTask],
    workers: int,
    devices: list[str] | None,
    progress: Progress,
    finish: Finish,
) -> None:
    context = mp.get_context("spawn")
    with context.Manager() as manager:
        progress_queue = manager.Queue()
        device_queue = None
        if devices:
            device_queue = manager.Queue()
            for slot in range(workers):  # one per worker process, each started once
                device_queue.put(devices[slot])
        setup = (stage.setup, stage.setup_args, worker_threads(workers))
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(progress_queue, setup, device_queue),
        ) as pool:
            futures: dict[Future, ShardTask] = {
                pool.submit(_run_in_worker, stage.process, task, stage.params): task for task in pending
            }
            try:
                while futures:
                    finished, _ = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(progress_queue, progress)
                    for future in finished:
                        task = futures.pop(future)
                        error = future.exception()
                        finish(task, error if error is not None else future.result())
            except StageStopped:  # the shards not started yet are not started; those in flight end as they will
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            _drain(progress_queue, progress)


_worker: dict[str, Any] = {}  # this pool process's progress queue and setup context, set by _start_worker


def _start_worker(progress_queue: Any, setup: tuple, device_queue: Any) -> None:
    if device_queue is not None:  # before the setup loads a model: it must see only its own GPU
        pin_to_device(device_queue.get())
    function, args, threads = setup
    _worker.update(progress=progress_queue.put, context=(function(threads, *args),) if function is not None else ())


def _run_in_worker(process: ShardFunction, task: ShardTask, params: Any) -> tuple[Any, float]:
    return run_shard(process, task, params, _worker["progress"], _worker["context"])


def _drain(progress_queue: Any, progress: Progress) -> None:
    while True:
        try:
            progress(progress_queue.get_nowait())
        except queue.Empty:
            return
