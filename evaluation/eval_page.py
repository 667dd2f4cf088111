"""One HTML page per evaluation (``cocu-eval seg --html`` / ``cocu-eval show``): metrics, per-class IoU, overlays.

The page is written from what the evaluation left in its folder (``metrics.json`` and ``overlays/``),
so it can be made again at any time without the model, and it sits beside them so its links are relative.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cocu.evaluation.html import write_page

PAGE = "index.html"


def _value(percent: float | None) -> str:
    return "-" if percent is None else f"{percent:.2f}"


def class_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-class IoU and accuracy in label-id order; a class absent from labels and predictions has no bar."""
    accuracy = record.get("per_class_accuracy", {})
    return [
        {
            "name": name.strip() or repr(name),
            "iou": _value(iou),
            "absent": iou is None,
            "width": 0.0 if iou is None else max(0.0, min(iou, 100.0)),
            "accuracy": _value(accuracy.get(name)),
        }
        for name, iou in record["per_class_iou"].items()
    ]


def write_eval_page(folder: str | os.PathLike) -> Path:
    """``FOLDER/index.html`` from ``FOLDER/metrics.json`` and the overlay PNGs beside it."""
    folder = Path(folder)
    metrics = folder / "metrics.json"
    try:
        record = json.loads(metrics.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{metrics}: no such file (run `cocu-eval seg --out {folder}` first)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{metrics}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if "per_class_iou" not in record or "miou" not in record:
        raise ValueError(f"{metrics}: not a cocu-eval record (no 'miou' / 'per_class_iou')")
    preset = record.get("preset", {})
    checkpoint = record.get("checkpoint", {})
    overlays = sorted(p.relative_to(folder).as_posix() for p in (folder / "overlays").glob("*.png"))
    summary = [
        ("dataset", record.get("dataset_title", record.get("dataset", "-"))),
        ("preset", preset.get("name", "-")),
        ("images", f"{record.get('images', '-')} / {record.get('split_size', '-')}"),
        ("mIoU", _value(record["miou"])),
        ("pixel accuracy", _value(record.get("pixel_accuracy"))),
        ("mean accuracy", _value(record.get("mean_accuracy"))),
        ("classes counted", f"{record.get('classes_counted', '-')} of {len(record['per_class_iou'])}"),
        ("images/s", f"{record.get('images_per_second', '-')} on {record.get('device', '-')}"),
        ("checkpoint", f"{Path(checkpoint.get('path', '-')).name} {checkpoint.get('sha256', '')[:12]}".strip()),
    ]
    title = f"Zero-shot segmentation: {record.get('dataset_title', record.get('dataset', ''))}"
    return write_page(
        folder / PAGE,
        "eval.html.j2",
        title=title,
        summary=summary,
        classes=class_rows(record),
        overlays=overlays,
        preset=preset,
    )
