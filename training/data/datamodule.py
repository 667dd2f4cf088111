"""`CuratedShardsDataModule`: the Lightning DataModule over the stream, sized so ranks stay in step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import cached_property
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from cocu.curation.inputs.synthetic.truth import read_truth
from cocu.training.data.augment import AUGMENTS, ImageAugment
from cocu.training.data.planning import ShardInfo, scan_shards
from cocu.training.data.stream import CuratedShardStream, StreamConfig
from cocu.training.data.text_modes import text_mode as find_text_mode
from cocu.training.data.tokens import cached_tokenizer


class _EpochLoader(DataLoader):
    """A DataLoader that tells its stream which epoch starts each time it is iterated.

    Lightning calls ``set_epoch`` only on samplers, and an iterable dataset has none of its own.
    """

    def __init__(self, dataset: CuratedShardStream, epoch_of: Callable[[], int | None], **kwargs: Any):
        super().__init__(dataset, **kwargs)
        self._epoch_of = epoch_of
        self._iterations = 0

    dataset: CuratedShardStream

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
        self.mode = find_text_mode(text_mode)
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got '{augment}'")
        if self.mode.needs_truth and not truth:
            raise ValueError(
                f"text_mode '{text_mode}' needs truth=<folder of the world's truth Parquet files, "
                "e.g. WORLD/truth/train>"
            )
        if batch_size < 1 or num_prompts < 0 or num_workers < 0 or shuffle_buffer < 1:
            raise ValueError("batch_size and shuffle_buffer must be >= 1, num_prompts and num_workers >= 0")
        self.shards = shards
        self.num_workers = num_workers
        self.truth_path = truth
        self.config = StreamConfig(
            batch_size=batch_size,
            image_size=image_size,
            text_mode=text_mode,
            num_prompts=num_prompts,
            context_length=context_length,
            augment=augment,
            crop_scale=tuple(crop_scale),
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            read_batch_size=read_batch_size,
        )
        self._infos: list[ShardInfo] | None = None
        self._truth: dict[str, list[str]] | None = None

    @property
    def batch_size(self) -> int:
        """Per-rank batch size (the name Lightning's tuner and most data modules use)."""
        return self.config.batch_size

    @property
    def shard_infos(self) -> list[ShardInfo]:
        if self._infos is None:
            self._infos = scan_shards(self.shards, self.mode)
        return self._infos

    @property
    def num_samples(self) -> int:
        return sum(info.rows for info in self.shard_infos)

    def batches_per_epoch(self, world_size: int = 1) -> int:
        return self.num_samples // (world_size * self.config.batch_size)

    def setup(self, stage: str | None = None) -> None:
        _, world_size = self._rank_world()
        if self.batches_per_epoch(world_size) == 0:
            raise ValueError(
                f"{self.shards}: {self.num_samples} rows give no full batch of {self.config.batch_size} "
                f"for each of {world_size} rank(s)"
            )
        self.truth()

    def truth(self) -> dict[str, list[str]] | None:
        """The text mode's true concepts by key (None for a mode without truth); read once, shared with the workers.

        A mode that must show more concepts of some image than ``num_prompts`` holds is refused here, before training.
        """
        if self.mode.needs_truth and self._truth is None:
            assert self.truth_path is not None  # __init__ refuses a truth mode without a truth folder
            self._truth = self.mode.from_truth(read_truth(self.truth_path, areas=self.mode.needs_areas))
            needed = self.mode.prompts_needed(self._truth)
            if needed is not None and self.config.num_prompts < needed:
                raise ValueError(
                    f"text_mode '{self.mode.name}' needs num_prompts >= {needed} for the truth in {self.truth_path} "
                    f"(--data.num_prompts {needed}), got {self.config.num_prompts}"
                )
        return self._truth

    def stream(self, rank: int = 0, world_size: int = 1, uint8_images: bool = False) -> CuratedShardStream:
        """The dataset of one rank; ``train_dataloader`` uses the trainer's rank and world size (and, on a GPU, sends
        uint8 images that ``on_after_batch_transfer`` normalizes there)."""
        config = replace(self.config, uint8_images=uint8_images)
        return CuratedShardStream(self.shard_infos, config, rank, world_size, self.truth())

    def loader(self, stream: CuratedShardStream) -> DataLoader:
        # load the BPE merges (and what the text mode needs, spaCy say) once here: forked workers inherit them
        cached_tokenizer(self.config.context_length)
        self.mode.prepare([info.columns for info in stream.shards])
        return _EpochLoader(
            stream,
            self._trainer_epoch,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.stream(*self._rank_world(), uint8_images=self._on_gpu()))

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Normalize uint8 images on the device they were sent to: a quarter of float32's bytes through the workers'
        shared memory, the pinned buffers and the bus, and the workers spared the float conversion."""
        if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor):
            batch["image"] = self._augment.normalize(batch["image"])
        return batch

    def _on_gpu(self) -> bool:
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda" and self._augment.sends_uint8

    @cached_property
    def _augment(self) -> ImageAugment:
        return ImageAugment(self.config.augment, self.config.image_size, self.config.crop_scale)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _trainer_epoch(self) -> int | None:
        return self.trainer.current_epoch if self.trainer is not None else None
