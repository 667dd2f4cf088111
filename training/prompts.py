"""Training text for each sample: the caption plus K prompts, each a CLIP template filled with a concept.

The text modes (``data.text_modes``, one object each) differ only in *which* concepts fill the prompts:

- ``caption``: the GroupViT baseline. Up to K distinct concepts of the caption itself, drawn at random
  each time the sample is read (GroupViT draws caption words without replacement).
- ``cocu-top``: the released CoCu default. The first K curated concepts, best first; deterministic.
- ``cocu-cluster``: the paper's cluster-guided sampling, re-drawn every time (see ``draw_cluster_guided``).
- ``oracle``: up to K of the synthetic world's truly present concepts, drawn at random.
- ``oracle-all``: every true concept above an area threshold, K the most of any image; ``oracle-top3``: the 3
  largest true concepts.

Slots left when fewer than K concepts exist are padded with the caption (``oracle-all`` first repeats the row's
own concepts, ``cycle_concepts``), and each slot's concept gets a template drawn uniformly from the 80 CLIP
ImageNet templates, as in GroupViT and the CoCu release. Every function here is pure given its
``numpy.random.Generator`` and works on a whole batch at once with vectorized numpy, because it runs in
data-loader workers for every sample of every epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

TEMPLATES: tuple[Callable[[str], str], ...] = tuple(OPENAI_IMAGENET_TEMPLATES)


def _flatten(rows: Sequence[Sequence]) -> tuple[np.ndarray, list]:
    """Row index of every item and the items themselves, for ragged per-batch lists."""
    lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    flat = [item for row in rows for item in row]
    return np.repeat(np.arange(len(rows)), lengths), flat


def _first_k_per_row(row_of: np.ndarray, order: np.ndarray, k: int) -> np.ndarray:
    """Of the flat items sorted by ``order`` (grouped by row), the positions of each row's first ``k``."""
    rows_sorted = row_of[order]
    starts = np.searchsorted(rows_sorted, rows_sorted, side="left")
    rank = np.arange(len(order)) - starts
    return order[rank < k]


def _gather(num_rows: int, row_of: np.ndarray, flat: list, picked: np.ndarray) -> list[list[str]]:
    out: list[list[str]] = [[] for _ in range(num_rows)]
    for index in picked.tolist():
        out[row_of[index]].append(flat[index])
    return out


def draw_uniform(candidates: Sequence[Sequence[str]], k: int, rng: np.random.Generator) -> list[list[str]]:
    """``min(k, n)`` distinct concepts per row, uniformly without replacement, in random order."""
    distinct = [list(dict.fromkeys(c for c in row if c)) for row in candidates]
    row_of, flat = _flatten(distinct)
    order = np.lexsort((rng.random(len(flat)), row_of))
    return _gather(len(distinct), row_of, flat, _first_k_per_row(row_of, order, k))


def take_top(concepts: Sequence[Sequence[str]], k: int) -> list[list[str]]:
    """The first ``k`` concepts of each row (curated lists are sorted best first)."""
    return [list(row[:k]) for row in concepts]


def cycle_concepts(chosen: Sequence[Sequence[str]], k: int) -> list[list[str]]:
    """Each row's concepts repeated in order up to ``k`` slots (``build_texts`` gives every slot its own template draw);
    an empty row stays empty."""
    return [[row[i % len(row)] for i in range(max(k, len(row)))] if row else [] for row in chosen]


def draw_cluster_guided(
    concepts: Sequence[Sequence[str]],
    scores: Sequence[Sequence[float]],
    clusters: Sequence[Sequence[int]],
    k: int,
    rng: np.random.Generator,
) -> list[list[str]]:
    """Cluster-guided sampling (CoCu step 4), done as the paper describes and the release meant to.

    Per row: cluster weights are softmax(mean score of each cluster); ``k`` clusters are drawn from them
    **without replacement**, then one concept inside each drawn cluster with softmax(score) weights.
    Without replacement because clusters are disjoint: every drawn cluster then gives a different concept,
    which is the point of clustering (diverse concepts across the archive), whereas the release's
    ``random.choices`` could spend two of the three prompts on the same cluster and even the same concept.
    A row whose ``clusters`` list is empty (clustering was off) treats every concept as its own cluster,
    which reduces to drawing concepts by softmax(score) without replacement. When a row has fewer clusters
    than ``k``, the remaining slots take further concepts by softmax(score) without replacement, so the
    caption pads only when the row has fewer than ``k`` concepts in all.

    Both draws use the Gumbel trick (argmax / top-k of ``logit + Gumbel noise`` samples softmax weights,
    sequentially without replacement), so a whole batch takes a handful of numpy sorts. The order of the
    result is the draw order: the first concept comes from a cluster drawn with exactly softmax(mean score).
    """
    num_rows = len(concepts)
    for row, (names, values, ids) in enumerate(zip(concepts, scores, clusters)):
        if len(values) != len(names) or (len(ids) and len(ids) != len(names)):
            raise ValueError(f"row {row}: {len(names)} concepts, {len(values)} scores, {len(ids)} cluster ids")
    row_of, flat = _flatten(concepts)
    n = len(flat)
    if n == 0:
        return [[] for _ in range(num_rows)]
    score = np.fromiter((s for row in scores for s in row), dtype=np.float64, count=n)
    # cluster ids; a row without ids gets one private cluster per concept (negative ids cannot collide)
    cluster = np.empty(n, dtype=np.int64)
    start = 0
    for row_ids, names in zip(clusters, concepts):
        stop = start + len(names)
        cluster[start:stop] = row_ids if len(row_ids) else -1 - np.arange(len(names))
        start = stop
    _, group = np.unique(np.stack([row_of, cluster]), axis=1, return_inverse=True)
    group = group.reshape(-1)
    num_groups = int(group.max()) + 1
    mean_score = np.bincount(group, weights=score, minlength=num_groups) / np.bincount(group, minlength=num_groups)
    group_key = mean_score + rng.gumbel(size=num_groups)  # clusters ~ softmax(mean score)
    inner_key = score + rng.gumbel(size=n)  # concept inside its cluster ~ softmax(score)
    by_group = np.lexsort((-inner_key, group))
    first_of_group = np.ones(n, dtype=bool)
    first_of_group[1:] = group[by_group][1:] != group[by_group][:-1]
    winner = np.zeros(n, dtype=bool)
    winner[by_group[first_of_group]] = True
    # cluster winners first (in cluster-draw order), then the other concepts by a fresh softmax(score) draw
    tier = (~winner).astype(np.int64)
    key = np.where(winner, group_key[group], score + rng.gumbel(size=n))
    order = np.lexsort((-key, tier, row_of))
    return _gather(num_rows, row_of, flat, _first_k_per_row(row_of, order, k))


def build_texts(
    captions: Sequence[str],
    chosen: Sequence[Sequence[str]],
    k: int,
    rng: np.random.Generator,
    templates: Sequence[Callable[[str], str]] = TEMPLATES,
) -> list[list[str]]:
    """``[caption, prompt_1, ..., prompt_k]`` per row: a random template per concept, padded with the caption."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    drawn = rng.integers(len(templates), size=sum(min(len(c), k) for c in chosen)).tolist()
    texts: list[list[str]] = []
    cursor = 0
    for caption, concepts in zip(captions, chosen):
        concepts = list(concepts[:k])
        prompts = [templates[drawn[cursor + i]](concept) for i, concept in enumerate(concepts)]
        cursor += len(concepts)
        texts.append([caption, *prompts, *([caption] * (k - len(prompts)))])
    return texts
