"""open_clip's CLIP BPE tokenizer with a bounded memo, as the stream tokenizes repeated prompts."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from open_clip.tokenizer import SimpleTokenizer


class CachedTokenizer:
    """open_clip's CLIP BPE tokenizer (bundled vocabulary, works offline) with a bounded memo.

    Prompts repeat (80 templates x the concept vocabulary), so most texts of a batch are cache hits.
    Output equals ``SimpleTokenizer()(texts, context_length)``: SOT + ids + EOT, truncated with EOT last.
    """

    def __init__(self, context_length: int = 77, cache_size: int = 1 << 16):
        self.context_length = context_length
        self._bpe = SimpleTokenizer(context_length=context_length)
        self._ids = lru_cache(maxsize=cache_size)(self._encode)

    def _encode(self, text: str) -> tuple[int, ...]:
        ids = [self._bpe.sot_token_id, *self._bpe.encode(text), self._bpe.eot_token_id]
        if len(ids) > self.context_length:
            ids = ids[: self.context_length]
            ids[-1] = self._bpe.eot_token_id
        return tuple(ids)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = self._ids(text)
            out[i, : len(ids)] = ids
        return torch.from_numpy(out)


@lru_cache(maxsize=4)
def cached_tokenizer(context_length: int) -> CachedTokenizer:
    """One tokenizer per process and context length: loading the BPE merges costs about a second."""
    return CachedTokenizer(context_length)
