"""The training data: (curated) Parquet shards streamed into ``{"image", "text"}`` batches.

``CuratedShardsDataModule`` reads the shards of the data contract (plain ``key, jpg, caption`` shards or the
curated ones ``cocu-curate enrich`` writes) with pyarrow, batch by batch, never the whole corpus in memory:

- **Split**: the (rank, worker) pairs are *slots*; every slot reads its own read units, so no two read the same
  rows. A unit is a whole shard when shards are at least as many as slots, else one row group (the synthetic
  world has few shards), else (fewer row groups than slots) every slot reads all shards and keeps every
  ``slots``-th row. Units go to slots by size (largest first, to the least-loaded slot) after a permutation seeded
  by ``(seed, epoch)``, so every epoch reshuffles which slot reads what, identically on every rank.
- **Steps**: every rank yields exactly ``num_samples // (world_size * batch_size)`` full batches per epoch, split
  over its workers, so ranks stay in step under DDP. A worker whose units run out first (uneven units, skipped
  rows) starts another reshuffled pass over them; one that reaches its quota stops. When every slot's share is
  a whole number of its batches and no row is skipped (equal shards, say), each row is read exactly once.
- **Per worker**: a shuffle buffer of raw rows (encoded bytes, not decoded images, so the buffer stays small),
  then PIL decoding, augmentation, the text mode's concept choice (``cocu.training.prompts``, vectorized per
  batch) and CLIP BPE tokenization. Rows with a non-null ``cocu_error``, an empty caption, malformed curated
  lists or an image that does not decode are skipped and counted; the counts are logged when a worker ends.
- **Resume**: Lightning restores the global step and the epoch counter; the stream keeps no position, so it
  restarts the interrupted epoch from its beginning (same ``(seed, epoch)`` order). The rest of that epoch
  therefore repeats its first batches instead of continuing; later epochs are unaffected. The epoch reaches the
  workers when the loader is iterated, so workers are not persistent.
"""
from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import lightning as L
import numpy as np
import pyarrow as pa
import torch
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision import transforms as T

from cocu.curation.clip import decode_image
from cocu.curation.shards import (REQUIRED_COLUMNS, ShardError, check_schema, decode_text, expand_shards, iter_batches,
                                  open_parquet)

from .prompts import TEXT_MODES, build_texts, draw_cluster_guided, draw_uniform, take_top

logger = logging.getLogger(__name__)

IMAGE_MEAN: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN  # GroupViT normalizes with ImageNet statistics
IMAGE_STD: tuple[float, float, float] = IMAGENET_DEFAULT_STD
AUGMENTS = ("simple", "deit")

_STRINGS = (pa.list_(pa.string()), pa.list_(pa.large_string()), pa.large_list(pa.string()), pa.large_list(pa.large_string()))
_FLOATS = (pa.list_(pa.float32()), pa.list_(pa.float64()), pa.large_list(pa.float32()), pa.large_list(pa.float64()))
_INTS = (pa.list_(pa.int32()), pa.list_(pa.int64()), pa.large_list(pa.int32()), pa.large_list(pa.int64()))
# curated columns each text mode needs (``caption`` uses ``caption_concepts`` when a shard has it)
MODE_COLUMNS: dict[str, dict[str, tuple[pa.DataType, ...]]] = {
    "caption": {},
    "cocu-top": {"cocu_concepts": _STRINGS},
    "cocu-cluster": {"cocu_concepts": _STRINGS, "cocu_scores": _FLOATS, "cocu_clusters": _INTS},
    "oracle": {},
}


