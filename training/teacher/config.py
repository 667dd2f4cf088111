"""What a teacher run is told (`TeacherConfig`) and what it yields (`Teacher`); the packaged default model config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch

DEFAULT_MODEL_CONFIG = Path(str(files("cocu.training.teacher") / "configs" / "cocu-teacher-64.json"))
DEFAULT_PROMPT = "a photo of a {}."
RECORD_NAME = "teacher.json"


@dataclass
class TeacherConfig:
    """How to train the teacher. Training stops at ``samples`` or ``max_minutes``, whichever comes
    first; the cosine schedule follows whichever budget is further along, so it always ends at zero."""

    model_config: Path = DEFAULT_MODEL_CONFIG  # open_clip model config JSON; its file stem is the model name
    samples: int | None = 120_000
    max_minutes: float | None = 7.0
    batch_size: int = 128
    lr: float = 1e-3
    warmup: float = 0.05  # share of the run spent warming the learning rate up
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    crop_scale: tuple[float, float] = (0.9, 1.0)  # open_clip's random resized crop; small crops drop named concepts
    gray_scale_prob: float | None = None  # open_clip's augmentations: images without colour must be matched
    color_jitter: tuple[float, float, float, float] | None = (
        None  # by shape and texture (brightness, contrast, saturation, hue)
    )
    color_jitter_prob: float | None = None
    shuffle_buffer: int = 4096
    workers: int = 1  # DataLoader processes decoding JPEGs; 0 decodes in the training process
    threads: int | None = None  # torch CPU threads for the training process; None keeps torch's default
    seed: int = 0
    device: str = "auto"  # auto: CUDA when available (bf16 autocast), else CPU
    log_every: int = 20  # steps between loss-curve points in teacher.json
    eval_world: Path | None = None  # world folder whose truth scores the zero-shot evaluation; None skips it
    eval_split: str = "train"
    eval_images: int = 2000
    prompt: str = DEFAULT_PROMPT
    progress: bool = True

    def __post_init__(self) -> None:
        if self.samples is None and self.max_minutes is None:
            raise ValueError("set samples, max_minutes or both: training needs a budget")
        if (self.samples is not None and self.samples < 1) or (self.max_minutes is not None and self.max_minutes <= 0):
            raise ValueError("samples and max_minutes must be positive")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 for a contrastive loss")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError("warmup is a share of the run, in [0, 1)")


@dataclass
class Teacher:
    """A freshly trained CLIP with what it needs to embed (eval transform, tokenizer) and its training record."""

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    name: str
    model_config: dict
    stats: dict
