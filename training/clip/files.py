"""The files of a saved teacher folder."""

from __future__ import annotations

import os
from pathlib import Path


def teacher_files(folder: str | os.PathLike) -> tuple[str, Path]:
    """The model name and weights file of a teacher output folder (``<name>.safetensors`` beside ``<name>.json``)."""
    folder = Path(folder)
    weights = [p for p in sorted(folder.glob("*.safetensors")) if (folder / f"{p.stem}.json").is_file()]
    if len(weights) != 1:
        raise ValueError(f"{folder}: expected one <name>.safetensors beside its <name>.json, found {len(weights)}")
    return weights[0].stem, weights[0]
