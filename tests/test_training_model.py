"""GroupViT model and loss: faithful to the reference (assignment, sizes, interpolation, loss), and the eval API."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

from cocu.training.grouping import GroupingBlock, gumbel_softmax, hard_softmax
from cocu.training.groupvit import interpolate_pos_embed
from cocu.training.loss import groupvit_loss
from cocu.training.model import GroupViT, GroupViTConfig, build_model, get_config
from cocu.training.module import GroupViTModule
from cocu.training.optim import warmup_cosine, weight_decay_groups
from cocu.training.text import tokenize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def groupvit_s() -> GroupViT:
    torch.manual_seed(0)
    return build_model("groupvit-s")


@pytest.fixture(scope="module")
def tiny() -> GroupViT:
    torch.manual_seed(0)
    return build_model("groupvit-test")


def test_straight_through_gradient_equals_softmax_gradient():
    torch.manual_seed(0)
    logits = torch.randn(3, 8, 20, requires_grad=True)
    weights = torch.randn(3, 8, 20)
    hard = hard_softmax(logits, dim=-2)
    (grad_hard,) = torch.autograd.grad((hard * weights).sum(), logits)
    (grad_soft,) = torch.autograd.grad((logits.softmax(-2) * weights).sum(), logits)
    assert torch.allclose(grad_hard, grad_soft, atol=1e-6)
    assert torch.equal(hard.detach().round(), F.one_hot(logits.argmax(-2), 8).transpose(-1, -2).float())

    # Gumbel: same noise (same seed) gives the gradient of the noisy softmax at temperature tau
    torch.manual_seed(1)
    sample = gumbel_softmax(logits, dim=-2, tau=0.5, hard=True)
    (grad_gumbel,) = torch.autograd.grad((sample * weights).sum(), logits)
    torch.manual_seed(1)
    soft = gumbel_softmax(logits, dim=-2, tau=0.5, hard=False)
    (grad_noisy_soft,) = torch.autograd.grad((soft * weights).sum(), logits)
    assert torch.allclose(grad_gumbel, grad_noisy_soft, atol=1e-6)
    assert not torch.allclose(grad_gumbel, grad_soft, atol=1e-3)  # the noise is really there


def _block() -> GroupingBlock:
    return GroupingBlock(
        dim=32,
        num_heads=2,
        num_group_token=8,
        num_output_group=4,
        mlp_ratio=4.0,
        qkv_bias=True,
        hard=True,
        gumbel=True,
        gumbel_tau=1.0,
        assign_eps=1.0,
    )


def test_assignment_is_one_hot_with_noise_only_in_training():
    torch.manual_seed(0)
    block = _block()
    x, groups = torch.randn(2, 16, 32), torch.randn(2, 8, 32)
    block.train()
    _, a = block(x, groups, return_attn=True)
    _, b = block(x, groups, return_attn=True)
    for maps in (a, b):
        assert maps.hard.shape == (2, 4, 16)
        assert torch.allclose(maps.hard, maps.hard.round(), atol=1e-6)  # values are 0 or 1
        assert torch.allclose(maps.hard.sum(dim=1), torch.ones(2, 16))  # each token goes to exactly one group
        assert torch.allclose(maps.soft.sum(dim=1), torch.ones(2, 16))  # softmax over the group axis
    assert not torch.equal(a.hard, b.hard)  # Gumbel noise in training
    block.eval()
    _, c = block(x, groups, return_attn=True)
    _, d = block(x, groups, return_attn=True)
    assert torch.equal(c.hard, d.hard)  # eval: noise-free argmax of the soft assignment
    assert torch.equal(c.hard.argmax(1), c.soft.argmax(1))


def test_assign_eps_divides_by_count_plus_one():
    torch.manual_seed(0)
    attn = _block().assign.eval()
    groups, tokens = torch.randn(1, 4, 32), torch.randn(1, 16, 32)
    out, maps = attn(groups, tokens, return_attn=True)
    value = attn.v_proj(tokens)
    expected = attn.proj((maps.hard @ value) / (maps.hard.sum(-1, keepdim=True) + 1.0))
    assert torch.allclose(out, expected, atol=1e-5)


def test_groupvit_s_matches_the_reference_size(groupvit_s: GroupViT):
    model = groupvit_s
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(model) - 55.7e6) / 55.7e6 < 0.01
    # per-part counts from the reference's layer shapes (groupvit.md §1.1)
    assert round(count(model.img_encoder) / 1e6, 2) == 28.84
    assert round(count(model.text_encoder) / 1e6, 2) == 22.15
    assert (round(count(model.img_projector) / 1e6, 2), round(count(model.text_projector) / 1e6, 2)) == (2.63, 2.11)
    keys = set(model.state_dict())  # the reference's names, so its released weights load by state dict
    for key in (
        "img_encoder.pos_embed",
        "img_encoder.layers.0.group_token",
        "img_encoder.layers.1.group_projector.1.fc1.weight",
        "img_encoder.layers.0.downsample.pre_assign_attn.attn.q_proj.weight",
        "img_encoder.layers.1.downsample.assign.k_proj.bias",
        "img_encoder.layers.0.blocks.5.attn.qkv.weight",
        "text_encoder.transformer.resblocks.11.attn.in_proj_weight",
        "text_encoder.token_embedding.weight",
        "img_projector.linear_hidden.1.running_mean",
        "text_projector.linear_out.weight",
        "multi_label_logit_scale",
    ):
        assert key in keys, key
    # stage-2 group tokens start at zero; temperatures start at 1/0.07
    assert torch.count_nonzero(model.img_encoder.layers[1].group_token) == 0
    assert torch.count_nonzero(model.img_encoder.layers[0].group_token) > 0
    assert math.isclose(model.logit_scale_value().item(), 1 / 0.07, rel_tol=1e-5)
    assert math.isclose(model.multi_label_logit_scale_value().item(), 1 / 0.07, rel_tol=1e-5)


def test_position_embedding_interpolates_to_448(groupvit_s: GroupViT):
    pe = torch.randn(1, 14 * 14, 8)
    assert interpolate_pos_embed(pe, 14, (14, 14)) is pe
    big = interpolate_pos_embed(pe, 14, (28, 28))
    assert big.shape == (1, 28 * 28, 8)
    # bicubic upsampling by 2 keeps the grid's mean and stays close to the source at matching positions
    grid = big.view(28, 28, 8)[::2, ::2].reshape(1, 196, 8)
    assert torch.corrcoef(torch.stack([grid.flatten(), pe.flatten()]))[0, 1] > 0.5

    features = groupvit_s.group_features(torch.randn(1, 3, 448, 448))
    assert features.attn.shape == (1, 8, 28, 28)
    assert torch.allclose(features.attn.sum(1), torch.ones(1, 28, 28), atol=1e-5)
    assert features.group_embeds.shape == (1, 8, 256)


def test_eval_interface(tiny: GroupViT):
    tiny.train()
    images = torch.randn(3, 3, 48, 40)  # not the native 32 px: position embedding interpolated, 6 x 5 patches
    feats = tiny.group_features(images)
    assert tiny.training  # mode restored
    assert feats.attn.shape == (3, 2, 6, 5)
    assert torch.allclose(feats.attn.sum(1), torch.ones(3, 6, 5), atol=1e-5)
    assert torch.allclose(feats.group_embeds.norm(dim=-1), torch.ones(3, 2), atol=1e-5)
    tiny.eval()
    assert torch.allclose(feats.image_embed, tiny.encode_image(images), atol=1e-5)
    tokens = tokenize(["a photo of a dog.", "grass"], tiny.context_length)
    text = tiny.encode_text(tokens)
    assert text.shape == (2, 32) and torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert (tiny.patch_size, tiny.image_size, tiny.context_length) == (8, 32, 32)
    assert tiny.logit_scale_value().item() <= 100


def test_conv_stem_gives_the_same_token_grid_and_learns():
    """The conv stem (the synthetic recipe's) replaces only the patch projection: same grid, any test size, trains."""
    torch.manual_seed(0)
    model = build_model(get_config("groupvit-test", {"vision": {"conv_stem": True, "gumbel": False}}))
    stem = model.img_encoder.patch_embed.proj
    assert [m.stride for m in stem if isinstance(m, torch.nn.Conv2d)] == [(2, 2)] * 3 + [(1, 1)]
    feats = model.group_features(torch.randn(2, 3, 48, 40))
    assert feats.attn.shape == (2, 2, 6, 5)
    losses = _toy_losses(model)
    assert stem[0].weight.grad.abs().sum() > 0 and losses[-1] < losses[0]
    with pytest.raises(ValueError, match="power-of-two"):
        build_model(get_config("groupvit-test", {"vision": {"conv_stem": True, "patch_size": 6, "image_size": 36}}))


def test_text_pooling_ignores_padding_and_batch_length(tiny: GroupViT):
    tokens = tokenize(["a dog", "a photo of a very small red umbrella next to a mug."], 32)
    assert tokens[0, 0] == 49406 and tokens[0, 3] == 49407 and tokens[0, 4:].eq(0).all()
    tiny.eval()
    with torch.no_grad():
        together = tiny.text_encoder(tokens)
        alone = torch.cat([tiny.text_encoder(tokens[i : i + 1]) for i in range(2)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_config_round_trips_through_plain_dicts():
    config = get_config("groupvit-cpu", {"vision": {"drop_path_rate": 0.05}})
    d = config.to_dict()
    assert isinstance(d["vision"]["depths"], list) and d["vision"]["drop_path_rate"] == 0.05
    assert GroupViTConfig.from_dict(d) == config
    with pytest.raises(KeyError, match="unknown model config"):
        get_config("groupvit-xl")
    with pytest.raises(ValueError, match="num_output_groups"):
        get_config("groupvit-test", {"vision": {"num_output_groups": [8]}})


def reference_loss(image_x, text_x, prompt_x, s, s_ml):
    """Single-process transcription of the reference `MultiLabelContrastive.loss` + `multi_label_loss` (einops written
    as permute/reshape), world size 1, rank 0."""
    b, c = image_x.shape
    labels = torch.arange(b)
    itc = 0.5 * (F.cross_entropy(image_x @ text_x.t() * s, labels) + F.cross_entropy(text_x @ image_x.t() * s, labels))
    image_feat, text_feat = image_x.unsqueeze(1), prompt_x  # [B, 1, C], [B, K, C]
    dist_per_img = image_feat @ text_feat.transpose(1, 2)
    dist_per_text = text_feat @ image_feat.transpose(1, 2)
    pos_img = (torch.ones_like(dist_per_text) / dist_per_text.size(1)).transpose(1, 2)  # [B, L1, L2]
    pos_text = (torch.ones_like(dist_per_img) / dist_per_img.size(1)).transpose(1, 2)  # [B, L2, L1]
    l1, l2 = 1, text_feat.shape[1]
    ix, tx = image_feat.reshape(b * l1, c), text_feat.reshape(b * l2, c)
    world, rank = 1, 0
    eye = torch.eye(b)
    lab_img = F.one_hot(torch.ones(b, l1, b, l2, dtype=torch.long) * rank, world).float()
    lab_img *= pos_img[:, :, None, :, None] * eye[:, None, :, None, None]
    lab_img = lab_img.permute(0, 1, 4, 2, 3).reshape(b * l1, world * b * l2)
    lab_text = F.one_hot(torch.ones(b, l2, b, l1, dtype=torch.long) * rank, world).float()
    lab_text *= pos_text[:, :, None, :, None] * eye[:, None, :, None, None]
    lab_text = lab_text.permute(0, 1, 4, 2, 3).reshape(b * l2, world * b * l1)
    soft_ce = SoftTargetCrossEntropy()
    ml = 0.5 * (soft_ce(ix @ tx.t() * s_ml, lab_img) + soft_ce(tx @ ix.t() * s_ml, lab_text))
    return itc, ml


def test_loss_equals_reference_on_a_toy_batch():
    torch.manual_seed(0)
    image_x = F.normalize(torch.randn(6, 16), dim=-1)
    text_x = F.normalize(image_x + 0.5 * torch.randn(6, 16), dim=-1)
    prompt_x = F.normalize(image_x[:, None] + 0.8 * torch.randn(6, 3, 16), dim=-1)
    s, s_ml = torch.tensor(14.3), torch.tensor(9.1)
    out = groupvit_loss(image_x, text_x, prompt_x, s, s_ml, multi_label_weight=0.7)
    itc, ml = reference_loss(image_x, text_x, prompt_x, s, s_ml)
    assert torch.allclose(out.contrastive, itc, atol=1e-6)
    assert torch.allclose(out.multi_label, ml, atol=1e-6)
    assert torch.allclose(out.loss, itc + 0.7 * ml, atol=1e-6)
    # K = 0: no multi-label term
    assert groupvit_loss(image_x, text_x, prompt_x[:, :0], s, s_ml).multi_label.item() == 0.0


def test_best_group_departure_scores_each_prompt_by_one_group():
    """One group per image gives GroupViT's loss exactly; with several, only the group nearest a prompt gets its
    gradient, and the image vector gets none from the multi-label term."""
    torch.manual_seed(0)
    image_x = F.normalize(torch.randn(6, 16), dim=-1)
    text_x = F.normalize(image_x + 0.5 * torch.randn(6, 16), dim=-1)
    prompt_x = F.normalize(image_x[:, None] + 0.8 * torch.randn(6, 3, 16), dim=-1)
    s, s_ml = torch.tensor(14.3), torch.tensor(9.1)
    plain = groupvit_loss(image_x, text_x, prompt_x, s, s_ml)
    one_group = groupvit_loss(image_x, text_x, prompt_x, s, s_ml, group_x=image_x[:, None])
    assert torch.allclose(one_group.multi_label, plain.multi_label, atol=1e-6)
    assert torch.allclose(one_group.contrastive, plain.contrastive)

    groups = F.normalize(torch.randn(6, 4, 16), dim=-1)
    groups[0, 2] = prompt_x[0, 0]  # image 0's group 2 is its best for its own first prompt
    groups.requires_grad_(True)
    image = image_x.clone().requires_grad_(True)
    out = groupvit_loss(image, text_x, prompt_x, s, s_ml, group_x=groups)
    grad_groups, grad_image = torch.autograd.grad(out.multi_label, (groups, image), allow_unused=True)
    assert grad_image is None
    best = torch.einsum("igd,jkd->igjk", groups.detach(), prompt_x).flatten(2).argmax(dim=1)  # [6, 18]
    touched = torch.zeros(6, 4, dtype=torch.bool)
    touched.scatter_(1, best, True)
    assert touched[0, 2]
    assert (grad_groups.abs().sum(-1) > 0).equal(touched)


def test_forward_with_groups_gives_the_groups_evaluation_names(tiny: GroupViT):
    """The departure's group embeddings are the ones segmentation names; the image and texts are forward's."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    text = tokenize([f"a photo of thing {i}" for i in range(8)], 32).view(2, 4, 32)
    tiny.eval()
    try:
        image_x, text_x, prompt_x, group_x = tiny.forward_with_groups(images, text)
        plain = tiny(images, text)
    finally:
        tiny.train()
    features = tiny.group_features(images)
    assert torch.allclose(image_x, plain[0], atol=1e-6) and torch.allclose(prompt_x, plain[2])
    assert torch.allclose(group_x, features.group_embeds, atol=1e-6)
    with pytest.raises(ValueError, match="multi_label_pool"):
        GroupViTModule(arch="groupvit-test", multi_label_pool="mean-group")


def _toy_losses(model: GroupViT, steps: int = 4) -> list[float]:
    """The loss at each of a few AdamW steps on one fixed batch of 8 images with 1 caption + 3 prompts each."""
    images = torch.randn(8, 3, 32, 32)
    text = tokenize([f"a photo of thing {i}" for i in range(32)], 32).view(8, 4, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        out = groupvit_loss(*model(images, text), model.logit_scale_value(), model.multi_label_logit_scale_value())
        opt.zero_grad()
        out.loss.backward()
        losses.append(out.loss.item())
        opt.step()
    return losses


def test_model_trains_on_a_toy_batch():
    """Gradients reach every parameter group and a few AdamW steps lower the loss on a fixed batch."""
    torch.manual_seed(0)
    model = build_model(get_config("groupvit-test", {"vision": {"gumbel": False}}))
    losses = _toy_losses(model)
    assert model.logit_scale.grad is not None and model.img_encoder.layers[0].group_token.grad.abs().sum() > 0
    assert losses[-1] < losses[0]


def test_warmup_cosine_schedule():
    kw = dict(peak=1.0, warmup_start=0.01, minimum=0.1, warmup=10, total=110)
    assert warmup_cosine(0, **kw) == 0.01
    assert math.isclose(warmup_cosine(5, **kw), 0.505)
    assert warmup_cosine(10, **kw) == 1.0
    assert math.isclose(warmup_cosine(60, **kw), 0.55)
    assert math.isclose(warmup_cosine(110, **kw), 0.1) and math.isclose(warmup_cosine(500, **kw), 0.1)


def test_warmup_cosine_on_a_share_of_the_budget():
    """The teacher's schedule is the same function, positioned by the share of its budget spent."""
    kw = dict(peak=1e-3, warmup_start=0.0, minimum=0.0, warmup=0.05, total=1.0)
    assert warmup_cosine(0.0, **kw) == 0.0
    assert math.isclose(warmup_cosine(0.025, **kw), 5e-4)
    assert math.isclose(warmup_cosine(0.525, **kw), 5e-4) and math.isclose(warmup_cosine(1.0, **kw), 0.0, abs_tol=1e-12)


def test_weight_decay_groups_exempt_gains_biases_and_temperatures():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Embedding(5, 4))
    net.temperature = torch.nn.Parameter(torch.tensor(1.0))
    net[2].weight.requires_grad_(False)
    decay, keep = weight_decay_groups(net, 0.1)
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert sorted(p.ndim for p in keep["params"]) == [0, 1, 1, 1]
