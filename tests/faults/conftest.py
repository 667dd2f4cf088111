"""Fixtures of the hardening and fault-injection tests: a small world, a tiny CLIP, a bank built from them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from faultkit import (
    MATRIX_RESULTS,
    MODEL,
    SHARD_ROWS,
    SHARDS,
    TRIAL_RESULTS,
    add_curated_columns,
    matrix_table,
    save_tiny_clip,
    trial_table,
)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The table of kill trials per stage (identical / differing reruns) and the bad-input matrix."""
    results = config.stash.get(TRIAL_RESULTS, [])
    if results:
        terminalreporter.section("kill trials (SIGKILL of the process group, then a rerun)")
        for line in trial_table(results):
            terminalreporter.write_line(line)
    cells = config.stash.get(MATRIX_RESULTS, [])
    if cells:
        terminalreporter.section("bad-input matrix (case, stage, exit code, first error line or summary)")
        for line in matrix_table(cells):
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def faults_world(tmp_path_factory) -> dict[str, Path]:
    """A 3 x 40-row world, a tiny CLIP, a bank built from the world, and a curated copy for fit."""
    from cocu.curation.bank.build import build_bank
    from cocu.curation.bank.config import BankConfig
    from cocu.curation.inputs.synthetic import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("faults")
    generate_world(
        root / "world", WorldConfig(train=SHARDS * SHARD_ROWS, teacher=0, val=0, shard_size=SHARD_ROWS), progress=False
    )
    checkpoint = save_tiny_clip(root / "ckpt")
    config = BankConfig(model=MODEL, pretrained=str(checkpoint), min_count=2, batch_size=16, decode_workers=0)
    summary = build_bank(root / "world" / "train", root / "bank", config, progress=False)
    assert summary.ok, summary.embed.failures
    curated = root / "curated"
    curated.mkdir()
    for path in sorted((root / "world" / "train").glob("*.parquet")):
        add_curated_columns(path, curated / path.name)
    return {
        "root": root,
        "world": root / "world",
        "train": root / "world" / "train",
        "bank": root / "bank",
        "checkpoint": checkpoint,
        "curated": curated,
    }


@pytest.fixture
def bank_copy(faults_world, tmp_path) -> Path:
    """A private copy of the bank that a test may damage."""
    return Path(shutil.copytree(faults_world["bank"], tmp_path / "bank"))
