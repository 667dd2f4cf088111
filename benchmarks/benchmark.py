"""`make benchmark`: the whole CoCu experiment on the embedded synthetic world, end to end.

Every stage runs the command a user would run (``cocu-data synth``, ``cocu-train clip``,
``cocu-curate build-bank`` / ``enrich``, ``cocu-train fit``, ``cocu-eval seg``), in this order:

    world -> teacher CLIP -> bank (x2: cocu's and the release's concept prompts) -> enrich (cocu, release,
    hybrid archive) -> curation quality -> gallery -> GroupViT x (caption | cocu-cluster | cocu-top | oracle |
    release) -> eval -> report

The ``release`` run trains on the top-3 of the authors' formula (``--formula release`` on the bank with their
prompts); the others on cocu's curation. ``--curation-only`` stops before the GroupViT trainings.

The GroupViT runs train two at a time (``parallel_runs``), one torch thread each, their output in
``OUT/logs/`` and their progress echoed every 30 s. Each finished stage leaves a record under
``OUT/stages/``; a rerun with the same settings skips it, and a killed training resumes from its
last checkpoint, so an interrupted benchmark carries on where it stopped. The report
(``OUT/report.md`` and ``OUT/figures/``) is written from the records of this run only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np

from cocu.curation.shards import atomic_write_json
from cocu.curation.sources.synthetic import WorldConfig
from cocu.curation.stage import params_digest

BIN = Path(sys.executable).parent
TEXT_MODES = ("caption", "cocu-cluster", "cocu-top", "oracle", "release")


@dataclass(frozen=True)
class BenchConfig:
    """Every setting of one benchmark run; the three (or four) trainings share all but the text mode."""

    world: WorldConfig = WorldConfig(train=20000, teacher=20000, val=300, shard_size=2500)
    # the teacher's budget is in samples, so a rerun trains the same teacher; the minutes only cap a slow machine
    teacher_samples: int = 32_768  # 256 steps of 128: ~6-7 min at the 80-90 samples/s measured here
    teacher_minutes: float = 10.0
    teacher_batch: int = 128
    neighbors: int = 8
    top_k: int = 16  # the largest k of the curation-quality table; enrich stores whole archives
    vocabulary_top: int = 16  # M of the hybrid archive
    train_config: str = "synthetic"  # a shipped recipe name or a YAML file
    train_steps: int = 500
    train_batch: int = 64
    train_workers: int = 1
    runs: tuple[str, ...] = TEXT_MODES
    seed: int = 0
    save_images: int = 6
    threads: int = 2  # torch threads of the single-process stages (teacher, eval when the runs go one at a time)
    parallel_runs: int = (
        2  # GroupViT runs trained side by side, one torch thread each: 2 cores do ~2x the steps of one 2-thread run
    )


BENCH_PRESETS: dict[str, BenchConfig] = {
    "default": BenchConfig(),
    # CI-sized: proves the pipeline and the report, not the science
    "quick": BenchConfig(
        world=WorldConfig(train=400, teacher=400, val=16, shard_size=200),
        teacher_samples=256,
        teacher_minutes=1.0,
        teacher_batch=64,
        train_steps=4,
        train_batch=16,
        save_images=2,
        threads=1,
        parallel_runs=1,
    ),
    # more data and longer training, for a machine with time to spare
    "large": BenchConfig(
        world=WorldConfig(train=60000, teacher=60000, val=500, shard_size=5000),
        teacher_samples=131_072,
        teacher_minutes=40.0,
        train_steps=5000,
        train_batch=128,
    ),
}


@dataclass
class Stage:
    name: str
    seconds: float
    items: int | None = None
    unit: str = "img"
    extra: dict[str, Any] = field(default_factory=dict)
    earlier: bool = False  # recorded by an earlier invocation and skipped in this one

    @property
    def rate(self) -> float | None:
        return self.items / self.seconds if self.items and self.seconds > 0 else None


class Runner:
    """Runs stages as subprocesses, logs them, and skips those already recorded with the same settings."""

    def __init__(self, out: Path, in_process: bool = False):
        self.out, self.in_process = out, in_process
        (out / "stages").mkdir(parents=True, exist_ok=True)
        (out / "logs").mkdir(exist_ok=True)
        self.stages: list[Stage] = []
        self.running: set[str] = set()
        self._lock = threading.Lock()

    def done(self, name: str, params: dict[str, Any]) -> Stage | None:
        path = self.out / "stages" / f"{name}.json"
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        if record.get("params_digest") != params_digest(params):
            return None
        return Stage(
            record["name"],
            record["seconds"],
            record.get("items"),
            record.get("unit", "img"),
            record.get("extra", {}),
            earlier=True,
        )

    def run(
        self,
        name: str,
        command: list[str] | Callable[[], None],
        params: dict[str, Any],
        items: int | None = None,
        unit: str = "img",
        quiet: bool = False,
    ) -> Stage:
        """Run a command (or, for the report's own computations, a function) unless already done.

        ``quiet`` sends a subprocess's output to its log only (stages running side by side would
        interleave their progress bars); ``watch`` prints their latest progress lines instead.
        """
        previous = self.done(name, params)
        if previous is not None:
            print(f"[benchmark] {name}: done in an earlier run ({previous.seconds:.0f}s), skipped", flush=True)
            self._record(previous)
            return previous
        started = time.perf_counter()
        with self._lock:
            self.running.add(name)
        try:
            if callable(command):
                print(f"[benchmark] {name}", flush=True)
                command()
            elif self.in_process:
                self._in_process(name, command)
            else:
                self._subprocess(name, command, quiet)
        finally:
            with self._lock:
                self.running.discard(name)
        stage = Stage(name, time.perf_counter() - started, items, unit)
        atomic_write_json(
            self.out / "stages" / f"{name}.json",
            {
                **asdict(stage),
                "params_digest": params_digest(params),
                "command": command if isinstance(command, list) else name,
            },
        )
        self._record(stage)
        print(f"[benchmark] {name}: {stage.seconds:.1f}s", flush=True)
        return stage

    def side_by_side(self, job: Callable[[str], None], items: Sequence[str], lanes: int) -> None:
        """Run ``job(item)`` for every item, ``lanes`` at a time, watching progress; stages stay in item order.

        Each job runs its stages in sequence; a job's stages are named ``<anything>-<item>``.
        """
        before = len(self.stages)
        stop = threading.Event()
        if lanes > 1:
            threading.Thread(target=self.watch, args=(stop,), daemon=True).start()
        try:
            with ThreadPoolExecutor(max(1, lanes)) as pool:
                list(pool.map(job, items))  # re-raises the first failure
        finally:
            stop.set()
        rank = {item: i for i, item in enumerate(items)}
        self.stages[before:] = sorted(self.stages[before:], key=lambda s: rank[s.name.split("-", 1)[1]])

    def _record(self, stage: Stage) -> None:
        with self._lock:
            self.stages.append(stage)

    def watch(self, stop: threading.Event, every_s: float = 30.0) -> None:
        """Every ``every_s`` seconds, print the latest progress line of each running stage's log."""
        while not stop.wait(every_s):
            with self._lock:
                names = sorted(self.running)
            for name in names:
                log = self.out / "logs" / f"{name}.log"
                line = _last_line(log) if log.exists() else ""
                if line:
                    print(f"[benchmark] {name}: {line}", flush=True)

    def _in_process(self, name: str, command: list[str]) -> None:
        """The same console-script entry point and arguments, without a new interpreter (for tests: no start-up cost)."""
        print(f"[benchmark] {name} (in process): {' '.join(command)}", flush=True)
        script = Path(command[0]).name
        (entry,) = [e for e in entry_points(group="console_scripts") if e.name == script]
        saved = sys.argv
        sys.argv = [script, *command[1:]]
        try:
            entry.load()()
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise SystemExit(f"[benchmark] {name} failed with exit code {exit_.code}") from None
        finally:
            sys.argv = saved

    def _subprocess(self, name: str, command: list[str], quiet: bool = False) -> None:
        """Stream the command's output to a log file and, unless quiet, to the terminal (its progress bars)."""
        print(f"[benchmark] {name}: {' '.join(command)}", flush=True)
        log = self.out / "logs" / f"{name}.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert process.stdout is not None
            for chunk in iter(lambda: process.stdout.read1(4096), b""):
                handle.write(chunk)
                handle.flush()
                if not quiet:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            code = process.wait()
        if code != 0:
            raise SystemExit(f"[benchmark] {name} failed with exit code {code}; see {log}")


