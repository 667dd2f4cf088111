"""Zero-shot semantic segmentation with a GroupViT, as the GroupViT/CoCu harness does it without mmseg.

Per image (groupvit.md §1.6, §4.1): keep-ratio resize to ``img_scale=(long_side, short_side)``,
ImageNet normalisation, mmseg ``slide`` windows clipped inside the image. Per window: the final groups'
soft attention (multiplied across grouping stages by the model) is upsampled bilinearly to the window
and every pixel takes its argmax group; each group is classified against the class-name text
embeddings with GroupViT's top-k image-level masking (``p_top * p_full``); background comes from a
threshold, never from a "background" prompt. Window scores are summed, divided by the overlap count,
resized bilinearly to the original image size and arg-maxed.

Windows of one size from several images run through the model together, which is what makes the
tiny-image synthetic split fast; the result is identical to mmseg's batch-size-1 loop.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cocu.evaluation.pamr import MASK_STRIDE, pamr
from cocu.evaluation.presets import Preset

# mmseg img_norm_cfg of every GroupViT/CoCu/TCL dataset config (0-255 scale, RGB).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

Window = tuple[int, int, int, int]  # y1, y2, x1, x2
Tokenizer = Callable[[Sequence[str], int], torch.Tensor]


def rescale_size(height: int, width: int, short_side: int, long_side: int = 2048) -> tuple[int, int]:
    """mmcv ``imrescale`` size for ``Resize(img_scale=(long, short), keep_ratio=True)``: small images grow too."""
    scale = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_bilinear(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[C, H, W]`` or ``[B, C, H, W]`` with half-pixel centres (cv2/mmseg convention)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    batched = images if images.dim() == 4 else images.unsqueeze(0)
    out = F.interpolate(batched, size=size, mode="bilinear", align_corners=False)
    return out if images.dim() == 4 else out.squeeze(0)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 ``H x W x 3`` image bilinearly and round back to uint8, as mmcv ``imresize`` does."""
    tensor = torch.tensor(image).permute(2, 0, 1).float()
    out = resize_bilinear(tensor, size).round_().clamp_(0, 255)
    return out.to(torch.uint8).permute(1, 2, 0).numpy()


def slide_windows(height: int, width: int, crop: int, stride: int) -> list[Window]:
    """mmseg ``slide_inference`` windows: stepped by ``stride``, the last aligned to the border, clipped inside.

    An image smaller than ``crop`` along a side gets one window of its own size along that side.
    """
    h_grids = max(height - crop + stride - 1, 0) // stride + 1
    w_grids = max(width - crop + stride - 1, 0) // stride + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2, x2 = min(h_idx * stride + crop, height), min(w_idx * stride + crop, width)
            windows.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return windows


@torch.no_grad()
def build_text_embeddings(
    model: Any,
    classnames: Sequence[str],
    templates: Sequence[str],
    tokenize: Tokenizer | None = None,
    batch_size: int = 256,
    average: str = "normalized",
) -> torch.Tensor:
    """One L2-normalised embedding per class: the mean over templates of the normalised prompt embeddings, or with
    ``average="release"`` of the raw ones, as GroupViT and the CoCu release average (``Preset.template_average``)."""
    if tokenize is None:
        from cocu.training.text import tokenize as default_tokenize

        tokenize = default_tokenize
    device = _model_device(model)
    prompts = [template.format(name) for name in classnames for template in templates]
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenize(prompts[start : start + batch_size], model.context_length).to(device)
        if average == "release":  # the reference's encode_text returns the projector's output, unnormalised
            chunks.append(model.encode_text_raw(tokens).float())
        else:
            chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    embeds = torch.cat(chunks).view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(embeds, dim=-1)


def group_class_scores(
    group_embeds: torch.Tensor, image_embed: torch.Tensor, text: torch.Tensor, logit_scale: float, topk: int
) -> torch.Tensor:
    """GroupViT's group -> class scores ``[B, G, C]``: ``softmax(top-k masked L) * softmax(L)``.

    ``L = s * group @ text^T``; the top-k classes of the image embedding's softmax stay, the others get
    ``-inf`` before the second softmax. Scores lie in [0, 1].
    """
    logits = logit_scale * group_embeds @ text.t()
    p_full = logits.softmax(dim=-1)
    prior = (logit_scale * image_embed @ text.t()).softmax(dim=-1)
    keep = torch.zeros_like(prior, dtype=torch.bool)
    keep.scatter_(1, prior.topk(min(topk, text.shape[0]), dim=-1).indices, True)
    p_top = logits.masked_fill(~keep.unsqueeze(1), float("-inf")).softmax(dim=-1)
    return p_top * p_full


