"""Enrich: curated concepts for every row of every shard, one shard per unit of work.

Per batch of rows: anchors are the bank's stored embeddings (matched by key) or freshly embedded
with the bank's CLIP; one batched FAISS search gives every anchor's hits (``cocu``: ``L`` others, its
own id dropped; ``release``: ``L`` hits, itself the first), the hybrid archive adds the top-M concepts
of the whole vocabulary (one more FAISS search, over the concept table), ``ranking.rank`` scores all
archives at once, and ``clustering.cluster_archives`` clusters the whole archives before any top-K cut.
The output shard is the input shard with five columns appended (see ``CURATED_FIELDS``),
written atomically, with a per-shard manifest; ``run_stage`` skips shards already done with the same
bank and parameters and runs the rest in parallel.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .bank_embed import image_digests, restored_threads, set_worker_threads
from .bank_layout import check_bank_model, read_bank_manifest
from .bank_reader import Bank
from .clip import ShardEmbeddings
from .clustering import canonical_labels, cluster_archives, row_seeds
from .concepts import TEMPLATES
from .locking import folder_lock
from .placement import ShardSlice, default_workers, wants_gpu, worker_devices
from .ranking import FORMULAS, Formula, Ragged, anchor_first, exclude_self, offsets_from_lengths, rank
from .shards import ShardError, ShardWriter, decode_text, expand_shards, iter_batches, open_parquet
from .stage import ShardTask, StageSummary, run_stage

CURATED_FIELDS = [
    pa.field("caption_concepts", pa.list_(pa.string())),  # vocabulary concepts named by the caption
    pa.field("cocu_concepts", pa.list_(pa.string())),  # curated concepts, best first
    pa.field("cocu_scores", pa.list_(pa.float32())),  # their scores
    pa.field("cocu_clusters", pa.list_(pa.int32())),  # cluster id per curated concept (empty: clustering off)
    pa.field("cocu_error", pa.string()),  # why a row was not curated; null when it was
]
CURATED_NAMES = [f.name for f in CURATED_FIELDS]
ARCHIVES = ("neighbours", "vocabulary", "both")


@dataclass(frozen=True)
class EnrichConfig:
    """How to curate. ``neighbors``..``ef_search`` decide the output; the rest only how fast it is made."""

    neighbors: int = 8
    top_k: int = 0  # concepts stored per image; 0: the whole archive (cluster sampling draws from it)
    clusters: bool = True
    formula: str = "cocu"  # a name in ranking.FORMULAS: release (the authors') or cocu
    archive: str = "neighbours"  # neighbours (CoCu's expansion), vocabulary (top-M of the vocabulary) or both
    vocabulary_top: int = 16  # M: concepts the vocabulary search adds
    seed: int = 0
    nprobe: int | None = None
    ef_search: int | None = None
    batch_size: int = 1024
    model: str | None = None  # when given, must be the bank's model
    pretrained: str | None = None  # when given, must be the bank's weights (a moved checkpoint file is fine)
    embed_batch_size: int = 256
    decode_workers: int | None = None
    device: str | None = None

    def output_params(self, bank_id: str) -> dict[str, Any]:
        return {
            "bank": bank_id,
            "neighbors": self.neighbors,
            "top_k": self.top_k,
            "clusters": self.clusters,
            "seed": self.seed,
            "nprobe": self.nprobe,
            "ef_search": self.ef_search,
            "formula": self.formula,
            "archive": self.archive,
            "vocabulary_top": self.vocabulary_top if self.archive != "neighbours" else None,
        }

    def check(self) -> None:
        """Refuse settings that cannot run, in one line."""
        if self.neighbors < 1 or self.top_k < 0 or self.vocabulary_top < 1:
            raise ValueError(
                "--neighbors and --vocabulary-top must be at least 1, --top-k at least 0 (0: the whole archive)"
            )
        if self.formula not in FORMULAS:
            raise ValueError(f"--formula {self.formula!r}: choose one of {', '.join(FORMULAS)}")
        if self.archive not in ARCHIVES:
            raise ValueError(f"--archive {self.archive!r}: choose one of {', '.join(ARCHIVES)}")


@dataclass(frozen=True)
class CuratedBatch:
    """Curated concepts of a batch of anchors: ids best first, scores, cluster ids (or None), archive sizes."""

    concepts: Ragged
    scores: np.ndarray
    clusters: np.ndarray | None
    archive_sizes: np.ndarray


def curate(
    bank: Bank,
    anchors: np.ndarray,
    self_ids: np.ndarray,
    own: Ragged,
    rows: np.ndarray,
    config: EnrichConfig,
    formula: Formula | None = None,
) -> CuratedBatch:
    """The hot path for a batch: one search, one vectorized ranking, one batched clustering.

    anchors: (B, D) float32; self_ids: each anchor's own FAISS id or -1; own: caption concept ids;
    rows: shard row numbers (they seed the clustering, so results do not depend on batching);
    formula: overrides ``config.formula`` (the benchmark measures one departure at a time).
    """
    if len(anchors) == 0:
        empty = Ragged(np.zeros(1, np.int64), np.zeros(0, np.int32))
        return CuratedBatch(
            empty, np.zeros(0, np.float32), np.zeros(0, np.int32) if config.clusters else None, np.zeros(0, np.int64)
        )
    formula = formula or FORMULAS[config.formula]
    extra = own if formula.own_concepts else Ragged(np.zeros(len(anchors) + 1, np.int64), np.zeros(0, np.int64))
    if config.archive != "neighbours":
        m = min(config.vocabulary_top, len(bank.text))
        _, top = bank.concept_index.search(np.ascontiguousarray(anchors, dtype=np.float32), m)
        extra = extra.concat(Ragged(np.arange(len(anchors) + 1, dtype=np.int64) * m, top.ravel()))
    if config.archive == "vocabulary":
        neighbours = np.full((len(anchors), 0), -1, np.int64)
    elif formula.exclude_anchor:
        neighbours = exclude_self(bank.searcher.search(anchors, config.neighbors + 1)[1], self_ids)
    else:
        neighbours = anchor_first(bank.searcher.search(anchors, config.neighbors)[1], self_ids)
    counted_once = self_ids if formula.anchor_once and not formula.exclude_anchor else None
    ranking = rank(
        anchors,
        neighbours,
        extra,
        bank.image_concepts,
        bank.image_sims,
        bank.text,
        config.top_k,
        self_ids=counted_once,
        floor=bank.local_floor if formula.floor_local else None,
    )
    clusters = None
    if config.clusters:
        labels = cluster_archives(ranking.archive, bank.gram, row_seeds(config.seed, rows))
        clusters = canonical_labels(ranking.best.owners(), labels[ranking.best.values])
    return CuratedBatch(ranking.concepts(), ranking.scores, clusters, ranking.archive.lengths)


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


def open_enrich_worker(bank_path: str, config: EnrichConfig, workers: int, opened: Bank | None = None) -> EnrichContext:
    """The stage's worker initializer: sets this process's thread share and opens the bank (or takes ``opened``)."""
    decoders = set_worker_threads(workers, config.decode_workers)
    return EnrichContext(opened or Bank.open(bank_path, config.nprobe, config.ef_search), config, decoders)


def enrich(
    bank: str | os.PathLike,
    shards: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: EnrichConfig = EnrichConfig(),
    workers: int | None = None,
    progress: bool = True,
    executor: Any = None,
    part: ShardSlice = ShardSlice(),
) -> StageSummary:
    """Curate every shard into ``out/<shard name>`` (skipping shards already done with this bank and parameters).

    ``workers`` None is one per visible GPU (one without), each pinned to its own; ``executor`` runs the
    shards elsewhere (``RayExecutor``); ``part`` is an array task's slice of the shards.
    """
    bank_path = Path(bank)
    manifest = read_bank_manifest(bank_path)
    check_bank_model(bank_path, manifest, config.model, config.pretrained)
    config.check()
    sources = expand_shards(shards)
    tasks = [ShardTask(src, Path(out) / src.name) for src in sources]
    _check_distinct_targets(tasks)
    workers = default_workers(config.device) if workers is None else workers
    if executor is not None and not wants_gpu(config.device):
        executor = replace(executor, num_gpus=0.0)
    opened = Bank.open(bank_path, config.nprobe, config.ef_search)  # a damaged bank: one error, not one per shard
    in_process = workers <= 1 and executor is None  # worker processes open their own; this one reuses it
    with folder_lock(out, slot=None if part.whole else part.describe()), restored_threads():
        return run_stage(
            "enrich",
            part.take(tasks),
            enrich_shard,
            config.output_params(manifest["bank_id"]),
            workers=workers,
            progress=progress,
            initializer=open_enrich_worker,
            initargs=(str(bank_path), config, workers, opened if in_process else None),
            devices=worker_devices(workers, config.device),
            executor=executor,
        )


def template_note(manifest: dict[str, Any], formula: str) -> str | None:
    """One line when ``--formula release`` runs on a bank whose concept prompts are not the release's."""
    template = (manifest.get("prompt_template"), manifest.get("prompt_articles", True))
    if formula != "release" or template == TEMPLATES["release"]:
        return None
    articles = " with articles fixed" if template[1] else ""
    return (
        f"note: the bank's concept prompts are {template[0]!r}{articles}, not the release's "
        f"{TEMPLATES['release'][0]!r}; build the bank with --template release to rank exactly as the release"
    )


