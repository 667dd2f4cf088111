"""Readers for the segmentation benchmarks, each from its standard (mmsegmentation) folder layout.

A reader yields ``(name, image, label)`` lazily: ``image`` uint8 ``H x W x 3`` RGB, ``label`` the
annotation's ids as stored (``H x W``; ImageNet-S decoded to ``R + 256 G``; COCO raw stuffthingmaps
mapped to train ids). ``reduce_zero_label`` and ``ignore_index`` are applied by the metric exactly as
mmseg does, so the reader never hides what the files say. The layout is checked when the reader is
made: a missing folder, split file or annotation is one line naming the path.

``root`` is the dataset's own folder (``.../VOCdevkit/VOC2012``) or a data root that holds it under
its usual name (``local_data/`` with ``VOCdevkit/VOC2012`` inside), as in the GroupViT/CoCu/TCL configs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from cocu.curation.core.errors import CocuError
from cocu.evaluation.dataset_layouts import LAYOUTS, Layout
from cocu.evaluation.inference import resize_image

Sample = tuple[str, np.ndarray, np.ndarray]


class DatasetError(CocuError):
    """A dataset problem in one line that names the file or folder."""


@runtime_checkable
class SegDataset(Protocol):
    name: str
    classes: tuple[str, ...]
    ignore_index: int
    has_background: bool
    reduce_zero_label: bool

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...

    def __iter__(self) -> Iterator[Sample]: ...


@dataclass
class FolderDataset(Dataset[Sample]):
    """A benchmark split read from its folder layout; items are ``(name, image path, label path)``."""

    name: str
    root: Path
    layout: Layout
    classes: tuple[str, ...]
    items: list[tuple[str, Path, Path]]
    label_source: str
    _lut: np.ndarray | None = field(default=None, repr=False)

    @property
    def ignore_index(self) -> int:
        return self.layout.ignore_index

    @property
    def has_background(self) -> bool:
        return self.layout.has_background

    @property
    def reduce_zero_label(self) -> bool:
        return self.layout.reduce_zero_label

    @property
    def num_label_ids(self) -> int:
        """Ids a label file may hold besides the ignore index (one more than the classes under reduce_zero_label)."""
        return len(self.classes) + int(self.reduce_zero_label)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield self[index]

    def __getitem__(self, index: int) -> Sample:
        name, image_path, label_path = self.items[index]
        image = read_image(image_path)
        label = self.read_label(label_path)
        if label.shape != image.shape[:2]:
            raise DatasetError(
                f"{label_path}: label is {label.shape[1]}x{label.shape[0]} but its image "
                f"{image_path.name} is {image.shape[1]}x{image.shape[0]}"
            )
        limit = self.layout.downsample_above
        if limit is not None and image.shape[0] * image.shape[1] > limit:
            h, w = image.shape[:2]
            side = round(limit**0.5)
            size = (side, int(side * w / h)) if h > w else (int(side * h / w), side)
            image = resize_image(image, size)  # the prediction is resized back to the label (nearest)
        return name, image, label

    def read_label(self, path: Path) -> np.ndarray:
        """Label ids of one file, checked against the class count."""
        try:
            with Image.open(path) as handle:
                mode = handle.mode
                array = np.asarray(handle)
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            raise DatasetError(f"{path}: unreadable label image ({err})") from None
        if self.layout.label_format == "rgb":
            if array.ndim != 3 or array.shape[2] < 3:
                raise DatasetError(f"{path}: expected an RGB label PNG (id = R + 256 G), found mode {mode}")
            label = array[..., 0].astype(np.int32) + 256 * array[..., 1].astype(np.int32)
        else:
            if array.ndim != 2:
                raise DatasetError(f"{path}: expected a palette or grayscale label PNG of class ids, found mode {mode}")
            if self._lut is not None and array.dtype != np.uint8:
                raise DatasetError(f"{path}: expected an 8-bit COCO id map, found mode {mode}")
            label = self._lut[array] if self._lut is not None else array
        bad = (label >= self.num_label_ids) & (label != self.ignore_index)
        if bad.any():
            raise DatasetError(
                f"{path}: label value {int(label[bad][0])} is neither a class id "
                f"(0..{self.num_label_ids - 1}) "
                f"nor the ignore index {self.ignore_index} ({int(bad.sum())} pixels)"
            )
        return label


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as handle:
            return np.array(handle.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DatasetError(f"{path}: unreadable image ({err})") from None


def open_dataset(name: str, root: str | os.PathLike) -> FolderDataset:
    """Check the layout under ``root`` and list the split's image/label pairs."""
    if name not in LAYOUTS:
        raise DatasetError(f"unknown dataset '{name}' (known: {', '.join(LAYOUTS)})")
    layout = LAYOUTS[name]
    base = _find_home(Path(root), layout)
    classes = _read_classes(base / layout.classes_file) if layout.classes_file else layout.classes
    ann_dir = base / layout.ann_dir
    ann_suffix, lut, label_source = layout.ann_suffix, None, f"{layout.ann_dir}/*{layout.ann_suffix}"
    if layout.raw_fallback and not _has_files(ann_dir, layout.ann_suffix, layout.recursive):
        ann_suffix, lut = layout.raw_fallback
        label_source = (
            f"{layout.ann_dir}/*{ann_suffix} (raw COCO-Stuff stuffthingmaps, mapped as the reference converter does)"
        )
    names = _split_names(base, layout)
    items = [(n, base / layout.img_dir / f"{n}{layout.img_suffix}", ann_dir / f"{n}{ann_suffix}") for n in names]
    _check_items(base, layout, items)
    return FolderDataset(name, base, layout, tuple(classes), items, label_source, lut)


def _find_home(root: Path, layout: Layout) -> Path:
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (the {layout.title} root)")
    required = _required(layout)
    for base in (root, *(root / home for home in layout.homes)):
        if (base / layout.img_dir).is_dir():
            missing = [part for part in required if not (base / part).exists()]
            if missing:
                raise DatasetError(f"{base}: {layout.title} layout incomplete, missing {', '.join(missing)}")
            return base
    homes = " or ".join(str(root / home) for home in layout.homes)
    raise DatasetError(
        f"{root}: no {layout.title} layout here; expected {{{', '.join(required)}}} under {root} or {homes}"
    )


def _required(layout: Layout) -> list[str]:
    parts = [f"{layout.img_dir}/", f"{layout.ann_dir}/"]
    return parts + [p for p in (layout.split, layout.classes_file) if p]


def _read_classes(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path}: no class names")
    return names


def _has_files(folder: Path, suffix: str, recursive: bool) -> bool:
    return next((folder.rglob if recursive else folder.glob)(f"*{suffix}"), None) is not None


def _split_names(base: Path, layout: Layout) -> list[str]:
    if layout.split:
        path = base / layout.split
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names:
            raise DatasetError(f"{path}: empty split list")
        return names
    img_dir = base / layout.img_dir
    files = img_dir.rglob(f"*{layout.img_suffix}") if layout.recursive else img_dir.glob(f"*{layout.img_suffix}")
    names = sorted(p.relative_to(img_dir).as_posix()[: -len(layout.img_suffix)] for p in files if p.is_file())
    if not names:
        raise DatasetError(f"{img_dir}: no *{layout.img_suffix} images ({layout.title})")
    return names


def _check_items(base: Path, layout: Layout, items: list[tuple[str, Path, Path]]) -> None:
    missing = [path for _, image, label in items for path in (image, label) if not path.is_file()]
    if missing:
        where = f" listed in {layout.split}" if layout.split else ""
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(f"{missing[0]}: missing file for an image{where}{more}; {len(items)} images in the split")
