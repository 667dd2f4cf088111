"""Vision-driven expansion and text-to-vision-guided ranking, vectorized over a batch.

For anchor ``a`` (normalized image embedding ``v_a``) with retrieved hits ``N``, the archive is ``A`` =
the concepts of the hits' captions plus any ``extra`` concepts (the anchor's own caption concepts, the
hybrid archive's vocabulary concepts). For each ``c`` in ``A``, ``R_c`` is the hits whose caption
concepts contain ``c`` (set membership, never substrings) plus the anchor, and::

    g(c) = t_c·v_a        l(c) = g(c) / mean_{v∈R_c} t_c·v        M = max_{c∈A, v∈R_c} t_c·v
    score(c) = g(c) / M + l(c)

That is the authors' formula (``rewrite/curation.py``). ``Formula`` names the choices around it on
which cocu departs from the release (docs/curation.md lists them with their measured effects):
which hits are searched, whether the anchor counts twice in ``R_c`` when it is one of its own hits,
whether its own caption concepts join the archive, and how ``l(c)`` treats a mean near or below zero.
Both variants share the crash-class fixes of the release: set membership instead of substrings;
``M <= 0`` leaves the global term unscaled (the release divides by zero); a zero mean gives ``l(c) = 0``
(the release gives inf or NaN); ties are broken by concept id (alphabetical), not by hash order.

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
FLOOR_QUANTILE = 0.05


@dataclass(frozen=True)
class Formula:
    """How an archive is searched and scored; every field where ``cocu`` differs from ``release`` is a departure.

    exclude_anchor: search ``L + 1`` and drop the anchor, so the archive comes from ``L`` other images
        (release: ``L`` hits, the anchor the first of them when it is in the bank).
    anchor_once: the anchor counts once in ``R_c`` even when it is one of its own hits (release: twice).
    own_concepts: the anchor's caption concepts join the archive even when it is not a hit (release: only
        the hits' captions, so an image outside the bank loses its own caption's concepts).
    floor_local: ``l(c)`` divides by ``max(mean, floor)``, ``floor`` the bank's ``local_floor`` (release: by the
        raw mean, which explodes near zero and flips sign below it).
    """

    exclude_anchor: bool = True
    anchor_once: bool = True
    own_concepts: bool = True
    floor_local: bool = True


FORMULAS = {
    "release": Formula(exclude_anchor=False, anchor_once=False, own_concepts=False, floor_local=False),
    "cocu": Formula(),
}


def local_floor(named_sims: np.ndarray, quantile: float = FLOOR_QUANTILE) -> float:
    """The least mean ``t_c·v`` that ``l(c)`` divides by: the 5th percentile of the bank's named pairs.

    A reference mean below what 95 % of (image, concept its caption names) pairs reach is no evidence
    that the references show ``c``; dividing by it would turn that absence into a huge (or, below zero,
    sign-flipped) score. An untrained CLIP has no positive percentile: then the mean absolute named-pair
    similarity sets the scale.
    """
    sims = np.asarray(named_sims, np.float64)
    if len(sims) == 0:
        return 1.0
    floor = float(np.quantile(sims, quantile))
    return floor if floor > EPS else max(float(np.abs(sims).mean()), EPS)


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
    def from_lists(cls, rows: Sequence[Sequence], dtype=np.int64) -> Ragged:
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

    def take(self, rows: np.ndarray) -> Ragged:
        offsets, index = self.take_index(rows)
        return Ragged(offsets, self.values[index])

    def concat(self, other: Ragged) -> Ragged:
        """Row ``i`` of this followed by row ``i`` of ``other`` (both with the same number of rows)."""
        order = np.argsort(np.concatenate([self.owners(), other.owners()]), kind="stable")
        values = np.concatenate([self.values, other.values.astype(self.values.dtype)])[order]
        return Ragged(offsets_from_lengths(self.lengths + other.lengths), values)

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


def anchor_first(ids: np.ndarray, self_ids: np.ndarray) -> np.ndarray:
    """The release's hits: an ``L`` search that includes the anchor, which is its own first hit.

    An exact index returns the anchor first anyway; an approximate one may miss it, and then the anchor
    takes the first place and the last hit goes. Anchors outside the bank (-1) keep their ``L`` hits.
    """
    ids = np.asarray(ids)
    inside = self_ids >= 0
    own = (ids == np.where(inside, self_ids, -2)[:, None]) & (ids >= 0)
    drop = own.copy()
    drop[inside & ~own.any(axis=1), -1] = True
    rest = np.where(drop, np.iinfo(np.int64).max, np.arange(ids.shape[1])[None, :]).argsort(axis=1, kind="stable")
    others = np.take_along_axis(ids, rest, axis=1)[:, : ids.shape[1] - 1]
    return np.where(inside[:, None], np.concatenate([self_ids[:, None], others], axis=1), ids)


def rank(
    anchors: np.ndarray,
    neighbours: np.ndarray,
    extra: Ragged,
    bank_concepts: Ragged,
    bank_sims: np.ndarray,
    text: np.ndarray,
    top_k: int | None,
    self_ids: np.ndarray | None = None,
    floor: float | None = None,
) -> Ranking:
    """Rank every anchor's archive.

    anchors: (B, D) normalized image embeddings; neighbours: (B, L) index ids, -1 for none;
    extra: concept ids that join each archive with no reference image (own caption concepts, hybrid
    archive); bank_concepts/bank_sims: every index image's caption concept ids and ``t_c·v`` for them
    (float64); text: (V, D) normalized concept text embeddings; top_k: concepts kept per anchor (None
    or 0: the whole archive); self_ids: each anchor's own id, given when it must count once in ``R_c``
    although it is one of its hits; floor: ``l(c)``'s least denominator (None: the release's raw mean).
    Similarities are accumulated in float64, so scores do not lose precision where means are small.
    """
    batch, vocab = len(anchors), len(text)
    nb_owner, nb_slot = np.nonzero(neighbours >= 0)
    hit = neighbours[nb_owner, nb_slot]
    pair_offsets, pair_index = bank_concepts.take_index(hit)
    pair_owner = np.repeat(nb_owner.astype(np.int64), np.diff(pair_offsets))
    pair_concept = bank_concepts.values[pair_index].astype(np.int64)
    pair_sim = bank_sims[pair_index].astype(np.float64)
    reference = np.ones(len(pair_index), bool)  # pairs that enter R_c (the anchor's own hit may only seed the archive)
    if self_ids is not None:
        reference = np.repeat(hit != np.asarray(self_ids)[nb_owner], np.diff(pair_offsets))

    keys = np.concatenate([extra.owners() * vocab + extra.values.astype(np.int64), pair_owner * vocab + pair_concept])
    entries, inverse = np.unique(keys, return_inverse=True)
    owner, concept = entries // vocab, entries % vocab
    n = len(entries)
    pair_entry = inverse[len(extra.values) :][reference]
    pair_sim = pair_sim[reference]
    count = np.bincount(pair_entry, minlength=n)
    total = np.bincount(pair_entry, weights=pair_sim, minlength=n)
    top = np.full(n, -np.inf)
    np.maximum.at(top, pair_entry, pair_sim)

    g = rowwise_dots(text, concept, anchors, owner)
    mean = (g + total) / (count + 1)
    if floor is None:
        local = np.divide(g, mean, out=np.zeros(n), where=mean != 0)
    else:
        local = g / np.maximum(mean, floor)
    peak = np.zeros(batch)  # the release's running maximum starts at 0
    np.maximum.at(peak, owner, np.maximum(g, top))
    scale = np.where(peak > 0, peak, 1.0)
    score = g / scale[owner] + local

    archive_offsets = offsets_from_lengths(np.bincount(owner, minlength=batch))
    order = np.lexsort((concept, -score, owner))
    cut = n if not top_k else top_k
    keep = order[(np.arange(n) - archive_offsets[owner[order]]) < cut]
    best_offsets = offsets_from_lengths(np.minimum(np.diff(archive_offsets), cut))
    return Ranking(
        Ragged(archive_offsets, concept.astype(np.int32)), Ragged(best_offsets, keep), score[keep].astype(np.float32)
    )


def rowwise_dots(
    left: np.ndarray, left_rows: np.ndarray, right: np.ndarray, right_rows: np.ndarray, chunk: int = 2048
) -> np.ndarray:
    """``left[left_rows[i]] · right[right_rows[i]]`` for every i, accumulated in float64.

    Float64 accumulation of float16-valued inputs is exact to rounding, so the same pair gives the
    same number wherever it is computed (the bank's stored ``t_c·v`` and the anchor's ``g(c)``). The
    gathers go a cache-sized chunk at a time: they, not the arithmetic, are the cost.
    """
    out = np.empty(len(left_rows), np.float64)
    for start in range(0, len(out), chunk):
        rows = slice(start, start + chunk)
        out[rows] = np.einsum(
            "ij,ij->i",
            np.asarray(np.take(left, left_rows[rows], axis=0), dtype=np.float32),
            np.asarray(np.take(right, right_rows[rows], axis=0), dtype=np.float32),
            dtype=np.float64,
        )
    return out


def pair_similarities(concepts: Ragged, embeddings: np.ndarray, text: np.ndarray) -> np.ndarray:
    """``t_c·v`` for every (image, own caption concept) pair: what the bank stores for the neighbour terms."""
    return rowwise_dots(text, concepts.values, embeddings, concepts.owners())
