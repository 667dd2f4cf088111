"""Helpers of the hardening and fault-injection tests: CLI commands and environments, a tiny CLIP, file comparisons."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import testkit

MODEL = "cocu-faults-tiny"
TINY = testkit.tiny_clip_config(width=32, layers=1)
SHARD_ROWS = 40
SHARDS = 3
REPO = Path(__file__).resolve().parents[2]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: offline, one thread per library, so kills land at comparable moments."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }


def curate_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cocu.cli.curate", *args]


def bank_args(shards: Path, bank: Path, checkpoint: Path) -> list[str]:
    return [
        "build-bank",
        "--shards",
        str(shards),
        "--model",
        MODEL,
        "--pretrained",
        str(checkpoint),
        "--out",
        str(bank),
        "--min-count",
        "2",
        "--batch-size",
        "16",
        "--decode-workers",
        "0",
    ]


def enrich_args(bank: Path, shards: Path, out: Path) -> list[str]:
    return [
        "enrich",
        "--bank",
        str(bank),
        "--shards",
        str(shards),
        "--out",
        str(out),
        "--batch-size",
        "16",
        "--decode-workers",
        "0",
    ]


def fit_args(shards: Path, root: Path, max_steps: int, *extra: str) -> list[str]:
    return testkit.fit_args(shards, root, "--trainer.max_steps", str(max_steps), "--data.text_mode", "cocu-top", *extra)


def run(command: list[str], **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=cli_env(**extra_env), cwd=REPO, capture_output=True, text=True, timeout=600)


def save_tiny_clip(folder: Path, seed: int = 1) -> Path:
    return testkit.save_tiny_clip(folder, MODEL, TINY, seed)


def add_curated_columns(source: Path, target: Path) -> None:
    """A shard as enrich would leave it, for fit's cocu-top mode: curated concepts from the caption's words."""
    table = pq.read_table(source)
    words = [
        [w for w in (c or "").replace(",", " ").replace(".", " ").split() if len(w) > 3][:4] or ["thing"]
        for c in table.column("caption").to_pylist()
    ]
    columns = {
        "caption_concepts": pa.array(words, pa.list_(pa.string())),
        "cocu_concepts": pa.array(words, pa.list_(pa.string())),
        "cocu_scores": pa.array([[1.0 - 0.1 * i for i in range(len(w))] for w in words], pa.list_(pa.float32())),
        "cocu_clusters": pa.array([[0] * len(w) for w in words], pa.list_(pa.int32())),
        "cocu_error": pa.array([None] * len(words), pa.string()),
    }
    for name, column in columns.items():
        table = table.append_column(name, column)
    pq.write_table(table, target)


def data_files(folder: Path) -> dict[str, bytes]:
    """Every visible file under ``folder`` except per-shard manifests and build records (they hold timings and
    file dates), by relative path: what a rerun must reproduce byte for byte."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and not p.name.startswith(".")
        and not p.name.endswith(".manifest.json")
        and p.name not in ("build.json", "world.json")
    }


def temporaries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp"))


@dataclass(frozen=True)
class TrialResult:
    """One kill trial: where the kill landed, whether the process was still running, what differed after the rerun."""

    stage: str
    trial: int
    moment: float
    killed: bool
    differences: list[str] = field(default_factory=list)


TRIAL_RESULTS = pytest.StashKey[list]()


def trial_table(results: list[TrialResult]) -> list[str]:
    """The closing table: per stage, trials run, how many kills landed mid-run, identical and differing reruns."""
    lines = [f"{'stage':<24} {'trials':>6} {'killed':>6} {'identical':>9} {'differing':>9}"]
    for stage in dict.fromkeys(r.stage for r in results):
        rows = [r for r in results if r.stage == stage]
        same = sum(not r.differences for r in rows)
        lines.append(f"{stage:<24} {len(rows):>6} {sum(r.killed for r in rows):>6} {same:>9} {len(rows) - same:>9}")
    return lines


@dataclass(frozen=True)
class MatrixResult:
    """One cell of the bad-input matrix: what a stage answered to a damaged input."""

    case: str
    stage: str
    exit_code: int
    message: str


MATRIX_RESULTS = pytest.StashKey[list]()


def matrix_table(results: list[MatrixResult]) -> list[str]:
    return [f"{r.case:<30} {r.stage:<10} exit {r.exit_code}  {r.message[:150]}" for r in results]