def pixel_groups(attn: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each pixel's group ``[B, H, W]``: the argmax after bilinear upsampling of ``attn [B, G, h, w]``."""
    return resize_bilinear(attn.float(), size).argmax(dim=1)


def pixel_scores(attn: torch.Tensor, group_scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each pixel takes the scores of its group (``pixel_groups``)."""
    groups = pixel_groups(attn, size)
    b, c = group_scores.shape[0], group_scores.shape[-1]
    index = groups.view(b, -1, 1).expand(-1, -1, c)
    return torch.gather(group_scores, 1, index).view(b, *size, c).permute(0, 3, 1, 2)


def with_background(scores: torch.Tensor, group_scores: torch.Tensor, bg_thresh: float, rule: str) -> torch.Tensor:
    """Prepend a background channel to pixel scores ``[B, C, H, W]``.

    ``groupvit``: 1 where the best class score is below ``min(bg_thresh, best group score of the window)``
    (so the best group is always foreground), else 0. ``constant``: TCL's constant background score.
    """
    if rule == "groupvit":
        thresh = torch.clamp(group_scores.flatten(1).max(dim=1).values, max=bg_thresh).view(-1, 1, 1)
        background = (scores.max(dim=1).values < thresh).to(scores.dtype)
    elif rule == "constant":
        background = torch.full_like(scores[:, 0], bg_thresh)
    else:
        raise ValueError(f"unknown background rule '{rule}' (known: groupvit, constant)")
    return torch.cat([background.unsqueeze(1), scores], dim=1)


class ZeroShotSegmenter:
    """Segment images with a GroupViT against fixed class-name embeddings under one preset.

    ``model`` follows cocu's interface: ``group_features(images) -> (attn, group_embeds, image_embed)``
    and ``logit_scale_value()``. ``text`` holds the foreground class embeddings ``[C_fg, D]``.
    """

    def __init__(
        self,
        model: Any,
        text: torch.Tensor,
        preset: Preset,
        has_background: bool,
        batch_size: int = 16,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        if has_background and preset.bg_thresh is None:
            raise ValueError(f"preset {preset.name} has no background threshold but the dataset has a background class")
        self.model = model.eval()
        self.device = _model_device(model)
        self.text = text.to(self.device, torch.float32)
        self.preset = preset
        self.has_background = has_background
        self.batch_size = batch_size
        self.num_classes = text.shape[0] + int(has_background)
        self.mean = torch.tensor(mean, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(3, 1, 1)
        self.logit_scale = float(torch.as_tensor(model.logit_scale_value()).detach())

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """uint8 ``H x W x 3`` -> normalised ``[3, H', W']`` at the preset's keep-ratio scale."""
        h, w = image.shape[:2]
        size = rescale_size(h, w, self.preset.short_side, self.preset.long_side)
        tensor = torch.tensor(image, device=self.device).permute(2, 0, 1).float()
        tensor = resize_bilinear(tensor, size).round_().clamp_(0, 255)
        return (tensor - self.mean) / self.std

    @torch.no_grad()
    def window_logits(self, crops: torch.Tensor) -> torch.Tensor:
        """Class scores ``[B, C, h, w]`` for a batch of same-sized windows (background first when present).

        On CUDA the model runs under bf16 autocast (as it trained); the class scores are computed in float32 with
        autocast off, where a bf16 matmul would cost ~0.4 per logit at a logit scale of 100.
        """
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda"):
            feats = self.model.group_features(crops)
        with torch.autocast(self.device.type, enabled=False):
            groups = group_class_scores(
                F.normalize(feats.group_embeds.float(), dim=-1),
                F.normalize(feats.image_embed.float(), dim=-1),
                self.text,
                self.logit_scale,
                self.preset.topk,
            )
            attn, size = feats.attn.float(), (crops.shape[-2], crops.shape[-1])
            if self.preset.pamr:  # refined at TCL's mask resolution, before the background channel (evaluation/pamr.py)
                small = (max(1, size[0] // MASK_STRIDE), max(1, size[1] // MASK_STRIDE))
                scores = resize_bilinear(pamr(crops.float(), pixel_scores(attn, groups, small)), size)
            else:
                scores = pixel_scores(attn, groups, size)
            if self.has_background and self.preset.bg_thresh is not None:  # __init__ refuses background without one
                scores = with_background(scores, groups, self.preset.bg_thresh, self.preset.bg_rule)
        return scores

    @torch.no_grad()
    def logits(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Window-averaged class scores ``[C, H, W]`` per image, at each image's original size."""
        prepared = [self.prepare(image) for image in images]
        by_shape: dict[tuple[int, int], list[tuple[int, Window]]] = defaultdict(list)
        for i, tensor in enumerate(prepared):
            height, width = tensor.shape[-2:]
            for y1, y2, x1, x2 in slide_windows(height, width, self.preset.crop, self.preset.stride):
                by_shape[(y2 - y1, x2 - x1)].append((i, (y1, y2, x1, x2)))
        sums = [torch.zeros(self.num_classes, *t.shape[-2:], device=self.device) for t in prepared]
        counts = [torch.zeros(1, *t.shape[-2:], device=self.device) for t in prepared]
        for jobs in by_shape.values():
            for start in range(0, len(jobs), self.batch_size):
                chunk = jobs[start : start + self.batch_size]
                crops = torch.stack([prepared[i][:, y1:y2, x1:x2] for i, (y1, y2, x1, x2) in chunk])
                for (i, (y1, y2, x1, x2)), scores in zip(chunk, self.window_logits(crops)):
                    sums[i][:, y1:y2, x1:x2] += scores
                    counts[i][:, y1:y2, x1:x2] += 1
        return [resize_bilinear(s / c, image.shape[:2]) for s, c, image in zip(sums, counts, images)]

    def predict(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Label maps ``[H, W]`` (int64, on CPU) at each image's original size."""
        return [logits.max(dim=0).indices.cpu() for logits in self.logits(images)]  # first maximum, as argmax


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")