def claim_run_dir(run_dir: Path, params: dict[str, Any]) -> None:
    """Keep a run folder only for the settings that made it: a killed run with the same settings resumes from
    its checkpoint, a folder left by other settings is emptied first."""
    stamp = run_dir / "benchmark-params.json"
    digest = params_digest(params)
    if run_dir.exists() and (not stamp.exists() or json.loads(stamp.read_text()).get("params_digest") != digest):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stamp, {"params_digest": digest, "params": params})


def _last_line(log: Path, tail: int = 4096) -> str:
    """The last non-empty line of a log, where progress bars redraw with carriage returns."""
    with open(log, "rb") as handle:
        handle.seek(max(0, log.stat().st_size - tail))
        text = handle.read().decode("utf-8", "replace")
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
    return lines[-1] if lines else ""


def _tool(name: str) -> str:
    return str(BIN / name)


def run_benchmark(
    cfg: BenchConfig, out: Path, preset: str, in_process: bool = False, curation_only: bool = False
) -> Path:
    from cocu.benchmarks.report import write_benchmark_report
    from cocu.evaluation.eval_page import write_eval_page

    out = out.resolve()
    # the lanes actually used, so the report and its settings say what ran (in-process stages go one at a time)
    cfg = replace(cfg, parallel_runs=1 if in_process else max(1, min(cfg.parallel_runs, len(cfg.runs))))
    runner = Runner(out, in_process)
    world, teacher, bank, curated = out / "world", out / "teacher", out / "bank", out / "curated"
    w = cfg.world
    threads = str(cfg.threads)
    started = time.perf_counter()

    world_params = asdict(w)
    runner.run(
        "synth",
        [
            _tool("cocu-data"),
            "synth",
            str(world),
            "--train",
            str(w.train),
            "--teacher",
            str(w.teacher),
            "--val",
            str(w.val),
            "--image-size",
            str(w.image_size),
            "--val-image-size",
            str(w.val_image_size),
            "--omit",
            str(w.omit),
            "--stuff-mention",
            str(w.stuff_mention),
            "--shard-size",
            str(w.shard_size),
            "--seed",
            str(w.seed),
            "--workers",
            "2",
        ],
        world_params,
        items=w.train + w.teacher + w.val,
        unit="pair",
    )

    teacher_params = {
        "world": world_params,
        "samples": cfg.teacher_samples,
        "minutes": cfg.teacher_minutes,
        "batch": cfg.teacher_batch,
        "seed": cfg.seed,
    }
    runner.run(
        "teacher",
        [
            _tool("cocu-train"),
            "clip",
            str(world / "teacher"),
            "--out",
            str(teacher),
            "--samples",
            str(cfg.teacher_samples),
            "--max-minutes",
            str(cfg.teacher_minutes),
            "--batch-size",
            str(cfg.teacher_batch),
            "--seed",
            str(cfg.seed),
            "--threads",
            threads,
            "--eval-world",
            str(world),
            "--eval-split",
            "train",
        ],
        teacher_params,
        items=None,
    )
    record = json.loads((teacher / "teacher.json").read_text())
    model, weights = record["model"], str(teacher / record["weights"])

    bank_params = {"teacher": teacher_params}
    runner.run(
        "bank",
        [
            _tool("cocu-curate"),
            "build-bank",
            "--shards",
            str(world / "train"),
            "--model",
            model,
            "--pretrained",
            weights,
            "--out",
            str(bank),
        ],
        bank_params,
        items=w.train,
    )

    release_bank, curated_release = out / "bank-release", out / "curated-release"
    curated_hybrid = out / "curated-hybrid"
    release_bank_params = {"teacher": teacher_params, "template": "release"}
    runner.run(
        "bank-release",
        [
            _tool("cocu-curate"),
            "build-bank",
            "--shards",
            str(world / "train"),
            "--model",
            model,
            "--pretrained",
            weights,
            "--out",
            str(release_bank),
            "--template",
            "release",
        ],
        release_bank_params,
        items=w.train,
    )

    def enrich(name: str, on_bank: Path, target: Path, params: dict[str, Any], *options: str) -> dict[str, Any]:
        params = {"bank": params, "neighbors": cfg.neighbors, "options": list(options)}
        runner.run(
            name,
            [
                _tool("cocu-curate"),
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
            _tool("cocu-curate"),
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

    lanes = cfg.parallel_runs
    eval_threads = threads if lanes == 1 else "1"
    checkpoints = {mode: out / "runs" / mode / "checkpoints" / "last.ckpt" for mode in cfg.runs}

    def train_and_evaluate(mode: str) -> None:
        run_dir = out / "runs" / mode
        train_params = {
            "enrich": enrich_params,
            "mode": mode,
            "config": cfg.train_config,
            "steps": cfg.train_steps,
            "batch": cfg.train_batch,
            "seed": cfg.seed,
        }
        if mode == "release":  # the release's top-3 (its training code takes the first 3 concepts)
            train_params = {**train_params, "enrich": release_params}
        claim_run_dir(run_dir, train_params)
        shards, text_mode = (curated_release, "cocu-top") if mode == "release" else (curated, mode)
        runner.run(
            f"train-{mode}",
            [
                _tool("cocu-train"),
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
                str(cfg.seed),
                "--seed_everything",
                str(cfg.seed),
                "--trainer.max_steps",
                str(cfg.train_steps),
                "--trainer.default_root_dir",
                str(run_dir),
                "--ckpt_path",
                "last",  # a killed benchmark resumes the run from its last checkpoint
            ],
            train_params,
            items=cfg.train_steps * cfg.train_batch,
            unit="sample",
            quiet=lanes > 1,
        )
        runner.run(
            f"eval-{mode}",
            [
                _tool("cocu-eval"),
                "seg",
                "--checkpoint",
                str(checkpoints[mode]),
                "--dataset",
                "synthetic",
                "--root",
                str(world),
                "--out",
                str(run_dir / "eval"),
                "--save-images",
                str(cfg.save_images),
                "--threads",
                eval_threads,
            ],
            {"train": train_params},
            items=w.val,
            quiet=lanes > 1,
        )

    if lanes > 1:
        print(
            f"[benchmark] training {len(cfg.runs)} GroupViT runs, {lanes} at a time; their output goes to {out / 'logs'}",
            flush=True,
        )
    runner.side_by_side(train_and_evaluate, cfg.runs, lanes)

    for mode in cfg.runs:  # one page per evaluation, beside its metrics.json and overlays
        write_eval_page(out / "runs" / mode / "eval")
    examples = predict_examples(world, checkpoints, cfg.save_images)
    report = write_benchmark_report(out, cfg, preset, runner.stages, time.perf_counter() - started, examples)
    print(f"report: {report}")
    return report


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
    return run_benchmark(cfg, args.out, args.preset, args.in_process, args.curation_only)


if __name__ == "__main__":
    main()
