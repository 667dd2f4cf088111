"""The teacher CLIP: an open_clip model trained on a fully-captioned split, saved as a normal checkpoint.

CoCu ranks concepts with a pretrained CLIP. On an offline machine none can be downloaded, so cocu
trains one on the synthetic world's ``teacher/`` split, whose captions name everything visible, and
hands it to curation through the same open_clip call a user makes for ``ViT-B-16`` / ``openai``.
The output folder is an ordinary open_clip checkpoint::

    OUT/<name>.json                  model config; open_clip.add_model_config(it) registers <name>
    OUT/<name>.safetensors           weights: create_model_and_transforms(<name>, pretrained=this file)
    OUT/open_clip_config.json        with open_clip_model.safetensors (a hard link): 'local-dir:OUT'
    OUT/teacher.json                 training record and the zero-shot evaluation

The zero-shot evaluation ranks every class name of the world ("a photo of a {}.") for images whose
present concepts are known (the world's truth sidecar), which says how much the teacher knows.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import open_clip
import pyarrow as pa
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchmetrics.functional.classification import multilabel_average_precision
from tqdm.auto import tqdm

from cocu.curation.clip import decode_image, load_clip, register_config_file
from cocu.curation.shards import (ShardError, atomic_path, atomic_write_json, check_schema, expand_shards,
                                  iter_batches, open_parquet, sha256_file)

DEFAULT_MODEL_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "clip" / "cocu-teacher-64.json"
DEFAULT_PROMPT = "a photo of a {}."
LOCAL_DIR_WEIGHTS = "open_clip_model.safetensors"  # the name open_clip's 'local-dir:' loader prefers
RECORD_NAME = "teacher.json"
TRUTH_COLUMNS = {"key": (pa.string(), pa.large_string()), "present": (pa.list_(pa.string()), pa.large_list(pa.string())),
                 "salient": (pa.string(), pa.large_string())}


@dataclass
class TeacherConfig:
    """How to train the teacher. Training stops at ``samples`` or ``max_minutes``, whichever comes
    first; the cosine schedule follows whichever budget is further along, so it always ends at zero."""

    model_config: Path = DEFAULT_MODEL_CONFIG  # open_clip model config JSON; its file stem is the model name
    samples: int | None = 120_000
    max_minutes: float | None = 7.0
    batch_size: int = 128
    lr: float = 1e-3
    warmup: float = 0.05  # share of the run spent warming the learning rate up
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    crop_scale: tuple[float, float] = (0.9, 1.0)  # open_clip's random resized crop; small crops drop named concepts
    gray_scale_prob: float | None = None  # open_clip's augmentations: images without colour must be matched
    color_jitter: tuple[float, float, float, float] | None = None  # by shape and texture (brightness, contrast, saturation, hue)
    color_jitter_prob: float | None = None
    shuffle_buffer: int = 4096
    workers: int = 1  # DataLoader processes decoding JPEGs; 0 decodes in the training process
    threads: int | None = None  # torch CPU threads for the training process; None keeps torch's default
    seed: int = 0
    device: str = "auto"  # auto: CUDA when available (bf16 autocast), else CPU
    log_every: int = 20  # steps between loss-curve points in teacher.json
    eval_world: Path | None = None  # world folder whose truth scores the zero-shot evaluation; None skips it
    eval_split: str = "train"
    eval_images: int = 2000
    prompt: str = DEFAULT_PROMPT
    progress: bool = True

    def __post_init__(self) -> None:
        if self.samples is None and self.max_minutes is None:
            raise ValueError("set samples, max_minutes or both: training needs a budget")
        if (self.samples is not None and self.samples < 1) or (self.max_minutes is not None and self.max_minutes <= 0):
            raise ValueError("samples and max_minutes must be positive")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 for a contrastive loss")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError("warmup is a share of the run, in [0, 1)")


@dataclass
class Teacher:
    """A freshly trained CLIP with what it needs to embed (eval transform, tokenizer) and its training record."""

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    name: str
    model_config: dict
    stats: dict


# ---------------------------------------------------------------------------------------------
# Model configs


def teacher_files(folder: str | os.PathLike) -> tuple[str, Path]:
    """The model name and weights file of a teacher output folder (``<name>.safetensors`` beside ``<name>.json``)."""
    folder = Path(folder)
    weights = [p for p in sorted(folder.glob("*.safetensors")) if (folder / f"{p.stem}.json").is_file()]
    if len(weights) != 1:
        raise ValueError(f"{folder}: expected one <name>.safetensors beside its <name>.json, found {len(weights)}")
    return weights[0].stem, weights[0]


# ---------------------------------------------------------------------------------------------
# Data


class TeacherShards(IterableDataset):
    """Endless, shuffled stream of (image tensor, caption tokens) over Parquet shards.

    Each epoch visits the shards in a new order; record batches are dealt round-robin to the
    DataLoader workers, which decode and transform them and mix samples through a shuffle buffer.
    A bad row ends the stream with a ShardError item naming its file and row.
    """

    def __init__(self, shards: Sequence[Path], transform: Callable, tokenizer: Callable, shuffle_buffer: int = 4096,
                 seed: int = 0, read_batch: int = 256):
        self.shards = list(shards)
        self.rows = sum(open_parquet(path).metadata.num_rows for path in self.shards)
        self.transform, self.tokenizer = transform, tokenizer
        self.shuffle_buffer, self.seed, self.read_batch = max(1, shuffle_buffer), seed, read_batch

    def _rows(self, epoch: int, worker: int, workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor] | ShardError]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        unit = 0
        for index in order:
            path, start = self.shards[index], 0
            for batch in iter_batches(path, batch_size=self.read_batch, columns=["key", "jpg", "caption"]):
                mine, unit = unit % workers == worker, unit + 1
                if mine:
                    captions = batch.column("caption").to_pylist()
                    for offset, caption in enumerate(captions):
                        if caption is None or not caption.strip():
                            yield ShardError(path, "empty caption", row=start + offset)
                            return
                    tokens = self.tokenizer(captions)
                    for offset, jpg in enumerate(batch.column("jpg").to_pylist()):
                        try:
                            image = self.transform(decode_image(jpg))
                        except ValueError as err:
                            yield ShardError(path, str(err), row=start + offset)
                            return
                        yield image, tokens[offset]
                start += batch.num_rows

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = np.random.default_rng([self.seed, 1 + worker])
        size = max(1, min(self.shuffle_buffer, self.rows) // workers)  # never mix more than one epoch
        buffer: list = []
        epoch = 0
        while True:
            produced = 0
            for item in self._rows(epoch, worker, workers):
                if isinstance(item, ShardError):
                    yield item
                    return
                produced += 1
                if len(buffer) < size:
                    buffer.append(item)
                    continue
                slot = int(rng.integers(size))
                yield buffer[slot]
                buffer[slot] = item
            if produced == 0:
                return  # more workers than record batches: nothing for this one
            epoch += 1


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor] | ShardError:
    for item in items:
        if isinstance(item, ShardError):
            return item
    images, tokens = zip(*items)
    return torch.stack(images), torch.stack(tokens)


def _check_shards(shards: Sequence[Path]) -> int:
    rows = 0
    for path in shards:
        parquet = open_parquet(path)
        check_schema(path, parquet.schema_arrow)
        rows += parquet.metadata.num_rows
    return rows


# ---------------------------------------------------------------------------------------------
# Training


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _lr_at(progress: float, base: float, warmup: float) -> float:
    """Linear warmup then cosine decay to zero, as a function of the share of the budget spent."""
    if progress < warmup:
        return base * progress / warmup
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / (1.0 - warmup))))


def _augmentation(cfg: TeacherConfig) -> dict:
    aug: dict[str, Any] = {"scale": tuple(cfg.crop_scale)}
    if cfg.gray_scale_prob:
        aug["gray_scale_prob"] = cfg.gray_scale_prob
    if cfg.color_jitter_prob:
        aug.update(color_jitter=tuple(cfg.color_jitter or (0.4, 0.4, 0.4, 0.1)), color_jitter_prob=cfg.color_jitter_prob)
    return aug


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, embeddings of rank 1 and the temperature (as open_clip_train)."""
    decay, keep = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (keep if exempt else decay).append(param)
    return [{"params": keep, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def train_teacher(shards: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike, cfg: TeacherConfig = TeacherConfig()) -> Path:
    """Train a CLIP on caption shards, save it under ``out`` and evaluate it; returns the weights path.

    The model name is the stem of ``cfg.model_config``; ``open_clip.create_model_and_transforms(name,
    pretrained=<returned path>)`` loads the result once ``out/<name>.json`` is registered.
    ``teacher.json`` is written last: a folder without it holds no finished teacher.
    """
    teacher = fit_teacher(shards, cfg)
    out = Path(out)
    weights = save_teacher(teacher.model, teacher.name, teacher.model_config, out)
    record: dict[str, Any] = {"model": teacher.name, "weights": weights.name, "weights_sha256": sha256_file(weights),
                              "model_config": teacher.model_config, **teacher.stats}
    if cfg.eval_world is not None:
        record["zero_shot"] = zero_shot(teacher.model, teacher.preprocess, teacher.tokenizer, cfg.eval_world, cfg.eval_split,
                                        cfg.eval_images, prompt=cfg.prompt, device=_device(cfg.device), progress=cfg.progress)
    atomic_write_json(out / RECORD_NAME, record)
    return weights


def fit_teacher(shards: str | os.PathLike | Sequence[str | os.PathLike], cfg: TeacherConfig = TeacherConfig()) -> Teacher:
    """The training loop: open_clip model, ClipLoss, AdamW, warmup + cosine over the budget; nothing is written."""
    paths = expand_shards(shards)
    rows = _check_shards(paths)
    if rows == 0:
        raise ShardError(", ".join(map(str, paths)), "no rows to train on")
    name = register_config_file(cfg.model_config)
    model_cfg = open_clip.get_model_config(name)
    device = _device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings():  # open_clip 3.3 calls the jitter/gray items it does apply "unused"
        warnings.filterwarnings("ignore", message="Unused augmentation cfg items")
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            name, pretrained=None, device=device, output_dict=True, aug_cfg=_augmentation(cfg))
    tokenizer = open_clip.get_tokenizer(name)
    loader = DataLoader(TeacherShards(paths, preprocess_train, tokenizer, cfg.shuffle_buffer, cfg.seed),
                        batch_size=cfg.batch_size, num_workers=cfg.workers, collate_fn=_collate,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if cfg.workers else None)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    loss_fn = open_clip.ClipLoss()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes is not None else None

    model.train()
    seen = steps = 0
    smooth = float("nan")
    curve: list[list[float]] = []
    start = time.perf_counter()
    bar = tqdm(total=cfg.samples, unit="sample", unit_scale=True, desc=f"teacher {name}", dynamic_ncols=True, disable=not cfg.progress)
    with bar:
        for batch in loader:
            if isinstance(batch, ShardError):
                raise batch
            elapsed = time.perf_counter() - start
            progress = max(seen / cfg.samples if cfg.samples else 0.0, elapsed / budget_s if budget_s else 0.0)
            if progress >= 1.0:
                break
            lr = _lr_at(progress, cfg.lr, cfg.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, tokens = (t.to(device, non_blocking=True) for t in batch)
            with autocast:
                output = model(images, tokens)
                loss = loss_fn(output["image_features"], output["text_features"], output["logit_scale"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"teacher loss became {value} at step {steps}; lower the learning rate (now {cfg.lr})")
            smooth = value if steps == 0 else 0.95 * smooth + 0.05 * value
            seen, steps = seen + images.shape[0], steps + 1
            if steps % cfg.log_every == 0:
                curve.append([seen, round(smooth, 4), round(lr, 7)])
            bar.update(images.shape[0])
            bar.set_postfix(loss=f"{smooth:.3f}", lr=f"{lr:.2e}", refresh=False)
    seconds = time.perf_counter() - start
    model.eval()
    stats = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": _jsonable(asdict(cfg)),
        "data": {"shards": [{"path": str(p), "sha256": sha256_file(p)} for p in paths], "rows": rows},
        "training": {"samples": seen, "steps": steps, "epochs": round(seen / rows, 3), "seconds": round(seconds, 1),
                     "samples_per_second": round(seen / max(seconds, 1e-9), 1), "final_loss": round(smooth, 4),
                     "device": str(device), "torch_threads": torch.get_num_threads(), "curve": curve},
    }
    return Teacher(model, preprocess_val, tokenizer, name, model_cfg, stats)


def save_teacher(model: torch.nn.Module, name: str, model_cfg: dict, out: str | os.PathLike) -> Path:
    """Write the config, the weights and the local-dir files, each atomically; returns the weights path."""
    out = Path(out)
    state = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    weights = out / f"{name}.safetensors"
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "model_name": name})
    with atomic_path(out / LOCAL_DIR_WEIGHTS) as tmp:
        tmp.unlink()
        try:
            os.link(weights, tmp)
        except OSError:  # a filesystem without hard links
            tmp.write_bytes(weights.read_bytes())
    atomic_write_json(out / "open_clip_config.json", {"model_cfg": model_cfg, "preprocess_cfg": _jsonable(model.visual.preprocess_cfg)})
    atomic_write_json(out / f"{name}.json", model_cfg)
    return weights


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------
# Zero-shot evaluation


