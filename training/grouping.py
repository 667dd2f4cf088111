"""Grouping: the hard (Gumbel-)softmax assignment of tokens to group tokens, and the block that merges them.

The softmax runs over the *group* axis; Gumbel noise only in training, a noise-free hard argmax in eval; each group is
divided by (token count + ``assign_eps``), as the reference does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from cocu.training.vit_blocks import CrossAttnBlock, Mlp


class Assignment(NamedTuple):
    """One grouping block's assignment of its input tokens to its output groups, shape [B, groups, tokens]."""

    hard: torch.Tensor
    soft: torch.Tensor


def hard_softmax(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """One-hot of the argmax with the softmax's gradient (straight-through)."""
    y_soft = logits.softmax(dim)
    index = y_soft.argmax(dim, keepdim=True)
    y_hard = torch.zeros_like(y_soft).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft


def gumbel_softmax(logits: torch.Tensor, dim: int, tau: float = 1.0, hard: bool = True) -> torch.Tensor:
    """Gumbel-softmax sample; hard samples are one-hot with straight-through gradients.

    Noise comes from `torch.distributions.Gumbel`, which clamps its uniform draw (torch.nn.functional.gumbel_softmax
    can produce inf, pytorch#41663), as the reference does. It is drawn and added in float32: in bf16 (under
    autocast) the draw has 8 bits of mantissa and ties between groups become common; the result has the logits' dtype.
    """
    gumbel = torch.distributions.Gumbel(
        torch.zeros((), device=logits.device, dtype=torch.float32),
        torch.ones((), device=logits.device, dtype=torch.float32),
    )
    noisy = (logits.float() + gumbel.sample(logits.shape)) / tau
    sample = hard_softmax(noisy, dim) if hard else noisy.softmax(dim)
    return sample.to(logits.dtype)


class AssignAttention(nn.Module):
    """Single-head assignment of tokens to groups; softmax over the group axis, hard in training and eval.

    Not SDPA: the softmax runs over the query (group) axis and is made one-hot, which no fused kernel computes.
    """

    def __init__(self, dim: int, qkv_bias: bool, hard: bool, gumbel: bool, gumbel_tau: float, assign_eps: float):
        super().__init__()
        self.scale = dim**-0.5
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.hard = hard
        self.gumbel = gumbel
        self.gumbel_tau = gumbel_tau
        self.assign_eps = assign_eps

    def assign(self, logits: torch.Tensor) -> torch.Tensor:
        """Assignment weights [B, groups, tokens] from logits of the same shape (softmax over groups, dim -2)."""
        if self.gumbel and self.training:
            return gumbel_softmax(logits, dim=-2, tau=self.gumbel_tau, hard=self.hard)
        return hard_softmax(logits, dim=-2) if self.hard else logits.softmax(dim=-2)

    def forward(
        self, groups: torch.Tensor, tokens: torch.Tensor, return_attn: bool = False
    ) -> tuple[torch.Tensor, Assignment | None]:
        logits = (self.q_proj(groups) @ self.k_proj(tokens).transpose(-2, -1)) * self.scale
        attn = self.assign(logits)
        maps = Assignment(hard=attn.detach(), soft=logits.detach().softmax(dim=-2)) if return_attn else None
        # Divide each group's row by its token count + eps: an approximate mean that stays finite for empty groups.
        attn = attn / (attn.sum(dim=-1, keepdim=True) + self.assign_eps)
        return self.proj(attn @ self.v_proj(tokens)), maps


class GroupingBlock(nn.Module):
    """Merges N tokens into S_out segments guided by S_in group tokens (the reference's, equal in/out width)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_group_token: int,
        num_output_group: int,
        mlp_ratio: float,
        qkv_bias: bool,
        hard: bool,
        gumbel: bool,
        gumbel_tau: float,
        assign_eps: float,
    ):
        super().__init__()
        self.norm_tokens = nn.LayerNorm(dim)
        self.mlp_inter = Mlp(num_group_token, int(0.5 * dim), num_output_group)
        self.norm_post_tokens = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim)
        self.pre_assign_attn = CrossAttnBlock(dim, num_heads, mlp_ratio=4.0, qkv_bias=True)
        self.assign = AssignAttention(
            dim, qkv_bias=qkv_bias, hard=hard, gumbel=gumbel, gumbel_tau=gumbel_tau, assign_eps=assign_eps
        )
        self.norm_new_x = nn.LayerNorm(dim)
        self.mlp_channels = Mlp(dim, int(mlp_ratio * dim), dim)

    def forward(
        self, x: torch.Tensor, group_tokens: torch.Tensor, return_attn: bool = False
    ) -> tuple[torch.Tensor, Assignment | None]:
        group_tokens = self.norm_tokens(group_tokens)
        x = self.norm_x(x)
        projected = self.norm_post_tokens(self.mlp_inter(group_tokens.transpose(1, 2)).transpose(1, 2))
        projected = self.pre_assign_attn(projected, x)
        new_x, maps = self.assign(projected, x, return_attn=return_attn)
        new_x = new_x + projected
        return new_x + self.mlp_channels(self.norm_new_x(new_x)), maps
