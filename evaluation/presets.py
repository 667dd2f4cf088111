"""Zero-shot segmentation settings per benchmark: the one table every result is tied to.

Two harnesses are in use in the literature and their numbers do not compare (groupvit.md §4.2, §5.4):

- ``groupvit``: the GroupViT/CoCu configs (``segmentation/configs/_base_/datasets/*.py``). Short side
  448 and 448/224 windows for VOC, Context, COCO-Object and ImageNet-S; CoCu's own settings for the
  background-free sets (COCO-Stuff and ADE20K at short side 512 with 224/112 windows, Cityscapes at
  full resolution 2048x1024 with 448/224 windows). One template, "a photo of a {}.". Background is
  predicted by GroupViT's threshold rule (``min(bg_thresh, best group score)``).
- ``tcl``: TCL's unified 8-benchmark harness: short side 448, 448/224 windows everywhere, mmseg's raw
  class names, its ``custom`` 9 templates, PAMR refinement on (``evaluation/pamr.py``) and TCL's constant
  background score of 0.4 (the value TCL pairs with PAMR; its paper's 0.5 is without PAMR). VOC20 and Context59 are
  its background-free variants (background pixels ignored).

``synthetic`` is cocu's own world (64 px images, 24 or 52 classes, no background): the whole image is one
window at short side 64 with stride 32, which is how a model trained at 64 px sees it. It shares the
geometry between both harnesses; only the templates differ.

Every ``metrics.json`` records the full preset (``Preset.to_dict``), so a number is never separated
from the settings that produced it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from cocu.evaluation import classnames as cn

BackgroundRule = Literal["groupvit", "constant"]

SIMPLE_TEMPLATES = ("a photo of a {}.",)
# TCL datasets/templates.py ``custom``: the 7 "subset" ImageNet templates + 2
# (its comment: "boosts performance a little").
TCL_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "a photo of many {}.",
    "a photo of {}s.",
)


TemplateAverage = Literal["normalized", "release"]
# the template sets ``cocu-eval seg --templates`` can put in place of a preset's own
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "clip80": tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES),  # what GroupViT's prompts train with
}
TEMPLATE_AVERAGES: tuple[str, ...] = ("normalized", "release")


@dataclass(frozen=True)
class Preset:
    """How one benchmark is evaluated: resize, windows, background rule, prompts.

    ``classes`` are the prompt names, label-id order, ``'background'`` first when the dataset has one
    (that entry is never prompted). ``None`` means the dataset's own names (the synthetic world's
    ``classes.txt``).
    """

    harness: str
    dataset: str
    short_side: int  # mmseg img_scale=(long_side, short_side), keep_ratio: scale = min(long/L, short/S)
    crop: int
    stride: int
    classes: tuple[str, ...] | None
    templates: tuple[str, ...]
    bg_thresh: float | None = None  # None: the dataset has no background class
    bg_rule: BackgroundRule = "groupvit"
    long_side: int = 2048
    topk: int = 5  # image-level class prior: keep the top-k classes per window (GroupViT's top-5 masking)
    source: str = ""
    pamr: bool = False  # refine each window's class scores with PAMR before the background channel
    # several templates: "normalized" averages the L2-normalised prompt embeddings (CLIP's zero-shot rule), "release"
    # the raw projector outputs (GroupViT's and the CoCu release's build_text_embedding); the class embedding is
    # normalised either way, and one template gives the same embedding under both
    template_average: TemplateAverage = "normalized"

    @property
    def name(self) -> str:
        return f"{self.harness}/{self.dataset}"

    def prompt_classes(self, dataset_classes: tuple[str, ...], has_background: bool) -> tuple[str, ...]:
        """The foreground class names to embed, checked against the dataset's label count."""
        names = self.classes if self.classes is not None else tuple(dataset_classes)
        if len(names) != len(dataset_classes):
            raise ValueError(
                f"preset {self.name} names {len(names)} classes but the dataset has {len(dataset_classes)}"
            )
        if has_background:
            if self.bg_thresh is None:
                raise ValueError(
                    f"preset {self.name} has no background threshold but the dataset has a background class"
                )
            return names[1:]
        return names

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["name"] = self.name
        record["classes"] = list(self.classes) if self.classes is not None else None
        record["templates"] = list(self.templates)
        return record


