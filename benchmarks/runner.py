"""Runs the benchmark's stages as the user's commands, logs them, and skips those already done with the same settings.

Each finished stage leaves a record under ``OUT/stages/``; a rerun with the same settings skips it, so an interrupted
benchmark carries on where it stopped.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, cast

from cocu.curation.core.shards import atomic_write_json
from cocu.curation.core.stage import params_digest

BIN = Path(sys.executable).parent


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
        by_length = sorted(enumerate(items), key=lambda pair: -len(pair[1]))

        def rank(stage: Stage) -> int:  # the item whose job ran it: the longest one its name carries
            rest = stage.name.split("-", 1)[1]
            return next(i for i, item in by_length if rest == item or rest.startswith(item + "-"))

        self.stages[before:] = sorted(self.stages[before:], key=rank)

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
        """The same console-script entry point and arguments, without a new interpreter (tests: no start-up cost)."""
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
            stream = cast(io.BufferedReader, process.stdout)  # a pipe opened in binary mode
            for chunk in iter(lambda: stream.read1(4096), b""):
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


def tool(name: str) -> str:
    """A console script of this environment, the way a user would call it."""
    return str(BIN / name)