class ImageAugment:
    """Random augmentation of PIL images into one normalized float batch [B, 3, image_size, image_size].

    ``simple``: random resized crop with ``crop_scale`` (default 0.5-1 of the area: the synthetic world's 64 px
    pictures hold objects of 30-60% of the side, and the reference's 0.08 would crop most of them away) and a
    horizontal flip, kept uint8 per image and normalized once per batch (the cheap path for CPU loaders).
    ``deit``: the GroupViT reference recipe through timm (groupvit.md §3): crop scale 0.08-1 bilinear, flip,
    RandAugment ``rand-m9-mstd0.5-inc1``, random erasing p 0.25 in pixel mode (colour jitter 0.4 is passed but,
    as in the reference, timm disables it when RandAugment is on); timm normalizes per image, before erasing.
    """

    def __init__(self, augment: str, image_size: int, crop_scale: tuple[float, float] = (0.5, 1.0)):
        if augment == "simple":
            self.sample = T.Compose([
                T.RandomResizedCrop(image_size, scale=crop_scale, interpolation=T.InterpolationMode.BILINEAR),
                T.RandomHorizontalFlip(),
                T.PILToTensor(),
            ])
            self._mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1) * 255
            self._std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1) * 255
        elif augment == "deit":
            self.sample = create_transform(image_size, is_training=True, scale=(0.08, 1.0), interpolation="bilinear",
                                           hflip=0.5, color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1",
                                           re_prob=0.25, re_mode="pixel", re_count=1, mean=IMAGE_MEAN, std=IMAGE_STD)
            _keep_posterize_bits(self.sample)
        else:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got '{augment}'")
        self.augment = augment

    def batch(self, samples: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(list(samples))
        if self.augment == "simple":
            return stacked.float().sub_(self._mean).div_(self._std)
        return stacked

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.batch([self.sample(image) for image in images])


def _keep_posterize_bits(transform: T.Compose) -> None:
    """Stop timm's PosterizeIncreasing from asking Pillow for 0 bits, which Pillow >= 11 refuses.

    With ``m9-mstd0.5`` the magnitude reaches its cap of 10 on ~2% of draws, where the op keeps 4 - 4 = 0 bits:
    old Pillow returned a black image, Pillow 13 (installed) raises ValueError and would kill the loader
    worker. Capping that one op's magnitude just below 10 keeps 1 bit there and leaves every other draw as is.
    """
    for step in transform.transforms:
        for op in getattr(step, "ops", ()):
            if op.name == "PosterizeIncreasing":
                op.magnitude_max = 9.99


class CachedTokenizer:
    """open_clip's CLIP BPE tokenizer (bundled vocabulary, works offline) with a bounded memo.

    Prompts repeat (80 templates x the concept vocabulary), so most texts of a batch are cache hits.
    Output equals ``SimpleTokenizer()(texts, context_length)``: SOT + ids + EOT, truncated with EOT last.
    """

    def __init__(self, context_length: int = 77, cache_size: int = 1 << 16):
        self.context_length = context_length
        self._bpe = SimpleTokenizer(context_length=context_length)
        self._ids = lru_cache(maxsize=cache_size)(self._encode)

    def _encode(self, text: str) -> tuple[int, ...]:
        ids = [self._bpe.sot_token_id, *self._bpe.encode(text), self._bpe.eot_token_id]
        if len(ids) > self.context_length:
            ids = ids[: self.context_length]
            ids[-1] = self._bpe.eot_token_id
        return tuple(ids)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = self._ids(text)
            out[i, : len(ids)] = ids
        return torch.from_numpy(out)


@lru_cache(maxsize=4)
def cached_tokenizer(context_length: int) -> CachedTokenizer:
    """One tokenizer per process and context length: loading the BPE merges costs about a second."""
    return CachedTokenizer(context_length)


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


def scan_shards(shards: str | Sequence[str], text_mode: str) -> list[ShardInfo]:
    """Check every shard's schema for the text mode and record its row groups; reads footers only."""
    infos = []
    for path in expand_shards(shards):
        parquet = open_parquet(path)
        schema = parquet.schema_arrow
        check_schema(path, schema, {**REQUIRED_COLUMNS, **MODE_COLUMNS[text_mode]})
        columns = ["key", "jpg", "caption", *MODE_COLUMNS[text_mode]]
        if text_mode == "caption" and "caption_concepts" in schema.names:
            check_schema(path, schema, {"caption_concepts": _STRINGS})
            columns.append("caption_concepts")
        if "cocu_error" in schema.names:
            columns.append("cocu_error")
        meta = parquet.metadata
        infos.append(ShardInfo(str(path), tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups)), tuple(columns)))
    return infos


