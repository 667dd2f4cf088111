"""Sliding-window zero-shot inference against GroupViT's rule, with a small fake model of cocu's interface."""

from dataclasses import dataclass, replace

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cocu.evaluation.inference import (
    ZeroShotSegmenter,
    build_text_embeddings,
    group_class_scores,
    pixel_scores,
    rescale_size,
    slide_windows,
    with_background,
)
from cocu.evaluation.presets import SEGMENTATION_PRESETS, Preset, get_preset


@dataclass
class Features:
    attn: torch.Tensor
    group_embeds: torch.Tensor
    image_embed: torch.Tensor


class FakeGroupViT(nn.Module):
    """cocu's GroupViT interface on a few linear maps: groups from pooled patch colours."""

    patch_size, image_size, context_length = 4, 16, 16

    def __init__(self, groups: int = 3, dim: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.assign = nn.Conv2d(3, groups, 1)
        self.embed = nn.Linear(3, dim)
        self.token_embedding = nn.Embedding(49408, dim)

    def encode_text(self, tokens):
        return F.normalize(self.token_embedding(tokens).sum(dim=1), dim=-1)

    def group_features(self, images):
        pooled = F.avg_pool2d(images, self.patch_size)  # [B, 3, h, w]
        attn = self.assign(pooled).softmax(dim=1)  # [B, G, h, w]
        weights = attn.flatten(2) / attn.flatten(2).sum(-1, keepdim=True)
        groups = F.normalize(self.embed(weights @ pooled.flatten(2).transpose(1, 2)), dim=-1)
        return Features(attn, groups, F.normalize(groups.mean(dim=1), dim=-1))

    def logit_scale_value(self):
        return torch.tensor(10.0)


def reference_encode_decode(attn, group_embeds, image_embed, text, logit_scale, with_bg, bg_thresh, size):
    """GroupViT ``GroupViTSegInference.encode_decode`` for one window, transcribed (one-hot matmul and all)."""
    attn_map = F.interpolate(attn[None], size=size, mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    onehot = F.one_hot(attn_map.argmax(dim=-1), num_classes=attn_map.shape[-1]).to(attn_map.dtype)
    group_affinity = (group_embeds @ text.T) * logit_scale
    pre_group_affinity = F.softmax(group_affinity, dim=-1)
    avg_affinity = F.softmax((image_embed[None] @ text.T) * logit_scale, dim=-1)
    mask = torch.zeros_like(avg_affinity)
    topk = avg_affinity.topk(dim=-1, k=min(5, text.shape[0]))
    mask.scatter_add_(dim=-1, index=topk.indices, src=torch.ones_like(topk.values))
    group_affinity = group_affinity.masked_fill(~mask.bool(), float("-inf"))
    group_affinity = F.softmax(group_affinity, dim=-1) * pre_group_affinity
    offset = 1 if with_bg else 0
    pred = torch.zeros(text.shape[0] + offset, *size)
    pred[offset:] = (onehot @ group_affinity).permute(2, 0, 1)
    if with_bg:
        thresh = min(bg_thresh, group_affinity.max().item())
        pred[0, (onehot @ group_affinity).max(dim=-1).values < thresh] = 1
    return pred


def preset(**changes) -> Preset:
    base = Preset("test", "toy", short_side=16, crop=16, stride=8, classes=None, templates=("a photo of a {}.",))
    return replace(base, **changes)


def test_rescale_size_follows_mmseg_keep_ratio():
    assert rescale_size(375, 500, 448) == (448, 597)  # VOC 500x375 -> 597x448, small images grow
    assert rescale_size(1024, 2048, 1024) == (1024, 2048)  # Cityscapes at full resolution
    assert rescale_size(100, 5000, 448) == (41, 2048)  # the long side caps the scale


@pytest.mark.parametrize(
    "size, expected",
    [
        ((10, 12), [(0, 10, 0, 12)]),  # smaller than the crop: one window of the image size
        ((16, 16), [(0, 16, 0, 16)]),
        ((16, 30), [(0, 16, 0, 16), (0, 16, 8, 24), (0, 16, 14, 30)]),  # the last window aligned to the border
    ],
)
def test_slide_windows(size, expected):
    assert slide_windows(*size, crop=16, stride=8) == expected


def test_text_embeddings_average_templates_then_normalise():
    model = FakeGroupViT()
    templates = ("a photo of a {}.", "a drawing of a {}.")
    text = build_text_embeddings(model, ["cat", "dog"], templates, tokenize=open_clip.tokenize)
    single = [model.encode_text(open_clip.tokenize([t.format(c) for t in templates], 16)) for c in ("cat", "dog")]
    expected = F.normalize(torch.stack([s.mean(0) for s in single]), dim=-1)
    assert torch.allclose(text, expected, atol=1e-6)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("with_bg", [False, True])
def test_window_scores_match_the_reference_rule(with_bg):
    torch.manual_seed(3)
    attn = torch.rand(4, 3, 3).softmax(dim=0)  # G=4 groups on a 3x3 patch grid
    groups = F.normalize(torch.randn(4, 8), dim=-1)
    image = F.normalize(torch.randn(8), dim=-1)
    text = F.normalize(torch.randn(7, 8), dim=-1)  # 7 classes: top-5 masking removes 2
    scores = group_class_scores(groups[None], image[None], text, 10.0, topk=5)
    ours = pixel_scores(attn[None], scores, (12, 12))
    if with_bg:
        ours = with_background(ours, scores, 0.6, "groupvit")
    reference = reference_encode_decode(attn, groups, image, text, 10.0, with_bg, 0.6, (12, 12))
    assert torch.allclose(ours[0], reference, atol=1e-6)


def test_background_rule_on_hand_made_scores():
    # group 0 is confident in class 0, group 1 is unsure; pixels: left column group 0, right column group 1
    group_scores = torch.tensor([[[0.9, 0.05, 0.05], [0.3, 0.2, 0.1]]])
    attn = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    scores = pixel_scores(attn, group_scores, (2, 2))
    assert torch.equal(scores[0, 0], torch.tensor([[0.9, 0.3], [0.9, 0.3]]))
    high = with_background(scores, group_scores, 0.95, "groupvit")  # threshold min(0.95, 0.9): group 1 is background
    assert torch.equal(high[0, 0], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    low = with_background(scores, group_scores, 0.2, "groupvit")  # 0.3 >= 0.2: nothing is background
    assert low[0, 0].sum() == 0
    capped = with_background(scores * 0.5, group_scores * 0.5, 0.95, "groupvit")  # the best group stays foreground
    assert torch.equal(capped[0, 0], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    constant = with_background(scores, group_scores, 0.5, "constant")  # TCL: a flat background score
    assert torch.all(constant[0, 0] == 0.5) and constant.argmax(1)[0].tolist() == [[1, 0], [1, 0]]


@pytest.mark.parametrize("size", [(10, 13), (16, 16), (21, 40)])  # smaller than, equal to, larger than the window
def test_segmenter_returns_full_size_maps(size):
    model = FakeGroupViT()
    text = build_text_embeddings(model, ["a", "b", "c"], ("{}",), tokenize=open_clip.tokenize)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    for has_bg in (False, True):
        segmenter = ZeroShotSegmenter(model, text, preset(short_side=min(size), bg_thresh=0.9), has_bg, batch_size=2)
        logits = segmenter.logits([image])[0]
        assert logits.shape == (3 + has_bg, *size)
        pred = segmenter.predict([image])[0]
        assert pred.shape == size and pred.dtype == torch.int64 and 0 <= pred.min() and pred.max() < 3 + has_bg


def test_windows_are_averaged_and_batched_across_images():
    model = FakeGroupViT()
    text = build_text_embeddings(model, ["a", "b", "c", "d"], ("{}",), tokenize=open_clip.tokenize)
    rng = np.random.default_rng(1)
    wide = rng.integers(0, 256, size=(16, 40, 3), dtype=np.uint8)  # short side 16: no resize, 4 windows
    small = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    segmenter = ZeroShotSegmenter(model, text, preset(), has_background=False, batch_size=3)
    together = segmenter.logits([wide, small])
    tensor = segmenter.prepare(wide)
    expected = torch.zeros(4, 16, 40)
    count = torch.zeros(16, 40)
    for y1, y2, x1, x2 in slide_windows(16, 40, 16, 8):
        expected[:, y1:y2, x1:x2] += segmenter.window_logits(tensor[None, :, y1:y2, x1:x2])[0]
        count[y1:y2, x1:x2] += 1
    assert torch.allclose(together[0], expected / count, atol=1e-6)
    assert torch.allclose(together[1], segmenter.logits([small])[0], atol=1e-6)


def test_presets_table_is_complete_and_names_its_settings():
    voc = get_preset("groupvit", "voc")
    assert (voc.short_side, voc.crop, voc.stride, voc.bg_thresh) == (448, 448, 224, 0.95)
    assert voc.classes[11] == "table" and get_preset("tcl", "voc").classes[11] == "diningtable"
    assert get_preset("groupvit", "ade20k").classes[7] == "bed "
    assert (get_preset("groupvit", "cityscapes").short_side, get_preset("groupvit", "coco_stuff").crop) == (1024, 224)
    assert (
        get_preset("groupvit", "imagenet_s300").bg_thresh == 0.75 and len(get_preset("tcl", "context").templates) == 9
    )
    synthetic = get_preset("groupvit", "synthetic")
    assert (synthetic.short_side, synthetic.crop, synthetic.stride, synthetic.bg_thresh) == (64, 64, 32, None)
    for harness, table in SEGMENTATION_PRESETS.items():
        for dataset, p in table.items():
            record = p.to_dict()
            assert (
                record["name"] == f"{harness}/{dataset}" and record["templates"] and record["stride"] <= record["crop"]
            )
    with pytest.raises(KeyError, match="imagenet_s50' has presets: groupvit"):
        get_preset("tcl", "imagenet_s50")
    with pytest.raises(ValueError, match="names 21 classes but the dataset has 3"):
        voc.prompt_classes(("a", "b", "c"), True)


def test_the_release_averages_raw_template_embeddings_cocu_normalised_ones():
    import torch
    import torch.nn.functional as F

    from cocu.evaluation.inference import build_text_embeddings

    class Fake:  # prompt i embeds to a fixed vector whose norm differs per template
        context_length = 8

        def __init__(self):
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.table = {}

        def parameters(self):
            return iter([self.weight])

        def encode_text_raw(self, tokens):
            rows = [
                self.table.setdefault(tuple(t.tolist()), torch.randn(4) * (1 + 9 * len(self.table))) for t in tokens
            ]
            return torch.stack(rows)

        def encode_text(self, tokens):  # cocu's models normalise here
            return F.normalize(self.encode_text_raw(tokens), dim=-1)

    torch.manual_seed(0)
    model = Fake()
    tokenize = lambda texts, length: torch.tensor([[len(t), sum(map(ord, t)) % 97] for t in texts])  # noqa: E731
    templates = ("a photo of a {}.", "a photo of many {}.")
    clip_rule = build_text_embeddings(model, ["dog"], templates, tokenize)
    release = build_text_embeddings(model, ["dog"], templates, tokenize, average="release")
    raw = torch.stack([model.encode_text_raw(tokenize([t.format("dog")], 8))[0] for t in templates])
    assert torch.allclose(release[0], F.normalize(raw.mean(0), dim=-1), atol=1e-6)  # GroupViT's build_text_embedding
    assert torch.allclose(clip_rule[0], F.normalize(F.normalize(raw, dim=-1).mean(0), dim=-1), atol=1e-6)
    assert not torch.allclose(release, clip_rule, atol=1e-3)  # the longer vector dominates the release's mean
    one = build_text_embeddings(model, ["dog"], templates[:1], tokenize, average="release")
    assert torch.allclose(one, build_text_embeddings(model, ["dog"], templates[:1], tokenize), atol=1e-6)