def _check_distinct_targets(tasks: list[ShardTask]) -> None:
    seen: dict[Path, Path] = {}
    for task in tasks:
        for target in (task.target, task.manifest):
            if target in seen:
                raise ShardError(
                    task.source,
                    f"writes the same output as {seen[target]} ({target.name}); enrich them into separate --out folders",
                )
            seen[target] = task.source


def enrich_shard(task: ShardTask, params: dict[str, Any], progress, context: EnrichContext) -> dict[str, int]:
    """Curate one shard (run through ``run_stage``; the output appears only when complete)."""
    bank, config = context.bank, context.config
    schema = open_parquet(task.source).schema_arrow
    keys, digests = [], []
    for batch in iter_batches(task.source, batch_size=1024, columns=["key", "jpg"]):
        keys.append(batch.column("key"))
        digests.extend(image_digests(batch.column("jpg")))
    keys = pa.chunked_array(keys, pa.string())
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
        self._chunks: Iterator[ShardEmbeddings] | None = None
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
    for place in bad_captions:  # kept and flagged like a row with a bad image
        errors[place] = errors[place] or "caption is not valid UTF-8"
        valid[place] = False
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


def summary_line(summary: StageSummary) -> str:
    """The closing line of an enrich run: images, concepts per image, empty archives, errors."""
    c = summary.counts
    curated = max(c.get("curated", 0), 1)
    return (
        f"images {c.get('images', 0)} (curated {c.get('curated', 0)}, errors {c.get('errors', 0)}, "
        f"empty archives {c.get('empty_archives', 0)}); concepts/image {c.get('concepts', 0) / curated:.2f}, "
        f"archive/image {c.get('archive', 0) / curated:.2f}; embeddings reused {c.get('reused', 0)}, "
        f"embedded {c.get('embedded', 0)}"
    )
