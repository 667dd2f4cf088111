"""SIGKILL every stage at random moments, rerun it, and compare with one clean run.

For each stage a clean run is timed first; it also gives the moment its work starts (the output appears), since a
kill during the imports tests nothing. Trial ``i`` kills the whole process group at a seeded random moment inside
the clean run's working window, reruns the same command to the end, and compares: curation stages (synth,
build-bank's embedding and its assembly, enrich) must give the clean run's bytes with no temporary left; fit must
reach the same step with a loadable checkpoint. ``COCU_FAULT_TRIALS`` sets the trials per stage (``make faults``: 10;
the default keeps ``make test`` fast). The conftest prints the table of trials at the end of the session.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from faultkit import (
    REPO,
    TRIAL_RESULTS,
    TrialResult,
    bank_args,
    cli_env,
    curate_command,
    data_files,
    enrich_args,
    fit_args,
    temporaries,
)

pytestmark = pytest.mark.slow  # SIGKILL trials run whole commands: `make faults` runs 10 per stage

TRIALS = int(os.environ.get("COCU_FAULT_TRIALS", "1"))
SYNTH = ["--train", "180", "--teacher", "60", "--val", "6", "--shard-size", "60", "--workers", "2"]
FIT_STEPS = 6


@dataclass(frozen=True)
class CleanRun:
    """A finished uninterrupted run: its output folder, its length, when its work started and when it reached
    ``milestone`` (seconds; the milestone is optional)."""

    out: Path
    seconds: float
    started: float
    milestone: float | None = None

    def kill_moment(self, stage: str, trial: int) -> float:
        low = 0.9 * self.started  # a few kills land just before the work starts
        return random.Random(f"{stage}/{trial}").uniform(low, self.seconds)


def spawn(command: list[str], env: dict[str, str], **options) -> subprocess.Popen:
    """``command`` started in its own session (process group), in the CLI environment plus ``env``."""
    return subprocess.Popen(command, env=cli_env(**env), cwd=REPO, start_new_session=True, **options)


def clean_run(
    command: list[str],
    out: Path,
    started: Callable[[], bool],
    milestone: Callable[[], bool] = lambda: False,
    **env: str,
) -> CleanRun:
    begin = time.perf_counter()
    process = spawn(command, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = reached = None
    while process.poll() is None:
        now = time.perf_counter() - begin
        if first is None and started():
            first = now
        if reached is None and milestone():
            reached = now
        time.sleep(0.005)
    seconds = time.perf_counter() - begin
    assert process.returncode == 0, process.stdout.read()[-3000:]
    assert first is not None, f"{command[2]}: the clean run never showed that its work started"
    return CleanRun(out, seconds, first, reached)


def kill_at(command: list[str], moment: float, **env: str) -> bool:
    """Run ``command`` in its own process group and SIGKILL the group at ``moment``; False when it ended first."""
    process = spawn(command, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=moment)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # workers, loader processes and all: a lost node
        process.wait()
        return True


def finish(command: list[str], **env: str) -> str:
    result = subprocess.run(command, env=cli_env(**env), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def rerun_in_process(command: list[str]) -> None:
    """Run a ``python -m cocu.cli.<tool>`` command to the end in this process: only the killed run needs a process of
    its own, and the rerun after it is the same CLI without the seconds of a fresh interpreter's imports."""
    from typer.testing import CliRunner

    assert command[:2] == [sys.executable, "-m"], command
    result = CliRunner().invoke(importlib.import_module(command[2]).app, command[3:])
    assert result.exit_code == 0, f"{result.output[-3000:]}\n{result.exception!r}"


def record(request, stage: str, trial: int, moment: float, killed: bool, differences: list[str]) -> None:
    request.config.stash.setdefault(TRIAL_RESULTS, []).append(TrialResult(stage, trial, moment, killed, differences))
    assert not differences, f"{stage} trial {trial} (kill at {moment:.2f} s): {differences}"


def compare_files(rerun: Path, clean: Path, skip: Callable[[str], bool] = lambda name: False) -> list[str]:
    ours, theirs = data_files(rerun), data_files(clean)
    differences = [
        f"differs: {name}"
        for name in sorted(set(ours) | set(theirs))
        if not skip(name) and ours.get(name) != theirs.get(name)
    ]
    return differences + [f"left: {name}" for name in temporaries(rerun)]


# ------------------------------------------------------------------------------------------- references


@pytest.fixture(scope="module")
def synth_clean(tmp_path_factory) -> CleanRun:
    out = tmp_path_factory.mktemp("synth") / "world"
    return clean_run([sys.executable, "-m", "cocu.cli.data", "synth", str(out), *SYNTH], out, out.exists)


@pytest.fixture(scope="module")
def bank_clean(faults_world, tmp_path_factory) -> CleanRun:
    """The clean build; its milestone is the end of the embedding stage (every part's manifest written)."""
    out = tmp_path_factory.mktemp("bank-clean") / "bank"
    shards = len(list(faults_world["train"].glob("*.parquet")))
    command = curate_command(*bank_args(faults_world["train"], out, faults_world["checkpoint"]))
    return clean_run(
        command, out, out.exists, milestone=lambda: len(list((out / "parts").glob("*.manifest.json"))) == shards
    )


def with_parts(bank: CleanRun, out: Path) -> Path:
    """A bank folder whose embedding stage is finished and whose assembly has not begun."""
    shutil.copytree(bank.out / "parts", out / "parts")
    return out


