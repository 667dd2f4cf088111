"""`make teacher` (`python -m cocu.benchmarks.teacher`): train the benchmark's teacher CLIP again.

It follows its recorded recipe and writes into ``benchmarks/teacher/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cocu.benchmarks.presets import BENCH_PRESETS
from cocu.benchmarks.teacher.recipe import SHIPPED, make_teacher


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Train the benchmark's teacher CLIP (what `make teacher` runs).")
    parser.add_argument("--preset", choices=sorted(BENCH_PRESETS), default="default", help="whose world to train on")
    parser.add_argument("--work", type=Path, default=Path("benchmark"), help="folder for the world")
    parser.add_argument("--out", type=Path, default=SHIPPED, help="where the teacher goes")
    args = parser.parse_args(argv)
    cfg = BENCH_PRESETS[args.preset]
    return make_teacher(cfg.world, args.work.resolve() / "world", args.out.resolve(), cfg.teacher_recipe)


if __name__ == "__main__":
    main()
