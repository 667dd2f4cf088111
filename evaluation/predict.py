"""`cocu-eval predict`: zero-shot segmentation of the user's own pictures against the user's own class names.

Why: ``cocu-eval seg`` needs a benchmark's folder layout and labels; this runs the very same inference (keep-ratio
resize, sliding windows, the groups' soft maps, top-k class masking, optional background threshold and PAMR) on any
pictures, of any size, grey or with alpha, and writes what a person looks at: per picture a palette label PNG of the
picture's own size and an overlay (image | prediction with a class legend), one ``legend.json`` (id, name, colour of
every label value), one ``predictions.json`` (each picture's class shares) and, on request, ``index.html``. A picture
that cannot be read is one line naming it; the others still run.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from cocu.curation.core.configs import option
from cocu.curation.core.errors import CocuError, FileError
from cocu.curation.core.outputs import check_output_folder
from cocu.curation.core.shards import atomic_path, atomic_write_json
from cocu.evaluation.inference import ZeroShotSegmenter, build_text_embeddings
from cocu.evaluation.presets import SIMPLE_TEMPLATES, Preset
from cocu.evaluation.visualize import palette, save_overlay

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
PREDICT_FILES = frozenset({"predictions.json", "legend.json", "labels", "overlays", "index.html"})


@dataclass(frozen=True)
class PredictConfig:
    """What ``cocu-eval predict`` segments into and how (the defaults are the ``groupvit`` VOC geometry)."""

    classes: str | None = option(None, 'Class names, comma-separated: "dog,grass,sky".')
    classes_file: str | None = option(None, "A file of class names, one a line (instead of --classes).")
    background_threshold: float | None = option(
        None,
        "Add a 'background' label: pixels whose best class score is below it (GroupViT's rule; VOC uses 0.95).",
        minimum=0.0,
        maximum=1.0,
    )
    templates: tuple[str, ...] = option(
        SIMPLE_TEMPLATES, "Prompt template with {} for the name; repeat for several (embeddings averaged)."
    )
    short_side: int = option(448, "Pictures are resized (keeping their ratio) to this short side.", minimum=1)
    window: int = option(448, "Sliding window size in pixels (after the resize).", minimum=1)
    stride: int = option(224, "Sliding window stride in pixels.", minimum=1)
    topk: int = option(5, "Keep the top-k classes of each window's image embedding (GroupViT's masking).", minimum=1)
    pamr: bool = option(False, "Refine the masks along image edges with PAMR (as TCL evaluates).")
    batch_size: int = option(16, "Windows per forward pass.", minimum=1)
    device: str = option("auto", "'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    threads: int | None = option(None, "CPU threads for torch (default: torch's choice).", minimum=1)

    def __post_init__(self) -> None:
        bad = [t for t in self.templates if "{}" not in t]
        if bad:
            raise ValueError(f"template {bad[0]!r} has no {{}} for the class name")
        if self.stride > self.window:
            raise ValueError(f"--stride {self.stride} is larger than --window {self.window}")

    def preset(self, names: Sequence[str]) -> Preset:
        return Preset(
            "predict",
            "pictures",
            self.short_side,
            self.window,
            self.stride,
            tuple(names),
            tuple(self.templates),
            self.background_threshold,
            "groupvit",
            topk=self.topk,
            source="cocu-eval predict options",
            pamr=self.pamr,
        )


class PredictError(CocuError):
    """Bad options or inputs of ``cocu-eval predict``, in one line."""


def class_names(config: PredictConfig) -> tuple[str, ...]:
    """The class names from --classes or --classes-file: stripped, none empty, none twice."""
    if (config.classes is None) == (config.classes_file is None):
        raise PredictError("give the class names with --classes or --classes-file (one of the two)")
    if config.classes_file is not None:
        try:
            text = Path(config.classes_file).read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise FileError(config.classes_file, f"cannot read the class names ({type(err).__name__})") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        names = [name.strip() for name in (config.classes or "").split(",") if name.strip()]
    if not names:
        raise PredictError("no class names given")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PredictError(f"class name {repeated[0]!r} is given twice")
    if config.background_threshold is not None and "background" in names:
        raise PredictError("'background' is added by --background-threshold; leave it out of the class names")
    return tuple(names)


def picture_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Each input file as given, each folder's image files (by suffix, sorted); a missing path stays, to fail alone."""
    files: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    return files


