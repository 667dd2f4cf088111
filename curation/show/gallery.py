"""``cocu-curate show``: a static gallery of curated shards, to see what curation did before training on it.

One pass over the shards. Every row counts towards the summary (concepts added most, concepts per image,
empty archives, errors, and with the synthetic world's truth how many additions are right); the first
``limit`` rows also get a card: a thumbnail beside the page, the caption, its concepts and the curated
concepts with scores and clusters. Cards are data (``data.js``) that the page filters, sorts and pages in
the browser, so a 10,000-row shard shows 60 cards at a time. The folder appears complete or not at all.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

from cocu.curation.core.configs import option
from cocu.curation.core.errors import writing
from cocu.curation.core.outputs import check_overlap, input_places
from cocu.curation.core.shards import (
    REQUIRED_COLUMNS,
    ShardError,
    check_schema,
    expand_shards,
    iter_batches,
    open_parquet,
)
from cocu.curation.core.stopping import stop_on_sigterm
from cocu.curation.inputs.synthetic.truth import read_truth
from cocu.curation.show.summary import CurationTally, write_summary
from cocu.evaluation.html import MARKER, page_folder, write_page

CURATED_COLUMNS: dict[str, tuple[pa.DataType, ...]] = {
    **REQUIRED_COLUMNS,
    "caption_concepts": (pa.list_(pa.string()), pa.list_(pa.large_string())),
    "cocu_concepts": (pa.list_(pa.string()), pa.list_(pa.large_string())),
    "cocu_scores": (pa.list_(pa.float32()), pa.list_(pa.float64())),
    "cocu_clusters": (pa.list_(pa.int32()), pa.list_(pa.int64())),
    "cocu_error": (pa.string(), pa.large_string()),
}
WEB_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}  # small images of these are kept as they are
ROWS_PER_FOLDER = 1000


@dataclass(frozen=True)
class GalleryConfig:
    """What the gallery shows; none of it changes the curated data."""

    limit: int | None = option(50_000, "Rows with a card (the summary counts every row).", minimum=1)
    thumb_size: int = option(128, "Longest side of a thumbnail in pixels.", minimum=16)
    page_size: int = option(60, "Cards per page.", minimum=1)
    batch_size: int = 1024
    threads: int = 4  # thumbnail writers
    top_concepts: int = 30  # concepts in the summary's "added most" chart and table


@dataclass(frozen=True)
class GallerySummary:
    out: Path
    rows: int
    cards: int
    shards: int
    errors: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"gallery {self.out}: {self.cards} cards of {self.rows} rows from {self.shards} shard(s), "
            f"{self.errors} with cocu_error, {self.seconds:.1f}s ({self.rows_per_second:.0f} rows/s); "
            f"open {self.out / 'index.html'}"
        )


def thumbnail(data: bytes | None, size: int) -> tuple[bytes, str] | None:
    """Bytes and extension of a thumbnail, or None when the image cannot be decoded (the card says so)."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            small = max(image.size) <= size and image.format in WEB_FORMATS
            if image.format == "JPEG" and not small:
                image.draft("RGB", (size, size))  # decode at a reduced scale: big JPEGs load several times faster
            image.load()  # a truncated or corrupt image fails here, not as a broken picture in the page
            if small:
                return data, WEB_FORMATS[image.format]
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=85)
            return buffer.getvalue(), "jpg"
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


class Cards:
    """The card data of the page: concepts as indices into one list, scores rounded, thumbnails on disk.

    Thumbnails are made and written by a thread pool: decoding and file creation release the GIL, and on a
    busy file system creating thousands of small files is what takes the time.
    """

    def __init__(self, folder: Path, thumb_size: int, truth: dict[str, frozenset[str]] | None, pool: Executor):
        self.folder, self.thumb_size, self.truth, self.pool = folder, thumb_size, truth, pool
        self.concepts: dict[str, int] = {}
        self.rows: list[list[Any]] = []

    def _ids(self, names: Sequence[str]) -> list[int]:
        return [self.concepts.setdefault(name, len(self.concepts)) for name in names]

    def _save_thumbnail(self, number: int, data: bytes | None) -> str | None:
        thumb = thumbnail(data, self.thumb_size)
        if thumb is None:
            return None
        path = f"thumbs/{number // ROWS_PER_FOLDER:03d}/{number:06d}.{thumb[1]}"
        target = self.folder / path
        with writing(target):
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(thumb[0])
        return path

    def add(self, rows: Sequence[dict[str, Any]], shard: int, first: int) -> None:
        """Cards for consecutive rows of one shard, the first of them at row ``first``."""
        start = len(self.rows)
        paths = self.pool.map(self._save_thumbnail, range(start, start + len(rows)), [row["jpg"] for row in rows])
        for offset, (row, path) in enumerate(zip(rows, paths)):
            self._add(row, path, shard, first + offset)

    def _add(self, row: dict[str, Any], path: str | None, shard: int, index: int) -> None:
        named, curated = row["caption_concepts"] or [], row["cocu_concepts"] or []
        right = missed = None
        if self.truth is not None:
            present = self.truth[row["key"]]
            right = [int(c in present) for c in curated]
            missed = self._ids(sorted(present - set(named) - set(curated)))
        self.rows.append(
            [
                row["key"],
                row["caption"] or "",
                path,
                self._ids(named),
                self._ids(curated),
                [round(float(s), 3) for s in row["cocu_scores"] or []],
                list(row["cocu_clusters"] or []),
                row["cocu_error"],
                right,
                missed,
                shard,
                index,
            ]
        )

    def payload(self, page_size: int, shards: Sequence[str]) -> dict[str, Any]:
        return {
            "concepts": list(self.concepts),
            "rows": self.rows,
            "truth": self.truth is not None,
            "page_size": page_size,
            "shards": list(shards),
        }


