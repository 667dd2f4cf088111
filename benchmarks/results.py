"""``results.json``: the benchmark's figures for programs (the report lays out the same numbers for people).

Shape::

    {"teacher": {"thing_recall", "stuff_recall", "source", "samples", "curve": [...]},
     "runs": {"<text mode>": {"seeds": [...], "miou": [...], "things": [...], "stuff": [...],
                              "mean": {...}, "std": {...}}},
     "paired": {"<mode> - caption": {"mean", "ci95", "includes_zero", "things": {"mean", "ci95", "includes_zero"},
                                     "images_only_ci95", ...}},   # hierarchical bootstrap: seeds, then images
     "oracle_gap_closed": {"<mode>": share},   # of the caption-to-oracle-all gap
     "curves": {"<label>": [{"samples", "miou", "things", "stuff"}, ...]},
     "grouping": {"<text mode>": {"groups_used_per_image", "group_cosine", "true_labels": {...},
                                  "nearest_text": {...}, "nearest_present_text": {...}, "naming_efficiency"}},
     "seconds": {"<stage>": s}}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cocu.benchmarks.grouping_bound import RECORD_NAME as GROUPING_RECORD
from cocu.benchmarks.paired import PerImage, hierarchical_bootstrap, mean_std, paired_bootstrap
from cocu.curation.core.shards import atomic_write_json

BASELINE = "caption"
CEILING = "oracle-all"  # the oracle the share of the gap closed is measured against
TEACHER_ZERO_SHOT = "teacher-zero-shot.json"  # the shipped teacher measured on this run's world


def run_label(mode: str, seed: int) -> str:
    """The folder and stage-name suffix of one training: ``runs/<mode>-s<seed>``."""
    return f"{mode}-s{seed}"


def group_miou(metrics: dict[str, Any], names: Sequence[str]) -> float | None:
    """Mean IoU (percent) over the classes of ``names`` that occur in the split."""
    values = [metrics["per_class_iou"][n] for n in names if metrics["per_class_iou"].get(n) is not None]
    return float(np.mean(values)) if values else None


def scores(metrics: dict[str, Any], world: dict[str, Any]) -> dict[str, float | None]:
    return {
        "miou": metrics["miou"],
        "things": group_miou(metrics, world["things"]),
        "stuff": group_miou(metrics, world["stuff"]),
    }


def write_results(
    out: Path, cfg: Any, jobs: dict[str, tuple[str, int]], teacher: Path, stages: Sequence[Any]
) -> dict[str, Any]:
    """Gather every run's evaluation into ``OUT/results.json`` and return it."""
    world = json.loads((out / "world" / "world.json").read_text())
    record = json.loads((teacher / "teacher.json").read_text())
    measured = out / TEACHER_ZERO_SHOT
    zero_shot = json.loads(measured.read_text()) if not cfg.retrain_teacher else record.get("zero_shot", {})
    runs: dict[str, dict[str, Any]] = {}
    per_image: dict[str, list[PerImage]] = {}
    for label, (mode, seed) in jobs.items():
        folder = out / "runs" / label / "eval"
        figures = scores(json.loads((folder / "metrics.json").read_text()), world)
        run = runs.setdefault(mode, {"seeds": [], "miou": [], "things": [], "stuff": []})
        run["seeds"].append(seed)
        for key, value in figures.items():
            run[key].append(value)
        per_image.setdefault(mode, []).append(PerImage.load(folder / "per_image.npz"))
    for run in runs.values():
        for key in ("miou", "things", "stuff"):
            values = [v for v in run[key] if v is not None]
            mean, std = mean_std(values) if values else (None, None)
            run.setdefault("mean", {})[key] = mean
            run.setdefault("std", {})[key] = std
    paired = {}
    if BASELINE in per_image:
        things = {"things": [world["classes"].index(name) for name in world["things"]]}
        for mode, evaluations in per_image.items():
            if mode != BASELINE:
                difference = hierarchical_bootstrap(evaluations, per_image[BASELINE], seed=cfg.seed, groups=things)
                images_only = paired_bootstrap(evaluations, per_image[BASELINE], seed=cfg.seed)
                difference["images_only_ci95"] = images_only["ci95"]  # what the val images alone leave open
                paired[f"{mode} - {BASELINE}"] = difference
    results = {
        "teacher": {
            "source": "trained in this run" if cfg.retrain_teacher else f"shipped ({cfg.shipped_teacher})",
            "model": record.get("model"),
            "weights_sha256": record.get("weights_sha256"),
            "samples": record.get("training", {}).get("samples"),
            "thing_recall": zero_shot.get("thing_recall"),
            "stuff_recall": zero_shot.get("stuff_recall"),
            "chance_recall": zero_shot.get("chance_recall"),
            "curve": record.get("learning_curve", []),
        },
        "runs": runs,
        "paired": paired,
        "oracle_gap_closed": gap_closed(runs),
        "curves": curves(out, cfg, world),
        "grouping": grouping(out, cfg, world),
        "seconds": {stage.name: round(stage.seconds, 1) for stage in stages},
    }
    atomic_write_json(out / "results.json", results)
    return results


