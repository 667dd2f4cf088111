"""What a teacher run is told (`TeacherConfig`) and what it yields (`Teacher`); the packaged default model config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from cocu.curation.bank.clip import OpenClipModel
from cocu.curation.core.configs import option
from cocu.curation.core.errors import CocuError

DEFAULT_MODEL_CONFIG = Path(str(files("cocu.training.clip") / "configs" / "cocu-teacher-64.json"))
DEFAULT_PROMPT = "a photo of a {}."
RECORD_NAME = "teacher.json"


@dataclass
class TeacherConfig:
    """How to train the teacher. The budget is ``samples``: the cosine schedule and the result depend on it alone.
    ``deadline_minutes`` only guards a run that is far slower than expected: past it, training stops with
    ``TeacherDeadline`` instead of returning a shorter-trained teacher."""

    model_config: Path = option(DEFAULT_MODEL_CONFIG, "open_clip model config JSON; its file stem is the model name.")
    samples: int = option(120_000, "Training samples to see: the whole budget.", minimum=1)
    deadline_minutes: float | None = option(
        None, "Stop with an error past this many minutes (default: no deadline); never shortens training."
    )
    batch_size: int = option(128, "Images per step (at least 2: the loss is contrastive).", minimum=2)
    lr: float = option(1e-3, "Peak AdamW learning rate (linear warmup, cosine to zero).")
    warmup: float = 0.05  # share of the run spent warming the learning rate up
    weight_decay: float = option(0.1, "AdamW weight decay (not on gains, biases, embeddings, the temperature).")
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    crop_scale: tuple[float, float] = (0.9, 1.0)  # open_clip's random resized crop; small crops drop named concepts
    gray_scale_prob: float | None = None  # open_clip's augmentations: images without colour must be matched
    # by shape and texture (brightness, contrast, saturation, hue)
    color_jitter: tuple[float, float, float, float] | None = None
    color_jitter_prob: float | None = None
    shuffle_buffer: int = 4096
    workers: int = option(1, "DataLoader processes decoding images (0: in the training process).", minimum=0)
    threads: int | None = option(None, "torch CPU threads (default: torch's, one per core).", minimum=1)
    seed: int = option(0, "Seed of the initialisation, the shuffle and the augmentations.")
    device: str = option("auto", "auto (CUDA when available, bf16 autocast), cpu, cuda, cuda:1 ...")
    log_every: int = 20  # steps between loss-curve points in teacher.json
    eval_world: Path | None = None  # world folder whose truth scores the zero-shot evaluation; None skips it
    eval_split: str = option("train", "Split of the eval world whose truth says what each image shows.")
    eval_images: int = option(2000, "Images to evaluate (0: skip the evaluation).", minimum=0)
    curve_every: int | None = None  # samples between zero-shot probes of the learning curve (needs eval_world)
    curve_images: int = 500  # images per probe
    prompt: str = option(DEFAULT_PROMPT, "Zero-shot prompt template.")
    progress: bool = True

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError("samples must be positive: the teacher's budget is in samples")
        if self.deadline_minutes is not None and self.deadline_minutes <= 0:
            raise ValueError("deadline_minutes must be positive (or None: no deadline)")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 for a contrastive loss")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError("warmup is a share of the run, in [0, 1)")
        if self.curve_every is not None and (self.curve_every < 1 or self.eval_world is None):
            raise ValueError("curve_every needs a positive number of samples and an eval_world")


class TeacherDeadline(CocuError):
    """The run passed its wall-clock deadline: stopping is safer than a teacher trained on fewer samples than asked."""


@dataclass
class Teacher:
    """A freshly trained CLIP with what it needs to embed (eval transform, tokenizer) and its training record."""

    model: OpenClipModel
    preprocess: Callable
    tokenizer: Callable
    name: str
    model_config: dict
    stats: dict
