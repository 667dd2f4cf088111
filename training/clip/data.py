"""The teacher's training stream: shuffled (image, caption tokens) pairs over caption shards."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from cocu.curation.bank.images import decode_image
from cocu.curation.core.shards import ShardError, check_schema, iter_batches, open_parquet


class TeacherShards(IterableDataset):
    """Endless, shuffled stream of (image tensor, caption tokens) over Parquet shards.

    Each epoch visits the shards in a new order; record batches are dealt round-robin to the
    DataLoader workers, which decode and transform them and mix samples through a shuffle buffer.
    A bad row ends the stream with a ShardError item naming its file and row.
    """

    def __init__(
        self,
        shards: Sequence[Path],
        transform: Callable,
        tokenizer: Callable,
        shuffle_buffer: int = 4096,
        seed: int = 0,
        read_batch: int = 256,
    ):
        self.shards = list(shards)
        self.rows = sum(open_parquet(path).metadata.num_rows for path in self.shards)
        self.transform, self.tokenizer = transform, tokenizer
        self.shuffle_buffer, self.seed, self.read_batch = max(1, shuffle_buffer), seed, read_batch

    def _rows(self, epoch: int, worker: int, workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor] | ShardError]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        unit = 0
        for index in order:
            path, start = self.shards[index], 0
            for batch in iter_batches(path, batch_size=self.read_batch, columns=["key", "jpg", "caption"]):
                mine, unit = unit % workers == worker, unit + 1
                if mine:
                    captions = batch.column("caption").to_pylist()
                    for offset, caption in enumerate(captions):
                        if caption is None or not caption.strip():
                            yield ShardError(path, "empty caption", row=start + offset)
                            return
                    tokens = self.tokenizer(captions)
                    for offset, jpg in enumerate(batch.column("jpg").to_pylist()):
                        try:
                            image = self.transform(decode_image(jpg))
                        except ValueError as err:
                            yield ShardError(path, str(err), row=start + offset)
                            return
                        yield image, tokens[offset]
                start += batch.num_rows

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = np.random.default_rng([self.seed, 1 + worker])
        size = max(1, min(self.shuffle_buffer, self.rows) // workers)  # never mix more than one epoch
        buffer: list = []
        epoch = 0
        while True:
            produced = 0
            for item in self._rows(epoch, worker, workers):
                if isinstance(item, ShardError):
                    yield item
                    return
                produced += 1
                if len(buffer) < size:
                    buffer.append(item)
                    continue
                slot = int(rng.integers(size))
                yield buffer[slot]
                buffer[slot] = item
            if produced == 0:
                return  # more workers than record batches: nothing for this one
            epoch += 1


def collate(items: list) -> tuple[torch.Tensor, torch.Tensor] | ShardError:
    for item in items:
        if isinstance(item, ShardError):
            return item
    images, tokens = zip(*items)
    return torch.stack(images), torch.stack(tokens)


def check_shards(shards: Sequence[Path]) -> int:
    rows = 0
    for path in shards:
        parquet = open_parquet(path)
        check_schema(path, parquet.schema_arrow)
        rows += parquet.metadata.num_rows
    return rows
