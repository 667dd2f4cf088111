"""The benchmark report's PNG figures: per-class IoU, curation quality, examples, learning curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cocu.benchmarks.report.tables import RUN_TITLES  # noqa: E402
from cocu.curation.core.shards import atomic_path  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def figure_per_class(runs: dict[str, dict[str, Any]], classes: Sequence[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(max(12, 0.32 * len(classes)), 4.2), dpi=110)
    width = 0.8 / max(len(runs), 1)
    x = np.arange(len(classes))
    for i, (mode, metrics) in enumerate(runs.items()):
        values = [metrics["per_class_iou"].get(c) or 0.0 for c in classes]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, label=RUN_TITLES.get(mode, mode))
    ax.set_xticks(x, classes, rotation=70, fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_title("Per-class IoU on the synthetic val split")
    ax.legend(fontsize=8, ncol=len(runs))
    ax.margins(x=0.005)
    _save(fig, path)


def figure_curation(quality: dict[str, Any], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2), dpi=110)
    ks = quality["ks"]
    for name, rows in quality["ranking"].items():
        left.plot([r["recall"] for r in rows], [r["precision"] for r in rows], marker="o", label=name)
        for r in rows:
            left.annotate(
                f"@{r['k']}", (r["recall"], r["precision"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    left.set_xlabel("recall of omitted concepts")
    left.set_ylabel("precision of new concepts")
    left.set_title(f"Ranked curation, new concepts at k = {', '.join(map(str, ks))}")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    names = list(quality["prompts"])
    values = np.array(
        [[quality["prompts"][n][m] for m in ("precision", "present_recall", "omitted_recall")] for n in names]
    )
    y = np.arange(len(names))
    for j, label in enumerate(("precision", "recall of present", "recall of omitted")):
        right.barh(y + (j - 1) * 0.27, values[:, j], 0.27, label=label)
    right.set_yticks(y, names, fontsize=8)
    right.invert_yaxis()
    right.set_xlim(0, 1)
    right.set_title("The 3 concepts each text mode feeds the model")
    right.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def figure_examples(examples: dict[str, Any], classes: Sequence[str], path: Path) -> None:
    from cocu.evaluation.visualize import colorize, palette

    images, labels, preds = examples["images"], examples["labels"], examples["predictions"]
    columns = ["image", "ground truth", *[RUN_TITLES.get(m, m) for m in preds]]
    colours = palette(len(classes))
    fig, axes = plt.subplots(
        len(images), len(columns), figsize=(1.9 * len(columns), 1.9 * len(images) + 0.4), dpi=110, squeeze=False
    )
    for row, (image, label) in enumerate(zip(images, labels)):
        panels = [image, colorize(label, colours, 255)] + [colorize(p[row], colours, 255) for p in preds.values()]
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(panel, interpolation="nearest")
            ax.axis("off")
            if row == 0:
                ax.set_title(columns[col], fontsize=7)
            if col == 1:
                shown = [classes[c] for c in np.unique(label) if c < len(classes)]
                ax.text(0, label.shape[0] + 2, ", ".join(shown), fontsize=5, va="top")
    _save(fig, path)


def figure_curves(results: dict[str, Any], path: Path) -> None:
    """Where the budget goes: the teacher's zero-shot recall and GroupViT's mIoU against samples seen."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    curve = results["teacher"]["curve"]
    if curve:
        samples = [p["samples"] for p in curve]
        left.plot(samples, [100 * p["thing_recall"] for p in curve], marker="o", label="things")
        left.plot(samples, [100 * p["stuff_recall"] for p in curve], marker="o", label="stuff")
        chance = results["teacher"].get("chance_recall")
        if chance is not None:
            left.axhline(100 * chance, color="gray", linestyle=":", label="chance")
    left.set_xlabel("teacher samples seen")
    left.set_ylabel("zero-shot recall@|present| (%)")
    left.set_title("Teacher CLIP")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for (label, points), colour in zip(results["curves"].items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        samples = [p["samples"] for p in points]
        for key, style in (("miou", "-"), ("things", "--")):
            right.plot(
                samples, [p[key] or 0.0 for p in points], style, color=colour, marker="o", label=f"{label}: {key}"
            )
    right.set_xlabel("GroupViT samples seen")
    right.set_ylabel("mIoU (%)")
    right.set_title("GroupViT on the val split")
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    _save(fig, path)