def _gv(dataset: str, short_side: int, crop: int, stride: int, classes, bg_thresh=None, source="") -> Preset:
    return Preset(
        "groupvit", dataset, short_side, crop, stride, classes, SIMPLE_TEMPLATES, bg_thresh, "groupvit", source=source
    )


def _tcl(dataset: str, classes, bg_thresh=None, short_side: int = 448, crop: int = 448, stride: int = 224) -> Preset:
    return Preset(
        "tcl",
        dataset,
        short_side,
        crop,
        stride,
        classes,
        TCL_TEMPLATES,
        bg_thresh,
        "constant",
        source="TCL segmentation/configs/_base_/datasets + configs/eval.yml (PAMR on, background 0.4)",
        pamr=True,
    )


_GV = "GroupViT/CoCu segmentation/configs/_base_/datasets/"
SEGMENTATION_PRESETS: dict[str, dict[str, Preset]] = {
    "groupvit": {
        p.dataset: p
        for p in (
            _gv("voc", 448, 448, 224, cn.VOC_GROUPVIT, 0.95, _GV + "pascal_voc12.py (paper: 0.9)"),
            _gv("context", 448, 448, 224, cn.CONTEXT_GROUPVIT, 0.35, _GV + "pascal_context.py (paper: 0.5)"),
            _gv("coco_object", 448, 448, 224, cn.COCO_OBJECT, 0.95, _GV + "coco.py"),
            _gv("coco_stuff", 512, 224, 112, cn.COCO_STUFF, None, _GV + "coco_stuff.py (CoCu)"),
            _gv("cityscapes", 1024, 448, 224, cn.CITYSCAPES, None, _GV + "cityscapes.py (CoCu, img_scale 2048x1024)"),
            _gv("ade20k", 512, 224, 112, cn.ADE20K, None, _GV + "ade.py (CoCu)"),
            _gv("imagenet_s50", 448, 448, 224, cn.IMAGENET_S50, 0.95, _GV + "imagenet-s-50.py (CoCu)"),
            _gv("imagenet_s300", 448, 448, 224, cn.IMAGENET_S300, 0.75, _GV + "imagenet-s-300.py (CoCu)"),
            _gv("synthetic", 64, 64, 32, None, None, "cocu: the synthetic world's 64 px, one window per image"),
        )
    },
    "tcl": {
        p.dataset: p
        for p in (
            _tcl("voc", cn.VOC, 0.4),
            _tcl("voc20", cn.VOC20),
            _tcl("context", cn.CONTEXT, 0.4),
            _tcl("context59", cn.CONTEXT59),
            _tcl("coco_object", cn.COCO_OBJECT, 0.4),
            _tcl("coco_stuff", cn.COCO_STUFF),
            _tcl("cityscapes", cn.CITYSCAPES),
            _tcl("ade20k", cn.ADE20K),
            _tcl("synthetic", None, short_side=64, crop=64, stride=32),
        )
    },
}


def get_preset(harness: str, dataset: str) -> Preset:
    """Look a preset up; an unknown pair names what exists."""
    if harness not in SEGMENTATION_PRESETS:
        raise KeyError(f"unknown preset '{harness}' (known: {', '.join(SEGMENTATION_PRESETS)})")
    table = SEGMENTATION_PRESETS[harness]
    if dataset not in table:
        others = [h for h, t in SEGMENTATION_PRESETS.items() if dataset in t]
        hint = f"; '{dataset}' has presets: {', '.join(others)}" if others else ""
        raise KeyError(
            f"preset '{harness}' has no setting for dataset '{dataset}' (it covers: {', '.join(table)}){hint}"
        )
    return table[dataset]