def gap_closed(runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Share of the caption-to-oracle-all gap (in mean mIoU) each other mode closes; only when oracle-all is ahead."""
    if BASELINE not in runs or CEILING not in runs:
        return {}
    base, oracle = runs[BASELINE]["mean"]["miou"], runs[CEILING]["mean"]["miou"]
    if oracle is None or base is None or oracle <= base:
        return {}
    return {
        mode: round((run["mean"]["miou"] - base) / (oracle - base), 4)
        for mode, run in runs.items()
        if mode not in (BASELINE, CEILING)
    }


def grouping(out: Path, cfg: Any, world: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per mode (first seed): mIoU with each group given its true class, with its nearest class text, and with the
    nearest among the classes the image shows, and with the projector's BatchNorm re-estimated on groups; their
    ratio; the mean cosine between an image's used groups and between the class texts of two things or stuff."""
    found = {}
    for mode in cfg.runs:
        path = out / "runs" / run_label(mode, cfg.seed) / "eval" / GROUPING_RECORD
        if path.is_file():
            record = json.loads(path.read_text())
            true, nearest = scores(record["grouping"], world), scores(record["naming"], world)
            found[mode] = {
                "groups_used_per_image": record["groups_used_per_image"],
                "group_cosine": record.get("group_cosine"),
                "true_labels": true,
                "nearest_text": nearest,
                "nearest_present_text": scores(record["naming_present"], world) if "naming_present" in record else None,
                "nearest_text_bn": scores(record["naming_bn"], world) if "naming_bn" in record else None,
                "text_cosine": record.get("text_cosine"),
                "naming_efficiency": naming_efficiency(nearest["miou"], true["miou"]),
            }
    return found


def naming_efficiency(nearest: float | None, true: float | None) -> float | None:
    """Nearest-text mIoU over true-majority mIoU: the share of what the groups allow that their naming keeps."""
    if nearest is None or true is None or true <= 0:
        return None
    return round(nearest / true, 4)


def curves(out: Path, cfg: Any, world: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """mIoU against samples seen for the runs evaluated at their periodic checkpoints."""
    found: dict[str, list[dict[str, Any]]] = {}
    for mode in cfg.curve_runs:
        if mode not in cfg.runs:
            continue
        label = run_label(mode, cfg.seed)
        points = []
        for folder in sorted((out / "runs" / label / "curve").glob("step-*")):
            step = int(folder.name.split("-")[1])
            points.append({"step": step, "samples": step * cfg.train_batch, **scores(_metrics(folder), world)})
        found[label] = points
    return found


def _metrics(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "metrics.json").read_text())