def read_picture(path: Path) -> np.ndarray:
    """``H x W x 3`` uint8 RGB, upright (EXIF orientation); grey, palette and alpha pictures are converted."""
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
                flat = Image.new("RGBA", image.size, (255, 255, 255, 255))  # transparent pixels read as white
                image = Image.alpha_composite(flat, image)
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise FileError(path, "no such file") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileError(path, f"not a readable picture ({reason})") from None


def check_predict_folder(out: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> Path:
    """Refuse an --out that overlaps the inputs or holds files predict did not make; clear this command's own."""
    folder = check_output_folder(out, inputs, lambda entry: entry.name in PREDICT_FILES, "cocu-eval predict")
    for sub in ("labels", "overlays"):  # an earlier run's pictures must not mix with this run's
        shutil.rmtree(folder / sub, ignore_errors=True)
    return folder


def predict_pictures(
    model: Any,
    files: Sequence[Path],
    config: PredictConfig,
    out: str | os.PathLike,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Segment every picture, write its label PNG and overlay, then ``predictions.json`` and ``legend.json``."""
    names = class_names(config)
    out = Path(out)
    preset = config.preset(names)
    background = config.background_threshold is not None
    labels = ("background", *names) if background else names
    started = time.perf_counter()
    text = build_text_embeddings(model, names, preset.templates)
    segmenter = ZeroShotSegmenter(model, text, preset, background, config.batch_size)
    colours = palette(len(labels))
    done: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    used: set[str] = set()
    inference = 0.0
    for path in files:
        try:
            image = read_picture(path)
        except FileError as err:
            failed.append({"file": str(path), "error": str(err)})
            report(f"error: {err}")
            continue
        tick = time.perf_counter()
        pred = segmenter.predict([image])[0].numpy()
        inference += time.perf_counter() - tick
        stem = _unique(path.stem, used)
        label_png, overlay_png = out / "labels" / f"{stem}.png", out / "overlays" / f"{stem}.png"
        _write_label_png(label_png, pred, colours)
        save_overlay(overlay_png, image, None, pred, labels, -1, title=path.name, max_legend=len(labels))
        counts = np.bincount(pred.ravel(), minlength=len(labels))
        shares = {labels[c]: round(float(counts[c]) / pred.size, 4) for c in np.argsort(-counts, kind="stable")}
        shares = {name: share for name, share in shares.items() if share > 0}
        done.append(
            {
                "file": str(path),
                "height": int(pred.shape[0]),
                "width": int(pred.shape[1]),
                "labels": str(label_png.relative_to(out)),
                "overlay": str(overlay_png.relative_to(out)),
                "shares": shares,
            }
        )
        top = ", ".join(f"{name} {100 * share:.1f}%" for name, share in list(shares.items())[:4])
        report(f"{path.name} {pred.shape[1]}x{pred.shape[0]}: {top} | {label_png} | {overlay_png}")
    seconds = time.perf_counter() - started
    legend = [{"id": i, "name": name, "rgb": colours[i].tolist()} for i, name in enumerate(labels)]
    record = {
        "classes": list(labels),
        "preset": preset.to_dict(),
        "pictures": done,
        "failed": failed,
        "seconds": round(seconds, 3),
        "inference_seconds": round(inference, 3),
        "pictures_per_second": round(len(done) / seconds, 3) if done and seconds > 0 else None,
        "device": str(segmenter.device),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "legend.json", legend)
    atomic_write_json(out / "predictions.json", record)
    return record


def write_predict_page(out: str | os.PathLike, record: dict[str, Any], title: str = "cocu-eval predict") -> Path:
    """``OUT/index.html``: every picture's overlay with its class shares."""
    from cocu.evaluation.html import write_page

    preset = record["preset"]
    return write_page(
        Path(out) / "index.html",
        "predict.html.j2",
        title=title,
        record=record,
        preset=preset,
        templates="; ".join(preset["templates"]),
    )


def _unique(stem: str, used: set[str]) -> str:
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


def _write_label_png(path: Path, pred: np.ndarray, colours: np.ndarray) -> None:
    """Label ids as a palette PNG (the legend's colours); over 256 labels, a 16-bit grey PNG of the ids."""
    if len(colours) <= 256:
        image = Image.fromarray(pred.astype(np.uint8), mode="P")
        image.putpalette(colours.reshape(-1).tolist())
    else:
        image = Image.fromarray(pred.astype(np.uint16))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
