"""The naming diagnostics of the grouping bound: BatchNorm statistics re-estimated on group tokens, text cosines."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from cocu.benchmarks.grouping_bound import reestimated_projector, text_cosines
from cocu.training.model import ProjectMLP


def test_the_reestimated_batchnorm_holds_the_tokens_statistics_and_the_weights_stay():
    torch.manual_seed(0)
    projector = ProjectMLP(6, 10, 4, num_layers=2).eval()
    tokens = 3.0 + 2.0 * torch.randn(40, 8, 6)  # far from the fresh statistics (mean 0, variance 1)
    fresh = reestimated_projector(projector, tokens)
    hidden = fresh.linear_hidden[0](tokens.transpose(1, 2))  # [N, inner, G]: what the BatchNorm sees
    norm = fresh.linear_hidden[1]
    assert not fresh.training and not projector.training
    torch.testing.assert_close(norm.running_mean, hidden.mean(dim=(0, 2)))
    torch.testing.assert_close(norm.running_var, hidden.var(dim=(0, 2)), rtol=1e-4, atol=1e-5)
    # the original is untouched and the weights are shared in value
    assert not torch.allclose(projector.linear_hidden[1].running_mean, norm.running_mean)
    for a, b in zip(projector.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    # in eval, the copy normalises these tokens to zero mean per channel
    out = F.batch_norm(hidden, norm.running_mean, norm.running_var, norm.weight, norm.bias, False)
    assert out.mean(dim=(0, 2)).abs().max() < 1e-4


def test_text_cosines_average_the_named_pairs():
    classes = ["ball", "ring", "box", "grass", "sky"]
    text = F.normalize(
        torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]), dim=-1
    )
    world = {
        "things": ["ball", "ring", "box"],
        "stuff": ["grass", "sky"],
        "confusable_groups": {"round": ["ball", "ring"]},
    }
    cos = text_cosines(text, classes, world)
    pairs = [float(text[a] @ text[b]) for a, b in itertools.combinations(range(3), 2)]
    assert cos["things"] == pytest.approx(sum(pairs) / 3, abs=1e-4)
    assert cos["confusable"] == pytest.approx(2**-0.5, abs=1e-4)
    assert cos["stuff"] == pytest.approx(1.0)
    assert text_cosines(text, classes, {**world, "stuff": ["lava"]})["stuff"] is None  # a class the text lacks
