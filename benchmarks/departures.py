"""Each way the ``cocu`` formula departs from the authors' ``release``, measured against the synthetic world's truth.

Starting from ``release`` on a bank with the release's concept prompts, one departure is switched on at a time and
the ranked lists are scored like every curator of the benchmark (``ranking_quality``); the last row is ``cocu``
with all of them. The prompt template is a property of the bank, so its row ranks with the release formula on a
bank built with cocu's template. The k-means departure (ten greedy starts instead of one plain start, where the
release called scikit-learn) is measured by its inertia against scikit-learn's on the same archives.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from cocu.benchmarks.curation_quality import ranking_quality, read_columns
from cocu.curation.enrich.ranking import FORMULAS, Formula

# (Formula field, what cocu does, why): the rows of the departures table in docs/curation.md
DEPARTURES = (
    (
        "exclude_anchor",
        "searches L + 1 and drops the anchor: L other images",
        "an image in the bank is its own first hit, so the release expands from L - 1 others",
    ),
    (
        "anchor_once",
        "counts the anchor once in R_c",
        "the release appends the anchor to R_c although it is already there as its own hit",
    ),
    (
        "floor_local",
        "divides the local term by max(mean, floor), floor = 5th percentile of the bank's named pairs",
        "a mean near zero explodes the score and a negative one flips its sign",
    ),
    (
        "own_concepts",
        "adds the anchor's own caption concepts to the archive",
        "an image outside the bank otherwise loses what its own caption names",
    ),
)


def rank_all(bank: Any, formula: Formula, neighbors: int, batch_size: int = 1024) -> list[list[str]]:
    """Every bank image curated with ``formula`` (its stored embedding as the anchor), whole archives, no clusters."""
    from cocu.curation.enrich.curator import EnrichConfig, curate

    config = EnrichConfig(neighbors=neighbors, top_k=0, clusters=False)
    names = np.asarray(bank.concept_names.to_pylist(), dtype=object)
    out: list[list[str]] = []
    for start in range(0, len(bank.embeddings), batch_size):
        ids = np.arange(start, min(start + batch_size, len(bank.embeddings)))
        anchors = np.asarray(bank.embeddings[ids], np.float32)
        curated = curate(bank, anchors, ids, bank.image_concepts.take(ids), ids, config, formula)
        out += [names[row].tolist() for row in curated.concepts.tolist()]
    return out


def kmeans_inertia_ratio(bank: Any, neighbors: int, archives: int = 400, seed: int = 0) -> dict[str, float] | None:
    """Mean inertia of enrich's clusters over scikit-learn ``KMeans(n_init=10)`` on the bank's first whole archives."""
    try:
        from sklearn.cluster import KMeans
    except ImportError:  # scikit-learn is in the test extra only
        return None
    from cocu.curation.enrich.curator import EnrichConfig, curate

    ids = np.arange(min(archives, len(bank.embeddings)))
    curated = curate(
        bank,
        np.asarray(bank.embeddings[ids], np.float32),
        ids,
        bank.image_concepts.take(ids),
        ids,
        EnrichConfig(neighbors=neighbors, top_k=0, clusters=True, seed=seed),
    )
    ours, theirs = [], []
    for row, labels in zip(curated.concepts.tolist(), np.split(curated.clusters, curated.concepts.offsets[1:-1])):
        if len(row) <= 2:
            continue
        points = bank.text[row].astype(np.float64)
        ours.append(sum(((points[labels == c] - points[labels == c].mean(0)) ** 2).sum() for c in np.unique(labels)))
        theirs.append(KMeans(n_clusters=math.ceil(len(row) / 2), n_init=10, random_state=seed).fit(points).inertia_)
    return {"ratio": float(np.mean(ours) / np.mean(theirs)), "archives": len(ours)}


def measure_departures(
    release_bank: str | os.PathLike,
    cocu_bank: str | os.PathLike,
    truth: str | os.PathLike,
    neighbors: int,
    ks: tuple[int, ...] = (1, 3, 16),
) -> dict[str, Any]:
    """Ranking quality of ``release``, of ``release`` plus each departure alone, and of ``cocu``."""
    from cocu.curation.bank.reader import Bank

    release, cocu = Bank.open(release_bank), Bank.open(cocu_bank)
    gt = read_columns(truth, ["key", "present"])
    by_key = dict(zip(gt["key"], gt["present"]))
    keys = release.keys.to_pylist()
    if cocu.keys.to_pylist() != keys:
        raise ValueError(f"banks {release_bank} and {cocu_bank} hold different images")
    names = np.asarray(release.concept_names.to_pylist(), dtype=object)
    named = [names[row].tolist() for row in release.image_concepts.tolist()]
    present = [by_key[key] for key in keys]

    def score(ranked: list[list[str]]) -> list[dict[str, Any]]:
        return [asdict(s) for s in ranking_quality(ranked, named, present, ks)]

    base = FORMULAS["release"]
    rows = [
        {
            "name": "release",
            "what": "the authors' formula and prompt",
            "why": "",
            "ranking": score(rank_all(release, base, neighbors)),
        }
    ]
    for field, what, why in DEPARTURES:
        rows.append(
            {
                "name": f"+ {field}",
                "what": what,
                "why": why,
                "ranking": score(rank_all(release, replace(base, **{field: True}), neighbors)),
            }
        )
    rows.append(
        {
            "name": "+ prompt template",
            "what": 'embeds concepts as "a photo of a/an {}."',
            "why": "grammatical prompts, as CLIP saw in training",
            "ranking": score(rank_all(cocu, base, neighbors)),
        }
    )
    rows.append(
        {
            "name": "cocu",
            "what": "all of the above",
            "why": "",
            "ranking": score(rank_all(cocu, FORMULAS["cocu"], neighbors)),
        }
    )
    return {
        "ks": list(ks),
        "rows": rows,
        "local_floor": cocu.local_floor,
        "kmeans": kmeans_inertia_ratio(cocu, neighbors),
    }
