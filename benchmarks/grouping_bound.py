"""What a GroupViT's groups alone allow, and what its naming of them loses, on the synthetic world.

Zero-shot segmentation asks two things of the model: groups that follow the objects, and group embeddings that
name them. The harness's mIoU mixes both. Here every group is labelled twice on the val split (one window per
image): ``grouping`` gives it the class most of its pixels truly are (the best any naming could do with these
groups), ``naming`` the class text nearest to its embedding (the harness without its image-level prior). A low
``naming`` under a high ``grouping`` says the model groups well and names badly, which no longer training fixes
if the curve is flat. Two more diagnostics of the naming: ``naming_present`` names each group with the nearest
text among the classes the image truly shows (what naming loses to classes that are not there), and
``group_cosine`` is the mean cosine between the embeddings of an image's used groups (near 1: the groups all say
the same thing, whatever their pixels). ``naming_bn`` names the groups again after the image projector's
BatchNorm statistics are re-estimated on the final group tokens of the val images (no labels used): the projector
learned them on image embeddings, the mean of the groups, whose spread is narrower than one group's.
``text_cosine`` is the mean cosine between the class texts of two things, of each confusable pair, and of two
stuff classes: near 1, no group can be named right, whatever it sees.

    python -m cocu.benchmarks.grouping_bound --checkpoint RUN/checkpoints/last.ckpt --world WORLD --out OUT
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cocu.curation.core.shards import atomic_write_json
from cocu.evaluation.datasets import open_dataset
from cocu.evaluation.inference import ZeroShotSegmenter, build_text_embeddings, pixel_groups
from cocu.evaluation.metrics import SegMetric
from cocu.evaluation.presets import get_preset
from cocu.training.checkpoint import load_groupvit
from cocu.training.model import ProjectMLP

RECORD_NAME = "grouping_bound.json"


def majority_labels(groups: torch.Tensor, label: torch.Tensor, num_groups: int, num_classes: int) -> torch.Tensor:
    """``[H, W]`` map giving each pixel the class that most pixels of its group truly are."""
    counts = torch.zeros(num_groups, num_classes, dtype=torch.int64)
    counts.index_put_((groups.flatten(), label.flatten()), torch.ones(groups.numel(), dtype=torch.int64), True)
    return counts.argmax(dim=1)[groups]


@torch.no_grad()
def reestimated_projector(projector: ProjectMLP, tokens: torch.Tensor) -> ProjectMLP:
    """A copy of ``projector`` whose BatchNorm running statistics are the plain mean and variance over ``tokens``
    ``[N, G, C]`` (every group token of every image), its weights untouched."""
    fresh = copy.deepcopy(projector)
    norms = [m for m in fresh.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: one pass over all tokens gives their statistics
    fresh.train()
    fresh(tokens)
    return fresh.eval()


def text_cosines(text: torch.Tensor, classes: list[str], world: dict[str, Any]) -> dict[str, float | None]:
    """Mean cosine between the class texts of two things, of the world's confusable pairs, and of two stuff classes."""
    index = {name: i for i, name in enumerate(classes)}

    def mean_cosine(pairs: list[tuple[str, str]]) -> float | None:
        pairs = [(a, b) for a, b in pairs if a in index and b in index]
        if not pairs:
            return None
        return round(float(sum(text[index[a]] @ text[index[b]] for a, b in pairs)) / len(pairs), 4)

    confusable = [pair for group in world["confusable_groups"].values() for pair in itertools.combinations(group, 2)]
    return {
        "things": mean_cosine(list(itertools.combinations(world["things"], 2))),
        "confusable": mean_cosine(confusable),
        "stuff": mean_cosine(list(itertools.combinations(world["stuff"], 2))),
    }


