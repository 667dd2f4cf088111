"""Enrich one shard: every row's anchor (the bank's stored embedding, or a fresh one), curated batch by batch.

The output shard is the input shard with five columns appended (see ``CURATED_FIELDS``); ``run_stage`` writes it
atomically with a per-shard manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from cocu.curation.bank.clip import ShardEmbeddings
from cocu.curation.bank.embed import image_digests, set_worker_threads
from cocu.curation.bank.reader import Bank
from cocu.curation.core.placement import wants_gpu
from cocu.curation.core.shards import ShardWriter, decode_text, iter_batches, open_parquet
from cocu.curation.core.stage import ShardTask
from cocu.curation.core.stopping import install_in_worker
from cocu.curation.enrich.curator import EnrichConfig, curate
from cocu.curation.enrich.ranking import Ragged, offsets_from_lengths

CURATED_FIELDS = [
    pa.field("caption_concepts", pa.list_(pa.string())),  # vocabulary concepts named by the caption
    pa.field("cocu_concepts", pa.list_(pa.string())),  # curated concepts, best first
    pa.field("cocu_scores", pa.list_(pa.float32())),  # their scores
    pa.field("cocu_clusters", pa.list_(pa.int32())),  # cluster id per curated concept (empty: clustering off)
    pa.field("cocu_error", pa.string()),  # why a row was not curated; null when it was
]
CURATED_NAMES = [f.name for f in CURATED_FIELDS]


def output_schema(schema: pa.Schema) -> pa.Schema:
    """The input columns (earlier curated columns replaced) followed by the curated ones."""
    for name in CURATED_NAMES:
        if name in schema.names:
            schema = schema.remove(schema.get_field_index(name))
    for f in CURATED_FIELDS:
        schema = schema.append(f)
    return schema


# ---------------------------------------------------------------------------------------------- stage


@dataclass(frozen=True)
class EnrichContext:
    """What one worker needs for every shard it curates: the open bank, the settings, its share of image decoders."""

    bank: Bank
    config: EnrichConfig
    decode_workers: int


def open_enrich_worker(threads: int, bank_path: str, config: EnrichConfig, opened: Bank | None = None) -> EnrichContext:
    """The stage's worker setup: sets this worker's thread share and opens the bank (or takes ``opened``)."""
    install_in_worker()
    decoders = set_worker_threads(
        threads, config.decode_workers, wants_gpu(config.device) and torch.cuda.is_available()
    )
    bank = opened.searching_here() if opened is not None else Bank.open(bank_path, config.nprobe, config.ef_search)
    return EnrichContext(bank, config, decoders)


def enrich_shard(
    task: ShardTask, params: dict[str, Any], progress: Callable[[int], None], context: EnrichContext
) -> dict[str, int]:
    """Curate one shard (run through ``run_stage``; the output appears only when complete)."""
    bank, config = context.bank, context.config
    schema = open_parquet(task.source).schema_arrow
    chunks: list[pa.Array] = []
    digests: list[bytes | None] = []
    for batch in iter_batches(task.source, batch_size=1024, columns=["key", "jpg"]):
        chunks.append(batch.column("key").cast(pa.string()))  # the contract allows large_string keys too
        digests.extend(image_digests(batch.column("jpg")))
    keys = pa.chunked_array(chunks, pa.string())
    bank_ids = bank.lookup(keys.combine_chunks(), digests) if len(keys) else np.zeros(0, np.int64)
    fresh = _FreshEmbeddings(bank, task.source, np.nonzero(bank_ids < 0)[0], config, context.decode_workers)
    counts = dict.fromkeys(
        ["images", "curated", "errors", "empty_archives", "concepts", "archive", "reused", "embedded"], 0
    )
    with ShardWriter(task.target, output_schema(schema)) as writer:
        start = 0
        for batch in iter_batches(task.source, batch_size=config.batch_size, check_keys=False):
            rows = np.arange(start, start + batch.num_rows)
            writer.write(_curate_batch(bank, config, batch, rows, bank_ids[rows], fresh, counts))
            progress(batch.num_rows)
            start += batch.num_rows
    return counts


class _FreshEmbeddings:
    """Embeddings of the rows the bank does not hold, produced chunk by chunk as the batches ask for them."""

    def __init__(self, bank: Bank, source: Path, rows: np.ndarray, config: EnrichConfig, decode_workers: int):
        self._chunks: Iterator[ShardEmbeddings] = iter(())  # no fresh rows: take() is only asked for none
        if len(rows):
            clip = bank.load_model(config.pretrained, config.device)
            self._chunks = clip.iter_shard(source, rows, config.embed_batch_size, decode_workers)
        self._buffer = ShardEmbeddings(np.zeros(0, np.int64), np.zeros((0, bank.embeddings.shape[1]), np.float16), [])

    def take(self, rows: np.ndarray) -> ShardEmbeddings:
        """The embeddings of ``rows`` (ascending, all fresh); chunks arrive in row order."""
        if len(rows) == 0:
            return ShardEmbeddings(rows, self._buffer.vectors[:0], [])
        buffer = self._buffer
        while len(buffer.rows) == 0 or buffer.rows[-1] < rows[-1]:
            chunk = next(self._chunks)
            buffer = ShardEmbeddings(
                np.concatenate([buffer.rows, chunk.rows]),
                np.concatenate([buffer.vectors, chunk.vectors]),
                buffer.errors + chunk.errors,
            )
        at = np.searchsorted(buffer.rows, rows)
        if not np.array_equal(buffer.rows[at], rows):
            raise RuntimeError("fresh embeddings arrived out of row order")
        rest = at[-1] + 1
        self._buffer = ShardEmbeddings(buffer.rows[rest:], buffer.vectors[rest:], buffer.errors[rest:])
        return ShardEmbeddings(rows, buffer.vectors[at], [buffer.errors[i] for i in at])


def _curate_batch(
    bank: Bank,
    config: EnrichConfig,
    batch: pa.RecordBatch,
    rows: np.ndarray,
    bank_ids: np.ndarray,
    fresh: _FreshEmbeddings,
    counts: dict[str, int],
) -> pa.Table:
    n = batch.num_rows
    anchors = np.zeros((n, bank.embeddings.shape[1]), np.float32)
    errors: list[str | None] = [None] * n
    stored = np.nonzero(bank_ids >= 0)[0]
    if len(stored):
        anchors[stored] = bank.embeddings[bank_ids[stored]]
    new = np.nonzero(bank_ids < 0)[0]
    embedded = fresh.take(rows[new])
    anchors[new] = embedded.vectors
    for place, error in zip(new, embedded.errors):
        errors[place] = error
    valid = np.array([e is None for e in errors], dtype=bool)
    fresh_embedded = int(valid[new].sum())
    captions, bad_captions = decode_text(batch.column("caption"))
    captions = [c or "" for c in captions]
    for row in bad_captions:  # kept and flagged like a row with a bad image
        errors[row] = errors[row] or "caption is not valid UTF-8"
        valid[row] = False
    keep = np.nonzero(valid)[0]

    caption_lists = pa.array(bank.vocabulary.match_many(captions), pa.list_(pa.string()))
    own = Ragged(
        offsets_from_lengths(pc.list_value_length(caption_lists).to_numpy(zero_copy_only=False)),
        pc.index_in(caption_lists.flatten(), value_set=bank.concept_names)
        .to_numpy(zero_copy_only=False)
        .astype(np.int64),
    )
    curated = curate(bank, anchors[keep], bank_ids[keep], own.take(keep), rows[keep], config)

    lengths = np.zeros(n, np.int64)
    lengths[keep] = curated.concepts.lengths
    offsets = pa.array(offsets_from_lengths(lengths).astype(np.int32))
    cluster_offsets = offsets if curated.clusters is not None else pa.array(np.zeros(n + 1, np.int32))
    cluster_values = curated.clusters if curated.clusters is not None else np.zeros(0, np.int32)
    table = pa.Table.from_batches([batch]).drop_columns([c for c in CURATED_NAMES if c in batch.schema.names])
    columns = {
        "caption_concepts": caption_lists,
        "cocu_concepts": pa.ListArray.from_arrays(offsets, bank.concept_names.take(pa.array(curated.concepts.values))),
        "cocu_scores": pa.ListArray.from_arrays(offsets, pa.array(curated.scores, pa.float32())),
        "cocu_clusters": pa.ListArray.from_arrays(cluster_offsets, pa.array(cluster_values, pa.int32())),
        "cocu_error": pa.array(errors, pa.string()),
    }
    for f in CURATED_FIELDS:
        table = table.append_column(f, columns[f.name])

    counts["images"] += n
    counts["curated"] += len(keep)
    counts["errors"] += n - len(keep)
    counts["empty_archives"] += int((curated.archive_sizes == 0).sum())
    counts["concepts"] += int(lengths.sum())
    counts["archive"] += int(curated.archive_sizes.sum())
    counts["reused"] += len(stored)
    counts["embedded"] += fresh_embedded
    return table
