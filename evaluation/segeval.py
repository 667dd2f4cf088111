"""Evaluate a GroupViT on one benchmark split under one preset: the loop behind ``cocu-eval seg``.

Images stream through the reader (optionally in DataLoader workers); windows from several images are
batched through the model; the metric accumulates per image, so memory does not grow with the split.
The record returned is what ``metrics.json`` holds; ``write_metrics`` adds the Markdown table.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from cocu.curation.core.configs import option
from cocu.curation.core.outputs import SIDE_FILES, check_output_folder, is_cocu_folder, is_eval_record
from cocu.curation.core.shards import atomic_path, atomic_write_bytes
from cocu.evaluation.datasets import FolderDataset, Sample
from cocu.evaluation.inference import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Tokenizer,
    ZeroShotSegmenter,
    build_text_embeddings,
    rescale_size,
    slide_windows,
)
from cocu.evaluation.metrics import SegMetric, prepare_label
from cocu.evaluation.presets import TEMPLATE_AVERAGES, TEMPLATE_SETS, Preset
from cocu.evaluation.visualize import save_overlay


@dataclass(frozen=True)
class EvalConfig:
    """How ``cocu-eval seg`` runs (none of it changes a score but ``pamr``, which goes into the recorded preset;
    ``limit`` changes which images are scored)."""

    batch_size: int = option(16, "Windows per forward pass.", minimum=1)
    workers: int = option(0, "DataLoader processes decoding images.", minimum=0)
    limit: int | None = option(None, "Evaluate only the first N images (recorded in metrics.json).", minimum=1)
    save_images: int = option(0, "Write image | ground truth | prediction PNGs for the first N images.", minimum=0)
    per_image: bool = option(
        False, "Also write OUT/per_image.npz: each image's per-class intersection and union.", flags=("--per-image",)
    )
    device: str = option("auto", "'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    threads: int | None = option(
        None, "CPU threads for torch (default: torch's choice); 1 is faster on a busy shared CPU.", minimum=1
    )
    pamr: bool | None = option(
        None,
        "Refine masks with PAMR (default: the preset's; tcl has it on). Recorded in metrics.json's preset.",
        flags=("--pamr/--no-pamr",),
    )
    templates: str | None = option(
        None,
        "Prompt templates in place of the preset's: 'clip80' (the 80 CLIP ImageNet templates the multi-label "
        "prompts train with). Recorded in metrics.json's preset.",
        choices=tuple(TEMPLATE_SETS),
    )
    template_average: str | None = option(
        None,
        "With several templates: 'normalized' (CLIP's mean of normalised embeddings) or 'release' (GroupViT's and "
        "the CoCu release's mean of raw ones); default the preset's. Recorded in metrics.json's preset.",
        choices=TEMPLATE_AVERAGES,
    )


def evaluate(
    model: Any,
    dataset: FolderDataset,
    preset: Preset,
    config: EvalConfig = EvalConfig(),
    *,
    out_dir: str | os.PathLike | None = None,
    tokenize: Tokenizer | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    progress: bool = True,
) -> dict[str, Any]:
    """Run zero-shot segmentation over the split (or its first ``limit`` images) and score it.

    ``config.per_image`` keeps each image's per-class intersection and union (``record["per_image"]``, arrays that
    ``write_metrics`` stores as ``per_image.npz``): what a paired bootstrap over images needs."""
    batch_size, workers, limit, save_images = config.batch_size, config.workers, config.limit, config.save_images
    per_image = config.per_image
    if save_images and out_dir is None:
        raise ValueError("save_images needs out_dir")
    if config.pamr is not None:
        preset = replace(preset, pamr=config.pamr)
    if config.templates is not None:
        preset = replace(preset, templates=TEMPLATE_SETS[config.templates])
    if config.template_average is not None:
        preset = replace(preset, template_average=config.template_average)
    started = time.perf_counter()
    prompts = preset.prompt_classes(dataset.classes, dataset.has_background)
    text = build_text_embeddings(model, prompts, preset.templates, tokenize, average=preset.template_average)
    text_seconds = time.perf_counter() - started
    segmenter = ZeroShotSegmenter(model, text, preset, dataset.has_background, batch_size, mean, std)
    metric = SegMetric(len(dataset.classes), dataset.ignore_index, dataset.reduce_zero_label)
    source: Dataset[Sample] = dataset if limit is None else Subset(dataset, range(min(limit, len(dataset))))
    total = len(dataset) if limit is None else min(limit, len(dataset))
    loader = DataLoader(source, batch_size=None, num_workers=workers, collate_fn=_identity)  # one sample at a time
    overlays = _staged_overlays(Path(out_dir)) if save_images and out_dir is not None else None
    saved = windows = 0
    kept: dict[str, list] = {"names": [], "intersect": [], "union": []}
    started = time.perf_counter()
    with tqdm(total=total, unit="img", desc=f"seg {dataset.name}", disable=not progress, dynamic_ncols=True) as bar:
        for chunk in _window_batches(loader, preset, batch_size):
            names, images, labels = zip(*chunk)
            for name, image, label, pred in zip(names, images, labels, segmenter.predict(images)):
                pred = _to_label_size(pred, label.shape)
                inter, union = metric.update(pred, label)
                if per_image:
                    kept["names"].append(name)
                    kept["intersect"].append(inter.numpy())
                    kept["union"].append(union.numpy())
                if overlays is not None and saved < save_images:
                    target = prepare_label(label, dataset.reduce_zero_label).numpy()
                    save_overlay(
                        overlays / f"{saved:04d}_{name.replace('/', '_')}.png",
                        _at_label_size(image, label.shape),
                        target,
                        pred.numpy(),
                        dataset.classes,
                        dataset.ignore_index,
                        title=f"{name} ({preset.name})",
                    )
                    saved += 1
            windows += sum(_window_count(image, preset) for image in images)
            bar.update(len(chunk))
            bar.set_postfix(mIoU=f"{metric.compute().miou:.1f}")
    seconds = time.perf_counter() - started
    scores = metric.compute()
    record = {
        "dataset": dataset.name,
        "dataset_title": dataset.layout.title,
        "root": str(dataset.root),
        "label_source": dataset.label_source,
        "split_size": len(dataset),
        "limit": limit,
        "preset": preset.to_dict(),
        **scores.to_dict(dataset.classes),
        "images_per_second": round(scores.images / seconds, 3) if seconds > 0 else None,
        "seconds": round(seconds, 3),
        "text_embedding_seconds": round(text_seconds, 3),
        "windows": windows,
        "batch_size": batch_size,
        "device": str(segmenter.device),
        "threads": torch.get_num_threads(),
        "normalization": {"mean": list(mean), "std": list(std)},
        "overlays": saved,
    }
    if per_image:
        empty = np.zeros((0, len(dataset.classes)), np.int64)
        record["per_image"] = {
            "names": np.array(kept["names"]),
            "intersect": np.stack(kept["intersect"]) if kept["names"] else empty,
            "union": np.stack(kept["union"]) if kept["names"] else empty,
        }
    return record


EVAL_FILES = frozenset({"metrics.json", "results.md", "index.html", "overlays", "per_image.npz"})
STAGED_OVERLAYS = ".overlays.tmp"  # this run's overlays until write_metrics publishes them with the metrics


def check_eval_folder(out: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> None:
    """Refuse an --out that overlaps the checkpoint or the dataset, or holds files ``cocu-eval seg`` did not make
    (a user's index.html or results.md): one line, before the model is loaded."""
    folder = Path(out)
    ours = is_eval_record(folder / "metrics.json")

    def made(entry: Path) -> bool:
        return (ours and entry.name in EVAL_FILES) or entry.name in SIDE_FILES or is_cocu_folder(entry)

    check_output_folder(folder, inputs, made, "cocu-eval seg")


def _staged_overlays(out: Path) -> Path:
    staged = out / STAGED_OVERLAYS
    shutil.rmtree(staged, ignore_errors=True)  # a killed run's
    return staged


def _publish_overlays(out: Path) -> None:
    """This run's overlays replace the folder's, so a rerun with fewer --save-images shows no old overlay."""
    staged, overlays = out / STAGED_OVERLAYS, out / "overlays"
    if not staged.exists() and not overlays.exists():
        return
    old = out / f".overlays.old.{os.getpid()}.tmp"
    if overlays.exists():
        os.replace(overlays, old)
    if staged.exists():
        os.replace(staged, overlays)
    shutil.rmtree(old, ignore_errors=True)


def write_metrics(record: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``metrics.json`` and ``results.md`` under ``out_dir``, each written atomically (and ``per_image.npz``
    when the record kept per-image areas); this run's overlays replace the folder's."""
    out = Path(out_dir)
    record = dict(record)
    per_image = record.pop("per_image", None)
    if per_image is not None:
        with atomic_path(out / "per_image.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **per_image)
    metrics_path, table_path = out / "metrics.json", out / "results.md"
    # not sorted: per-class entries stay in label-id order
    atomic_write_bytes(metrics_path, (json.dumps(record, indent=2) + "\n").encode())
    atomic_write_bytes(table_path, markdown_table(record).encode())
    _publish_overlays(out)
    return metrics_path, table_path


def markdown_table(record: dict[str, Any]) -> str:
    preset = record["preset"]
    checkpoint = record.get("checkpoint", {})
    bg = "none" if preset["bg_thresh"] is None else f"{preset['bg_thresh']} ({preset['bg_rule']})"
    lines = [
        f"# Zero-shot segmentation: {record['dataset_title']}",
        "",
        "| dataset | preset | images | mIoU | pixel acc. | mean acc. | images/s | checkpoint |",
        "|---|---|---|---|---|---|---|---|",
        f"| {record['dataset']} | {preset['name']} | {record['images']} / {record['split_size']} | "
        f"{_pct(record['miou'])} | {_pct(record['pixel_accuracy'])} | {_pct(record['mean_accuracy'])} | "
        f"{record['images_per_second']} | {Path(checkpoint.get('path', '-')).name} "
        f"`{checkpoint.get('sha256', '-')[:12]}` |",
        "",
        f"Preset `{preset['name']}`: short side {preset['short_side']} (long side at most {preset['long_side']}), "
        f"window {preset['crop']}, stride {preset['stride']}, background {bg}, top-{preset['topk']} class masking, "
        f"PAMR {'on' if preset.get('pamr') else 'off'}, "
        f"{len(preset['templates'])} template(s): {'; '.join(json.dumps(t) for t in preset['templates'])}. "
        f"Source: {preset['source']}. Device {record['device']}.",
        "",
        f"## Per-class IoU ({record['classes_counted']} of {len(record['per_class_iou'])} classes occur)",
        "",
        "| class | IoU | accuracy |",
        "|---|---|---|",
    ]
    for name, iou in record["per_class_iou"].items():
        shown = json.dumps(name) if name != name.strip() else name  # ADE's "bed " keeps its quotes
        lines.append(f"| {_cell(shown)} | {_pct(iou)} | {_pct(record['per_class_accuracy'][name])} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text for one Markdown table cell: a ``|`` or a line break would end the cell (or the table)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _identity(sample: Sample) -> Sample:
    return sample


def _window_count(image: np.ndarray, preset: Preset) -> int:
    height, width = image.shape[:2]
    h, w = rescale_size(height, width, preset.short_side, preset.long_side)
    return len(slide_windows(h, w, preset.crop, preset.stride))


def _window_batches(samples: Iterable[Sample], preset: Preset, batch_size: int) -> Iterator[list[Sample]]:
    """Group consecutive images until their windows fill a model batch (one image when it alone has enough)."""
    chunk: list[Sample] = []
    count = 0
    for sample in samples:
        chunk.append(sample)
        count += _window_count(sample[1], preset)
        if count >= batch_size:
            yield chunk
            chunk, count = [], 0
    if chunk:
        yield chunk


def _to_label_size(pred: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """ImageNet-S: predictions of down-sampled images go back to the label's size, nearest (mmseg ``pre_eval``)."""
    if tuple(pred.shape) == tuple(shape):
        return pred
    return F.interpolate(pred[None, None].float(), size=tuple(shape), mode="nearest")[0, 0].long()


def _at_label_size(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if image.shape[:2] == tuple(shape):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    return F.interpolate(tensor, size=tuple(shape), mode="nearest")[0].permute(1, 2, 0).byte().numpy()
