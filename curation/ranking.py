"""Vision-driven expansion and text-to-vision-guided ranking: the released CoCu formula, vectorized over a batch.

For anchor ``a`` (normalized image embedding ``v_a``) with retrieved neighbours ``N`` (the anchor
itself excluded), the archive is ``A = own caption concepts ∪ concepts of the neighbours' captions``.
For each ``c`` in ``A``, ``R_c`` is the neighbours whose caption concepts contain ``c`` (set
membership, never substrings) plus the anchor, and::

    g(c) = t_c·v_a        l(c) = g(c) / mean_{v∈R_c} t_c·v        M = max_{c∈A, v∈R_c} t_c·v
    score(c) = g(c) / M + l(c)

Safe divisions (the release divides by zero when every similarity is ≤ 0): when ``M ≤ EPS`` the
global term is left unscaled (``g(c) / 1``); when ``mean ≤ EPS`` the local term is 0 (no reliable
local evidence). Ties are broken by concept id (the vocabulary is sorted, so alphabetically).

Everything is flat arrays: the (anchor, concept) pairs of a batch are found with one ``np.unique``,
per-pair sums/counts/maxima with ``bincount``/``maximum.at``, and ``t_c·v_a`` with one row-wise
product, so there is no per-image Python loop. The neighbours' terms ``t_c·v`` for ``c`` in a
neighbour's own caption concepts do not depend on the anchor: the bank stores them once per image.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EPS = 1e-6


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


@dataclass(frozen=True)
class Ragged:
    """Variable-length rows stored flat (CSR): row ``i`` is ``values[offsets[i]:offsets[i + 1]]``."""

    offsets: np.ndarray
    values: np.ndarray

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence], dtype=np.int64) -> "Ragged":
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        flat = np.fromiter((v for r in rows for v in r), dtype=dtype, count=int(lengths.sum()))
        return cls(offsets_from_lengths(lengths), flat)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def owners(self) -> np.ndarray:
        """The row of every flat value."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def positions(self) -> np.ndarray:
        """The place of every flat value inside its row."""
        return np.arange(len(self.values), dtype=np.int64) - np.repeat(self.offsets[:-1], self.lengths)

    def take_index(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Offsets and flat gather index of the selected rows (so aligned arrays can be gathered alike)."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        offsets = offsets_from_lengths(lengths)
        index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return offsets, index

    def take(self, rows: np.ndarray) -> "Ragged":
        offsets, index = self.take_index(rows)
        return Ragged(offsets, self.values[index])

    def tolist(self) -> list[list]:
        return [self.values[a:b].tolist() for a, b in zip(self.offsets[:-1], self.offsets[1:])]


@dataclass(frozen=True)
class Ranking:
    """The ranked archives of a batch.

    ``archive`` holds each anchor's archive concept ids (ascending); ``best`` holds, per anchor,
    flat positions into ``archive.values`` of its top-K concepts, best first; ``scores`` is aligned
    with ``best.values``.
    """

    archive: Ragged
    best: Ragged
    scores: np.ndarray

    def concepts(self) -> Ragged:
        return Ragged(self.best.offsets, self.archive.values[self.best.values])


def exclude_self(ids: np.ndarray, self_ids: np.ndarray) -> np.ndarray:
    """Drop each anchor's own index id from its ``L + 1`` results, or the last result when it is absent."""
    ids = np.asarray(ids)
    own = (ids == np.where(self_ids >= 0, self_ids, -2)[:, None]) & (ids >= 0)
    drop = own.copy()
    drop[~own.any(axis=1), -1] = True
    return ids[~drop].reshape(len(ids), ids.shape[1] - 1)


def rank(anchors: np.ndarray, neighbours: np.ndarray, own: Ragged, bank_concepts: Ragged, bank_sims: np.ndarray,
         text: np.ndarray, top_k: int) -> Ranking:
    """Rank every anchor's archive.

    anchors: (B, D) normalized image embeddings; neighbours: (B, L) index ids, -1 for none;
    own: each anchor's caption concept ids; bank_concepts/bank_sims: every index image's caption
    concept ids and ``t_c·v`` for them (float64); text: (V, D) normalized concept text embeddings.
    Similarities are accumulated in float64, so scores do not lose precision where means are small.
    """
    batch, vocab = len(anchors), len(text)
    nb_owner, nb_slot = np.nonzero(neighbours >= 0)
    pair_offsets, pair_index = bank_concepts.take_index(neighbours[nb_owner, nb_slot])
    pair_owner = np.repeat(nb_owner.astype(np.int64), np.diff(pair_offsets))
    pair_concept = bank_concepts.values[pair_index].astype(np.int64)
    pair_sim = bank_sims[pair_index].astype(np.float64)

    keys = np.concatenate([own.owners() * vocab + own.values.astype(np.int64), pair_owner * vocab + pair_concept])
    entries, inverse = np.unique(keys, return_inverse=True)
    owner, concept = entries // vocab, entries % vocab
    n = len(entries)
    pair_entry = inverse[len(own.values):]
    count = np.bincount(pair_entry, minlength=n)
    total = np.bincount(pair_entry, weights=pair_sim, minlength=n)
    top = np.full(n, -np.inf)
    np.maximum.at(top, pair_entry, pair_sim)

    g = rowwise_dots(text, concept, anchors, owner)
    mean = (g + total) / (count + 1)
    local = np.divide(g, mean, out=np.zeros(n), where=mean > EPS)
    peak = np.full(batch, -np.inf)
    np.maximum.at(peak, owner, np.maximum(g, top))
    scale = np.where(peak > EPS, peak, 1.0)
    score = g / scale[owner] + local

    archive_offsets = offsets_from_lengths(np.bincount(owner, minlength=batch))
    order = np.lexsort((concept, -score, owner))
    keep = order[(np.arange(n) - archive_offsets[owner[order]]) < top_k]
    best_offsets = offsets_from_lengths(np.minimum(np.diff(archive_offsets), top_k))
    return Ranking(Ragged(archive_offsets, concept.astype(np.int32)), Ragged(best_offsets, keep), score[keep].astype(np.float32))


def rowwise_dots(left: np.ndarray, left_rows: np.ndarray, right: np.ndarray, right_rows: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """``left[left_rows[i]] · right[right_rows[i]]`` for every i, accumulated in float64.

    Float64 accumulation of float16-valued inputs is exact to rounding, so the same pair gives the
    same number wherever it is computed (the bank's stored ``t_c·v`` and the anchor's ``g(c)``). The
    gathers go a cache-sized chunk at a time: they, not the arithmetic, are the cost.
    """
    out = np.empty(len(left_rows), np.float64)
    for start in range(0, len(out), chunk):
        rows = slice(start, start + chunk)
        out[rows] = np.einsum("ij,ij->i", np.asarray(np.take(left, left_rows[rows], axis=0), dtype=np.float32),
                              np.asarray(np.take(right, right_rows[rows], axis=0), dtype=np.float32), dtype=np.float64)
    return out


def pair_similarities(concepts: Ragged, embeddings: np.ndarray, text: np.ndarray) -> np.ndarray:
    """``t_c·v`` for every (image, own caption concept) pair: what the bank stores for the neighbour terms."""
    return rowwise_dots(text, concepts.values, embeddings, concepts.owners())
