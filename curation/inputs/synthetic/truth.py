"""The synthetic world's truth sidecars (``key``, ``present``, ``areas``, ``salient``): what each image really shows.

One reader for every consumer: training's ``oracle`` text mode and the gallery read the present concepts; the
``oracle-all`` and ``oracle-top3`` modes also each concept's share of the image (``areas``, aligned with
``present``); the teacher's zero-shot ranking also needs each image's salient concept.
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
AREA_COLUMNS = {
    **PRESENT_COLUMNS,
    "areas": (pa.list_(pa.float32()), pa.list_(pa.float64()), pa.large_list(pa.float32()), pa.large_list(pa.float64())),
}


class TruthRow(NamedTuple):
    present: list[str]  # every concept the image shows
    salient: str | None  # the one it is about; None when not read


@dataclass
class Truth:
    """Truth rows by key, and the file or folder they came from (for error messages)."""

    path: Path
    rows: dict[str, TruthRow] = field(default_factory=dict)
    areas: dict[str, list[float]] | None = None  # key -> each present concept's share of the image, when read

    def present(self) -> dict[str, list[str]]:
        """key -> present concepts: all that the oracle text mode and the gallery need."""
        return {key: row.present for key, row in self.rows.items()}

    def by_area(self) -> dict[str, list[tuple[str, float]]]:
        """key -> (concept, share of the image) pairs, largest first; needs a truth read with ``areas``."""
        if self.areas is None:
            raise ValueError(f"{self.path}: the truth was read without its areas")
        areas = self.areas
        return {key: sorted(zip(row.present, areas[key]), key=lambda pair: -pair[1]) for key, row in self.rows.items()}


def read_truth(path: str | os.PathLike, salient: bool = False, areas: bool = False) -> Truth:
    """Read a truth sidecar file, or every one in a folder; small by construction.

    With ``salient`` every row must name its salient concept and at least one present concept, as the zero-shot
    ranking scores both. With ``areas`` every row must give one area per present concept.
    """
    truth = Truth(Path(path), areas={} if areas else None)
    columns = {**(SALIENT_COLUMNS if salient else PRESENT_COLUMNS), **(AREA_COLUMNS if areas else {})}
    for shard in expand_shards(path):
        row = 0
        for batch in iter_batches(shard, columns=list(columns), required=columns):
            keys, present = batch.column("key").to_pylist(), batch.column("present").to_pylist()
            tops = batch.column("salient").to_pylist() if salient else [None] * len(keys)
            shares = batch.column("areas").to_pylist() if areas else [None] * len(keys)
            for key, concepts, top, share in zip(keys, present, tops, shares):
                if salient and (not concepts or top is None):
                    raise ShardError(shard, "empty present list or salient concept", row=row)
                if areas and len(share or []) != len(concepts or []):
                    raise ShardError(shard, "areas and present concepts differ in length", row=row)
                truth.rows[key] = TruthRow(concepts or [], top)
                if truth.areas is not None:
                    truth.areas[key] = [float(a) for a in share or []]
                row += 1
    return truth