@pytest.fixture(scope="module")
def assembly_clean(bank_clean) -> CleanRun:
    """A run that finds the parts done: the clean build's start-up, then its assembly (timed in the same run)."""
    assert bank_clean.milestone is not None
    return CleanRun(bank_clean.out, bank_clean.started + bank_clean.seconds - bank_clean.milestone, bank_clean.started)


@pytest.fixture(scope="module")
def enrich_clean(faults_world, tmp_path_factory) -> CleanRun:
    out = tmp_path_factory.mktemp("enrich-clean") / "out"
    return clean_run(curate_command(*enrich_args(faults_world["bank"], faults_world["train"], out)), out, out.exists)


def fit_command(shards: Path, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cocu.cli.train", *fit_args(shards, root, FIT_STEPS, *extra)]


def scratch_tmpdir(tmp_path: Path) -> str:
    """$TMPDIR on another file system than the run (tmpfs) where the machine has one: where non-atomic saves broke."""
    shm = Path("/dev/shm")
    name = f"cocu-faults-{os.getpid()}-{tmp_path.name}"
    folder = shm / name if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path / name
    folder.mkdir(exist_ok=True)
    return str(folder)


@pytest.fixture(scope="module")
def fit_clean(faults_world, tmp_path_factory) -> Iterator[CleanRun]:
    root = tmp_path_factory.mktemp("fit-clean")
    tmpdir = scratch_tmpdir(root)
    yield clean_run(fit_command(faults_world["curated"], root), root, (root / "logs").exists, TMPDIR=tmpdir)
    shutil.rmtree(tmpdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------- trials


@pytest.mark.parametrize("trial", range(TRIALS))
def test_synth_killed_and_rerun_gives_the_clean_bytes(synth_clean, tmp_path, trial, request):
    out = tmp_path / "world"
    command = [sys.executable, "-m", "cocu.cli.data", "synth", str(out), *SYNTH]
    moment = synth_clean.kill_moment("synth", trial)
    killed = kill_at(command, moment)
    rerun_in_process(command)
    differences = compare_files(out, synth_clean.out)
    ours, theirs = (json.loads((folder / "world.json").read_text()) for folder in (out, synth_clean.out))
    differences += ["differs: world.json"] if ({**ours, "generation": None} != {**theirs, "generation": None}) else []
    record(request, "synth", trial, moment, killed, differences)


@pytest.mark.parametrize("trial", range(TRIALS))
@pytest.mark.parametrize("stage", ["build-bank (embedding)", "build-bank (assembly)", "enrich"])
def test_curation_stage_killed_then_rerun_gives_the_clean_bytes(faults_world, tmp_path, stage, trial, request):
    timing, clean, out, command = curation_case(stage, faults_world, tmp_path, request)
    moment = timing.kill_moment(stage, trial)
    killed = kill_at(command, moment)
    rerun_in_process(command)
    record(request, stage, trial, moment, killed, compare_files(out, clean.out))


def curation_case(stage: str, world: dict, tmp_path: Path, request) -> tuple[CleanRun, CleanRun, Path, list[str]]:
    """(run whose window the kill lands in, run to compare with, output folder, command) of a curation stage.

    build-bank is killed twice: while embedding (from nothing) and while assembling (its parts already embedded).
    """
    if stage == "enrich":
        clean = request.getfixturevalue("enrich_clean")
        out = tmp_path / "out"
        return clean, clean, out, curate_command(*enrich_args(world["bank"], world["train"], out))
    clean = request.getfixturevalue("bank_clean")
    timing, out = clean, tmp_path / "bank"
    if stage == "build-bank (assembly)":
        timing, out = request.getfixturevalue("assembly_clean"), with_parts(clean, out)
    return timing, clean, out, curate_command(*bank_args(world["train"], out, world["checkpoint"]))


@pytest.mark.parametrize("trial", range(TRIALS))
def test_fit_killed_and_resumed_reaches_the_clean_step_with_a_loadable_checkpoint(
    faults_world, fit_clean, tmp_path, trial, request
):
    import torch

    from cocu.training.checkpoint import load_groupvit

    env = {"TMPDIR": scratch_tmpdir(tmp_path)}
    moment = fit_clean.kill_moment("fit", trial)
    killed = kill_at(fit_command(faults_world["curated"], tmp_path), moment, **env)
    output = finish(fit_command(faults_world["curated"], tmp_path, "--ckpt_path", "last"), **env)
    differences = [] if f"(global step {FIT_STEPS})" in output else [f"summary: {output.strip()[-300:]}"]
    for root in (tmp_path, fit_clean.out):
        last = root / "checkpoints" / "last.ckpt"
        try:
            load_groupvit(last)
            step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
            differences += [] if step == FIT_STEPS else [f"{last}: step {step}, not {FIT_STEPS}"]
        except (ValueError, FileNotFoundError) as err:
            differences.append(str(err))
    differences += [f"left: {name}" for name in temporaries(tmp_path / "checkpoints")]
    # files only: a library imported by fit leaves two empty folders (wandb-media, wandb-artifacts) when killed
    differences += [f"left in $TMPDIR: {p.name}" for p in Path(env["TMPDIR"]).rglob("*") if p.is_file()]
    shutil.rmtree(env["TMPDIR"], ignore_errors=True)
    record(request, "fit", trial, moment, killed, differences)
