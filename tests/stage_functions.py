"""Stage functions for tests that run a stage in spawned worker processes.

A spawned worker imports the module of the function it runs: here that is this small module, not a test module
whose imports (torch, faiss, open_clip) would cost each worker seconds before its first task.
"""

from __future__ import annotations

import os

from cocu.curation.core.stage import ShardTask


def record_device(task: ShardTask, params, progress) -> dict[str, int]:
    """Write which GPU the process was pinned to, and which process it is."""
    task.target.write_text(f"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES')}")
    return {"images": 1}
