"""Class names of the benchmarks, in label-id order, exactly as the reference harnesses spell them.

Index i of a tuple is label id i of the dataset's annotation files. The GroupViT/CoCu harness renames
a few VOC and Context classes for the text prompts; TCL's harness prompts mmseg's raw names. Quirks are
kept on purpose (ADE20K's ``'bed '``, COCO-Stuff's hyphenated stuff names): changing a prompt changes
the number. Sources: GroupViT/CoCu ``segmentation/datasets/*.py``, mmsegmentation 0.x dataset classes.

The lists are data, one name a line in ``class_lists/<name>.txt`` (package data); lines are read as written, so
ADE20K's trailing space survives.
"""

from __future__ import annotations

from importlib.resources import files


def read_class_list(name: str) -> tuple[str, ...]:
    """The names in ``class_lists/<name>.txt``, one a line, nothing stripped but the line ends."""
    text = (files(__package__) / "class_lists" / f"{name}.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


VOC = read_class_list("voc")  # PASCAL VOC 2012, mmseg PascalVOCDataset order; TCL prompts with these names
VOC_GROUPVIT = read_class_list("voc_groupvit")  # GroupViT/CoCu: diningtable -> table, pottedplant -> plant, ...
CONTEXT = read_class_list("context")  # PASCAL Context 60, ids written by mmseg's pascal_context.py converter
CONTEXT_GROUPVIT = read_class_list("context_groupvit")  # GroupViT/CoCu: aeroplane -> airplane, pottedplant -> plant
COCO_OBJECT = read_class_list("coco_object")  # background + the 80 COCO things in COCO id order
COCO_STUFF = read_class_list("coco_stuff")  # COCO-Stuff-164k, mmseg COCOStuffDataset: hyphenated names as they are
CITYSCAPES = read_class_list("cityscapes")  # the 19 train ids
ADE20K = read_class_list("ade20k")  # mmseg ADE20KDataset as is, quirks included ('bed ' with a trailing space)
IMAGENET_S50 = read_class_list("imagenet_s50")  # mmseg/CoCu ImageNetSDataset.CLASSES50
IMAGENET_S300 = read_class_list("imagenet_s300")  # mmseg/CoCu ImageNetSDataset.CLASSES300
VOC20 = VOC[1:]
CONTEXT59 = CONTEXT[1:]