def plan_units(shards: Sequence[ShardInfo], slots: int) -> list[ReadUnit]:
    """Cut the shards into read units fine enough that every slot gets at least one."""
    shards = [s for s in shards if s.rows > 0]
    if len(shards) >= slots:
        units = [ReadUnit(s, tuple(range(len(s.row_groups))), 0, s.rows) for s in shards]
    elif sum(len(s.row_groups) for s in shards) >= slots:
        units = [ReadUnit(s, (g,), sum(s.row_groups[:g]), rows) for s in shards for g, rows in enumerate(s.row_groups)]
    else:  # fewer row groups than slots: each slot reads everything and keeps its share of the rows
        units = [ReadUnit(s, tuple(range(len(s.row_groups))), 0, len(range(offset, s.rows, slots)), slots, offset)
                 for s in shards for offset in range(slots)]
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


def load_truth(folder: str) -> dict[str, list[str]]:
    """The synthetic world's truth sidecar (``key``, ``present``) as a dict; small by construction."""
    truth: dict[str, list[str]] = {}
    for path in expand_shards(folder):
        for batch in iter_batches(path, columns=["key", "present"], required={"key": REQUIRED_COLUMNS["key"], "present": _STRINGS}):
            truth.update(zip(batch.column("key").to_pylist(), batch.column("present").to_pylist()))
    return truth


@dataclass(frozen=True)
class StreamConfig:
    batch_size: int = 64
    image_size: int = 224
    text_mode: str = "caption"
    num_prompts: int = 3
    context_length: int = 77
    augment: str = "simple"
    crop_scale: tuple[float, float] = (0.5, 1.0)
    seed: int = 0
    shuffle_buffer: int = 2048
    read_batch_size: int = 256


Row = tuple[str, bytes, str, Any]  # key, encoded image, caption, the text mode's concept source


