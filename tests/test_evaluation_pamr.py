"""PAMR against a plain re-implementation written from the paper's description (Araslanov & Roth 2020, Sec. 3.3),
pixel by pixel with Python loops, as TCL's harness sets it up: 8 neighbours per dilation, borders replicated,
affinity ``-|I_i - I_j| / (1e-8 + 0.1 sigma_i)`` averaged over colour channels, softmax over the neighbours,
the mask replaced by its neighbours' weighted average, iterated."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from cocu.evaluation.inference import ZeroShotSegmenter
from cocu.evaluation.pamr import DILATIONS, ITERATIONS, pamr
from cocu.evaluation.presets import SEGMENTATION_PRESETS, get_preset


def plain_pamr(image: np.ndarray, mask: np.ndarray, iterations: int, dilations) -> np.ndarray:
    """image [3, H, W], mask [C, H, W] (float64): the refinement, one pixel at a time."""
    _, height, width = image.shape

    def at(array, y, x):  # the border pixel stands in for anything outside the picture
        return array[:, min(max(y, 0), height - 1), min(max(x, 0), width - 1)]

    ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    neighbours = [(d * dy, d * dx) for d in dilations for dy, dx in ring]
    weights = np.zeros((height, width, len(neighbours)))
    for y in range(height):
        for x in range(width):
            centre = image[:, y, x]
            # sigma: each channel's spread over the 3x3 taps of every dilation together, the centre in each
            taps = [centre for _ in dilations] + [at(image, y + oy, x + ox) for oy, ox in neighbours]
            sigma = np.std(np.stack(taps), axis=0, ddof=1)
            kernel = np.array(
                [np.mean(-np.abs(at(image, y + oy, x + ox) - centre) / (1e-8 + 0.1 * sigma)) for oy, ox in neighbours]
            )
            kernel = np.exp(kernel - kernel.max())
            weights[y, x] = kernel / kernel.sum()
    for _ in range(iterations):
        new = np.zeros_like(mask)
        for y in range(height):
            for x in range(width):
                new[:, y, x] = sum(w * at(mask, y + oy, x + ox) for w, (oy, ox) in zip(weights[y, x], neighbours))
        mask = new
    return mask


@pytest.mark.parametrize("dilations,iterations", [((1, 2), 3), (DILATIONS, ITERATIONS)])
def test_pamr_matches_the_plain_reimplementation(dilations, iterations):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 9, 11))
    image[:, :, 6:] += 3.0  # an edge for the affinities to follow
    mask = rng.uniform(size=(4, 9, 11))
    expected = plain_pamr(image, mask, iterations, dilations)
    got = pamr(torch.tensor(image)[None], torch.tensor(mask)[None], iterations, dilations)[0].double().numpy()
    assert np.abs(got - expected).max() < 1e-5


def test_pamr_moves_a_mask_boundary_onto_the_image_edge():
    image = torch.zeros(1, 3, 24, 24)
    image[..., 12:] = 1.0  # the edge is at column 12
    image += 0.01 * torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 2, 24, 24)
    mask[:, 0, :, :9] = 1.0  # the mask's edge is at column 9
    mask[:, 1, :, 9:] = 1.0
    refined = pamr(image, mask).argmax(dim=1)[0]
    assert (refined[:, :12] == 0).float().mean() > 0.95 and (refined[:, 12:] == 1).all()


def test_the_tcl_preset_records_pamr_on_and_tcl_background():
    for dataset, preset in SEGMENTATION_PRESETS["tcl"].items():
        record = preset.to_dict()
        assert record["pamr"] is True, dataset
        assert record["bg_thresh"] in (None, 0.4) and record["bg_rule"] == "constant", dataset
    assert not any(p.pamr for p in SEGMENTATION_PRESETS["groupvit"].values())


def test_the_segmenter_refines_window_scores_when_the_preset_asks():
    from test_evaluation_inference import FakeGroupViT

    model = FakeGroupViT()
    text = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    base = replace(get_preset("groupvit", "synthetic"), short_side=32, crop=32, stride=16)
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    plain = ZeroShotSegmenter(model, text, base, False).logits([image])[0]
    refined = ZeroShotSegmenter(model, text, replace(base, pamr=True), False).logits([image])[0]
    assert plain.shape == refined.shape == (3, 40, 56) and not torch.allclose(plain, refined)
