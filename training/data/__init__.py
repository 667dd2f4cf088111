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

from cocu.training.data.augment import AUGMENTS, IMAGE_MEAN, IMAGE_STD, ImageAugment
from cocu.training.data.datamodule import CuratedShardsDataModule
from cocu.training.data.planning import (
    ReadUnit,
    ShardInfo,
    assign_units,
    plan_units,
    scan_shards,
)
from cocu.training.data.stream import CuratedShardStream, StreamConfig
from cocu.training.data.text_modes import TEXT_MODES, TextMode, text_mode
from cocu.training.data.tokens import CachedTokenizer, cached_tokenizer

__all__ = [
    "AUGMENTS",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "TEXT_MODES",
    "CachedTokenizer",
    "CuratedShardStream",
    "CuratedShardsDataModule",
    "ImageAugment",
    "ReadUnit",
    "ShardInfo",
    "StreamConfig",
    "TextMode",
    "assign_units",
    "cached_tokenizer",
    "plan_units",
    "scan_shards",
    "text_mode",
]
