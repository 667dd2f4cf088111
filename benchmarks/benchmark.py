"""`make benchmark`: the whole CoCu experiment on the embedded synthetic world, end to end.

Every stage runs the command a user would run (``cocu-data synth``, ``cocu-train clip``,
``cocu-curate build-bank`` / ``enrich``, ``cocu-train fit``, ``cocu-eval seg``), in this order:

    world -> teacher CLIP (shipped, or trained here) -> bank (x2: cocu's and the release's concept prompts) ->
    enrich (cocu, release, hybrid archive) -> curation quality -> gallery -> GroupViT x (caption | cocu-cluster |
    cocu-top | oracle | release) x seeds -> eval -> learning curve -> results.json and report

The teacher is the one ``make teacher`` trained and the repository ships (``benchmarks/teacher/``), as a user's
downloaded CLIP; ``--retrain-teacher`` trains it here with the same recipe. The ``release`` run trains on the top-3
of the authors' formula (``--formula release`` on the bank with their prompts); the others on cocu's curation.
The runs named in ``seeded_runs`` train once per seed (model initialisation and data order), the others once.
``--curation-only`` stops before the GroupViT trainings.

The GroupViT runs train two at a time (``parallel_runs``), one torch thread each, their output in
``OUT/logs/`` and their progress echoed every 30 s. Each finished stage leaves a record under
``OUT/stages/``; a rerun with the same settings skips it, and a killed training resumes from its
last checkpoint, so an interrupted benchmark carries on where it stopped. Every budget is in samples or steps, so
a busy machine changes the time, not the numbers. The report (``OUT/report.md``, ``OUT/figures/``) and
``OUT/results.json`` are written from the records of this run only.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cocu.benchmarks.grouping_bound import write_grouping_bound
from cocu.benchmarks.results import TEACHER_ZERO_SHOT, run_label
from cocu.benchmarks.runner import Runner, claim_run_dir, tool
from cocu.benchmarks.teacher import SHIPPED, TeacherRecipe, shipped_teacher, teacher_command
from cocu.curation.core.shards import atomic_write_json
from cocu.curation.inputs.synthetic import WorldConfig

TEXT_MODES = ("caption", "cocu-cluster", "cocu-top", "oracle", "release")


@dataclass(frozen=True)
class BenchConfig:
    """Every setting of one benchmark run; the GroupViT trainings share all but the text mode and the seed."""

    # two things of each confusable group (16 things, 8 stuff): a world whose things a teacher and a GroupViT can learn
    # in this budget, with the same omission rate, confusable pairs and rarely named stuff
    world: WorldConfig = WorldConfig(train=20000, teacher=40000, val=300, shard_size=2500, things_per_group=2)
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
    runs: tuple[str, ...] = TEXT_MODES
    seeds: int = 3  # seeds of the runs in seeded_runs: seed, seed + 1, ...
    seeded_runs: tuple[str, ...] = ("caption", "cocu-cluster", "oracle")
    curve_runs: tuple[str, ...] = ("oracle",)  # evaluated at curve_points checkpoints of their first seed
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


def run_benchmark(
    cfg: BenchConfig, out: Path, preset: str, in_process: bool = False, curation_only: bool = False
) -> Path:
    from cocu.benchmarks.report import write_benchmark_report
    from cocu.benchmarks.results import write_results
    from cocu.evaluation.eval_page import write_eval_page

    out = out.resolve()
    # the lanes actually used, so the report and its settings say what ran (in-process stages go one at a time)
    cfg = replace(cfg, parallel_runs=1 if in_process else max(1, cfg.parallel_runs))
    runner = Runner(out, in_process)
    world, bank, curated = out / "world", out / "bank", out / "curated"
    w = cfg.world
    threads = str(cfg.threads)
    started = time.perf_counter()

    world_params = asdict(w)
    world_config = out / "world-config.json"
    atomic_write_json(world_config, world_params)
    runner.run(
        "synth",
        [tool("cocu-data"), "synth", str(world), "--config", str(world_config), "--workers", "2"],
        world_params,
        items=w.train + w.teacher + w.val,
        unit="pair",
    )

    if cfg.retrain_teacher:
        teacher = out / "teacher"
        teacher_params = {"world": world_params, "recipe": asdict(cfg.teacher_recipe)}
        runner.run("teacher", teacher_command(cfg.teacher_recipe, world, teacher), teacher_params)
        record = json.loads((teacher / "teacher.json").read_text())
        weights = teacher / record["weights"]
    else:
        record, weights = shipped_teacher(w, cfg.teacher_recipe, cfg.shipped_teacher)
        teacher_params = {"shipped": record["weights_sha256"]}
        teacher = weights.parent

        def measure_teacher() -> None:  # on this run's world, as a user would check a downloaded CLIP
            from cocu.training.clip.zero_shot import evaluate_teacher

            zero_shot = evaluate_teacher(teacher, world, "train", progress=False)
            atomic_write_json(out / TEACHER_ZERO_SHOT, zero_shot)

        runner.run("teacher-eval", measure_teacher, {"teacher": teacher_params, "world": world_params})
    model = record["model"]

    def build_bank(name: str, target: Path, *options: str) -> dict[str, Any]:
        params = {"teacher": teacher_params, "options": list(options)}
        command = ["build-bank", "--shards", str(world / "train"), "--model", model, "--pretrained", str(weights)]
        runner.run(name, [tool("cocu-curate"), *command, "--out", str(target), *options], params, items=w.train)
        return params

    release_bank, curated_release = out / "bank-release", out / "curated-release"
    curated_hybrid = out / "curated-hybrid"
    bank_params = build_bank("bank", bank)
    release_bank_params = build_bank("bank-release", release_bank, "--template", "release")

    def enrich(name: str, on_bank: Path, target: Path, params: dict[str, Any], *options: str) -> dict[str, Any]:
        params = {"bank": params, "neighbors": cfg.neighbors, "options": list(options)}
        runner.run(
            name,
            [
                tool("cocu-curate"),
                "enrich",
                "--bank",
                str(on_bank),
                "--shards",
                str(world / "train"),
                "--out",
                str(target),
                "--neighbors",
                str(cfg.neighbors),
                "--top-k",
                "0",
                "--seed",
                str(cfg.seed),
                *options,
            ],
            params,
            items=w.train,
        )
        return params

    enrich_params = enrich("enrich", bank, curated, bank_params, "--clusters", "--formula", "cocu")
    release_params = enrich(
        "enrich-release", release_bank, curated_release, release_bank_params, "--no-clusters", "--formula", "release"
    )
    hybrid_params = enrich(
        "enrich-hybrid",
        bank,
        curated_hybrid,
        bank_params,
        "--no-clusters",
        "--formula",
        "cocu",
        "--archive",
        "both",
        "--vocabulary-top",
        str(cfg.vocabulary_top),
    )

    def quality() -> None:
        from cocu.benchmarks.curation_quality import evaluate_curation
        from cocu.benchmarks.departures import measure_departures

        truth = world / "truth" / "train"
        record = evaluate_curation(
            curated,
            truth,
            bank,
            cfg.neighbors,
            cfg.top_k,
            seed=cfg.seed,
            release=curated_release,
            hybrid=curated_hybrid,
        )
        record["departures"] = measure_departures(release_bank, bank, truth, cfg.neighbors, tuple(record["ks"]))
        atomic_write_json(out / "quality.json", record)

    runner.run(
        "quality", quality, {"enrich": enrich_params, "release": release_params, "hybrid": hybrid_params}, items=w.train
    )
    runner.run(
        "gallery",
        [
            tool("cocu-curate"),
            "show",
            "--curated",
            str(curated),
            "--out",
            str(out / "gallery"),
            "--truth",
            str(world / "truth" / "train"),
        ],
        {"enrich": enrich_params},
        items=w.train,
        unit="row",
    )
    if curation_only:
        print(f"curation quality: {out / 'quality.json'}")
        return out / "quality.json"

    jobs = {run_label(mode, seed): (mode, seed) for mode in cfg.runs for seed in cfg.run_seeds(mode)}
    lanes = max(1, min(cfg.parallel_runs, len(jobs)))
    eval_threads = threads if lanes == 1 else "1"
    run_dirs = {label: out / "runs" / label for label in jobs}
    curve_every = max(1, cfg.train_steps // cfg.curve_points)

    def train_and_evaluate(label: str) -> None:
        mode, seed = jobs[label]
        run_dir = run_dirs[label]
        curve = mode in cfg.curve_runs and seed == cfg.seed
        train_params = {
            "enrich": release_params if mode == "release" else enrich_params,
            "mode": mode,
            "config": cfg.train_config,
            "steps": cfg.train_steps,
            "batch": cfg.train_batch,
            "seed": seed,
            "curve_every": curve_every if curve else None,
        }
        claim_run_dir(run_dir, train_params)
        # the release's top-3 (its training code takes the first 3 concepts)
        shards, text_mode = (curated_release, "cocu-top") if mode == "release" else (curated, mode)
        keep = ["--checkpoint.save_top_k", "-1", "--checkpoint.every_n_train_steps", str(curve_every)] if curve else []
        runner.run(
            f"train-{label}",
            [
                tool("cocu-train"),
                "fit",
                "--config",
                cfg.train_config,
                "--data.shards",
                str(shards),
                "--data.text_mode",
                text_mode,
                "--data.truth",
                str(world / "truth" / "train"),
                "--data.batch_size",
                str(cfg.train_batch),
                "--data.num_workers",
                str(cfg.train_workers),
                "--data.seed",
                str(seed),
                "--seed_everything",
                str(seed),
                "--trainer.max_steps",
                str(cfg.train_steps),
                "--trainer.default_root_dir",
                str(run_dir),
                *keep,
                "--ckpt_path",
                "last",  # a killed benchmark resumes the run from its last checkpoint
            ],
            train_params,
            items=cfg.train_steps * cfg.train_batch,
            unit="sample",
            quiet=lanes > 1,
        )
        last = run_dir / "checkpoints" / "last.ckpt"
        evaluate(f"eval-{label}", last, run_dir / "eval", {"train": train_params})
        if seed == cfg.seed:  # what the groups alone allow, and what naming them loses
            runner.run(
                f"grouping-{label}",
                lambda: write_grouping_bound(last, world, run_dir / "eval"),
                {"train": train_params},
                items=w.val,
            )
        if curve:
            for step, checkpoint in step_checkpoints(run_dir / "checkpoints"):
                target = run_dir / "curve" / f"step-{step:06d}"
                evaluate(f"curve-{label}-{step}", checkpoint, target, {"train": train_params, "step": step}, images=0)

    def evaluate(name: str, checkpoint: Path, target: Path, params: dict[str, Any], images: int | None = None) -> None:
        runner.run(
            name,
            [
                tool("cocu-eval"),
                "seg",
                "--checkpoint",
                str(checkpoint),
                "--dataset",
                "synthetic",
                "--root",
                str(world),
                "--out",
                str(target),
                "--save-images",
                str(cfg.save_images if images is None else images),
                "--threads",
                eval_threads,
                "--per-image",
            ],
            params,
            items=w.val,
            quiet=lanes > 1,
        )

    if lanes > 1:
        print(
            f"[benchmark] training {len(jobs)} GroupViT runs, {lanes} at a time; their output goes to {out / 'logs'}",
            flush=True,
        )
    runner.side_by_side(train_and_evaluate, list(jobs), lanes)

    for label in jobs:  # one page per evaluation, beside its metrics.json and overlays
        write_eval_page(run_dirs[label] / "eval")
    first = {mode: run_dirs[run_label(mode, cfg.seed)] / "checkpoints" / "last.ckpt" for mode in cfg.runs}
    examples = predict_examples(world, first, cfg.save_images)
    results = write_results(out, cfg, jobs, teacher, runner.stages)
    report = write_benchmark_report(out, cfg, preset, runner.stages, time.perf_counter() - started, results, examples)
    print(f"results: {out / 'results.json'}")
    print(f"report: {report}")
    return report


def step_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """The periodic checkpoints Lightning kept (``...step=N.ckpt``), by step."""
    found = []
    for path in folder.glob("*step=*.ckpt"):
        match = re.search(r"step=(\d+)", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def predict_examples(world: Path, checkpoints: dict[str, Path], count: int) -> dict[str, Any]:
    """Predictions of every run on the first val images, for the side-by-side figure."""
    from cocu.evaluation.datasets import open_dataset
    from cocu.evaluation.inference import ZeroShotSegmenter, build_text_embeddings
    from cocu.evaluation.presets import get_preset
    from cocu.training.checkpoint import load_groupvit

    dataset = open_dataset("synthetic", world)
    samples = [dataset[i] for i in range(min(count, len(dataset)))]
    preset = get_preset("groupvit", "synthetic")
    predictions = {}
    for mode, checkpoint in checkpoints.items():
        model, _ = load_groupvit(checkpoint)
        text = build_text_embeddings(
            model, preset.prompt_classes(dataset.classes, dataset.has_background), preset.templates
        )
        segmenter = ZeroShotSegmenter(model, text, preset, dataset.has_background)
        predictions[mode] = [np.asarray(p) for p in segmenter.predict([s[1] for s in samples])]
    return {
        "images": [s[1] for s in samples],
        "labels": [np.asarray(s[2]) for s in samples],
        "predictions": predictions,
    }


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Run the CoCu experiment end to end on the synthetic world.")
    parser.add_argument("--preset", choices=sorted(BENCH_PRESETS), default="default")
    parser.add_argument("--out", type=Path, default=Path("benchmark"))
    parser.add_argument("--runs", nargs="+", choices=TEXT_MODES, help="text modes to train (default: the preset's)")
    parser.add_argument("--train-steps", type=int, help="optimizer steps per GroupViT run (default: the preset's)")
    parser.add_argument("--seeds", type=int, help="seeds of the seeded runs (default: the preset's)")
    parser.add_argument(
        "--teacher",
        type=Path,
        help="use the teacher `make teacher` (or `python -m cocu.benchmarks.teacher`) wrote in this folder",
    )
    parser.add_argument(
        "--retrain-teacher",
        action="store_true",
        help="train the teacher CLIP in this run (the recipe of `make teacher`) instead of using the shipped one",
    )
    parser.add_argument(
        "--curation-only",
        action="store_true",
        help="stop before the GroupViT trainings (curation, quality and gallery only; no report)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="call each command's entry point in this interpreter instead of a new process (tests)",
    )
    args = parser.parse_args(argv)
    cfg = BENCH_PRESETS[args.preset]
    if args.runs:
        cfg = replace(cfg, runs=tuple(args.runs))
    if args.train_steps:
        cfg = replace(cfg, train_steps=args.train_steps)
    if args.seeds:
        cfg = replace(cfg, seeds=args.seeds)
    if args.teacher:
        cfg = replace(cfg, retrain_teacher=False, shipped_teacher=args.teacher.resolve())
    if args.retrain_teacher:
        cfg = replace(cfg, retrain_teacher=True)
    return run_benchmark(cfg, args.out, args.preset, args.in_process, args.curation_only)


if __name__ == "__main__":
    main()
