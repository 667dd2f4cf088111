"""CLIP-style causal text transformer (as GroupViT's) and tokenization with open_clip's bundled CLIP BPE.

Parameter names follow the reference (`TextTransformer` / `ResidualAttentionBlock` over `nn.MultiheadAttention`), so a
released GroupViT text tower loads by state dict; attention runs through PyTorch's fused SDPA with a causal mask.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

VOCAB_SIZE = 49408  # CLIP BPE: 512 byte symbols + 48,894 merges + 2 specials


@dataclass
class TextTransformerConfig:
    """Text-encoder hyperparameters; the defaults are GroupViT-S's text tower."""

    context_length: int = 77
    vocab_size: int = VOCAB_SIZE
    width: int = 256
    layers: int = 12
    heads: int = 4

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} is not divisible by heads {self.heads}")


@cache
def _tokenizer(context_length: int) -> SimpleTokenizer:
    return SimpleTokenizer(context_length=context_length)


def tokenize(texts: str | list[str], context_length: int = 77) -> torch.LongTensor:
    """Token ids [N, context_length]: <start> BPE <end>, zero-padded; longer texts are cut and end with <end>."""
    return _tokenizer(context_length)(texts, context_length=context_length)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with `nn.MultiheadAttention`'s parameter layout, computed by SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (
            F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, self.heads, c // self.heads).unbind(2)
        )
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = CausalSelfAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width))]
            )
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        blocks = [ResidualAttentionBlock(width, heads) for _ in range(layers)]
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in blocks:  # CLIP's initialisation, as the reference
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.get_parameter("c_fc.weight"), std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.get_parameter("c_proj.weight"), std=proj_std)
        self.resblocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class TextTransformer(nn.Module):
    """Causal transformer over token ids; the sentence feature is the final-LayerNorm state at the <end> token."""

    def __init__(self, config: TextTransformerConfig):
        super().__init__()
        self.config = config
        self.context_length = config.context_length
        self.width = config.width
        self.transformer = Transformer(config.width, config.layers, config.heads)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.ln_final = nn.LayerNorm(config.width)
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(f"text tokens must be [N, <= {self.context_length}], got {tuple(tokens.shape)}")
        eot = tokens.argmax(dim=-1)  # <end> has the largest id in the vocabulary
        # The mask is causal and pooling reads <end>, so positions after the longest <end> cannot change the result:
        # dropping them is exact and saves most of the work on short captions. Only on the CPU: on a GPU reading the
        # length back is a host sync every forward (and a graph break under torch.compile) for work the GPU hides.
        length = int(eot.max()) + 1 if tokens.device.type == "cpu" and not torch.compiler.is_compiling() else None
        tokens = tokens[:, :length]
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.ln_final(self.transformer(x))
        return x[torch.arange(x.shape[0], device=x.device), eot]
