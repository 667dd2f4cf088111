"""`make benchmark`: the whole CoCu experiment on the embedded synthetic world, end to end.

Every stage runs the command a user would run (``cocu-data synth``, ``cocu-train clip``,
``cocu-curate build-bank`` / ``enrich``, ``cocu-train fit``, ``cocu-eval seg``), in this order:

    world -> teacher CLIP (shipped, or trained here) -> bank (x2: cocu's and the release's concept prompts) ->
    enrich (cocu, release, hybrid archive) -> curation quality -> gallery -> GroupViT x (caption | cocu-cluster |
    cocu-top | oracle-all | oracle-top3 | release) x seeds -> eval -> learning curve -> results.json and report

The teacher is the one ``make teacher`` trained and the repository ships (``benchmarks/teacher/``), as a user's
downloaded CLIP; ``--retrain-teacher`` trains it here with the same recipe. The ``release`` run trains on the top-3
of the authors' formula (``--formula release`` on the bank with their prompts); the others on cocu's curation.
The runs named in ``seeded_runs`` train once per seed (model initialisation and data order), the others once.
``oracle-all`` trains with as many prompts as the train truth's busiest image needs (``--data.num_prompts K``).
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cocu.benchmarks.grouping_bound import write_grouping_bound
from cocu.benchmarks.presets import BENCH_PRESETS, RUNS, BenchConfig
from cocu.benchmarks.results import TEACHER_ZERO_SHOT, run_label
from cocu.benchmarks.runner import Runner, claim_run_dir, tool
from cocu.benchmarks.teacher.recipe import shipped_teacher, teacher_command
from cocu.curation.core.shards import atomic_write_json
from cocu.curation.inputs.synthetic.truth import read_truth
from cocu.training.data.text_modes import TEXT_MODES


@dataclass
class Bench:
    """One benchmark run as its stages fill it in: the settings, the folders, and what each stage handed on.

    ``params`` holds the settings each stage ran with, by stage; a later stage's settings include its inputs', so a
    changed world or teacher reruns everything downstream and nothing else.
    """

    cfg: BenchConfig
    out: Path
    runner: Runner
    preset: str = "default"
    started: float = field(default_factory=time.perf_counter)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    teacher: Path = Path()  # the teacher's folder
    weights: Path = Path()
    model: str = ""
    report: Path | None = None

    @property
    def world(self) -> Path:
        return self.out / "world"

    @property
    def truth(self) -> Path:
        return self.world / "truth" / "train"

    def folder(self, name: str) -> Path:
        return self.out / name


def draw_world(b: Bench) -> None:
    w = b.cfg.world
    b.params["world"] = asdict(w)
    world_config = b.out / "world-config.json"
    atomic_write_json(world_config, b.params["world"])
    b.runner.run(
        "synth",
        [tool("cocu-data"), "synth", str(b.world), "--config", str(world_config), "--workers", "2"],
        b.params["world"],
        items=w.train + w.teacher + w.val,
        unit="pair",
    )


def prepare_teacher(b: Bench) -> None:
    """The shipped teacher, checked and measured on this run's world, or one trained here (``--retrain-teacher``)."""
    cfg = b.cfg
    if cfg.retrain_teacher:
        b.teacher = b.folder("teacher")
        b.params["teacher"] = {"world": b.params["world"], "recipe": asdict(cfg.teacher_recipe)}
        b.runner.run("teacher", teacher_command(cfg.teacher_recipe, b.world, b.teacher), b.params["teacher"])
        record = json.loads((b.teacher / "teacher.json").read_text())
        b.weights = b.teacher / record["weights"]
    else:
        record, b.weights = shipped_teacher(cfg.world, cfg.teacher_recipe, cfg.shipped_teacher)
        b.params["teacher"] = {"shipped": record["weights_sha256"]}
        b.teacher = b.weights.parent

        def measure_teacher() -> None:  # on this run's world, as a user would check a downloaded CLIP
            from cocu.training.clip.zero_shot import evaluate_teacher

            zero_shot = evaluate_teacher(b.teacher, b.world, "train", progress=False)
            atomic_write_json(b.out / TEACHER_ZERO_SHOT, zero_shot)

        b.runner.run("teacher-eval", measure_teacher, {"teacher": b.params["teacher"], "world": b.params["world"]})
    b.model = record["model"]


