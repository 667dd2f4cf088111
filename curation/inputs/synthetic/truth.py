"""The synthetic world's truth sidecars (``key``, ``present``, ``salient``): what each image really shows.

One reader for every consumer: training's ``oracle`` text mode and the gallery read the present concepts; the
teacher's zero-shot ranking also needs each image's salient concept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa

from cocu.curation.core.shards import REQUIRED_COLUMNS, STRING_LISTS, ShardError, expand_shards, iter_batches

PRESENT_COLUMNS = {"key": REQUIRED_COLUMNS["key"], "present": STRING_LISTS}
SALIENT_COLUMNS = {**PRESENT_COLUMNS, "salient": (pa.string(), pa.large_string())}


class TruthRow(NamedTuple):
    present: list[str]  # every concept the image shows
    salient: str | None  # the one it is about; None when not read


@dataclass
class Truth:
    """Truth rows by key, and the file or folder they came from (for error messages)."""

    path: Path
    rows: dict[str, TruthRow] = field(default_factory=dict)

    def present(self) -> dict[str, list[str]]:
        """key -> present concepts: all that the oracle text mode and the gallery need."""
        return {key: row.present for key, row in self.rows.items()}


def read_truth(path: str | os.PathLike, salient: bool = False) -> Truth:
    """Read a truth sidecar file, or every one in a folder; small by construction.

    With ``salient`` every row must name its salient concept and at least one present concept, as the zero-shot
    ranking scores both.
    """
    truth = Truth(Path(path))
    columns = SALIENT_COLUMNS if salient else PRESENT_COLUMNS
    for shard in expand_shards(path):
        row = 0
        for batch in iter_batches(shard, columns=list(columns), required=columns):
            keys, present = batch.column("key").to_pylist(), batch.column("present").to_pylist()
            tops = batch.column("salient").to_pylist() if salient else [None] * len(keys)
            for key, concepts, top in zip(keys, present, tops):
                if salient and (not concepts or top is None):
                    raise ShardError(shard, "empty present list or salient concept", row=row)
                truth.rows[key] = TruthRow(concepts, top)
                row += 1
    return truth
