"""GroupViT's training loss: symmetric image-caption InfoNCE plus the multi-label loss over each image's prompts.

Follows the reference *code* (`multi_label_contrastive.py`), not the paper's equations: the image-to-prompts direction
is a soft-target cross-entropy with weight 1/K on each of the image's K prompts; each direction pair is averaged
(x 1/2). Embeddings are gathered from every rank with gradients, each rank scores its local rows against the global
columns with global labels ``arange(b) + b * rank``; the mean of the ranks' losses then equals the single-process loss
on the whole global batch, and DDP's gradient averaging gives that loss's gradient.

One departure, off by default (``group_x``): the multi-label term scores an image against a prompt by its best-matching
final group instead of its mean, so a prompt's gradient reaches one group (a per-group loss, as TCL and SegCLIP have;
not GroupViT's method). ``docs/benchmark.md`` has its measured effect.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F


class LossOutput(NamedTuple):
    loss: torch.Tensor
    contrastive: torch.Tensor
    multi_label: torch.Tensor


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each rank the summed gradient of its own rows.

    Written with ``all_gather`` and ``all_reduce``, the two collectives every backend (gloo, NCCL) and every torch
    cocu supports has: ``funcol.all_gather_single`` is missing from torch 2.11-2.12, and the older
    ``torch.distributed.nn`` gather has no gradient on torch <= 2.10. Each rank's loss uses every rank's rows, so the
    gradient of a row is the sum over ranks of their losses' gradients (DDP then averages the parameters' gradients).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        rank, world = _world()
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # reduced in place: not autograd's buffer
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, in rank order, keeping gradients to every rank's input."""
    _, world = _world()
    return x if world == 1 else _GatherRows.apply(x)


def groupvit_loss(
    image_x: torch.Tensor,
    text_x: torch.Tensor,
    prompt_x: torch.Tensor | None,
    logit_scale: torch.Tensor,
    multi_label_logit_scale: torch.Tensor | None = None,
    multi_label_weight: float = 1.0,
    group_x: torch.Tensor | None = None,
) -> LossOutput:
    """Loss on one rank's batch.

    image_x, text_x: [b, D] L2-normalised image and caption embeddings; prompt_x: [b, K, D] L2-normalised prompt
    embeddings (None or K = 0 turns the multi-label term off); logit_scale / multi_label_logit_scale: the clamped exp of
    the temperatures; group_x: [b, G, D] L2-normalised final group embeddings, given only for the departure that
    scores the multi-label term by each image's best group. Every rank must hold the same b (the loader drops partial
    batches).
    """
    rank, _ = _world()
    b = image_x.shape[0]
    # Score in float32: under bf16 autocast a matmul of float32 inputs still runs in bf16 (~0.4 per logit at a
    # logit scale of 100), which InfoNCE's softmax cannot afford; autocast is off for the scoring.
    with torch.autocast(image_x.device.type, enabled=False):
        image_x, text_x, logit_scale = image_x.float(), text_x.float(), logit_scale.float()
        labels = torch.arange(b, device=image_x.device) + b * rank
        all_image = gather_with_grad(image_x)
        contrastive = 0.5 * (
            F.cross_entropy(logit_scale * image_x @ gather_with_grad(text_x).t(), labels)
            + F.cross_entropy(logit_scale * text_x @ all_image.t(), labels)
        )
        # without prompts the multi-label temperature still joins the graph (times 0): DDP would otherwise find an
        # unused parameter at the second step
        unused = multi_label_logit_scale if multi_label_logit_scale is not None else logit_scale
        multi_label = 0.0 * unused.float()
        if prompt_x is not None and prompt_x.shape[1] > 0:
            k = prompt_x.shape[1]
            prompts = prompt_x.float().reshape(b * k, -1)
            all_prompts = gather_with_grad(prompts)  # row (global image index) * K + k
            scale = logit_scale if multi_label_logit_scale is None else multi_label_logit_scale.float()
            if group_x is None:
                image_prompt, prompt_image = image_x @ all_prompts.t(), prompts @ all_image.t()
            else:  # an image's score for a prompt is its best group's
                groups = group_x.float()
                image_prompt = (groups @ all_prompts.t()).amax(dim=1)
                all_groups = gather_with_grad(groups)  # [global b, G, D]
                prompt_image = torch.einsum("pd,igd->pig", prompts, all_groups).amax(dim=-1)
            # image -> prompts: soft target 1/K on the K prompts of its own image, over every prompt of the global batch
            log_p = F.log_softmax(scale * image_prompt, dim=-1).view(b, -1, k)
            loss_image = -log_p[torch.arange(b, device=log_p.device), labels].mean(dim=-1).mean()
            # prompt -> images: each prompt's positive is its own image
            loss_prompt = F.cross_entropy(scale * prompt_image, labels.repeat_interleave(k))
            multi_label = 0.5 * (loss_image + loss_prompt)
    return LossOutput(contrastive + multi_label_weight * multi_label, contrastive, multi_label)
