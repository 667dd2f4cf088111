"""GroupViT image encoder (Xu et al., CVPR 2022), faithful to the reference code.

A ViT whose token sequence carries learned *group tokens*; after each stage a grouping block (``grouping``) merges the
image (or segment) tokens into as many segments as there are group tokens, by a hard Gumbel-softmax assignment with
straight-through gradients. Parameter names follow the reference (`NVlabs/GroupViT` `models/group_vit.py`) so its
released weights load by state dict.

Faithful details that matter (as in NVlabs/GroupViT): no CLS token; the assignment softmax runs over the *group* axis;
Gumbel noise only in training, a noise-free hard argmax in eval; groups are divided by (count + assign_eps) with
``assign_eps = 1``; the cross-attention before assignment is post-norm; later stages' group tokens are zero-initialised
and added to a token-mixing projection of the previous stage's group tokens; the image vector is the average of the
final segment tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from cocu.training.grouping import Assignment, GroupingBlock
from cocu.training.vit_blocks import AttnBlock, MixerMlp


@dataclass
class GroupViTVisionConfig:
    """Image-encoder hyperparameters; the defaults are GroupViT-S (the paper's released model)."""

    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    width: int = 384
    depths: tuple[int, ...] = (6, 3, 3)
    num_heads: tuple[int, ...] = (6, 6, 6)
    num_group_tokens: tuple[int, ...] = (64, 8, 0)
    num_output_groups: tuple[int, ...] = (64, 8)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    patch_norm: bool = True
    conv_stem: bool = False  # stride-2 3x3 convs instead of one patch-sized conv (not in the reference)
    hard_assignment: bool = True
    gumbel: bool = True
    gumbel_tau: float = 1.0
    assign_eps: float = 1.0

    def __post_init__(self) -> None:
        for name in ("depths", "num_heads", "num_group_tokens", "num_output_groups"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        stages = len(self.depths)
        if not (len(self.num_heads) == len(self.num_group_tokens) == stages):
            raise ValueError(f"depths, num_heads and num_group_tokens need one entry per stage ({stages})")
        if len(self.num_output_groups) != stages - 1:
            raise ValueError(
                f"num_output_groups needs one entry per grouping block ({stages - 1}), got {self.num_output_groups}"
            )
        if self.num_group_tokens[-1] != 0 or any(n <= 0 for n in self.num_group_tokens[:-1]):
            raise ValueError(
                f"every stage but the last needs group tokens and the last none, got {self.num_group_tokens}"
            )
        if any(self.width % h for h in self.num_heads):
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def grid_size(self) -> int:
        """Patches per side at the native resolution (the position embedding's grid)."""
        return self.image_size // self.patch_size

    @property
    def num_groups(self) -> int:
        """Segments the encoder outputs (the last grouping block's output groups)."""
        return self.num_output_groups[-1]


class GroupingLayer(nn.Module):
    """One stage: transformer blocks over [tokens; group tokens], then (except the last stage) a grouping block."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        num_group_token: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: list[float],
        downsample: GroupingBlock | None,
        group_projector: nn.Module | None,
    ):
        super().__init__()
        self.num_group_token = num_group_token
        self.group_token: nn.Parameter | None = None
        if num_group_token > 0:
            self.group_token = nn.Parameter(torch.zeros(1, num_group_token, dim))
            if group_projector is None:  # later stages start at zero and add the projection of the previous groups
                trunc_normal_(self.group_token, std=0.02)
        self.blocks = nn.ModuleList(
            AttnBlock(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path[i]) for i in range(depth)
        )
        self.downsample = downsample
        self.group_projector = group_projector

    def forward(
        self, x: torch.Tensor, prev_group_token: torch.Tensor | None, return_attn: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, Assignment | None]:
        group_token = None
        if self.group_token is not None:
            group_token = self.group_token.expand(x.shape[0], -1, -1)
            if self.group_projector is not None:
                group_token = group_token + self.group_projector(prev_group_token)
            x = torch.cat([x, group_token], dim=1)
        for blk in self.blocks:
            x = blk(x)
        if group_token is not None:
            x, group_token = x[:, : -self.num_group_token], x[:, -self.num_group_token :]
        maps = None
        if self.downsample is not None:
            x, maps = self.downsample(x, group_token, return_attn=return_attn)
        return x, group_token, maps


class PatchEmbed(nn.Module):
    """Patches to tokens: one strided conv (the reference), or a stem of stride-2 3x3 convs.

    The conv stem (Xiao et al. 2021, "Early convolutions help transformers see better") gives the tokens a local
    inductive bias, so that a small ViT trained from scratch on little data learns shapes in far fewer steps.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool, conv_stem: bool = False):
        super().__init__()
        self.proj = (
            _conv_stem(patch_size, in_chans, embed_dim)
            if conv_stem
            else nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        )
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


def _conv_stem(patch_size: int, in_chans: int, embed_dim: int) -> nn.Sequential:
    steps = patch_size.bit_length() - 1
    if patch_size != 2**steps:
        raise ValueError(f"a conv stem needs a power-of-two patch size, got {patch_size}")
    layers: list[nn.Module] = []
    channels = in_chans
    for i in range(steps):
        out = embed_dim >> (steps - 1 - i)
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(True)]
        channels = out
    return nn.Sequential(*layers, nn.Conv2d(channels, embed_dim, kernel_size=1))


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: int, hw: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a [1, grid*grid, C] position embedding to an h x w token grid (any test resolution)."""
    if hw == (grid, grid):
        return pos_embed
    dim = pos_embed.shape[-1]
    pe = pos_embed.reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    pe = F.interpolate(pe, size=hw, mode="bicubic", align_corners=False)
    return pe.permute(0, 2, 3, 1).reshape(1, hw[0] * hw[1], dim)


class GroupViTVisionEncoder(nn.Module):
    """GroupViT image encoder: `forward_features` gives the final segment tokens, `forward_head` their average."""

    def __init__(self, config: GroupViTVisionConfig):
        super().__init__()
        self.config = config
        c = config
        self.width = c.width
        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, c.width, c.patch_norm, c.conv_stem)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.grid_size**2, c.width))
        trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(c.drop_rate)
        dpr = torch.linspace(0, c.drop_path_rate, sum(c.depths)).tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(c.depths):
            downsample = None
            if i < len(c.depths) - 1:
                downsample = GroupingBlock(
                    c.width,
                    c.num_heads[i],
                    c.num_group_tokens[i],
                    c.num_output_groups[i],
                    c.mlp_ratio,
                    c.qkv_bias,
                    c.hard_assignment,
                    c.hard_assignment and c.gumbel,
                    c.gumbel_tau,
                    c.assign_eps,
                )
            projector = None
            if i > 0 and c.num_group_tokens[i] > 0:
                projector = nn.Sequential(
                    nn.LayerNorm(c.width), MixerMlp(c.num_group_tokens[i - 1], c.width // 2, c.num_group_tokens[i])
                )
            start = sum(c.depths[:i])
            self.layers.append(
                GroupingLayer(
                    c.width,
                    depth,
                    c.num_heads[i],
                    c.num_group_tokens[i],
                    c.mlp_ratio,
                    c.qkv_bias,
                    c.drop_rate,
                    c.attn_drop_rate,
                    dpr[start : start + depth],
                    downsample,
                    projector,
                )
            )
        self.norm = nn.LayerNorm(c.width)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(
        self, images: torch.Tensor, return_attn: bool = False
    ) -> tuple[torch.Tensor, list[Assignment]]:
        """Final segment tokens [B, G, C] after the last LayerNorm and, on request, each grouping block's assignment."""
        x, hw = self.patch_embed(images)
        x = self.pos_drop(x + interpolate_pos_embed(self.pos_embed, self.config.grid_size, hw))
        group_token = None
        maps: list[Assignment] = []
        for layer in self.layers:
            x, group_token, assignment = layer(x, group_token, return_attn=return_attn)
            if assignment is not None:
                maps.append(assignment)
        return self.norm(x), maps

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image vector: the average of the segment tokens (the reference's head is identity)."""
        return tokens.mean(dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images)[0])
