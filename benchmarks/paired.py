"""How sure a difference between two text modes is: a hierarchical bootstrap over seeds and val images.

Every run of the benchmark is evaluated on the same val images, and ``cocu-eval seg --per-image`` keeps each
image's per-class intersection and union. Resampling the images (the same draw for both modes and every seed)
and recomputing the split's mIoU as mmseg does (areas summed over images, then IoU per class, mean over the
classes that occur) gives the interval of the difference that the choice of val images leaves open
(``paired_bootstrap``). ``hierarchical_bootstrap`` also resamples each mode's seeds (model initialisation and data
order), so its interval holds both: the one the benchmark reports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PerImage:
    """One evaluation's per-image, per-class areas (images x classes), rows in val order."""

    names: np.ndarray
    intersect: np.ndarray
    union: np.ndarray

    @classmethod
    def load(cls, path: str | os.PathLike) -> PerImage:
        with np.load(Path(path)) as data:
            return cls(data["names"], data["intersect"].astype(np.int64), data["union"].astype(np.int64))


def miou(intersect: np.ndarray, union: np.ndarray) -> np.ndarray:
    """mIoU in percent of summed areas; the last axis is classes, any leading axes are kept (resamples)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, intersect / np.maximum(union, 1), np.nan)
    return np.nanmean(iou, axis=-1) * 100


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    array = np.asarray(values, np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def paired_bootstrap(
    runs: list[PerImage], baseline: list[PerImage], resamples: int = 2000, seed: int = 0
) -> dict[str, float | list[float] | int | bool]:
    """Mean over seeds of ``runs`` minus mean over seeds of ``baseline``, in mIoU points, with a 95 % interval.

    Each resample draws val images with replacement once and scores every run of both sides on that draw, so the
    interval is paired: it holds only the uncertainty of which images were drawn, not of the seeds.
    """
    names = _check_same_images(runs, baseline)
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(names), size=(resamples, len(names)))
    # how often each resample drew each image: a resample's summed areas are these counts times the per-image areas
    counts = np.stack([np.bincount(draw, minlength=len(names)) for draw in draws])

    def mean_miou(side: list[PerImage]) -> tuple[float, np.ndarray]:
        point = np.mean([miou(r.intersect.sum(0), r.union.sum(0)) for r in side])
        resampled = np.mean([miou(counts @ r.intersect, counts @ r.union) for r in side], axis=0)
        return float(point), resampled

    point_a, boot_a = mean_miou(runs)
    point_b, boot_b = mean_miou(baseline)
    differences = boot_a - boot_b
    low, high = np.percentile(differences, [2.5, 97.5])
    return {
        "mean": round(point_a - point_b, 3),
        "ci95": [round(float(low), 3), round(float(high), 3)],
        "includes_zero": bool(low <= 0 <= high),
        "resamples": resamples,
        "images": len(names),
        "seeds": [len(runs), len(baseline)],
    }


def _check_same_images(runs: list[PerImage], baseline: list[PerImage]) -> np.ndarray:
    if not runs or not baseline:
        raise ValueError("paired bootstrap needs at least one run on each side")
    names = baseline[0].names
    for run in [*runs, *baseline]:
        if run.names.shape != names.shape or not (run.names == names).all():
            raise ValueError("paired bootstrap: the runs were not evaluated on the same images in the same order")
    return names


def _interval(point: float, differences: np.ndarray) -> dict[str, Any]:
    low, high = np.nanpercentile(differences, [2.5, 97.5])  # nan: a resample without any class of a group
    return {
        "mean": round(point, 3),
        "ci95": [round(float(low), 3), round(float(high), 3)],
        "includes_zero": bool(low <= 0 <= high),
    }


def hierarchical_bootstrap(
    runs: list[PerImage],
    baseline: list[PerImage],
    resamples: int = 2000,
    seed: int = 0,
    groups: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Mean over seeds of ``runs`` minus mean over seeds of ``baseline``, in mIoU points, with a 95 % interval that
    holds both the seeds' spread and the val images'.

    Each resample draws, for each side on its own, as many of its seeds with replacement as it has, then val images
    with replacement, and scores every drawn run on that image draw; the difference of the two sides' means over
    their drawn seeds is one resample. The images are drawn once per resample for every seed of both sides,
    because the experiment is crossed, not nested: every seed of every mode is scored on the same val images, so
    the luck of those images is shared by all seeds and does not average out over them (drawing images anew per
    seed would shrink that part of the interval by the number of seeds). With one seed on a side, that side's seed
    spread is unknown and is left out; when every seed of a side scores the same, the interval is exactly the
    image-only one (``paired_bootstrap``, same ``seed``).

    ``groups`` names subsets of the classes (column indices, e.g. ``{"things": [...]}``): each gets its own
    ``{"mean", "ci95", "includes_zero"}`` of the mIoU over those classes, from the same draws.
    """
    names = _check_same_images(runs, baseline)
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(names), size=(resamples, len(names)))  # the image draws of paired_bootstrap
    counts = np.stack([np.bincount(draw, minlength=len(names)) for draw in draws])
    seed_rng = np.random.default_rng([seed, 1])
    picks = [seed_rng.integers(len(side), size=(resamples, len(side))) for side in (runs, baseline)]
    columns: dict[str, np.ndarray | slice] = {"": slice(None)}
    columns.update({name: np.asarray(list(cols), dtype=np.int64) for name, cols in (groups or {}).items()})
    rows = np.arange(resamples)[:, None]

    def side_mean(side: list[PerImage], pick: np.ndarray, cols: np.ndarray | slice) -> tuple[float, np.ndarray]:
        point = float(np.mean([miou(r.intersect[:, cols].sum(0), r.union[:, cols].sum(0)) for r in side]))
        per_run = np.stack([miou(counts @ r.intersect[:, cols], counts @ r.union[:, cols]) for r in side], axis=1)
        return point, per_run[rows, pick].mean(axis=1)  # [resamples]: mean over the drawn seeds

    found: dict[str, Any] = {}
    for name, cols in columns.items():
        point_a, boot_a = side_mean(runs, picks[0], cols)
        point_b, boot_b = side_mean(baseline, picks[1], cols)
        interval = _interval(point_a - point_b, boot_a - boot_b)
        if name:
            found[name] = interval
        else:
            found.update(interval)
    found.update(
        {
            "method": "hierarchical: seeds of each side, then val images (shared by every seed and both sides)",
            "resamples": resamples,
            "images": len(names),
            "seeds": [len(runs), len(baseline)],
        }
    )
    return found