def build_banks(b: Bench) -> None:
    """Two banks of the train split: cocu's concept prompts, and the release's (for ``--formula release``)."""
    for name, options in (("bank", ()), ("bank-release", ("--template", "release"))):
        b.params[name] = {"teacher": b.params["teacher"], "options": list(options)}
        command = ["build-bank", "--shards", str(b.world / "train"), "--model", b.model, "--pretrained", str(b.weights)]
        b.runner.run(
            name,
            [tool("cocu-curate"), *command, "--out", str(b.folder(name)), *options],
            b.params[name],
            items=b.cfg.world.train,
        )


ENRICH_RUNS = {  # stage -> (bank, output folder, options)
    "enrich": ("bank", "curated", ("--clusters", "--formula", "cocu")),
    "enrich-release": ("bank-release", "curated-release", ("--no-clusters", "--formula", "release")),
    "enrich-hybrid": ("bank", "curated-hybrid", ("--no-clusters", "--formula", "cocu", "--archive", "both")),
}


def enrich_shards(b: Bench) -> None:
    """Whole archives (``--top-k 0``) of cocu's formula with clusters, of the release's, and of the hybrid archive."""
    cfg = b.cfg
    for name, (bank, target, options) in ENRICH_RUNS.items():
        if "--archive" in options:
            options = (*options, "--vocabulary-top", str(cfg.vocabulary_top))
        b.params[name] = {"bank": b.params[bank], "neighbors": cfg.neighbors, "options": list(options)}
        command = ["enrich", "--bank", str(b.folder(bank)), "--shards", str(b.world / "train")]
        command += ["--out", str(b.folder(target)), "--neighbors", str(cfg.neighbors), "--top-k", "0"]
        command += ["--seed", str(cfg.seed), *options]
        b.runner.run(name, [tool("cocu-curate"), *command], b.params[name], items=cfg.world.train)


def measure_curation(b: Bench) -> None:
    """How well each curator recovers what the captions left out, and each departure from the release, measured."""
    cfg = b.cfg

    def quality() -> None:
        from cocu.benchmarks.curation_quality import evaluate_curation
        from cocu.benchmarks.departures import measure_departures

        record = evaluate_curation(
            b.folder("curated"),
            b.truth,
            b.folder("bank"),
            cfg.neighbors,
            cfg.top_k,
            seed=cfg.seed,
            release=b.folder("curated-release"),
            hybrid=b.folder("curated-hybrid"),
        )
        record["departures"] = measure_departures(
            b.folder("bank-release"), b.folder("bank"), b.truth, cfg.neighbors, tuple(record["ks"])
        )
        atomic_write_json(b.out / "quality.json", record)

    params = {"enrich": b.params["enrich"], "release": b.params["enrich-release"], "hybrid": b.params["enrich-hybrid"]}
    b.runner.run("quality", quality, params, items=cfg.world.train)


def write_gallery(b: Bench) -> None:
    command = [
        "show",
        "--curated",
        str(b.folder("curated")),
        "--out",
        str(b.folder("gallery")),
        "--truth",
        str(b.truth),
    ]
    b.runner.run(
        "gallery", [tool("cocu-curate"), *command], {"enrich": b.params["enrich"]}, items=b.cfg.world.train, unit="row"
    )


