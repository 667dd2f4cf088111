"""mIoU as mmsegmentation computes it, accumulated image by image (never the whole split in memory).

Per image (mmseg ``intersect_and_union``): ``reduce_zero_label`` turns label 0 into 255 and shifts the
rest down by one; pixels whose label is ``ignore_index`` are dropped; per class the intersection,
predicted area and labelled area are counted (ids outside ``0..C-1`` are not counted, as ``torch.histc``
does there). Over the split the areas are *summed*, then ``IoU_c = sum I_c / sum U_c``. A class whose
union is zero over the whole split is NaN and left out of the mean. Pixel accuracy is
``sum I / sum labelled``. Counts are int64, so the sums are exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.classification import multilabel_average_precision


def as_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu", torch.int64)
    return torch.from_numpy(np.asarray(array).astype(np.int64, copy=False))


def reduce_zero_label(label: torch.Tensor) -> torch.Tensor:
    """mmseg's rule: 0 -> 255 (ignored), others minus one, 255 stays 255."""
    out = label - 1
    out[(label == 0) | (label == 255)] = 255
    return out


def prepare_label(label: np.ndarray | torch.Tensor, reduce_zero: bool) -> torch.Tensor:
    """A label map in evaluation ids (int64): the form the metric compares predictions with."""
    tensor = as_tensor(label)
    return reduce_zero_label(tensor) if reduce_zero else tensor


def intersect_and_union(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class (intersection, union, predicted area, labelled area) of one image or a batch, int64."""
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]
    area_pred = _count(pred, num_classes)
    area_label = _count(label, num_classes)
    area_intersect = _count(pred[pred == label], num_classes)
    return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


def _count(values: torch.Tensor, num_classes: int) -> torch.Tensor:
    values = values[(values >= 0) & (values < num_classes)]
    return torch.bincount(values, minlength=num_classes)


@dataclass(frozen=True)
class SegScores:
    """Split-level results, in percent as GroupViT reports them; NaN marks a class absent everywhere."""

    miou: float
    pixel_accuracy: float
    mean_accuracy: float
    iou: tuple[float, ...]
    accuracy: tuple[float, ...]
    images: int
    pixels: int

    @property
    def classes_counted(self) -> int:
        return sum(not math.isnan(v) for v in self.iou)

    def to_dict(self, class_names: Sequence[str]) -> dict:
        """JSON-ready (NaN -> None), per-class values keyed by class name."""
        if len(class_names) != len(self.iou):
            raise ValueError(f"{len(class_names)} class names for {len(self.iou)} classes")
        clean = lambda v: None if math.isnan(v) else round(v, 4)  # noqa: E731
        return {
            "miou": clean(self.miou),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "mean_accuracy": clean(self.mean_accuracy),
            "classes_counted": self.classes_counted,
            "images": self.images,
            "pixels": self.pixels,
            "per_class_iou": {name: clean(v) for name, v in zip(class_names, self.iou)},
            "per_class_accuracy": {name: clean(v) for name, v in zip(class_names, self.accuracy)},
        }


class SegMetric:
    """Streaming mmseg mIoU: ``update`` per image or batch, ``compute`` at the end, ``merge`` across workers."""

    def __init__(self, num_classes: int, ignore_index: int = 255, reduce_zero_label: bool = False):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.reset()

    def reset(self) -> None:
        zeros = lambda: torch.zeros(self.num_classes, dtype=torch.int64)  # noqa: E731
        self.intersect, self.union, self.pred_area, self.label_area = zeros(), zeros(), zeros(), zeros()
        self.images = 0

    def update(
        self, pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one ``[H, W]`` or a batch ``[B, H, W]`` of predictions (evaluation ids) and raw labels; returns what
        they added, (intersection, union) per class, for callers that keep per-image areas."""
        pred, label = as_tensor(pred), prepare_label(label, self.reduce_zero_label)
        if pred.shape != label.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
        inter, union, pred_area, label_area = intersect_and_union(pred, label, self.num_classes, self.ignore_index)
        self.intersect += inter
        self.union += union
        self.pred_area += pred_area
        self.label_area += label_area
        self.images += 1 if pred.dim() == 2 else pred.shape[0]
        return inter, union

    def merge(self, other: SegMetric) -> None:
        for name in ("intersect", "union", "pred_area", "label_area"):
            getattr(self, name).add_(getattr(other, name))
        self.images += other.images

    def compute(self) -> SegScores:
        inter, union, label = (t.double() for t in (self.intersect, self.union, self.label_area))
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.nan) * 100
        acc = torch.where(label > 0, inter / label.clamp(min=1), torch.nan) * 100
        pixels = int(self.label_area.sum())
        return SegScores(
            miou=float(iou.nanmean()) if (union > 0).any() else math.nan,
            pixel_accuracy=float(inter.sum() / pixels * 100) if pixels else math.nan,
            mean_accuracy=float(acc.nanmean()) if (label > 0).any() else math.nan,
            iou=tuple(iou.tolist()),
            accuracy=tuple(acc.tolist()),
            images=self.images,
            pixels=pixels,
        )


def ranking_metrics(
    scores: np.ndarray, targets: np.ndarray, salient: np.ndarray, stuff: np.ndarray, classes: Sequence[str]
) -> dict:
    """Multi-label ranking quality of image-to-concept scores (N x C) against presence (N x C)."""
    k = targets.sum(1)
    ranks = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1)
    found = targets & (ranks < k[:, None])  # present and among the |present| best
    per_image = found.sum(1) / k
    things = ~stuff
    per_class = {
        c: round(float(found[:, i].sum() / targets[:, i].sum()), 4)
        for i, c in enumerate(classes)
        if targets[:, i].any()
    }
    mean_ap = multilabel_average_precision(
        torch.from_numpy(scores), torch.from_numpy(targets.astype(np.int64)), num_labels=len(classes), average="macro"
    )
    return {
        "images": int(len(scores)),
        "classes": len(classes),
        "recall_at_present": round(float(per_image.mean()), 4),
        "thing_recall": round(float(found[:, things].sum() / max(targets[:, things].sum(), 1)), 4),
        "stuff_recall": round(float(found[:, stuff].sum() / max(targets[:, stuff].sum(), 1)), 4),
        "salient_top1": round(float((scores.argmax(1) == salient).mean()), 4),
        "salient_top1_among_things": round(float((np.where(things, scores, -np.inf).argmax(1) == salient).mean()), 4),
        "mean_ap": round(float(mean_ap), 4),
        "chance_recall": round(float((k / len(classes)).mean()), 4),
        "present_per_image": round(float(k.mean()), 3),
        "per_class_recall": per_class,
    }
