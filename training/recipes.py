"""The training recipes shipped with cocu (``training/configs/*.yaml``), found as package data so a wheel has them."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def recipe_names() -> list[str]:
    """The names `cocu-train fit --config NAME` accepts besides a file path, e.g. ``synthetic``."""
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in (files("cocu.training") / "configs").iterdir()
        if entry.name.endswith(".yaml")
    )


def recipe_path(name: str) -> Path:
    """The file of a shipped recipe, by name (``synthetic`` or ``synthetic.yaml``)."""
    stem = name.removesuffix(".yaml")
    if stem not in recipe_names():
        raise FileNotFoundError(f"no training recipe named '{name}': cocu ships {', '.join(recipe_names())}")
    return Path(str(files("cocu.training") / "configs" / f"{stem}.yaml"))


def resolve_recipes(args: list[str]) -> list[str]:
    """The arguments with each ``--config NAME`` that is not a file but a shipped recipe replaced by its path."""
    out = list(args)
    for i, arg in enumerate(out):
        value = out[i + 1] if arg == "--config" and i + 1 < len(out) else arg.partition("=")[2]
        if (arg == "--config" or arg.startswith("--config=")) and value and not Path(value).exists():
            if value.removesuffix(".yaml") in recipe_names():
                path = str(recipe_path(value))
                if arg == "--config":
                    out[i + 1] = path
                else:
                    out[i] = f"--config={path}"
    return out
