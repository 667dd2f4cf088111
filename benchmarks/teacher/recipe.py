"""The benchmark's teacher CLIP: the recipe ``make teacher`` trains, the copy shipped in ``benchmarks/teacher/``.

A user of cocu downloads a pretrained CLIP; the benchmark's stand-in is a CLIP that cocu trained with
``cocu-train clip`` on the world's teacher split and that the repository ships, so ``make benchmark`` spends its
time on the GroupViT runs. ``make teacher`` reproduces it (the exact command is in ``recipe.json``), and
``--retrain-teacher`` trains it inside a benchmark run instead. The folder is an ordinary open_clip checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from cocu.benchmarks.runner import tool
from cocu.curation.core.errors import CocuError
from cocu.curation.core.shards import atomic_write_json, sha256_file
from cocu.curation.inputs.synthetic import WorldConfig
from cocu.training.clip import DEFAULT_MODEL_CONFIG, RECORD_NAME

# in a checkout (and an editable install); a wheel does not carry the weights, and the benchmark then trains them
SHIPPED = Path(__file__).resolve().parent
RECIPE_NAME = "recipe.json"


@dataclass(frozen=True)
class TeacherRecipe:
    """How the teacher is trained: every number that changes its weights. The budget is in samples only."""

    model_config: str = "cocu-teacher-rn64"  # a config shipped in cocu/training/clip/configs
    samples: int = 262_144
    batch: int = 128
    lr: float = 1e-3
    seed: int = 0
    curve_every: int = 16_384  # samples between zero-shot probes of the learning curve
    threads: int = 2

    def config_path(self) -> Path:
        return DEFAULT_MODEL_CONFIG.parent / f"{self.model_config}.json"


def teacher_command(recipe: TeacherRecipe, world: Path, out: Path) -> list[str]:
    """The ``cocu-train clip`` call that trains the teacher on ``world``'s teacher split and scores it on train."""
    return [
        tool("cocu-train"),
        "clip",
        str(world / "teacher"),
        "--out",
        str(out),
        "--model-config",
        str(recipe.config_path()),
        "--samples",
        str(recipe.samples),
        "--batch-size",
        str(recipe.batch),
        "--lr",
        str(recipe.lr),
        "--seed",
        str(recipe.seed),
        "--threads",
        str(recipe.threads),
        "--curve-every",
        str(recipe.curve_every),
        "--eval-world",
        str(world),
        "--eval-split",
        "train",
    ]


# world fields the teacher never sees: the val split is drawn from its own generator and only GroupViT is scored on it
TEACHER_BLIND = ("val",)


def shipped_teacher(world: WorldConfig, recipe: TeacherRecipe, folder: Path = SHIPPED) -> tuple[dict, Path]:
    """The shipped teacher's record and weights, checked: made for this world by this recipe, weights as recorded."""
    recipe_path, record_path = folder / RECIPE_NAME, folder / RECORD_NAME
    if not recipe_path.is_file() or not record_path.is_file():
        raise CocuError(f"{folder}: no shipped teacher here (run `make teacher`, or give --retrain-teacher)")
    made, record = json.loads(recipe_path.read_text()), json.loads(record_path.read_text())
    seen = {k: v for k, v in asdict(world).items() if k not in TEACHER_BLIND}
    shipped_world = {k: v for k, v in made["world"].items() if k not in TEACHER_BLIND}
    for what, shipped, wanted in (("world", shipped_world, seen), ("recipe", made["recipe"], asdict(recipe))):
        if shipped != wanted:
            raise CocuError(
                f"{recipe_path}: the shipped teacher was made with another {what} than this preset's "
                "(give --retrain-teacher, or run `make teacher` for it)"
            )
    weights = folder / record["weights"]
    if sha256_file(weights) != record["weights_sha256"]:
        raise CocuError(f"{weights}: sha256 differs from {record_path}; the file is damaged or not the shipped one")
    return record, weights


def make_teacher(world_cfg: WorldConfig, world: Path, out: Path, recipe: TeacherRecipe = TeacherRecipe()) -> Path:
    """``make teacher``: draw the world (if needed), train the teacher into ``out``, write its recipe beside it."""
    config = world.parent / "world-config.json"
    atomic_write_json(config, asdict(world_cfg))
    subprocess.run([tool("cocu-data"), "synth", str(world), "--config", str(config)], check=True)
    command = teacher_command(recipe, world, out)
    subprocess.run(command, check=True)
    shown = [Path(command[0]).name, *[_relative(part, world, out) for part in command[1:]]]
    atomic_write_json(
        out / RECIPE_NAME,
        {"recipe": asdict(recipe), "world": asdict(world_cfg), "command": " ".join(shown), "python": sys.version},
    )
    return out


def _relative(part: str, world: Path, out: Path) -> str:
    """The command as a user would type it: WORLD and OUT instead of this machine's folders."""
    return (
        part.replace(str(world), "WORLD").replace(str(out), "OUT").replace(str(DEFAULT_MODEL_CONFIG.parent), "CONFIGS")
    )
