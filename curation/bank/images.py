"""Images out of shards: the one decoder every stage shares, and a shard's images decoded in DataLoader workers.

``decode_image`` decodes fully, so a truncated file fails where it is read and says why in one line; the
training stream, the teacher and the bank all call it, so an image is good or bad the same way everywhere.
``ShardImages`` is the embed stage's dataset: worker ``w`` of ``W`` takes every W-th chunk of rows.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from cocu.curation.core.shards import iter_batches


@dataclass
class DecodedChunk:
    rows: np.ndarray  # shard row numbers of this chunk
    ok: np.ndarray  # which of them decoded
    pixels: torch.Tensor  # (ok.sum(), 3, H, W)
    errors: list[str]  # one per failed row, in order

    def pin_memory(self) -> DecodedChunk:  # called by the DataLoader's pinning thread on CUDA
        return DecodedChunk(self.rows, self.ok, self.pixels.pin_memory(), self.errors)


def decode_image(data: bytes | None) -> Image.Image:
    """Decode fully (truncated files fail here, not later); the error says what is wrong in one line."""
    if data is None:
        raise ValueError("no image (null jpg)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = re.sub(r" <[^<>]* at 0x[0-9a-fA-F]+>", "", reason)  # Pillow names the buffer's address: not repeatable
        raise ValueError(f"undecodable image ({reason})") from None


class ShardImages(IterableDataset):
    """A shard's images, decoded and preprocessed a chunk at a time; worker ``w`` of ``W`` takes every W-th chunk."""

    def __init__(self, path: str, transform: Callable, batch_size: int, rows: np.ndarray | None = None):
        self.path, self.transform, self.batch_size = path, transform, batch_size
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    def __iter__(self) -> Iterator[DecodedChunk]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        start = 0
        for number, batch in enumerate(iter_batches(self.path, self.batch_size, columns=["jpg"], check_keys=False)):
            stop = start + batch.num_rows
            if number % workers == worker:
                if self.rows is None:
                    local = np.arange(batch.num_rows)
                else:
                    local = self.rows[(self.rows >= start) & (self.rows < stop)] - start
                # an empty chunk keeps the DataLoader's round-robin over workers in row order
                yield self._decode(batch.column("jpg"), local, start)
            start = stop

    def _decode(self, column, local: np.ndarray, start: int) -> DecodedChunk:
        tensors, errors, ok = [], [], np.zeros(len(local), dtype=bool)
        for i, row in enumerate(local):
            try:
                tensors.append(self.transform(decode_image(column[int(row)].as_py())))
                ok[i] = True
            except ValueError as err:
                errors.append(str(err))
        pixels = torch.stack(tensors) if tensors else torch.zeros(0)
        return DecodedChunk(local + start, ok, pixels, errors)
