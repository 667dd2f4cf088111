"""Zero-shot concept ranking of a CLIP (the teacher, or any CLIP curation loads) on a world's truth: what it knows."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cocu.curation.bank.clip import OpenClipModel, load_clip, resolve_device
from cocu.curation.bank.images import decode_image
from cocu.curation.core.shards import ShardError, expand_shards, iter_batches
from cocu.curation.inputs.synthetic.truth import read_truth
from cocu.evaluation.metrics import ranking_metrics
from cocu.training.clip.config import DEFAULT_PROMPT
from cocu.training.clip.files import teacher_files


def evaluate_teacher(
    model: str | os.PathLike,
    world: str | os.PathLike,
    split: str = "train",
    pretrained: str | None = None,
    max_images: int = 2000,
    prompt: str = DEFAULT_PROMPT,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Zero-shot concept ranking on a world's split of a teacher folder, or of any CLIP curation can load
    (a name plus a tag or checkpoint file, ``hf-hub:``, ``local-dir:``), loaded by curation's own loader."""
    if Path(model).is_dir():
        model, weights = teacher_files(model)
        pretrained = str(weights)
    clip = load_clip(str(model), pretrained, device=resolve_device(device))
    return zero_shot(
        clip.model,
        clip.preprocess,
        clip.tokenizer,
        world,
        split,
        max_images,
        prompt=prompt,
        device=clip.device,
        progress=progress,
    )


@torch.no_grad()
def zero_shot(
    model: OpenClipModel,
    preprocess: Callable,
    tokenizer: Callable,
    world: str | os.PathLike,
    split: str = "train",
    max_images: int = 2000,
    prompt: str = DEFAULT_PROMPT,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
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
            truth = read_truth(world / "truth" / split / shard.name, salient=True)
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
    result.update(
        {"world": str(world), "split": split, "prompt": prompt, "seconds": round(time.perf_counter() - start, 2)}
    )
    return result
