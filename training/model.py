"""GroupViT: the image and text encoders joined by 2-layer MLP projectors and two learnable temperatures.

`GroupViT` is the model evaluation loads; its configuration is data (`GroupViTConfig`, a dataclass that round-trips
through plain dicts, so checkpoints hold it without pickled code). Named configurations live in `MODEL_CONFIGS`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cocu.training.groupvit import GroupViTVisionConfig, GroupViTVisionEncoder
from cocu.training.text import TextTransformer, TextTransformerConfig

LOGIT_SCALE_MAX = 100.0


@dataclass
class GroupViTConfig:
    """The whole model: vision + text towers, projectors to the joint space, temperature init."""

    vision: GroupViTVisionConfig = field(default_factory=GroupViTVisionConfig)
    text: TextTransformerConfig = field(default_factory=TextTransformerConfig)
    embed_dim: int = 256
    proj_hidden_dim: int = 4096
    proj_num_layers: int = 2
    contrast_temperature: float = 0.07
    name: str = "custom"

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = GroupViTVisionConfig(**self.vision)
        if isinstance(self.text, dict):
            self.text = TextTransformerConfig(**self.text)
        if self.proj_num_layers < 1:
            raise ValueError(f"proj_num_layers must be >= 1, got {self.proj_num_layers}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and numbers only (safe for `torch.load(weights_only=True)` and YAML)."""
        d = asdict(self)
        for sub in ("vision", "text"):
            d[sub] = {k: list(v) if isinstance(v, tuple) else v for k, v in d[sub].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupViTConfig:
        return cls(**copy.deepcopy(d))


# Named configurations, as data. `groupvit-s` is the paper's released model (2 grouping stages, 64 then 8 groups).
# `groupvit-cpu` is sized for minutes on a 2-core CPU at the synthetic world's 64 px: one grouping stage, 64 patches
# into 8 groups (the paper's 1-stage variant, Table 2). Measured on the world (20k pairs, oracle prompts, 600 steps of
# 64): the 2-stage 16 -> 4 layout reached the same image-level zero-shot recall but its last-stage assignment stayed
# near uniform, so segmentation was at chance (mIoU 0.2-1.4), while 1 stage into 8 groups used ~4 groups per image and
# reached mIoU 3.2 at less cost per step. Its patches go through a conv stem (three stride-2 3x3 convs, not in the
# reference): on the 16-thing world, oracle prompts, 500 steps of 64, it raised mIoU from 7.0 to 10.8 for 14 % more
# time per step. No block after grouping (depths [2, 0]; the paper's model has 3): two full self-attention blocks
# over the 8 segment tokens let every group carry the whole image, and without them oracle-all rose from 5.0 / 6.1 to
# 7.9 / 11.4 mIoU (seeds 0 / 1, 500 steps of 64), all of it on stuff. `groupvit-test` is for unit tests.
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "groupvit-s": {},
    "groupvit-cpu": {
        "vision": {
            "image_size": 64,
            "patch_size": 8,
            "conv_stem": True,
            "width": 128,
            "depths": [2, 0],
            "num_heads": [4, 4],
            "num_group_tokens": [8, 0],
            "num_output_groups": [8],
            "drop_path_rate": 0.0,
        },
        "text": {"context_length": 32, "width": 128, "layers": 2, "heads": 2},
        "embed_dim": 128,
        "proj_hidden_dim": 1024,
    },
    "groupvit-test": {
        "vision": {
            "image_size": 32,
            "patch_size": 8,
            "width": 32,
            "depths": [1, 1, 1],
            "num_heads": [2, 2, 2],
            "num_group_tokens": [8, 2, 0],
            "num_output_groups": [8, 2],
            "drop_path_rate": 0.0,
        },
        "text": {"context_length": 32, "width": 32, "layers": 1, "heads": 2},
        "embed_dim": 32,
        "proj_hidden_dim": 64,
    },
}


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def get_config(name: str, overrides: dict[str, Any] | None = None) -> GroupViTConfig:
    """A named configuration, with nested overrides merged in (e.g. ``{"vision": {"drop_path_rate": 0}}``)."""
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(MODEL_CONFIGS)}")
    return GroupViTConfig(**_merge({**MODEL_CONFIGS[name], "name": name}, overrides or {}))


@dataclass
class GroupFeatures:
    """What zero-shot segmentation needs from one forward pass (eval-mode semantics).

    attn: [B, G, h, w] soft assignment of each patch to the G final groups, multiplied across grouping stages, at
    patch-grid resolution; group_embeds: [B, G, D] each final group token projected and L2-normalised;
    image_embed: [B, D] the L2-normalised image embedding; group_tokens: [B, G, C] the final group tokens before
    the projector (what a diagnostic projects differently).
    """

    attn: torch.Tensor
    group_embeds: torch.Tensor
    image_embed: torch.Tensor
    group_tokens: torch.Tensor