@torch.no_grad()
def grouping_bound(checkpoint: Path, world: Path, batch_size: int = 50) -> dict[str, Any]:
    model, _ = load_groupvit(checkpoint)
    data = open_dataset("synthetic", world)
    preset = get_preset("groupvit", "synthetic")
    classes = preset.prompt_classes(tuple(data.classes), data.has_background)
    text = build_text_embeddings(model, classes, preset.templates)
    segmenter = ZeroShotSegmenter(model, text, preset, data.has_background)
    grouping, naming, naming_present, naming_bn = (SegMetric(len(classes)) for _ in range(4))
    samples, used, cosines = list(data), [], []
    if not samples:
        raise ValueError(f"{world}: the val split has no images")
    passes = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        images = torch.stack([segmenter.prepare(image) for _, image, _ in chunk])
        feats = model.group_features(images)
        passes.append((chunk, pixel_groups(feats.attn, (images.shape[-2], images.shape[-1])), feats))
    projector = reestimated_projector(model.img_projector, torch.cat([feats.group_tokens for *_, feats in passes]))
    for chunk, groups, feats in passes:
        embeds = F.normalize(feats.group_embeds.float(), dim=-1)  # [B, G, D]
        similarity = embeds @ text.t()  # [B, G, classes]
        similarity_bn = F.normalize(projector(feats.group_tokens).float(), dim=-1) @ text.t()
        for (name, _, label), group_map, scores, scores_bn, embed in zip(
            chunk, groups, similarity, similarity_bn, embeds
        ):
            label = torch.tensor(label, dtype=torch.int64)
            if label.shape != group_map.shape:
                raise ValueError(
                    f"{name}: label {tuple(label.shape)} is not the model's window {tuple(group_map.shape)}"
                )
            grouping.update(majority_labels(group_map, label, feats.attn.shape[1], len(classes)), label)
            naming.update(scores.argmax(dim=-1)[group_map], label)
            naming_bn.update(scores_bn.argmax(dim=-1)[group_map], label)
            shown = torch.zeros(len(classes), dtype=torch.bool)
            shown[label[(label >= 0) & (label < len(classes))].unique()] = True
            naming_present.update(scores.masked_fill(~shown, float("-inf")).argmax(dim=-1)[group_map], label)
            in_use = group_map.unique()
            used.append(len(in_use))
            if len(in_use) > 1:
                pairs = embed[in_use] @ embed[in_use].t()
                off_diagonal = ~torch.eye(len(in_use), dtype=torch.bool)
                cosines.append(float(pairs[off_diagonal].mean()))
    return {
        "checkpoint": str(checkpoint),
        "images": len(samples),
        "groups": int(feats.attn.shape[1]),
        "groups_used_per_image": round(sum(used) / max(len(used), 1), 2),
        "group_cosine": round(sum(cosines) / len(cosines), 4) if cosines else None,
        "grouping": grouping.compute().to_dict(classes),
        "naming": naming.compute().to_dict(classes),
        "naming_present": naming_present.compute().to_dict(classes),
        "naming_bn": naming_bn.compute().to_dict(classes),
        "text_cosine": text_cosines(text.float(), list(classes), json.loads((world / "world.json").read_text())),
    }


def write_grouping_bound(checkpoint: Path, world: Path, out: Path) -> Path:
    record = grouping_bound(checkpoint, world)
    target = out / RECORD_NAME
    atomic_write_json(target, record)
    g, n, nb = (record[key]["miou"] for key in ("grouping", "naming", "naming_bn"))
    cos = record["text_cosine"]
    print(
        f"grouping bound: mIoU {g:.1f} with true group labels, {n:.1f} with nearest-text labels "
        f"({nb:.1f} with the projector's BatchNorm re-estimated on groups); text cosine of two things "
        f"{cos['things']}, of two stuff classes {cos['stuff']} -> {target}"
    )
    return target


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--world", type=Path, required=True, help="the synthetic world (its val split is used)")
    parser.add_argument("--out", type=Path, required=True, help=f"folder for {RECORD_NAME}")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return write_grouping_bound(args.checkpoint, args.world, args.out)


if __name__ == "__main__":
    main()
