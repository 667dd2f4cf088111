"""Where each segmentation benchmark keeps its files (mmsegmentation's folder layouts) and how its labels read.

Data, not code: one ``Layout`` per benchmark, with the class names in label-id order (``classnames``) and the tables
that map raw COCO ids to train ids as mmseg's converters do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cocu.evaluation import classnames as cn

# The 11 COCO thing ids that have no category (and no pixels); mmseg's converter does not list them.
_COCO_UNUSED = frozenset({11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90})
_COCO_LISTED = [i for i in range(182) if i not in _COCO_UNUSED]


def _coco_stuff_lut() -> np.ndarray:
    """mmseg ``coco_stuff164k.py``: raw COCO ids 0..181 -> train ids 0..170, 255 stays unlabelled."""
    lut = np.arange(256, dtype=np.uint8)  # ids the converter does not list stay as they are, as there
    lut[_COCO_LISTED] = np.arange(len(_COCO_LISTED))
    return lut


def _coco_object_lut() -> np.ndarray:
    """GroupViT ``convert_coco_object.py``: things (raw <= 90) -> train id + 1; stuff and unlabelled 255 -> 0."""
    lut = np.arange(256, dtype=np.uint8)
    stuff = _coco_stuff_lut()
    for raw in _COCO_LISTED:
        lut[raw] = stuff[raw] + 1 if raw <= 90 else 0
    lut[255] = 0
    return lut


COCO_STUFF_LUT = _coco_stuff_lut()
COCO_OBJECT_LUT = _coco_object_lut()


@dataclass(frozen=True)
class Layout:
    """Where a benchmark keeps its files and how its labels read."""

    title: str
    homes: tuple[str, ...]  # the dataset folder's usual places under a data root
    img_dir: str
    ann_dir: str
    img_suffix: str
    ann_suffix: str
    classes: tuple[str, ...] = ()
    has_background: bool = False
    reduce_zero_label: bool = False
    ignore_index: int = 255
    split: str | None = None  # a list of names, one per line; otherwise img_dir is scanned
    recursive: bool = False
    label_format: str = "index"  # "index": palette/grayscale ids; "rgb": ImageNet-S ids R + 256 G
    # (suffix, raw id -> label id table) for unconverted COCO stuffthingmaps
    raw_fallback: tuple[str, np.ndarray] | None = field(default=None, compare=False)
    downsample_above: int | None = None  # ImageNet-S: images over this many pixels shrink to long side 1000
    classes_file: str | None = None  # synthetic: names read from this file


def _imagenet_s(classes: int, names: tuple[str, ...]) -> Layout:
    """ImageNet-S's validation split of ``classes`` classes: class folders, RGB-coded labels, 1000 ignored."""
    return Layout(
        f"ImageNet-S{classes}",
        (f"ImageNetS/ImageNetS{classes}", f"ImageNetS{classes}"),
        "validation",
        "validation-segmentation",
        ".JPEG",
        ".png",
        names,
        has_background=True,
        ignore_index=1000,
        recursive=True,
        label_format="rgb",
        downsample_above=1000 * 1000,
    )


LAYOUTS: dict[str, Layout] = {
    "voc": Layout(
        "PASCAL VOC 2012",
        ("VOCdevkit/VOC2012",),
        "JPEGImages",
        "SegmentationClass",
        ".jpg",
        ".png",
        cn.VOC,
        has_background=True,
        split="ImageSets/Segmentation/val.txt",
    ),
    "voc20": Layout(
        "PASCAL VOC 2012 (20 classes, background ignored)",
        ("VOCdevkit/VOC2012",),
        "JPEGImages",
        "SegmentationClass",
        ".jpg",
        ".png",
        cn.VOC20,
        reduce_zero_label=True,
        split="ImageSets/Segmentation/val.txt",
    ),
    "context": Layout(
        "PASCAL Context",
        ("VOCdevkit/VOC2010",),
        "JPEGImages",
        "SegmentationClassContext",
        ".jpg",
        ".png",
        cn.CONTEXT,
        has_background=True,
        split="ImageSets/SegmentationContext/val.txt",
    ),
    "context59": Layout(
        "PASCAL Context 59 (background ignored)",
        ("VOCdevkit/VOC2010",),
        "JPEGImages",
        "SegmentationClassContext",
        ".jpg",
        ".png",
        cn.CONTEXT59,
        reduce_zero_label=True,
        split="ImageSets/SegmentationContext/val.txt",
    ),
    "coco_object": Layout(
        "COCO-Object",
        ("coco", "coco_stuff164k"),
        "images/val2017",
        "annotations/val2017",
        ".jpg",
        "_instanceTrainIds.png",
        cn.COCO_OBJECT,
        has_background=True,
        raw_fallback=(".png", COCO_OBJECT_LUT),
    ),
    "coco_stuff": Layout(
        "COCO-Stuff-164k",
        ("coco_stuff164k",),
        "images/val2017",
        "annotations/val2017",
        ".jpg",
        "_labelTrainIds.png",
        cn.COCO_STUFF,
        raw_fallback=(".png", COCO_STUFF_LUT),
    ),
    "cityscapes": Layout(
        "Cityscapes",
        ("cityscapes", "city"),
        "leftImg8bit/val",
        "gtFine/val",
        "_leftImg8bit.png",
        "_gtFine_labelTrainIds.png",
        cn.CITYSCAPES,
        recursive=True,
    ),
    "ade20k": Layout(
        "ADE20K",
        ("ADEChallengeData2016", "ade/ADEChallengeData2016"),
        "images/validation",
        "annotations/validation",
        ".jpg",
        ".png",
        cn.ADE20K,
        reduce_zero_label=True,
    ),
    "imagenet_s50": _imagenet_s(50, cn.IMAGENET_S50),
    "imagenet_s300": _imagenet_s(300, cn.IMAGENET_S300),
    "synthetic": Layout(
        "cocu synthetic world (val split)",
        ("val",),
        "images",
        "annotations",
        ".jpg",
        ".png",
        classes_file="classes.txt",
    ),
}
