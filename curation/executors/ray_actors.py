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

import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cocu.curation.core.errors import CocuError, FileError
from cocu.curation.core.shards import ShardError, count_rows, remove_stale_temporaries
from cocu.curation.core.stage import Finish, Progress, ShardFunction, ShardTask, Stage, run_shard

log = logging.getLogger(__name__)
OBJECT_STORE_BYTES = 256 * 1024 * 1024  # shards travel by path, not through the object store
CONNECT_SECONDS = 5.0  # how long an address may take to accept a connection before it counts as not answering


class RayAddressError(CocuError):
    """A Ray address that names no running cluster, in one line naming it."""


class WorkerPathError(FileError):
    """A path the driver sees but a worker node does not (the filesystem is not shared at the same path)."""


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
                f"(cluster: {_describe(ray.cluster_resources())}); give --workers fewer or a bigger cluster"
            )
            for task in pending:
                finish(task, error)
            return {}
        scheduler = _Scheduler(
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


class _Actor:
    """One actor as the driver sees it: starting (``ready`` is its ping), idle, or running ``task``."""

    def __init__(self, handle: Any, started: float):
        self.handle, self.started = handle, started
        self.ready: Any = handle.ping.remote()  # None once the setup has run
        self.node: tuple[str, str] | None = None  # (node id, "ip (host)") once started
        self.task: ShardTask | None = None
        self.call: Any = None


class _Scheduler:
    def __init__(self, executor: RayExecutor, actor_class, setup: tuple, work: tuple, pending, progress, finish):
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
                        f"free: {_describe(ray.available_resources())})"
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
                        f"written on node {where} but not visible to the driver on {_this_node()}; "
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


class ShardWorker:
    """A Ray actor: works in the driver's directory, runs the stage's setup once, then one shard per call."""

    def __init__(self, setup: Callable[..., Any] | None, setup_args: tuple, threads: int, cwd: str | None = None):
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # relative paths in the setup's arguments (a checkpoint, a bank) mean what they mean there
        self.context = (setup(threads, *setup_args),) if setup is not None else ()

    def ping(self) -> tuple[str, str]:
        import ray

        return ray.get_runtime_context().get_node_id(), _this_node()

    def run(self, process: ShardFunction, task: ShardTask, params: Any) -> tuple[Any, float]:
        for path, what in ((task.source, task.source), (task.target.parent, task.target)):
            if not path.exists():
                raise WorkerPathError(
                    what,
                    f"not visible on node {_this_node()} (the driver sees it); the driver and the workers "
                    "must share the filesystem at the same path",
                )
        return run_shard(process, task, params, lambda n: None, self.context)


# -------------------------------------------------------------------------------------------------- connecting


def connect_ray(address: str | None, object_store_memory: int = OBJECT_STORE_BYTES) -> str:
    """Join a cluster or start one here; returns what was joined ("local" when one was started).

    ``address`` HOST:PORT or ray://...: that cluster. "auto": the cluster this node belongs to (``RAY_ADDRESS``,
    else the address file ``ray start`` leaves in Ray's temp folder). None: ``RAY_ADDRESS`` when set (as inside
    ``ray job submit``), else the running cluster of this node, else a new local one; an address file that a
    stopped cluster left behind is ignored. An address that does not answer is one line naming it and where
    it came from. ``object_store_memory`` only sizes a cluster started here (a running one has its own).
    """
    import ray

    if ray.is_initialized():
        return "connected"
    chosen, origin = address, "--ray-address"
    if chosen in (None, "auto") and os.environ.get("RAY_ADDRESS", "").strip():
        chosen, origin = os.environ["RAY_ADDRESS"].strip(), "RAY_ADDRESS"
    if chosen in (None, "auto"):
        recorded = _recorded_address()
        if recorded is not None:
            path, found = recorded
            reason = _no_answer(found)
            if reason is None:
                chosen, origin = found, str(path)
            elif chosen == "auto":
                raise RayAddressError(
                    f"{origin} auto: {path} names {found}, which does not answer ({reason}; a stopped "
                    "cluster?); start one with `ray start --head` or give HOST:PORT"
                )
            else:
                chosen = None  # a dead cluster's leftover file: start a fresh one
        elif chosen == "auto":
            raise RayAddressError(
                f"{origin} auto: no Ray cluster runs on this node ({_address_file()} does not exist and "
                "RAY_ADDRESS is not set); start one with `ray start --head` or give HOST:PORT"
            )
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if chosen is None:
        ray.init(address="local", object_store_memory=object_store_memory, **options)
        return "local"
    if "://" not in chosen:
        reason = _no_answer(chosen)
        if reason is not None:
            raise RayAddressError(f"{origin} {chosen}: no Ray cluster answers there ({reason})")
    try:
        ray.init(address=chosen, **options)
    except Exception as err:  # a version mismatch, a port that is not a Ray GCS: one line naming the address
        raise RayAddressError(f"{origin} {chosen}: could not join the Ray cluster ({_first_line(err)})") from None
    return chosen


def _address_file() -> Path:
    """Where ``ray start`` records the cluster of this node (Ray's own rule: $RAY_TMPDIR, $TMPDIR, else /tmp)."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base) / "ray" / "ray_current_cluster"


def _recorded_address() -> tuple[Path, str] | None:
    path = _address_file()
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return (path, text) if text else None


def _no_answer(address: str) -> str | None:
    """None when HOST:PORT accepts a TCP connection within ``CONNECT_SECONDS``, else why not."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return "not HOST:PORT"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS):
            return None
    except OSError as err:
        return err.strerror or type(err).__name__


# -------------------------------------------------------------------------------------------------- helpers


def _absolute(task: ShardTask) -> ShardTask:
    return ShardTask(Path(os.path.abspath(task.source)), Path(os.path.abspath(task.target)))


def _this_node() -> str:
    try:
        import ray

        ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray: the host name alone
        ip = ""
    host = socket.gethostname()
    return f"{ip} ({host})" if ip else host


def _alive_nodes() -> set[str] | None:
    """The ids of the nodes the cluster lists as alive; None when the GCS did not answer this time."""
    import ray

    try:
        return {node["NodeID"] for node in ray.nodes() if node.get("Alive")}
    except Exception:  # noqa: BLE001 - the GCS is busy: look again next round
        return None


def _fits_a_node(cpus: float, gpus: float) -> bool:
    import ray

    try:
        nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    except Exception:  # noqa: BLE001 - cannot tell: let the scheduler find out
        return True
    return any(res.get("CPU", 0) >= cpus and res.get("GPU", 0) >= gpus for res in nodes)


def _describe(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{resources.get(name, 0):g} {name}" for name in ("CPU", "GPU"))


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