class ProjectMLP(nn.Module):
    """The reference projector: 1x1 Conv1d + BatchNorm + ReLU layers, then a 1x1 Conv1d; works on [B, C] or [B, L, C].

    BatchNorm normalises over batch and tokens, so in eval it applies per segment token with the running statistics.
    """

    def __init__(self, in_dim: int, inner_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        hidden: list[nn.Module] = []
        for i in range(num_layers - 1):
            hidden += [
                nn.Conv1d(in_dim if i == 0 else inner_dim, inner_dim, kernel_size=1),
                nn.BatchNorm1d(inner_dim),
                nn.ReLU(inplace=True),
            ]
        self.linear_hidden = nn.Sequential(*hidden)
        self.linear_out = nn.Conv1d(in_dim if num_layers == 1 else inner_dim, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.ndim == 2
        if squeeze:
            x = x.unsqueeze(1)
        x = self.linear_out(self.linear_hidden(x.transpose(1, 2))).transpose(1, 2)
        return x.squeeze(1) if squeeze else x


class GroupViT(nn.Module):
    """GroupViT with the reference's module names (`img_encoder`, `text_encoder`, `img_projector`, `text_projector`)."""

    def __init__(self, config: GroupViTConfig):
        super().__init__()
        self.config = config
        self.img_encoder = GroupViTVisionEncoder(config.vision)
        self.text_encoder = TextTransformer(config.text)
        self.img_projector = ProjectMLP(
            config.vision.width, config.proj_hidden_dim, config.embed_dim, config.proj_num_layers
        )
        self.text_projector = ProjectMLP(
            config.text.width, config.proj_hidden_dim, config.embed_dim, config.proj_num_layers
        )
        init = math.log(1 / config.contrast_temperature)
        self.logit_scale = nn.Parameter(torch.tensor(init))
        self.multi_label_logit_scale = nn.Parameter(torch.tensor(init))

    @property
    def patch_size(self) -> int:
        return self.config.vision.patch_size

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    def logit_scale_value(self) -> torch.Tensor:
        """exp of the image-caption temperature, clamped at 100 (the reference's clamp)."""
        return self.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)

    def multi_label_logit_scale_value(self) -> torch.Tensor:
        return self.multi_label_logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, D], L2-normalised."""
        return F.normalize(self.img_projector(self.img_encoder(images)), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, T] token ids -> [N, D], L2-normalised."""
        return F.normalize(self.encode_text_raw(tokens), dim=-1)

    def encode_text_raw(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, T] token ids -> [N, D], the projector's output before normalisation (what the reference averages
        over templates)."""
        return self.text_projector(self.text_encoder(tokens))

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training forward: images [B, 3, H, W], text [B, 1+K, T] (caption, then K prompts).

        Returns L2-normalised image [B, D], caption [B, D] and prompt [B, K, D] embeddings. All B*(1+K) texts go through
        the projector's BatchNorm together, as in the reference.
        """
        texts = self._encode_batch_text(text)
        return self.encode_image(images), texts[:, 0], texts[:, 1:]

    def _encode_batch_text(self, text: torch.Tensor) -> torch.Tensor:
        """[B, 1+K, T] -> [B, 1+K, D]: every caption and prompt through one text pass (one BatchNorm batch)."""
        b, n, t = text.shape
        return self.encode_text(text.reshape(b * n, t)).view(b, n, -1)

    def forward_with_groups(
        self, images: torch.Tensor, text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` plus the final groups' embeddings [B, G, D], for the per-group multi-label departure.

        The image vector and the G group tokens go through the projector together (its BatchNorm sees both, as the
        groups are what evaluation projects).
        """
        texts = self._encode_batch_text(text)
        tokens, _ = self.img_encoder.forward_features(images)
        both = torch.cat([self.img_encoder.forward_head(tokens).unsqueeze(1), tokens], dim=1)
        embeds = F.normalize(self.img_projector(both), dim=-1)
        return embeds[:, 0], texts[:, 0], texts[:, 1:], embeds[:, 1:]

    @torch.no_grad()
    def group_features(self, images: torch.Tensor) -> GroupFeatures:
        """Soft group maps and group embeddings for segmentation, always with eval-mode semantics (no Gumbel noise,
        BatchNorm running statistics); the module's train/eval mode is restored afterwards."""
        was_training = self.training
        self.eval()
        try:
            tokens, maps = self.img_encoder.forward_features(images, return_attn=True)
            h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
            attn = maps[0].soft.transpose(1, 2)  # [B, N, G1]
            for m in maps[1:]:
                attn = attn @ m.soft.transpose(1, 2)  # [B, N, G_next]
            attn = attn.transpose(1, 2).reshape(images.shape[0], -1, h, w)
            group_embeds = F.normalize(self.img_projector(tokens), dim=-1)
            image_embed = F.normalize(self.img_projector(self.img_encoder.forward_head(tokens)), dim=-1)
        finally:
            self.train(was_training)
        return GroupFeatures(attn=attn, group_embeds=group_embeds, image_embed=image_embed, group_tokens=tokens)


def build_model(name_or_config: str | GroupViTConfig | dict[str, Any]) -> GroupViT:
    """A freshly initialised GroupViT from a config name (see `MODEL_CONFIGS`), a config, or its dict form."""
    if isinstance(name_or_config, str):
        config = get_config(name_or_config)
    elif isinstance(name_or_config, dict):
        config = GroupViTConfig.from_dict(name_or_config)
    else:
        config = name_or_config
    return GroupViT(config)
