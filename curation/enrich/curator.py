"""Curation of one batch of anchor images: its concept archive, ranked and clustered, as configured.

Per batch: one batched FAISS search gives every anchor's hits (``cocu``: ``L`` others, its own id dropped;
``release``: ``L`` hits, itself the first), the hybrid archive adds the top-M concepts of the whole vocabulary (one
more FAISS search, over the concept table), ``ranking.rank`` scores all archives at once, and
``clustering.cluster_archives`` clusters the whole archives before any top-K cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cocu.curation.bank.reader import Bank
from cocu.curation.core.configs import option
from cocu.curation.enrich.clustering import canonical_labels, cluster_archives, row_seeds
from cocu.curation.enrich.ranking import FORMULAS, Formula, Ragged, anchor_first, exclude_self, rank

ARCHIVES = ("neighbours", "vocabulary", "both")


@dataclass(frozen=True)
class EnrichConfig:
    """How to curate. ``neighbors``..``ef_search`` decide the output; the rest only how fast it is made."""

    neighbors: int = option(8, "Retrieved images per anchor (L).", flags=("--neighbors", "-L"), minimum=1)
    top_k: int = option(
        0,
        "Curated concepts kept per image (K); 0 keeps the whole archive, which cluster-guided sampling draws from.",
        minimum=0,
    )
    clusters: bool = option(True, "Store k-means cluster ids for cluster-guided sampling.")
    formula: str = option(
        "cocu",
        "Ranking: 'release' (the authors' exactly, crash bugs fixed) or 'cocu' (cocu's departures, docs/curation.md).",
        choices=FORMULAS,
    )
    archive: str = option(
        "neighbours",
        "Archive: 'neighbours' (the L images' captions, as the paper), 'vocabulary' (top-M of the whole vocabulary "
        "by CLIP) or 'both'.",
        choices=ARCHIVES,
    )
    vocabulary_top: int = option(16, "M: concepts the vocabulary search adds (--archive vocabulary|both).", minimum=1)
    seed: int = option(0, "Seed of the clustering.")
    nprobe: int | None = option(None, "IVF lists to probe (default: the bank's).")
    ef_search: int | None = option(None, "HNSW efSearch (default: the bank's).")
    batch_size: int = option(1024, "Images per search/ranking batch.", minimum=1)
    model: str | None = option(None, "Refuse to run unless the bank was built with this model.")
    pretrained: str | None = option(None, "The bank's weights (a tag, or the checkpoint file if it moved).")
    embed_batch_size: int = option(256, "Images per model batch (images not in the bank).", minimum=1)
    decode_workers: int | None = option(None, "Image decoding processes per worker (default: spare cores).", minimum=0)
    device: str | None = option(None, "cuda or cpu for embedding images not in the bank.")

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
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"--seed {self.seed}: must be from 0 to 2**64-1 (a clustering seed)")
        for name, value in (("--nprobe", self.nprobe), ("--ef-search", self.ef_search)):
            if value is not None and value < 1:
                raise ValueError(f"{name} {value}: must be at least 1 (or left out for the bank's default)")
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
