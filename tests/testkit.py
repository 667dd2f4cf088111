"""Helpers shared by test modules (pytest puts tests/ on sys.path: ``from testkit import ...``)."""

from __future__ import annotations

import json
from pathlib import Path

from cocu.training.recipes import recipe_path

TRAIN_CONFIG = str(recipe_path("tiny-test"))


def tiny_clip_config(width: int, layers: int, image_size: int = 64, context_length: int = 32) -> dict:
    """An open_clip model config small enough for a test: ``width``-wide towers of ``layers`` layers, two heads."""
    vision = {"image_size": image_size, "layers": layers, "width": width, "patch_size": 16, "head_width": width // 2}
    text = {"context_length": context_length, "vocab_size": 49408, "width": width, "heads": 2, "layers": layers}
    return {"embed_dim": width, "vision_cfg": vision, "text_cfg": text}


def save_tiny_clip(folder: Path, name: str, config: dict, seed: int = 1) -> Path:
    """A random-init tiny CLIP saved as a user would: <name>.json beside a state-dict checkpoint."""
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{name}.json")
    torch.manual_seed(seed)
    torch.save(open_clip.create_model(name).state_dict(), folder / "tiny.pt")
    return folder / "tiny.pt"


def fit_args(shards: Path, root: Path, *extra: str) -> list[str]:
    """`cocu-train fit` of the tiny-test recipe on ``shards``, logging under ``root``, no progress bar."""
    return [
        "fit",
        "--config",
        TRAIN_CONFIG,
        "--data.shards",
        str(shards),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def seg_args(checkpoint: Path, dataset: str, root: Path, out: Path, *extra: str) -> list[str]:
    """`cocu-eval seg` of ``checkpoint`` on ``dataset`` under ``root``, written to ``out``."""
    where = ["--checkpoint", str(checkpoint), "--dataset", dataset, "--root", str(root), "--out", str(out)]
    return ["seg", *where, *extra]
