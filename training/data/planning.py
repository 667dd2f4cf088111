"""Which rows each (rank, worker) slot reads: shard scan per text mode, read units, their seeded assignment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cocu.curation.core.shards import REQUIRED_COLUMNS, check_schema, expand_shards, open_parquet
from cocu.training.data.text_modes import TextMode


@dataclass(frozen=True)
class ShardInfo:
    """What the planner needs of a shard, from its Parquet footer only."""

    path: str
    row_groups: tuple[int, ...]  # rows per row group
    columns: tuple[str, ...]  # the columns to read for the text mode

    @property
    def rows(self) -> int:
        return sum(self.row_groups)


@dataclass(frozen=True)
class ReadUnit:
    """Rows one slot reads: some row groups of one shard, optionally every ``stride``-th row from ``offset``."""

    shard: ShardInfo
    row_groups: tuple[int, ...]
    first_row: int  # shard row number of the first row read (for error messages)
    rows: int
    stride: int = 1
    offset: int = 0


def scan_shards(shards: str | Sequence[str], mode: TextMode) -> list[ShardInfo]:
    """Check every shard's schema for the text mode and record its row groups; reads footers only."""
    infos = []
    for path in expand_shards(shards):
        parquet = open_parquet(path)
        schema = parquet.schema_arrow
        curated = mode.columns(schema.names)
        check_schema(path, schema, {**REQUIRED_COLUMNS, **curated})
        columns = ["key", "jpg", "caption", *curated]
        if "cocu_error" in schema.names:
            columns.append("cocu_error")
        meta = parquet.metadata
        infos.append(
            ShardInfo(str(path), tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups)), tuple(columns))
        )
    return infos


def plan_units(shards: Sequence[ShardInfo], slots: int) -> list[ReadUnit]:
    """Cut the shards into read units fine enough that every slot gets at least one."""
    shards = [s for s in shards if s.rows > 0]
    if len(shards) >= slots:
        units = [ReadUnit(s, tuple(range(len(s.row_groups))), 0, s.rows) for s in shards]
    elif sum(len(s.row_groups) for s in shards) >= slots:
        units = [ReadUnit(s, (g,), sum(s.row_groups[:g]), rows) for s in shards for g, rows in enumerate(s.row_groups)]
    else:  # fewer row groups than slots: each slot reads everything and keeps its share of the rows
        units = [
            ReadUnit(s, tuple(range(len(s.row_groups))), 0, len(range(offset, s.rows, slots)), slots, offset)
            for s in shards
            for offset in range(slots)
        ]
    return [unit for unit in units if unit.rows > 0]


def assign_units(units: Sequence[ReadUnit], slots: int, seed: int, epoch: int) -> list[list[ReadUnit]]:
    """Units per slot for one epoch: a (seed, epoch) permutation, then largest unit to the least-loaded slot."""
    rng = np.random.default_rng([seed, epoch])
    shuffled = [units[i] for i in rng.permutation(len(units))]
    shuffled.sort(key=lambda unit: -unit.rows)  # stable: equal sizes keep the random order
    loads = np.zeros(slots, dtype=np.int64)
    out: list[list[ReadUnit]] = [[] for _ in range(slots)]
    for unit in shuffled:
        slot = int(np.argmin(loads))
        out[slot].append(unit)
        loads[slot] += unit.rows
    for slot_units in out:
        rng.shuffle(slot_units)
    return out