class Trainings:
    """The GroupViT runs: every text mode and seed trained, evaluated, its groups measured, its curve points scored."""

    def __init__(self, b: Bench):
        self.b, cfg = b, b.cfg
        self.jobs = {run_label(mode, seed): (mode, seed) for mode in cfg.runs for seed in cfg.run_seeds(mode)}
        self.lanes = max(1, min(cfg.parallel_runs, len(self.jobs)))
        self.eval_threads = str(cfg.threads) if self.lanes == 1 else "1"
        self.curve_every = max(1, cfg.train_steps // cfg.curve_points)

    def run_dir(self, label: str) -> Path:
        return self.b.out / "runs" / label

    def run_all(self) -> None:
        if self.lanes > 1:
            print(
                f"[benchmark] training {len(self.jobs)} GroupViT runs, {self.lanes} at a time; their output goes to "
                f"{self.b.out / 'logs'}",
                flush=True,
            )
        self.b.runner.side_by_side(self.train_and_evaluate, list(self.jobs), self.lanes)

    def train_and_evaluate(self, label: str) -> None:
        b, cfg = self.b, self.b.cfg
        mode, seed = self.jobs[label]
        run_dir = self.run_dir(label)
        curve = mode in cfg.curve_runs and seed == cfg.seed
        prompts = self.num_prompts(mode)
        params = {
            "enrich": b.params["enrich-release" if mode == "release" else "enrich"],
            "mode": mode,
            "config": cfg.train_config,
            "steps": cfg.train_steps,
            "batch": cfg.train_batch,
            "seed": seed,
            "curve_every": self.curve_every if curve else None,
            **({"num_prompts": prompts} if prompts is not None else {}),
        }
        claim_run_dir(run_dir, params)
        self.train(label, mode, seed, params, curve)
        last = run_dir / "checkpoints" / "last.ckpt"
        self.evaluate(f"eval-{label}", last, run_dir / "eval", {"train": params})
        if seed == cfg.seed:  # what the groups alone allow, and what naming them loses
            b.runner.run(
                f"grouping-{label}",
                lambda: write_grouping_bound(last, b.world, run_dir / "eval"),
                {"train": params},
                items=cfg.world.val,
            )
        if curve:
            for step, checkpoint in step_checkpoints(run_dir / "checkpoints"):
                target = run_dir / "curve" / f"step-{step:06d}"
                self.evaluate(f"curve-{label}-{step}", checkpoint, target, {"train": params, "step": step}, images=0)

    def num_prompts(self, mode: str) -> int | None:
        """The K a truth mode needs on this world (``oracle-all``: its most concepts above the area threshold)."""
        if mode == "release" or mode not in TEXT_MODES or not TEXT_MODES[mode].needs_truth:
            return None
        text = TEXT_MODES[mode]
        return text.prompts_needed(text.from_truth(read_truth(self.b.truth, areas=text.needs_areas)))

    def train(self, label: str, mode: str, seed: int, params: dict[str, Any], curve: bool) -> None:
        b, cfg = self.b, self.b.cfg
        # the release's top-3 (its training code takes the first 3 concepts)
        shards, text_mode = (
            (b.folder("curated-release"), "cocu-top") if mode == "release" else (b.folder("curated"), mode)
        )
        keep = ["--checkpoint.save_top_k", "-1", "--checkpoint.every_n_train_steps", str(self.curve_every)]
        command = ["fit", "--config", cfg.train_config, "--data.shards", str(shards), "--data.text_mode", text_mode]
        command += ["--data.truth", str(b.truth), "--data.batch_size", str(cfg.train_batch)]
        if "num_prompts" in params:
            command += ["--data.num_prompts", str(params["num_prompts"])]
        command += [
            "--data.num_workers",
            str(cfg.train_workers),
            "--data.seed",
            str(seed),
            "--seed_everything",
            str(seed),
        ]
        command += ["--trainer.max_steps", str(cfg.train_steps), "--trainer.default_root_dir", str(self.run_dir(label))]
        command += [
            *(keep if curve else []),
            "--ckpt_path",
            "last",
        ]  # a killed benchmark resumes from its last checkpoint
        b.runner.run(
            f"train-{label}",
            [tool("cocu-train"), *command],
            params,
            items=cfg.train_steps * cfg.train_batch,
            unit="sample",
            quiet=self.lanes > 1,
        )

    def evaluate(
        self, name: str, checkpoint: Path, target: Path, params: dict[str, Any], images: int | None = None
    ) -> None:
        b, cfg = self.b, self.b.cfg
        command = ["seg", "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--root", str(b.world)]
        command += ["--out", str(target), "--save-images", str(cfg.save_images if images is None else images)]
        command += ["--threads", self.eval_threads, "--per-image"]
        b.runner.run(name, [tool("cocu-eval"), *command], params, items=cfg.world.val, quiet=self.lanes > 1)


def train_groupvit(b: Bench) -> None:
    trainings = Trainings(b)
    trainings.run_all()
    b.params["trainings"] = {"jobs": trainings.jobs}


PREDICT_PICTURES = 8


def predict_pictures(b: Bench) -> None:
    """``cocu-eval predict`` as a user runs it on their own pictures: the best CoCu mode's model, the world's class
    names, the first val pictures (a page of label maps and overlays the report links to)."""
    cfg = b.cfg
    mode = next((m for m in ("cocu-cluster", "cocu-top", "release") if m in cfg.runs), cfg.runs[0])
    checkpoint = b.out / "runs" / run_label(mode, cfg.seed) / "checkpoints" / "last.ckpt"
    pictures = sorted((b.world / "val" / "images").glob("*.jpg"))[:PREDICT_PICTURES]
    settings = ["--short-side", "64", "--window", "64", "--stride", "32"]  # the synthetic preset's windows
    command = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--classes-file",
        str(b.world / "val" / "classes.txt"),
        "--out",
        str(b.folder("predict")),
        "--html",
        *settings,
        *map(str, pictures),
    ]
    params = {"mode": mode, "pictures": [p.name for p in pictures], "trainings": b.params["trainings"]}
    b.runner.run("predict", [tool("cocu-eval"), *command], params, items=len(pictures))


