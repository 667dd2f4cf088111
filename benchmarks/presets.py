"""The benchmark's presets: every setting of a run (world, teacher, curation, GroupViT budget, seeds), as data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cocu.benchmarks.teacher.recipe import SHIPPED, TeacherRecipe
from cocu.curation.inputs.synthetic import WorldConfig

# oracle-all: every true concept above ORACLE_MIN_AREA (K from the truth); oracle-top3: the 3 largest (CoCu's K)
RUNS = ("caption", "cocu-cluster", "cocu-top", "oracle-all", "oracle-top3", "release")


@dataclass(frozen=True)
class BenchConfig:
    """Every setting of one benchmark run; the GroupViT trainings share all but the text mode and the seed."""

    # two things of each confusable group (16 things, 8 stuff): a world whose things a teacher and a GroupViT can learn
    # in this budget, with the same omission rate, confusable pairs and rarely named stuff; 1,000 val images (the
    # first 300 are the earlier runs' 300: each chunk of 100 val images has its own generator)
    world: WorldConfig = WorldConfig(train=20000, teacher=40000, val=1000, shard_size=2500, things_per_group=2)
    teacher_recipe: TeacherRecipe = TeacherRecipe()
    retrain_teacher: bool = False  # train the teacher here instead of using the shipped one
    shipped_teacher: Path = SHIPPED  # where the shipped teacher is (`make teacher` writes it)
    neighbors: int = 8
    top_k: int = 16  # the largest k of the curation-quality table; enrich stores whole archives
    vocabulary_top: int = 16  # M of the hybrid archive
    train_config: str = "synthetic"  # a shipped recipe name or a YAML file
    train_steps: int = 500
    train_batch: int = 64
    train_workers: int = 1
    runs: tuple[str, ...] = RUNS
    seeds: int = 3  # seeds of the runs in seeded_runs: seed, seed + 1, ...
    seeded_runs: tuple[str, ...] = ("caption", "cocu-cluster", "oracle-all")
    # evaluated at curve_points checkpoints of their first seed: the baseline, the best CoCu mode and the ceiling
    curve_runs: tuple[str, ...] = ("caption", "cocu-cluster", "oracle-all")
    curve_points: int = 5
    seed: int = 0
    save_images: int = 6
    threads: int = 2  # torch threads of the single-process stages (teacher, eval when the runs go one at a time)
    parallel_runs: int = 2  # GroupViT runs side by side, one torch thread each: 2 cores do ~2x one 2-thread run

    def run_seeds(self, mode: str) -> list[int]:
        return [self.seed + i for i in range(self.seeds if mode in self.seeded_runs else 1)]


BENCH_PRESETS: dict[str, BenchConfig] = {
    "default": BenchConfig(),
    # CI-sized: proves the pipeline and the report, not the science
    "quick": BenchConfig(
        world=WorldConfig(train=400, teacher=400, val=16, shard_size=200),
        teacher_recipe=TeacherRecipe(samples=256, batch=64, curve_every=128, threads=1),
        retrain_teacher=True,
        train_steps=4,
        train_batch=16,
        seeds=2,
        seeded_runs=("caption", "cocu-cluster"),
        curve_runs=("caption",),
        curve_points=2,
        save_images=2,
        threads=1,
        parallel_runs=1,
    ),
    # more data and longer training, for a machine with time to spare
    "large": BenchConfig(
        world=WorldConfig(train=60000, teacher=60000, val=500, shard_size=5000, things_per_group=2),
        retrain_teacher=True,
        teacher_recipe=TeacherRecipe(samples=524_288),
        train_steps=5000,
        train_batch=128,
    ),
    # one GPU (not yet run: no GPU was lent to this project's sessions): the large world, the teacher retrained on
    # the GPU, GroupViT 5,000 x 256 in bf16, one run at a time
    "gpu": BenchConfig(
        world=WorldConfig(train=60000, teacher=60000, val=500, shard_size=5000, things_per_group=2),
        retrain_teacher=True,
        teacher_recipe=TeacherRecipe(samples=1_048_576, batch=256, curve_every=65_536, threads=8),
        train_config="synthetic-gpu",
        train_steps=5000,
        train_batch=256,
        train_workers=8,
        threads=8,
        parallel_runs=1,
    ),
}
