"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as TCL's evaluation harness applies it.

Why: TCL's published table is measured with PAMR on, so cocu's ``tcl`` preset must refine the same way for its
numbers to compare with that table; as an option it also sharpens any model's masks along image edges.

What it computes (the paper's Sec. 3.3, with the settings TCL evaluates with): for every pixel ``i`` its neighbours
``j`` are the 8 pixels around it at each dilation in ``DILATIONS`` (borders replicated). The image affinity of ``i`` and
``j`` is ``-|I_i - I_j| / (1e-8 + 0.1 * sigma_i)`` per colour channel, averaged over the channels, where ``sigma_i``
is the (unbiased) standard deviation of each channel over all the taps of ``i``'s neighbourhoods (each dilation's
3x3 taps, the centre included, taken together); a softmax over the neighbours turns affinities into weights, and the
mask is replaced ``ITERATIONS`` times by the weighted sum of its neighbours' values. TCL runs it on its masks at 1/8 of
the window's size (ViT-B/16 features upsampled twice) with the image resized to them (bilinear, corners aligned);
``MASK_STRIDE`` is that ratio for cocu's windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DILATIONS = (1, 2, 4, 8, 12, 24)
ITERATIONS = 10
MASK_STRIDE = 8  # PAMR works on masks at 1/8 of the window (TCL's mask resolution)
_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _shifted(padded: torch.Tensor, pad: int, dy: int, dx: int, size: tuple[int, int]) -> torch.Tensor:
    """The value at ``(y + dy, x + dx)`` for every ``(y, x)``, read from a tensor replicate-padded by ``pad``."""
    h, w = size
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def pamr(
    image: torch.Tensor,
    masks: torch.Tensor,
    iterations: int = ITERATIONS,
    dilations: Sequence[int] = DILATIONS,
) -> torch.Tensor:
    """Refine ``masks [B, C, h, w]`` along the edges of ``image [B, 3, H, W]`` (resized to ``h x w`` first)."""
    size = (masks.shape[-2], masks.shape[-1])
    image = image.float()
    if tuple(image.shape[-2:]) != size:
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=True)
    pad = max(dilations)
    padded = F.pad(image, [pad] * 4, mode="replicate")
    taps = [image] * len(dilations) + [
        _shifted(padded, pad, d * dy, d * dx, size) for d in dilations for dy, dx in _OFFSETS
    ]
    stacked = torch.stack(taps, dim=2)  # [B, 3, 9 * D, h, w]
    sigma = stacked.std(dim=2)  # [B, 3, h, w]
    neighbours = stacked[:, :, len(dilations) :]  # [B, 3, 8 * D, h, w], in the order of ``offsets`` below
    affinity = -(neighbours - image.unsqueeze(2)).abs() / (1e-8 + 0.1 * sigma.unsqueeze(2))
    weights = affinity.mean(dim=1).softmax(dim=1)  # [B, 8 * D, h, w]
    offsets = [(d * dy, d * dx) for d in dilations for dy, dx in _OFFSETS]
    out = masks.float()
    for _ in range(iterations):
        padded_masks = F.pad(out, [pad] * 4, mode="replicate")
        out = sum(
            (weights[:, p : p + 1] * _shifted(padded_masks, pad, dy, dx, size) for p, (dy, dx) in enumerate(offsets)),
            torch.zeros_like(out),
        )
    return out.to(masks.dtype)