def write_report(b: Bench) -> None:
    from cocu.benchmarks.report.page import write_benchmark_report
    from cocu.benchmarks.results import write_results
    from cocu.evaluation.eval_page import write_eval_page

    cfg, jobs = b.cfg, b.params["trainings"]["jobs"]
    for label in jobs:  # one page per evaluation, beside its metrics.json and overlays
        write_eval_page(b.out / "runs" / label / "eval")
    first = {mode: b.out / "runs" / run_label(mode, cfg.seed) / "checkpoints" / "last.ckpt" for mode in cfg.runs}
    examples = predict_examples(b.world, first, cfg.save_images)
    results = write_results(b.out, cfg, jobs, b.teacher, b.runner.stages)
    elapsed = time.perf_counter() - b.started
    b.report = write_benchmark_report(b.out, cfg, b.preset, b.runner.stages, elapsed, results, examples)
    print(f"results: {b.out / 'results.json'}")
    print(f"report: {b.report}")


BenchStage = Callable[[Bench], None]
CURATION_STAGES: tuple[tuple[str, BenchStage], ...] = (
    ("world", draw_world),
    ("teacher", prepare_teacher),
    ("banks", build_banks),
    ("enrich", enrich_shards),
    ("curation quality", measure_curation),
    ("gallery", write_gallery),
)
TRAINING_STAGES: tuple[tuple[str, BenchStage], ...] = (
    ("groupvit", train_groupvit),
    ("predict", predict_pictures),
    ("report", write_report),
)


def run_benchmark(
    cfg: BenchConfig, out: Path, preset: str, in_process: bool = False, curation_only: bool = False
) -> Path:
    """Run the stages in order; each skips the commands already recorded with the same settings."""
    out = out.resolve()
    # the lanes actually used, so the report and its settings say what ran (in-process stages go one at a time)
    cfg = replace(cfg, parallel_runs=1 if in_process else max(1, cfg.parallel_runs))
    b = Bench(cfg, out, Runner(out, in_process), preset=preset)
    for _, stage in CURATION_STAGES + (() if curation_only else TRAINING_STAGES):
        stage(b)
    if curation_only:
        print(f"curation quality: {out / 'quality.json'}")
        return out / "quality.json"
    assert b.report is not None
    return b.report


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
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=(*RUNS, "oracle"),
        help="runs to train (default: the preset's; `oracle`: the old one)",
    )
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
