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

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RankingScores:
    k: int
    precision: float  # share of the first k new concepts that the image shows
    recall: float  # share of the omitted concepts found among the first k new ones
    images: int


def ranking_quality(ranked: Sequence[Sequence[str]], caption: Sequence[Sequence[str]], present: Sequence[Sequence[str]],
                    ks: Sequence[int] = (1, 3, 16)) -> list[RankingScores]:
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


def prompt_quality(prompts: Sequence[Sequence[str]], caption: Sequence[Sequence[str]], present: Sequence[Sequence[str]]) -> PromptScores:
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
    return PromptScores(good / max(given, 1), good / max(shown_total, 1), omitted_hit / max(omitted_total, 1),
                        given / max(len(prompts), 1))
