"""The training stream: each worker's share of the shards as shuffled, decoded, augmented, tokenized batches."""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from cocu.curation.bank.images import decode_image
from cocu.curation.core.shards import ShardError, decode_text, open_parquet
from cocu.training.data.augment import ImageAugment
from cocu.training.data.planning import ReadUnit, ShardInfo, assign_units, plan_units
from cocu.training.data.text_modes import Admission, text_mode
from cocu.training.data.tokens import cached_tokenizer
from cocu.training.prompts import build_texts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamConfig:
    batch_size: int = 64
    image_size: int = 224
    text_mode: str = "caption"  # a name in ``text_modes.TEXT_MODES``
    num_prompts: int = 3
    context_length: int = 77
    augment: str = "simple"
    crop_scale: tuple[float, float] = (0.5, 1.0)
    seed: int = 0
    shuffle_buffer: int = 2048
    read_batch_size: int = 256
    uint8_images: bool = False  # images leave the workers as uint8 (simple augment), normalized after the transfer


Row = tuple[str, bytes, str, Any]  # key, encoded image, caption, the text mode's concept source


class CuratedShardStream(IterableDataset):
    """One rank's stream of full training batches; see the module docstring for the split and the epoch."""

    def __init__(
        self,
        shards: Sequence[ShardInfo],
        config: StreamConfig,
        rank: int = 0,
        world_size: int = 1,
        truth: dict[str, list[str]] | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.mode = text_mode(config.text_mode)
        if self.mode.needs_truth and truth is None:
            raise ValueError(f"text_mode '{self.mode.name}' needs the truth sidecar")
        self.shards = list(shards)
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.truth = truth
        self.epoch = 0
        self.num_samples = sum(s.rows for s in self.shards)
        self.counts: Counter = Counter()  # of the last in-process iteration; workers log their own

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        return self.num_samples // (self.world_size * self.config.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        slots = self.world_size * workers
        units = assign_units(plan_units(self.shards, slots), slots, self.config.seed, self.epoch)[
            self.rank * workers + worker
        ]
        quota = len(self) // workers + (worker < len(self) % workers)
        if quota == 0:
            return
        if not units:
            raise ValueError(
                f"{self.num_samples} rows cannot feed {slots} (rank, worker) slots: use fewer loader workers"
            )
        rng = np.random.default_rng([self.config.seed, self.epoch, self.rank, worker])
        self.counts = Counter()
        files = ", ".join(sorted({unit.shard.path for unit in units}))
        yield from self._batches(self._passes(units, rng, files), quota, rng, files)
        skipped = sorted(
            (name.replace("_", " "), n) for name, n in self.counts.items() if name.startswith("skipped") and n
        )
        line = (
            f"rank {self.rank} worker {worker} epoch {self.epoch}: {quota} batches from {len(units)} read unit(s), "
            f"{self.counts['read']} rows read" + "".join(f", {n} {name}" for name, n in skipped)
        )
        (logger.warning if skipped else logger.debug)(line)

    # rows ---------------------------------------------------------------------------------------------------

    def _passes(self, units: list[ReadUnit], rng: np.random.Generator, files: str) -> Iterator[tuple[int, Row]]:
        """Endless passes over the slot's units, each in a new order and shuffled on its own.

        The shuffle buffer is flushed at the end of every pass, so an epoch that needs at most one pass reads
        every row at most once, even when the buffer is larger than the slot's share of the data.
        """
        for passes in itertools.count():
            order = units if passes == 0 else [units[i] for i in rng.permutation(len(units))]
            admitted = 0
            for row in _shuffled((row for unit in order for row in self._read(unit)), self.config.shuffle_buffer, rng):
                admitted += 1
                yield passes, row
            if admitted == 0:
                raise ShardError(
                    files,
                    f"no usable row in a full pass ({', '.join(f'{k} {v}' for k, v in sorted(self.counts.items()))})",
                )

    def _read(self, unit: ReadUnit) -> Iterator[Row]:
        """The unit's usable rows; pyarrow directly, as units select row groups (``iter_batches`` reads whole files)."""
        path = unit.shard.path
        parquet = open_parquet(path)
        position = unit.first_row
        batches = parquet.iter_batches(
            batch_size=self.config.read_batch_size, row_groups=list(unit.row_groups), columns=list(unit.shard.columns)
        )
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as err:
                raise ShardError(
                    path, f"unreadable data after row {position} ({str(err).strip().splitlines()[0]})"
                ) from None
            if batch is None:
                return
            rows = np.arange(position, position + batch.num_rows)
            position += batch.num_rows
            if unit.stride > 1:
                keep = (rows - unit.first_row) % unit.stride == unit.offset
                batch, rows = batch.filter(pa.array(keep)), rows[keep]
            yield from self._admit(batch, path, rows)

    def _admit(self, batch: pa.RecordBatch, path: str, rows: np.ndarray) -> Iterator[Row]:
        """Drop the rows that cannot train and attach each kept row's concept source."""
        self.counts["read"] += batch.num_rows
        names = batch.schema.names
        keys = batch.column("key").to_pylist()
        captions, invalid = decode_text(batch.column("caption"))
        keep = [bool(caption and caption.strip()) for caption in captions]
        self.counts["skipped_invalid_caption"] += len(invalid)  # not UTF-8: skipped like an empty caption
        self.counts["skipped_empty_caption"] += keep.count(False) - len(invalid)
        if "cocu_error" in names:
            for i, error in enumerate(batch.column("cocu_error").to_pylist()):
                if error is not None and keep[i]:
                    keep[i] = False
                    self.counts["skipped_cocu_error"] += 1
        admission = Admission(batch, path, rows, keys, captions, keep, self.counts)
        sources = self.mode.sources(admission, self.truth)
        jpgs = batch.column("jpg").to_pylist()
        for i in range(len(keys)):
            if keep[i]:
                yield keys[i], jpgs[i], captions[i], sources[i]

    # batches ------------------------------------------------------------------------------------------------

    def _batches(
        self, rows: Iterator[tuple[int, Row]], quota: int, rng: np.random.Generator, files: str
    ) -> Iterator[dict[str, Any]]:
        cfg = self.config
        augment = ImageAugment(cfg.augment, cfg.image_size, cfg.crop_scale)
        tokenizer = cached_tokenizer(cfg.context_length)
        current_pass, decoded = 0, 0
        for _ in range(quota):
            keys, captions, sources = [], [], []
            images: list[torch.Tensor] = []
            while len(images) < cfg.batch_size:
                passes, (key, jpg, caption, source) = next(rows)
                if passes != current_pass:  # decoding is deterministic: a pass without one good image means none ever
                    if decoded == 0:
                        raise ShardError(
                            files, f"no image decodes in a full pass ({self.counts['skipped_undecodable_image']} tried)"
                        )
                    current_pass, decoded = passes, 0
                image = _decode(jpg)
                if image is None:
                    self.counts["skipped_undecodable_image"] += 1
                    continue
                decoded += 1
                keys.append(key)
                images.append(augment.sample(image))
                captions.append(caption)
                sources.append(source)
            chosen = self.mode.pad(self.mode.choose(sources, cfg.num_prompts, rng), cfg.num_prompts)
            texts = build_texts(captions, chosen, cfg.num_prompts, rng)
            tokens = tokenizer([text for sample in texts for text in sample])
            yield {
                "image": augment.batch(images, normalize=not cfg.uint8_images),
                "text": tokens.view(cfg.batch_size, 1 + cfg.num_prompts, cfg.context_length),
                "key": keys,
            }


def _decode(data: bytes | None) -> Image.Image | None:
    """The one image decoder (curation's); a row it refuses is skipped by the training stream."""
    try:
        return decode_image(data)
    except ValueError:
        return None


def _shuffled(rows: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """A shuffle buffer: yields a random one of ``size`` buffered items for every new item."""
    buffer: list = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        i = int(rng.integers(size))
        buffer[i], row = row, buffer[i]
        yield row
    rng.shuffle(buffer)
    yield from buffer
