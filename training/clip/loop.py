"""The teacher's training loop (open_clip model, ClipLoss, AdamW) and how a trained teacher is saved."""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cocu.curation.bank.clip import OpenClipModel, register_config_file, resolve_device
from cocu.curation.core.shards import ShardError, atomic_path, atomic_write_json, expand_shards, sha256_file
from cocu.training.clip.config import RECORD_NAME, Teacher, TeacherConfig, TeacherDeadline
from cocu.training.clip.data import TeacherShards, check_shards, collate
from cocu.training.optim import warmup_cosine, weight_decay_groups

LOCAL_DIR_WEIGHTS = "open_clip_model.safetensors"  # the name open_clip's 'local-dir:' loader prefers


def _augmentation(cfg: TeacherConfig) -> dict:
    aug: dict[str, Any] = {"scale": tuple(cfg.crop_scale)}
    if cfg.gray_scale_prob:
        aug["gray_scale_prob"] = cfg.gray_scale_prob
    if cfg.color_jitter_prob:
        aug.update(
            color_jitter=tuple(cfg.color_jitter or (0.4, 0.4, 0.4, 0.1)), color_jitter_prob=cfg.color_jitter_prob
        )
    return aug


def train_teacher(
    shards: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    cfg: TeacherConfig = TeacherConfig(),
) -> Path:
    """Train a CLIP on caption shards, save it under ``out`` and evaluate it; returns the weights path.

    The model name is the stem of ``cfg.model_config``; ``open_clip.create_model_and_transforms(name,
    pretrained=<returned path>)`` loads the result once ``out/<name>.json`` is registered.
    ``teacher.json`` is written last: a folder without it holds no finished teacher.
    """
    from cocu.training.clip.zero_shot import zero_shot  # evaluation reads teacher folders: imported here, not at load

    def evaluate(teacher_model: OpenClipModel, preprocess: Callable, tokenizer: Callable, images: int) -> dict:
        assert cfg.eval_world is not None
        return zero_shot(
            teacher_model,
            preprocess,
            tokenizer,
            cfg.eval_world,
            cfg.eval_split,
            images,
            prompt=cfg.prompt,
            device=resolve_device(cfg.device),
            progress=False,
        )

    probe = None
    if cfg.curve_every:
        probe = lambda m, p, t: _curve_point(evaluate(m, p, t, cfg.curve_images))
    teacher = fit_teacher(shards, cfg, probe)
    out = Path(out)
    weights = save_teacher(teacher.model, teacher.name, teacher.model_config, out)
    record: dict[str, Any] = {
        "model": teacher.name,
        "weights": weights.name,
        "weights_sha256": sha256_file(weights),
        "model_config": teacher.model_config,
        **teacher.stats,
    }
    if cfg.eval_world is not None:
        record["zero_shot"] = evaluate(teacher.model, teacher.preprocess, teacher.tokenizer, cfg.eval_images)
    atomic_write_json(out / RECORD_NAME, record)
    return weights


def _curve_point(result: dict) -> dict:
    return {
        key: result[key] for key in ("thing_recall", "stuff_recall", "recall_at_present", "salient_top1_among_things")
    }


Probe = Callable[[OpenClipModel, Callable, Callable], dict]


def fit_teacher(
    shards: str | os.PathLike | Sequence[str | os.PathLike],
    cfg: TeacherConfig = TeacherConfig(),
    probe: Probe | None = None,
) -> Teacher:
    """The training loop: open_clip model, ClipLoss, AdamW, warmup + cosine over ``cfg.samples``; nothing is written.

    ``probe(model, preprocess, tokenizer)`` runs every ``cfg.curve_every`` samples (and at the end) with the
    model in eval mode; its results form the learning curve in the stats.
    """
    paths = expand_shards(shards)
    rows = check_shards(paths)
    if rows == 0:
        raise ShardError(", ".join(map(str, paths)), "no rows to train on")
    name = register_config_file(cfg.model_config)
    model_cfg = open_clip.get_model_config(name)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings():  # open_clip 3.3 calls the jitter/gray items it does apply "unused"
        warnings.filterwarnings("ignore", message="Unused augmentation cfg items")
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            name, pretrained=None, device=device, output_dict=True, aug_cfg=_augmentation(cfg)
        )
    tokenizer = open_clip.get_tokenizer(name)
    loader = DataLoader(
        TeacherShards(paths, preprocess_train, tokenizer, cfg.shuffle_buffer, cfg.seed),
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if cfg.workers else None,
    )
    optimizer = torch.optim.AdamW(
        weight_decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps
    )
    loss_fn = open_clip.ClipLoss()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    deadline_s = cfg.deadline_minutes * 60 if cfg.deadline_minutes is not None else None

    def probe_now(seen: int) -> None:
        if probe is None:
            return
        model.eval()
        learning.append({"samples": seen, **probe(model, preprocess_val, tokenizer)})
        model.train()

    model.train()
    seen = steps = 0
    smooth = float("nan")
    curve: list[list[float]] = []
    learning: list[dict] = []
    next_probe = cfg.curve_every or 0
    start = time.perf_counter()
    bar = tqdm(
        total=cfg.samples,
        unit="sample",
        unit_scale=True,
        desc=f"teacher {name}",
        dynamic_ncols=True,
        disable=not cfg.progress,
    )
    with bar:
        for batch in loader:
            if isinstance(batch, ShardError):
                raise batch
            if seen >= cfg.samples:
                break
            elapsed = time.perf_counter() - start
            if deadline_s is not None and elapsed > deadline_s:
                raise TeacherDeadline(
                    f"teacher {name}: {seen} of {cfg.samples} samples after {elapsed / 60:.1f} min, past the deadline "
                    f"of {cfg.deadline_minutes} min; nothing was saved (raise the deadline or lower --samples)"
                )
            lr = warmup_cosine(
                seen / cfg.samples, peak=cfg.lr, warmup_start=0.0, minimum=0.0, warmup=cfg.warmup, total=1.0
            )
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
                raise FloatingPointError(
                    f"teacher loss became {value} at step {steps}; lower the learning rate (now {cfg.lr})"
                )
            smooth = value if steps == 0 else 0.95 * smooth + 0.05 * value
            seen, steps = seen + images.shape[0], steps + 1
            if steps % cfg.log_every == 0:
                curve.append([seen, round(smooth, 4), round(lr, 7)])
            if next_probe and seen >= next_probe and seen < cfg.samples:
                probe_now(seen)
                next_probe += cfg.curve_every or 0
            bar.update(images.shape[0])
            bar.set_postfix(loss=f"{smooth:.3f}", lr=f"{lr:.2e}", refresh=False)
    seconds = time.perf_counter() - start
    probe_now(seen)
    model.eval()
    stats = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": _jsonable(asdict(cfg)),
        "data": {"shards": [{"path": str(p), "sha256": sha256_file(p)} for p in paths], "rows": rows},
        "training": {
            "samples": seen,
            "steps": steps,
            "epochs": round(seen / rows, 3),
            "seconds": round(seconds, 1),
            "samples_per_second": round(seen / max(seconds, 1e-9), 1),
            "final_loss": round(smooth, 4),
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "curve": curve,
        },
    }
    if probe is not None:
        stats["learning_curve"] = learning
    return Teacher(model, preprocess_val, tokenizer, name, model_cfg, stats)


def save_teacher(model: OpenClipModel, name: str, model_cfg: dict, out: str | os.PathLike) -> Path:
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
    atomic_write_json(
        out / "open_clip_config.json",
        {"model_cfg": model_cfg, "preprocess_cfg": _jsonable(model.visual.preprocess_cfg)},
    )
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