def evaluate_teacher(model: str | os.PathLike, world: str | os.PathLike, split: str = "train", pretrained: str | None = None,
                     max_images: int = 2000, prompt: str = DEFAULT_PROMPT, device: str = "auto", progress: bool = True) -> dict:
    """Zero-shot concept ranking on a world's split of a teacher folder, or of any CLIP curation can load
    (a name plus a tag or checkpoint file, ``hf-hub:``, ``local-dir:``), loaded by curation's own loader."""
    if Path(model).is_dir():
        model, weights = teacher_files(model)
        pretrained = str(weights)
    clip = load_clip(str(model), pretrained, device=_device(device))
    return zero_shot(clip.model, clip.preprocess, clip.tokenizer, world, split, max_images, prompt=prompt, device=clip.device,
                     progress=progress)


@torch.no_grad()
def zero_shot(model: torch.nn.Module, preprocess: Callable, tokenizer: Callable, world: str | os.PathLike, split: str = "train",
              max_images: int = 2000, prompt: str = DEFAULT_PROMPT, batch_size: int = 256, device: torch.device | str = "cpu",
              progress: bool = True) -> dict:
    """Rank all class names of the world for each image whose present concepts are known.

    Reports recall@|present| (the share of present concepts among the |present| best-ranked, mean
    over images), its split into things and stuff, top-1 accuracy of the salient (largest) thing
    over all classes and among things only, macro mean average precision over classes, per-class
    recall, and the recall a random ranking would get.
    """
    world = Path(world)
    try:
        meta = json.loads((world / "world.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{world / 'world.json'}: not a readable world record ({err})") from None
    classes: list[str] = meta["classes"]
    index = {c: i for i, c in enumerate(classes)}
    stuff = np.array([c in set(meta["stuff"]) for c in classes])
    model.eval()
    start = time.perf_counter()
    text = model.encode_text(tokenizer([prompt.format(c) for c in classes]).to(device), normalize=True).float()

    scores, targets, salient = [], [], []
    done = 0
    bar = tqdm(total=max_images, unit="img", desc="zero-shot", dynamic_ncols=True, disable=not progress)
    with bar:
        for shard in expand_shards(world / split):
            truth = _read_truth(world / "truth" / split / shard.name)
            for batch in iter_batches(shard, batch_size=batch_size, columns=["key", "jpg"]):
                keys, jpgs = batch.column("key").to_pylist(), batch.column("jpg").to_pylist()
                take = min(len(keys), max_images - done)
                images = []
                for key, jpg in zip(keys[:take], jpgs[:take]):
                    if key not in truth.rows:
                        raise ShardError(truth.path, f"no truth row for key '{key}' of {shard}")
                    present, top = truth.rows[key]
                    unknown = [c for c in present + [top] if c not in index]
                    if unknown:
                        raise ShardError(truth.path, f"key '{key}' names concepts the world does not have: {unknown}")
                    target = np.zeros(len(classes), bool)
                    target[[index[c] for c in present]] = True
                    targets.append(target)
                    salient.append(index[top])
                    try:
                        images.append(preprocess(decode_image(jpg)))
                    except ValueError as err:
                        raise ShardError(shard, f"key '{key}': {err}") from None
                features = model.encode_image(torch.stack(images).to(device), normalize=True).float()
                scores.append((features @ text.T).cpu().numpy())
                done += take
                bar.update(take)
                if done >= max_images:
                    break
            if done >= max_images:
                break
    if not scores:
        raise ShardError(world / split, "no images to evaluate")
    result = ranking_metrics(np.concatenate(scores), np.stack(targets), np.array(salient), stuff, classes)
    result.update({"world": str(world), "split": split, "prompt": prompt, "seconds": round(time.perf_counter() - start, 2)})
    return result


@dataclass
class _Truth:
    path: Path
    rows: dict[str, tuple[list[str], str]] = field(default_factory=dict)


def _read_truth(path: Path) -> _Truth:
    parquet = open_parquet(path)
    check_schema(path, parquet.schema_arrow, TRUTH_COLUMNS)
    table = parquet.read(columns=list(TRUTH_COLUMNS)).to_pydict()
    truth = _Truth(path)
    for row, (key, present, top) in enumerate(zip(table["key"], table["present"], table["salient"])):
        if not present or top is None:
            raise ShardError(path, "empty present list or salient concept", row=row)
        truth.rows[key] = (present, top)
    return truth


def ranking_metrics(scores: np.ndarray, targets: np.ndarray, salient: np.ndarray, stuff: np.ndarray, classes: Sequence[str]) -> dict:
    """Multi-label ranking quality of image-to-concept scores (N x C) against presence (N x C)."""
    k = targets.sum(1)
    ranks = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1)
    found = targets & (ranks < k[:, None])  # present and among the |present| best
    per_image = found.sum(1) / k
    things = ~stuff
    per_class = {c: round(float(found[:, i].sum() / targets[:, i].sum()), 4) for i, c in enumerate(classes) if targets[:, i].any()}
    mean_ap = multilabel_average_precision(torch.from_numpy(scores), torch.from_numpy(targets.astype(np.int64)),
                                           num_labels=len(classes), average="macro")
    return {
        "images": int(len(scores)),
        "classes": len(classes),
        "recall_at_present": round(float(per_image.mean()), 4),
        "thing_recall": round(float(found[:, things].sum() / max(targets[:, things].sum(), 1)), 4),
        "stuff_recall": round(float(found[:, stuff].sum() / max(targets[:, stuff].sum(), 1)), 4),
        "salient_top1": round(float((scores.argmax(1) == salient).mean()), 4),
        "salient_top1_among_things": round(float((np.where(things, scores, -np.inf).argmax(1) == salient).mean()), 4),
        "mean_ap": round(float(mean_ap), 4),
        "chance_recall": round(float((k / len(classes)).mean()), 4),
        "present_per_image": round(float(k.mean()), 3),
        "per_class_recall": per_class,
    }
