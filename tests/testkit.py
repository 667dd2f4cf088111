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


def save_random_groupvit(path: Path, name: str, overrides: dict | None = None, seed: int = 0, **extra) -> Path:
    """A randomly initialised GroupViT saved as `cocu-train fit` saves one (what `load_groupvit` reads), untrained.

    Every parameter and BatchNorm statistic is perturbed, so zero-initialised group tokens and biases take part too."""
    import torch

    from cocu.training.model import build_model, get_config

    torch.manual_seed(seed)
    model = build_model(get_config(name, overrides))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "groupvit_config": model.config.to_dict(), "global_step": 0, **extra}, path)
    return path
