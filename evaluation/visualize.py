"""Overlays for a look at what the model does: image | ground truth | prediction, with a class legend."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from cocu.curation.core.shards import atomic_path  # noqa: E402

IGNORED_RGB = (255, 255, 255)


def plain(text: str) -> str:
    """``text`` as matplotlib draws it literally: a ``$`` would start math text (``$\\frac{$`` fails to parse)."""
    return text.replace("$", r"\$")


def palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved ids): distinct, deterministic, any number of classes."""
    ids = np.arange(num_classes)
    colours = np.zeros((num_classes, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            colours[:, channel] |= ((ids >> (3 * shift + channel)) & 1) << (7 - shift)
    return colours.astype(np.uint8)


def colorize(label: np.ndarray, colours: np.ndarray, ignore_index: int) -> np.ndarray:
    """``H x W`` ids -> ``H x W x 3`` colours; ignored (or out-of-range) pixels are white."""
    valid = (label >= 0) & (label < len(colours))
    out = np.empty((*label.shape, 3), dtype=np.uint8)
    out[:] = IGNORED_RGB
    out[valid] = colours[label[valid]]
    return out


def save_overlay(
    path: str | os.PathLike,
    image: np.ndarray,
    label: np.ndarray | None,
    pred: np.ndarray,
    classes: Sequence[str],
    ignore_index: int,
    title: str = "",
    alpha: float = 0.65,
    max_legend: int = 16,
) -> None:
    """Write one PNG: the image, the ground truth and the prediction blended over it, and a legend.

    ``label`` and ``pred`` are in evaluation ids (after ``reduce_zero_label``). The legend lists the
    classes that cover the most pixels in either map; ignored pixels show the bare image. Without ``label``
    (``cocu-eval predict``: no ground truth) the page shows image | prediction.
    """
    colours = palette(len(classes))
    panels = [image]
    maps = [pred] if label is None else [label, pred]
    for ids in maps:
        colour = colorize(ids, colours, ignore_index).astype(np.float32)
        blend = image.astype(np.float32) * (1 - alpha) + colour * alpha
        ignored = (ids == ignore_index) | (ids < 0) | (ids >= len(classes))
        blend[ignored] = image[ignored]
        panels.append(blend.round().astype(np.uint8))
    shown = _legend_classes(maps, len(classes), max_legend)
    names = ("image", "prediction") if label is None else ("image", "ground truth", "prediction")

    height, width = image.shape[:2]
    panel_inches = 3.0
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(n * panel_inches, min(panel_inches * height / width, 12) + 1.2), dpi=100)
    for ax, panel, name in zip(axes, panels, names):
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    handles = [
        Patch(
            facecolor=colours[c] / 255.0,
            edgecolor="black",
            linewidth=0.3,
            label=plain(classes[c].strip() or repr(classes[c])),
        )
        for c in shown
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6) or 1, fontsize=7, frameon=False)
    if title:
        fig.suptitle(plain(title), fontsize=9)
    fig.subplots_adjust(
        left=0.01, right=0.99, top=0.88 if title else 0.93, bottom=0.05 + 0.05 * ((len(handles) + 5) // 6), wspace=0.03
    )
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def _legend_classes(maps: Sequence[np.ndarray], num_classes: int, limit: int) -> list[int]:
    counts = np.zeros(num_classes, dtype=np.int64)
    for ids in maps:
        valid = ids[(ids >= 0) & (ids < num_classes)]
        counts += np.bincount(valid.ravel(), minlength=num_classes)
    present = np.flatnonzero(counts)
    return sorted(present[np.argsort(-counts[present], kind="stable")][:limit].tolist())