def _check_row(path: Path, row: dict[str, Any], number: int, truth: dict[str, frozenset[str]] | None) -> None:
    concepts, scores, clusters = (row[name] or [] for name in ("cocu_concepts", "cocu_scores", "cocu_clusters"))
    if len(scores) != len(concepts):
        raise ShardError(path, f"cocu_scores has {len(scores)} values for {len(concepts)} cocu_concepts", row=number)
    if clusters and len(clusters) != len(concepts):
        raise ShardError(
            path, f"cocu_clusters has {len(clusters)} values for {len(concepts)} cocu_concepts", row=number
        )
    if truth is not None and row["key"] not in truth:
        raise ShardError(path, f"key '{row['key']}' has no row in the truth folder", row=number)


def write_gallery(
    curated: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    truth: str | os.PathLike | None = None,
    config: GalleryConfig = GalleryConfig(),
) -> GallerySummary:
    """Write ``out/index.html`` (the cards), ``out/summary.html`` and what they show, from curated shards."""
    started = time.perf_counter()
    shards = expand_shards(curated)
    patterns = [curated] if isinstance(curated, (str, os.PathLike)) else list(curated)
    check_overlap(Path(out), input_places([*patterns, *([truth] if truth else [])], shards), "--out")
    for path in shards:  # every schema checked before anything is written
        check_schema(path, open_parquet(path).schema_arrow, CURATED_COLUMNS)
    answers = None
    if truth is not None:
        answers = {key: frozenset(present) for key, present in read_truth(truth).present().items()}
    limit = config.limit if config.limit is not None else sys.maxsize
    stopped = f"show stopped by SIGTERM; nothing was published ({out} is as it was) and its temporaries are removed"
    with stop_on_sigterm(stopped), page_folder(out) as work, ThreadPoolExecutor(config.threads) as pool:
        (work / "thumbs").mkdir()
        cards = Cards(work, config.thumb_size, answers, pool)
        tally = CurationTally(answers is not None)
        for shard_number, path in enumerate(shards):
            columns = list(CURATED_COLUMNS) if len(cards.rows) < limit else [c for c in CURATED_COLUMNS if c != "jpg"]
            required = {name: CURATED_COLUMNS[name] for name in columns}
            number = 0
            for batch in iter_batches(path, config.batch_size, columns=columns, required=required):
                rows = batch.to_pylist()
                for offset, row in enumerate(rows):
                    _check_row(path, row, number + offset, answers)
                    tally.update(row, answers[row["key"]] if answers is not None else None)
                if len(cards.rows) < limit:
                    cards.add(rows[: limit - len(cards.rows)], shard_number, number)
                number += len(rows)
        names = [path.name for path in shards]
        payload = cards.payload(config.page_size, names)
        with writing(work / "data.js"):
            (work / "data.js").write_text("window.COCU_GALLERY = " + json.dumps(payload, separators=(",", ":")) + ";\n")
        source = ", ".join(str(p) for p in shards) if len(shards) <= 3 else f"{shards[0].parent} ({len(shards)} shards)"
        context = {"source": source, "rows": tally.rows, "cards": len(cards.rows), "truth": answers is not None}
        write_page(work / "index.html", "gallery.html.j2", **context)
        write_summary(work, tally, config.top_concepts, **context)
        record = {
            "tool": "cocu-curate show",
            "shards": [str(p) for p in shards],
            "truth": str(truth) if truth else None,
            "rows": tally.rows,
            "cards": len(cards.rows),
            "config": asdict(config),
        }
        (work / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    seconds = time.perf_counter() - started
    return GallerySummary(Path(out), tally.rows, len(cards.rows), len(shards), tally.errors, seconds)