class CuratedShardStream(IterableDataset):
    """One rank's stream of full training batches; see the module docstring for the split and the epoch."""

    def __init__(self, shards: Sequence[ShardInfo], config: StreamConfig, rank: int = 0, world_size: int = 1,
                 truth: dict[str, list[str]] | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if config.text_mode == "oracle" and truth is None:
            raise ValueError("text_mode 'oracle' needs the truth sidecar")
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
        units = assign_units(plan_units(self.shards, slots), slots, self.config.seed, self.epoch)[self.rank * workers + worker]
        quota = len(self) // workers + (worker < len(self) % workers)
        if quota == 0:
            return
        if not units:
            raise ValueError(f"{self.num_samples} rows cannot feed {slots} (rank, worker) slots: use fewer loader workers")
        rng = np.random.default_rng([self.config.seed, self.epoch, self.rank, worker])
        self.counts = Counter()
        files = ", ".join(sorted({unit.shard.path for unit in units}))
        yield from self._batches(self._passes(units, rng, files), quota, rng, files)
        skipped = sorted((name.replace("_", " "), n) for name, n in self.counts.items() if name.startswith("skipped") and n)
        line = (f"rank {self.rank} worker {worker} epoch {self.epoch}: {quota} batches from {len(units)} read unit(s), "
                f"{self.counts['read']} rows read" + "".join(f", {n} {name}" for name, n in skipped))
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
                raise ShardError(files, f"no usable row in a full pass ({', '.join(f'{k} {v}' for k, v in sorted(self.counts.items()))})")

    def _read(self, unit: ReadUnit) -> Iterator[Row]:
        """The unit's usable rows; pyarrow directly, as units select row groups (``shards.iter_batches`` reads files)."""
        path = unit.shard.path
        parquet = open_parquet(path)
        position = unit.first_row
        batches = parquet.iter_batches(batch_size=self.config.read_batch_size, row_groups=list(unit.row_groups),
                                       columns=list(unit.shard.columns))
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as err:
                raise ShardError(path, f"unreadable data after row {position} ({str(err).strip().splitlines()[0]})") from None
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
        mode = self.config.text_mode
        if mode == "caption":
            if "caption_concepts" in names:
                sources = [c or [] for c in batch.column("caption_concepts").to_pylist()]
            else:
                from cocu.curation.concepts import caption_nouns  # spaCy; loaded only for shards without curated columns

                kept = [i for i in range(len(keys)) if keep[i]]
                nouns = iter(caption_nouns([captions[i] for i in kept]))
                sources = [next(nouns) if keep[i] else [] for i in range(len(keys))]
        elif mode == "oracle":
            sources = []
            for i, key in enumerate(keys):
                if key not in self.truth:
                    raise ShardError(path, f"key '{key}' has no row in the truth sidecar", row=int(rows[i]))
                sources.append(self.truth[key])
        elif mode == "cocu-top":
            sources = [c or [] for c in batch.column("cocu_concepts").to_pylist()]
        else:
            concepts = batch.column("cocu_concepts").to_pylist()
            scores = batch.column("cocu_scores").to_pylist()
            clusters = batch.column("cocu_clusters").to_pylist()
            sources = []
            for i, (c, s, k) in enumerate(zip(concepts, scores, clusters)):
                c, s, k = c or [], s or [], k or []
                if keep[i] and (len(s) != len(c) or (k and len(k) != len(c)) or not np.all(np.isfinite(np.asarray(s, dtype=np.float64)))):
                    keep[i] = False
                    self.counts["skipped_malformed_concepts"] += 1
                sources.append((c, s, k))
        jpgs = batch.column("jpg").to_pylist()
        for i in range(len(keys)):
            if keep[i]:
                yield keys[i], jpgs[i], captions[i], sources[i]

    # batches ------------------------------------------------------------------------------------------------

    def _batches(self, rows: Iterator[tuple[int, Row]], quota: int, rng: np.random.Generator, files: str) -> Iterator[dict[str, Any]]:
        cfg = self.config
        augment = ImageAugment(cfg.augment, cfg.image_size, cfg.crop_scale)
        tokenizer = cached_tokenizer(cfg.context_length)
        current_pass, decoded = 0, 0
        for _ in range(quota):
            keys, images, captions, sources = [], [], [], []
            while len(images) < cfg.batch_size:
                passes, (key, jpg, caption, source) = next(rows)
                if passes != current_pass:  # decoding is deterministic: a pass without one good image means none ever
                    if decoded == 0:
                        raise ShardError(files, f"no image decodes in a full pass ({self.counts['skipped_undecodable_image']} tried)")
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
            texts = build_texts(captions, self._choose(sources, rng), cfg.num_prompts, rng)
            tokens = tokenizer([text for sample in texts for text in sample])
            yield {"image": augment.batch(images),
                   "text": tokens.view(cfg.batch_size, 1 + cfg.num_prompts, cfg.context_length),
                   "key": keys}

    def _choose(self, sources: list, rng: np.random.Generator) -> list[list[str]]:
        k = self.config.num_prompts
        mode = self.config.text_mode
        if mode in ("caption", "oracle"):
            return draw_uniform(sources, k, rng)
        if mode == "cocu-top":
            return take_top(sources, k)
        concepts, scores, clusters = zip(*sources)
        return draw_cluster_guided(concepts, scores, clusters, k, rng)


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


class _EpochLoader(DataLoader):
    """A DataLoader that tells its stream which epoch starts each time it is iterated.

    Lightning calls ``set_epoch`` only on samplers, and an iterable dataset has none of its own.
    """

    def __init__(self, dataset: CuratedShardStream, epoch_of: Callable[[], int | None], **kwargs: Any):
        super().__init__(dataset, **kwargs)
        self._epoch_of = epoch_of
        self._iterations = 0

    def __iter__(self):
        epoch = self._epoch_of()
        self.dataset.set_epoch(self._iterations if epoch is None else epoch)
        self._iterations += 1
        return super().__iter__()


class CuratedShardsDataModule(L.LightningDataModule):
    """Training batches ``{"image": [B,3,H,W] normalized, "text": [B, 1+K, context_length], "key": list}``.

    Text row 0 is the tokenized caption, rows 1..K the prompts of the text mode (``cocu.training.prompts``).
    ``num_samples`` is the row count of all shards from their footers (``cocu_error`` rows included), so a
    trainer can size its schedule before reading any data.
    """

    def __init__(
        self,
        shards: str,
        batch_size: int = 64,
        num_workers: int = 2,
        image_size: int = 224,
        text_mode: str = "caption",
        num_prompts: int = 3,
        context_length: int = 77,
        truth: str | None = None,
        augment: str = "simple",
        seed: int = 0,
        shuffle_buffer: int = 2048,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        read_batch_size: int = 256,
    ):
        super().__init__()
        if text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {', '.join(TEXT_MODES)}, got '{text_mode}'")
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got '{augment}'")
        if text_mode == "oracle" and not truth:
            raise ValueError("text_mode 'oracle' needs truth=<folder of the world's truth Parquet files, e.g. WORLD/truth/train>")
        if batch_size < 1 or num_prompts < 0 or num_workers < 0 or shuffle_buffer < 1:
            raise ValueError("batch_size and shuffle_buffer must be >= 1, num_prompts and num_workers >= 0")
        self.shards = shards
        self.num_workers = num_workers
        self.truth_path = truth
        self.config = StreamConfig(batch_size=batch_size, image_size=image_size, text_mode=text_mode, num_prompts=num_prompts,
                                   context_length=context_length, augment=augment, crop_scale=tuple(crop_scale), seed=seed,
                                   shuffle_buffer=shuffle_buffer, read_batch_size=read_batch_size)
        self._infos: list[ShardInfo] | None = None
        self._truth: dict[str, list[str]] | None = None

    @property
    def batch_size(self) -> int:
        """Per-rank batch size (the name Lightning's tuner and most data modules use)."""
        return self.config.batch_size

    @property
    def shard_infos(self) -> list[ShardInfo]:
        if self._infos is None:
            self._infos = scan_shards(self.shards, self.config.text_mode)
        return self._infos

    @property
    def num_samples(self) -> int:
        return sum(info.rows for info in self.shard_infos)

    def batches_per_epoch(self, world_size: int = 1) -> int:
        return self.num_samples // (world_size * self.config.batch_size)

    def setup(self, stage: str | None = None) -> None:
        _, world_size = self._rank_world()
        if self.batches_per_epoch(world_size) == 0:
            raise ValueError(f"{self.shards}: {self.num_samples} rows give no full batch of {self.config.batch_size} "
                             f"for each of {world_size} rank(s)")

    def stream(self, rank: int = 0, world_size: int = 1) -> CuratedShardStream:
        """The dataset of one rank; ``train_dataloader`` uses the trainer's rank and world size."""
        if self.config.text_mode == "oracle" and self._truth is None:
            self._truth = load_truth(self.truth_path)  # loaded once, shared with the workers
        return CuratedShardStream(self.shard_infos, self.config, rank, world_size, self._truth)

    def loader(self, stream: CuratedShardStream) -> DataLoader:
        # load the BPE merges (and spaCy, when captions need their nouns) once here: forked workers inherit them
        cached_tokenizer(self.config.context_length)
        if self.config.text_mode == "caption" and any("caption_concepts" not in info.columns for info in stream.shards):
            from cocu.curation.concepts import load_nlp

            load_nlp()
        return _EpochLoader(stream, self._trainer_epoch, batch_size=None, num_workers=self.num_workers,
                            pin_memory=torch.cuda.is_available(), persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.stream(*self._rank_world()))

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _trainer_epoch(self) -> int | None:
        return self.trainer.current_epoch if self.trainer is not None else None
