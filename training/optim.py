"""The one learning-rate schedule and the one weight-decay rule shared by GroupViT and the teacher CLIP."""

from __future__ import annotations

import math

import torch


def warmup_cosine(
    position: float, *, peak: float, warmup_start: float, minimum: float, warmup: float, total: float
) -> float:
    """Learning rate at `position` (an optimiser step, or a share of a budget): linear warm-up from `warmup_start`
    to `peak` over `warmup`, then cosine down to `minimum` at `total`."""
    if position < warmup:
        return warmup_start + (peak - warmup_start) * position / warmup
    span = total - warmup
    progress = min(1.0, (position - warmup) / span) if span > 0 else float(position > warmup)
    return minimum + 0.5 * (peak - minimum) * (1.0 + math.cos(math.pi * progress))


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: gains, biases and scalar temperatures (tensors of rank < 2) are not decayed, as in
    open_clip and timm; matrices and embeddings are. Frozen parameters are left out."""
    decay: list[torch.nn.Parameter] = []
    keep: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (keep if param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
