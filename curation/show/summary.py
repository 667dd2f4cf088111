"""The gallery's summary page: what curation added across every row, counted in one pass, with three plots."""

from __future__ import annotations

from collections import Counter
from collections.abc import Set
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cocu.curation.core.errors import writing  # noqa: E402
from cocu.evaluation.html import write_page  # noqa: E402
from cocu.evaluation.visualize import plain  # noqa: E402

SCORES_KEPT = 1_000_000  # score values kept per kind for the histogram (bounded memory on a big corpus)
RIGHT, WRONG, NAMED = "#2e8b57", "#c0392b", "#4a6fa5"


class CurationTally:
    """Counts over curated rows; with the world's truth also which additions the image really shows."""

    def __init__(self, truth: bool):
        self.truth = truth
        self.rows = self.errors = self.empty = self.with_added = 0
        self.added: Counter[str] = Counter()
        self.added_right: Counter[str] = Counter()
        self.per_image: dict[str, Counter[int]] = {"curated": Counter(), "added": Counter(), "caption": Counter()}
        self.omitted = self.omitted_found = 0
        self.scores: dict[str, list[float]] = (
            {"named": [], "added": []} if not truth else {"named": [], "added, right": [], "added, wrong": []}
        )

    def update(self, row: dict[str, Any], present: Set[str] | None) -> None:
        self.rows += 1
        if row["cocu_error"] is not None:
            self.errors += 1
            return
        named = set(row["caption_concepts"] or [])
        curated, scores = row["cocu_concepts"] or [], row["cocu_scores"] or []
        added = [c for c in curated if c not in named]
        self.empty += not curated
        self.with_added += bool(added)
        self.added.update(added)
        self.per_image["curated"][len(curated)] += 1
        self.per_image["added"][len(added)] += 1
        self.per_image["caption"][len(named)] += 1
        if present is not None:
            self.added_right.update(c for c in added if c in present)
            omitted = present - named
            self.omitted += len(omitted)
            self.omitted_found += len(omitted & set(curated))
        for concept, score in zip(curated, scores):
            kind = "named" if concept in named else "added"
            if present is not None and kind == "added":
                kind = "added, right" if concept in present else "added, wrong"
            if len(self.scores[kind]) < SCORES_KEPT:
                self.scores[kind].append(float(score))

    @property
    def curated_rows(self) -> int:
        return self.rows - self.errors

    def figures(self) -> list[dict[str, str]]:
        """Headline numbers of the summary, each with what it means."""
        rows = max(self.curated_rows, 1)
        mean = {kind: sum(k * n for k, n in counts.items()) / rows for kind, counts in self.per_image.items()}
        out = [
            {"name": "rows", "value": f"{self.rows:,}", "means": "every row of every curated shard"},
            {"name": "cocu_error", "value": _share(self.errors, self.rows), "means": "rows curation could not process"},
            {
                "name": "empty archives",
                "value": _share(self.empty, self.curated_rows),
                "means": "curated rows that got no concept at all (no neighbour or caption concept)",
            },
            {
                "name": "rows with additions",
                "value": _share(self.with_added, self.curated_rows),
                "means": "curated rows that got at least one concept their caption does not name",
            },
            {
                "name": "concepts per image",
                "value": f"{mean['curated']:.2f}",
                "means": f"curated; {mean['added']:.2f} added, caption names {mean['caption']:.2f}",
            },
        ]
        if self.truth:
            total = sum(self.added.values())
            out += [
                {
                    "name": "additions right",
                    "value": _share(sum(self.added_right.values()), total),
                    "means": "added concepts the image really shows (the world's truth)",
                },
                {
                    "name": "omissions found",
                    "value": _share(self.omitted_found, self.omitted),
                    "means": "concepts the image shows but its caption omits, found among the curated ones",
                },
            ]
        return out

    def top_added(self, count: int) -> list[dict[str, Any]]:
        rows = max(self.curated_rows, 1)
        return [
            {
                "concept": name,
                "count": n,
                "share": f"{100 * n / rows:.1f}%",
                "right": _share(self.added_right[name], n) if self.truth else None,
            }
            for name, n in self.added.most_common(count)
        ]


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}% ({part:,} of {whole:,})" if whole else "-"


def plot_added(tally: CurationTally, count: int, path: Path) -> None:
    top = tally.added.most_common(count)
    fig, ax = plt.subplots(figsize=(7, 0.22 * max(len(top), 4) + 1.0), dpi=100)
    names = [name for name, _ in top]
    totals = np.array([n for _, n in top], dtype=float)
    y = np.arange(len(top))
    if tally.truth:
        right = np.array([tally.added_right[name] for name in names], dtype=float)
        ax.barh(y, right, color=RIGHT, label="right (image shows it)")
        ax.barh(y, totals - right, left=right, color=WRONG, label="wrong")
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.barh(y, totals, color=NAMED)
    ax.set_yticks(y, [plain(name) for name in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images it was added to (not named by their caption)")
    ax.set_title(f"The {len(top)} concepts curation adds most", fontsize=10)
    _save(fig, path)


def plot_per_image(tally: CurationTally, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    kinds = list(tally.per_image)
    largest = max((max(c) for c in tally.per_image.values() if c), default=0)
    x = np.arange(largest + 1)
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        ax.bar(
            x + (i - (len(kinds) - 1) / 2) * width, [tally.per_image[kind][k] for k in x.tolist()], width, label=kind
        )
    ax.set_xlabel("concepts per image")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("images")
    ax.set_title("Curated, added and caption concepts per image", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_scores(tally: CurationTally, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    values = np.array([v for kind in tally.scores.values() for v in kind])
    # a near-zero mean similarity makes a few scores huge: the plot spans the 1st-99th percentile
    low, high = np.percentile(values, [1, 99]) if len(values) else (0.0, 1.0)
    high = max(high, low + 1e-3)
    bins = np.linspace(low, high, 41)
    colours = {"named": NAMED, "added": "#e08e0b", "added, right": RIGHT, "added, wrong": WRONG}
    for kind, kept in tally.scores.items():
        if kept:
            ax.hist(
                np.clip(kept, low, high),
                bins=bins.tolist(),
                histtype="step",
                linewidth=1.6,
                color=colours[kind],
                label=f"{kind} ({len(kept):,})",
            )
    ax.set_xlabel("cocu score (1st to 99th percentile; the rest in the end bins)")
    ax.set_ylabel("concepts")
    ax.set_title("Scores of curated concepts", fontsize=10)
    if len(values):
        ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    try:
        fig.tight_layout()
        with writing(path):
            fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def write_summary(folder: Path, tally: CurationTally, top: int, **context: Any) -> Path:
    """``summary.html`` and its plots in ``folder`` (a temporary folder: the gallery is renamed into place whole)."""
    (folder / "plots").mkdir(exist_ok=True)
    plot_added(tally, top, folder / "plots" / "added_most.png")
    plot_per_image(tally, folder / "plots" / "per_image.png")
    plot_scores(tally, folder / "plots" / "scores.png")
    return write_page(
        folder / "summary.html", "summary.html.j2", figures=tally.figures(), top=tally.top_added(top), **context
    )
