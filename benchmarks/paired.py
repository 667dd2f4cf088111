"""How sure a difference between two text modes is: seed spread, and a paired bootstrap over val images.

Every run of the benchmark is evaluated on the same val images, and ``cocu-eval seg --per-image`` keeps each
image's per-class intersection and union. Resampling the images (the same draw for both modes and every seed)
and recomputing the split's mIoU as mmseg does (areas summed over images, then IoU per class, mean over the
classes that occur) gives the interval of the difference that the choice of val images leaves open. The seeds'
spread (model initialisation and data order) is reported beside it, as mean ± std.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
    if not runs or not baseline:
        raise ValueError("paired bootstrap needs at least one run on each side")
    names = baseline[0].names
    for run in [*runs, *baseline]:
        if run.names.shape != names.shape or not (run.names == names).all():
            raise ValueError("paired bootstrap: the runs were not evaluated on the same images in the same order")
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
