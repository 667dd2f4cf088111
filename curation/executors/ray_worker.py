"""The Ray actor of a stage: it works in the driver's folder, runs the stage's setup once, then one shard per call.

A path the driver sees but the actor's node does not (a filesystem not shared at the same path) is one line naming
the path and the node, not a data error.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from cocu.curation.core.errors import FileError
from cocu.curation.core.stage import ShardFunction, ShardTask, run_shard


class WorkerPathError(FileError):
    """A path the driver sees but a worker node does not (the filesystem is not shared at the same path)."""


class ShardWorker:
    """A Ray actor: works in the driver's directory, runs the stage's setup once, then one shard per call."""

    def __init__(self, setup: Callable[..., Any] | None, setup_args: tuple, threads: int, cwd: str | None = None):
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # relative paths in the setup's arguments (a checkpoint, a bank) mean what they mean there
        self.context = (setup(threads, *setup_args),) if setup is not None else ()

    def ping(self) -> tuple[str, str]:
        import ray

        return ray.get_runtime_context().get_node_id(), this_node()

    def run(self, process: ShardFunction, task: ShardTask, params: Any) -> tuple[Any, float]:
        for path, what in ((task.source, task.source), (task.target.parent, task.target)):
            if not path.exists():
                raise WorkerPathError(
                    what,
                    f"not visible on node {this_node()} (the driver sees it); the driver and the workers "
                    "must share the filesystem at the same path",
                )
        return run_shard(process, task, params, lambda n: None, self.context)


def this_node() -> str:
    """This node as a message names it: "IP (host)", the host alone outside Ray."""
    try:
        import ray

        ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray: the host name alone
        ip = ""
    host = socket.gethostname()
    return f"{ip} ({host})" if ip else host
