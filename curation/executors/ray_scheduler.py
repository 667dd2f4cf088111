"""How the driver deals a Ray stage's shards: only to started actors, every wait bounded, lost nodes noticed.

An actor is given a shard only once its setup has run; a replacement the cluster has no room for waits without
holding work and is dropped when the others finish. Between bounded waits the driver reads the node table, so a
shard whose actor died, or whose node left, is retried on a fresh actor (``max_retries``); a ``ShardError`` is
the data's fault and is reported at once. Retries and lost workers are counted for the summary.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from cocu.curation.core.shards import ShardError, count_rows, remove_stale_temporaries
from cocu.curation.core.stage import ShardTask
from cocu.curation.executors.ray_worker import WorkerPathError, this_node

log = logging.getLogger(__name__)


class Policy(Protocol):
    """What the scheduler takes from ``RayExecutor``: how often to retry, how long to wait."""

    max_retries: int
    start_seconds: float
    poll_seconds: float


class _Actor:
    """One actor as the driver sees it: starting (``ready`` is its ping), idle, or running ``task``."""

    def __init__(self, handle: Any, started: float):
        self.handle, self.started = handle, started
        self.ready: Any = handle.ping.remote()  # None once the setup has run
        self.node: tuple[str, str] | None = None  # (node id, "ip (host)") once started
        self.task: ShardTask | None = None
        self.call: Any = None


class ShardScheduler:
    """Hands a stage's pending shards to Ray actors and ends every one of them, written or failed, in bounded time."""

    def __init__(self, executor: Policy, actor_class, setup: tuple, work: tuple, pending, progress, finish):
        self.executor, self.actor_class, self.setup, self.work = executor, actor_class, setup, work
        self.progress, self.finish = progress, finish
        # the driver's absolute paths travel; the driver's own task is what finish() and the manifest get
        self.original = {_absolute(task): task for task in pending}
        for task in self.original:
            task.target.parent.mkdir(parents=True, exist_ok=True)
        self.queue: deque[ShardTask] = deque(self.original)
        self.attempts: Counter = Counter()
        self.stats: Counter = Counter()
        self.actors: list[_Actor] = []
        self.starts_left = 0
        self.failed_starts = 0
        self.start_error: str | None = None
        self.wanted = 0

    def run(self, wanted: int) -> None:
        import ray

        self.wanted = wanted
        self.starts_left = wanted + len(self.queue) * (self.executor.max_retries + 1)
        for _ in range(wanted):
            self._start()
        fn, params = self.work
        checked = 0.0
        while self.queue or any(actor.call is not None for actor in self.actors):
            for actor in self.actors:
                if actor.ready is None and actor.call is None and self.queue:
                    actor.task = self.queue.popleft()
                    actor.call = actor.handle.run.remote(fn, actor.task, params)
            refs = [actor.ready if actor.ready is not None else actor.call for actor in self.actors]
            refs = [ref for ref in refs if ref is not None]
            finished: set = set()
            if refs and ray.wait(refs, num_returns=1, timeout=self.executor.poll_seconds)[0]:
                finished = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
            elif not refs:
                time.sleep(self.executor.poll_seconds)
            for actor in list(self.actors):
                if actor.ready is not None and actor.ready in finished:
                    self._started(actor)
                elif actor.call is not None and actor.call in finished:
                    self._returned(actor)
            if time.monotonic() - checked >= self.executor.poll_seconds:
                checked = time.monotonic()
                self._check_nodes()
                self._check_starting()
            if self.queue and not self.actors:
                self._replace()

    def stop(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor.handle, no_restart=True)
        self.actors.clear()

    # ---------------------------------------------------------------------------------------------- actors

    def _start(self) -> None:
        if self.starts_left <= 0:
            return
        self.starts_left -= 1
        self.actors.append(_Actor(self.actor_class.remote(*self.setup), time.monotonic()))

    def _replace(self) -> None:
        """Start actors up to the wanted number while shards wait; fail the rest when none can start any more."""
        while len(self.actors) < min(self.wanted, len(self.queue) + self._busy()) and self.starts_left > 0:
            self._start()
        if not self.actors:
            self._fail_queue(f"no Ray actor could be started ({self.start_error or 'start limit reached'})")

    def _busy(self) -> int:
        return sum(actor.call is not None for actor in self.actors)

    def _drop(self, actor: _Actor) -> None:
        import ray

        self.actors.remove(actor)
        ray.kill(actor.handle, no_restart=True)

    def _started(self, actor: _Actor) -> None:
        import ray

        try:
            node_id, where = ray.get(actor.ready)
        except Exception as err:  # its setup raised, or it died while starting
            self._drop(actor)
            self.stats["worker(s) lost"] += 1
            self.failed_starts += 1
            self.start_error = _first_line(_cause(err))
            log.warning("a Ray actor failed to start (%s)", self.start_error)
            if self.failed_starts > self.executor.max_retries and not any(a.ready is None for a in self.actors):
                self._fail_queue(f"no Ray actor could be started; last: {self.start_error}")  # setup keeps raising
            elif self.queue:
                self._replace()
            return
        actor.ready, actor.node = None, (node_id, where)

    def _check_starting(self) -> None:
        """An actor still starting after ``start_seconds`` is given up (with the shards left when none runs)."""
        now, limit = time.monotonic(), self.executor.start_seconds
        running = any(actor.ready is None for actor in self.actors)
        for actor in list(self.actors):
            if actor.ready is None:
                continue
            if not self.queue:
                self._drop(actor)  # nothing left for it: no need to wait for room
            elif now - actor.started > limit:
                self._drop(actor)
                log.warning("a Ray actor did not start in %.0fs; going on with the others", limit)
                if not running and not any(other.ready is None for other in self.actors):
                    import ray

                    self._fail_queue(
                        f"no Ray actor started within {limit:.0f}s (each asks for {self.setup[2]} CPU; cluster "
                        f"free: {describe_resources(ray.available_resources())})"
                    )

    def _check_nodes(self) -> None:
        """Actors on a node that the cluster no longer lists as alive are lost, whatever their calls say yet."""
        if not any(actor.node for actor in self.actors):
            return
        alive = _alive_nodes()
        if alive is None:
            return
        for actor in list(self.actors):
            if actor.node and actor.node[0] not in alive:
                self._lost(actor, f"node {actor.node[1]} left the cluster")

    # ---------------------------------------------------------------------------------------------- shards

    def _returned(self, actor: _Actor) -> None:
        import ray

        task = actor.task
        assert task is not None
        try:
            counts, seconds = ray.get(actor.call)
        except ray.exceptions.RayTaskError as err:  # the shard function raised; the actor lives on
            actor.task = actor.call = None
            self._failed(task, _cause(err))
        except Exception as err:  # the actor died (out of memory, a lost node) or its call was lost
            self._lost(actor, _first_line(_cause(err)))
        else:
            actor.task = actor.call = None
            original = self.original[task]
            if not original.target.exists():
                where = actor.node[1] if actor.node else "a worker"
                self.finish(
                    original,
                    WorkerPathError(
                        original.target,
                        f"written on node {where} but not visible to the driver on {this_node()}; "
                        "the driver and the workers must share the filesystem at the same path",
                    ),
                )
                return
            self.finish(original, (counts, seconds))
            _report_rows(original, self.progress)

    def _lost(self, actor: _Actor, why: str) -> None:
        task = actor.task
        self._drop(actor)
        self.stats["worker(s) lost"] += 1
        log.warning("lost a Ray worker%s: %s", f" on {actor.node[1]}" if actor.node else "", why)
        if task is not None:
            self._failed(task, RuntimeError(f"worker lost: {why}"))
        if self.queue:
            self._replace()

    def _failed(self, task: ShardTask, cause: BaseException) -> None:
        self.attempts[task] += 1
        tries = self.attempts[task]
        retry = not isinstance(cause, ShardError) and tries <= self.executor.max_retries
        log.warning(
            "%s: attempt %d failed (%s)%s", task.source, tries, _first_line(cause), "; retrying" if retry else ""
        )
        owners = {task.target.name}
        remove_stale_temporaries(task.target.parent, owners)  # the attempt is over: its temporary goes with it
        if retry:
            self.stats["attempt(s) retried"] += 1
            self.queue.appendleft(task)
        elif isinstance(cause, ShardError):
            self.finish(self.original[task], cause)
        else:  # one line for the summary, however long Ray's own message is
            self.finish(self.original[task], RuntimeError(f"failed {tries} time(s), last: {_first_line(cause)}"))

    def _fail_queue(self, why: str) -> None:
        while self.queue:
            task = self.queue.popleft()
            self.finish(self.original[task], RuntimeError(why))


def _absolute(task: ShardTask) -> ShardTask:
    return ShardTask(Path(os.path.abspath(task.source)), Path(os.path.abspath(task.target)))


def _alive_nodes() -> set[str] | None:
    """The ids of the nodes the cluster lists as alive; None when the GCS did not answer this time."""
    import ray

    try:
        return {node["NodeID"] for node in ray.nodes() if node.get("Alive")}
    except Exception:  # noqa: BLE001 - the GCS is busy: look again next round
        return None


def _cause(err: BaseException) -> BaseException:
    """The shard function's own exception inside Ray's wrapper; the wrapper itself when an actor died."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


def _report_rows(task: Any, progress: Callable[[int], None]) -> None:
    try:
        progress(count_rows(task.source))
    except ShardError:
        pass


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def describe_resources(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{resources.get(name, 0):g} {name}" for name in ("CPU", "GPU"))
