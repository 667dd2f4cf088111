"""How well curation recovers what captions left out, measured against the synthetic world's truth.

Only the synthetic world knows which concepts each image shows, so only there can curation be
scored directly. Two views:

- **ranking quality**: for a ranked list of concepts per image, the concepts the caption does not
  already name are candidates for "omitted"; precision@k and recall@k of the first k candidates
  against the truly omitted concepts (present in the image, absent from its caption);
- **prompt quality**: for the concepts a training mode actually feeds the model (caption nouns,
  CoCu top-3, cluster-sampled, oracle), the share that is present in the image, and the share of
  present and of omitted concepts they cover.

All figures are micro-averages over images (sums of hits over sums of denominators).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cocu.curation.core.shards import expand_shards


@dataclass(frozen=True)
class RankingScores:
    k: int
    precision: float  # share of the first k new concepts that the image shows
    recall: float  # share of the omitted concepts found among the first k new ones
    images: int


def ranking_quality(
    ranked: Sequence[Sequence[str]],
    caption: Sequence[Sequence[str]],
    present: Sequence[Sequence[str]],
    ks: Sequence[int] = (1, 3, 16),
) -> list[RankingScores]:
    """Score ranked concept lists on the concepts the captions omitted."""
    out = []
    for k in ks:
        hits = returned = omitted_total = 0
        for ranks, named, shown in zip(ranked, caption, present, strict=True):
            named_set, shown_set = set(named), set(shown)
            omitted = shown_set - named_set
            new = [c for c in ranks if c not in named_set][:k]
            hit = sum(c in omitted for c in new)
            hits += hit
            returned += len(new)
            omitted_total += len(omitted)
        out.append(RankingScores(k, hits / max(returned, 1), hits / max(omitted_total, 1), len(ranked)))
    return out


@dataclass(frozen=True)
class PromptScores:
    precision: float  # share of prompt concepts present in the image
    present_recall: float  # share of present concepts among the prompts
    omitted_recall: float  # share of caption-omitted concepts among the prompts
    per_image: float  # distinct prompt concepts per image


def prompt_quality(
    prompts: Sequence[Sequence[str]], caption: Sequence[Sequence[str]], present: Sequence[Sequence[str]]
) -> PromptScores:
    """Score the concept sets a training mode feeds the model, one set per image."""
    good = given = shown_total = omitted_total = omitted_hit = 0
    for chosen, named, shown in zip(prompts, caption, present, strict=True):
        chosen_set, shown_set = set(chosen), set(shown)
        omitted = shown_set - set(named)
        good += len(chosen_set & shown_set)
        given += len(chosen_set)
        shown_total += len(shown_set)
        omitted_total += len(omitted)
        omitted_hit += len(chosen_set & omitted)
    return PromptScores(
        good / max(given, 1),
        good / max(shown_total, 1),
        omitted_hit / max(omitted_total, 1),
        given / max(len(prompts), 1),
    )


def read_columns(folder: str | os.PathLike, columns: Sequence[str]) -> dict[str, list]:
    """Columns of every Parquet file in a folder, in file order (small: the synthetic world only)."""
    table = pa.concat_tables(pq.read_table(path, columns=list(columns)) for path in expand_shards(folder))
    return {name: table.column(name).to_pylist() for name in columns}


def rival_rankings(
    bank_path: str | os.PathLike, keys: Sequence[str], neighbors: int, top: int
) -> dict[str, list[list[str]]]:
    """The two simpler curators the paper argues against, on the bank CoCu used.

    - ``direct``: the CLIP ranks the whole vocabulary against the image (image-to-text retrieval);
    - ``neighbours``: the concepts the L nearest images' captions mention most often (ties: the more
      frequent concept in the corpus first).
    """
    from cocu.curation.bank.reader import Bank

    bank = Bank.open(bank_path)
    ids = bank.lookup(list(keys))
    if (ids < 0).any():
        raise ValueError(f"{int((ids < 0).sum())} curated keys are not in bank {bank_path}")
    names = np.asarray(bank.concept_names.to_pylist(), dtype=object)
    counts = np.asarray(bank.vocabulary.counts, dtype=np.float64)
    vectors = np.asarray(bank.embeddings[ids], dtype=np.float32)
    sims = vectors @ bank.text.T.astype(np.float32)
    direct = np.argsort(-sims, axis=1, kind="stable")[:, :top]
    _, found = bank.searcher.search(vectors, neighbors + 1)
    offsets, values = bank.image_concepts.offsets, bank.image_concepts.values
    frequent = []
    for anchor, row in zip(ids, found):
        hits = [n for n in row if n >= 0 and n != anchor][:neighbors]
        tally = np.bincount(
            np.concatenate([values[offsets[n] : offsets[n + 1]] for n in hits] or [np.empty(0, np.int64)]),
            minlength=len(names),
        ).astype(np.float64)
        order = np.lexsort((-counts, -tally))
        frequent.append(names[order[tally[order] > 0][:top]].tolist())
    return {"direct": names[direct].tolist(), "neighbours": frequent}


def concepts_by_key(curated: str | os.PathLike, keys: Sequence[str]) -> list[list[str]]:
    """The curated concept lists of another enrich run of the same shards, in the order of ``keys``."""
    rows = read_columns(curated, ["key", "cocu_concepts"])
    found = dict(zip(rows["key"], rows["cocu_concepts"]))
    missing = [key for key in keys if key not in found]
    if missing:
        raise ValueError(f"{curated}: {len(missing)} keys of the compared run are missing (first: {missing[0]})")
    return [found[key] for key in keys]


def evaluate_curation(
    curated: str | os.PathLike,
    truth: str | os.PathLike,
    bank: str | os.PathLike,
    neighbors: int,
    top_k: int,
    prompts: int = 3,
    seed: int = 0,
    release: str | os.PathLike | None = None,
    hybrid: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Curation quality of one enrich run against the world's truth, with the rivals (and the ``release`` formula's
    and the hybrid archive's runs of the same shards, when given) beside it."""
    from cocu.training.prompts import draw_cluster_guided, draw_uniform, take_top

    rows = read_columns(curated, ["key", "caption_concepts", "cocu_concepts", "cocu_scores", "cocu_clusters"])
    gt = read_columns(truth, ["key", "present", "named"])
    by_key = {key: i for i, key in enumerate(gt["key"])}
    order = [by_key[key] for key in rows["key"]]
    present = [gt["present"][i] for i in order]
    named = rows["caption_concepts"]
    rivals = rival_rankings(bank, rows["key"], neighbors, top_k)
    ks = sorted({1, prompts, top_k})
    rankings = {}
    if release is not None:
        rankings["release (the authors' formula)"] = concepts_by_key(release, rows["key"])
    rankings["cocu (expansion + ranking)"] = rows["cocu_concepts"]
    if hybrid is not None:
        rankings["cocu, hybrid archive (+ vocabulary top-M)"] = concepts_by_key(hybrid, rows["key"])
    rankings.update(
        {
            "neighbours' captions, most frequent": rivals["neighbours"],
            "teacher CLIP over the whole vocabulary": rivals["direct"],
        }
    )
    rng = np.random.default_rng(seed)
    feeds = {"caption (baseline)": draw_uniform(named, prompts, rng)}
    if release is not None:
        feeds["release top-3"] = take_top(rankings["release (the authors' formula)"], prompts)
    feeds.update(
        {
            "cocu-top (cocu formula, top-3)": take_top(rows["cocu_concepts"], prompts),
            "cocu-cluster (cluster-guided)": draw_cluster_guided(
                rows["cocu_concepts"], rows["cocu_scores"], rows["cocu_clusters"], prompts, rng
            ),
            "teacher CLIP top-3 (rival)": take_top(rivals["direct"], prompts),
            "neighbour frequency top-3 (rival)": take_top(rivals["neighbours"], prompts),
            "oracle (true concepts)": draw_uniform(present, prompts, rng),
        }
    )
    return {
        "images": len(order),
        "ks": ks,
        "ranking": {
            name: [asdict(s) for s in ranking_quality(ranked, named, present, ks)] for name, ranked in rankings.items()
        },
        "prompts": {name: asdict(prompt_quality(chosen, named, present)) for name, chosen in feeds.items()},
        "curated_per_image": float(np.mean([len(c) for c in rows["cocu_concepts"]])),
    }
