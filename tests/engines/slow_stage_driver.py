"""A driver for the engine tests: a slow stage on the Ray cluster that RAY_ADDRESS names.

Each shard opens its temporary beside its target, sleeps, then writes the source's text: an attempt killed mid-shard
leaves its temporary behind, as a killed embed or enrich worker does. ``python slow_stage_driver.py FOLDER N SECONDS``
runs N shards through two actors and prints the summary line, then one line per failure.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cocu.curation.core.shards import atomic_path
from cocu.curation.core.stage import ShardTask, Stage, run_stage
from cocu.curation.executors.ray_actors import RayExecutor


def slow_copy(task: ShardTask, params, progress) -> dict[str, int]:
    with atomic_path(task.target) as tmp:
        tmp.write_text("partial")
        time.sleep(params["seconds"])
        tmp.write_text(task.source.read_text())
    return {"images": 1}


def main(folder: Path, shards: int, seconds: float) -> int:
    (folder / "out").mkdir(parents=True, exist_ok=True)
    tasks = []
    for i in range(shards):
        source = folder / f"{i}.src"
        source.write_text(f"shard {i}")
        tasks.append(ShardTask(source, folder / "out" / f"{i}.txt"))
    stage = Stage("slow", slow_copy, {"seconds": seconds})  # slow_copy lives in __main__: it travels by value
    summary = run_stage(stage, tasks, RayExecutor(workers=2), progress=False)
    print(summary.line())
    for failure in summary.failures:
        print(f"failure: {failure}")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
