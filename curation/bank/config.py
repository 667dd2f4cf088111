"""``BankConfig``: how ``build-bank`` builds a bank; every field with its default and its command-line help."""

from __future__ import annotations

from dataclasses import dataclass

from cocu.curation.bank.clip import check_weights_file
from cocu.curation.core.configs import option


@dataclass(frozen=True)
class BankConfig:
    """How to build a bank. Only ``model`` is required (``pretrained`` None: random weights)."""

    model: str = option(help="open_clip model name (ViT-B-16), hf-hub:org/repo or local-dir:PATH.")
    pretrained: str | None = option(
        None, "Pretrained tag (openai, laion2b_s34b_b79k) or checkpoint file; omit for random init."
    )
    model_config: str | None = option(
        None, "Custom open_clip config JSON named <model>.json (found beside the checkpoint when omitted)."
    )
    vocabulary: str | None = option(None, "Use this vocabulary file instead of mining one from the captions.")
    min_count: int = option(5, "Keep caption concepts mentioned in at least this many captions.", minimum=1)
    max_words: int = option(4, "Longest concept in words.", minimum=1)
    user_concepts: tuple[str, ...] = ()  # kept even when rare (the command line reads them from --concepts FILE)
    template: str = option(
        "cocu",
        "Concept prompt: 'cocu' (\"a photo of a {}.\", article fixed), 'release' (the authors' \"a photo of a {}\", "
        "always 'a') or a template with a {} slot.",
    )
    factory: str | None = option(
        None, "FAISS factory string (default: Flat up to 1M images, IVF-HNSW beyond).", flags=("--index-factory",)
    )
    nprobe: int | None = option(None, "Default IVF lists to probe at search time (stored in the manifest).")
    ef_search: int | None = option(None, "Default HNSW efSearch at search time (stored in the manifest).")
    seed: int = 0  # of the index training sample
    batch_size: int = option(256, "Images per model batch.", minimum=1)
    decode_workers: int | None = option(None, "Image decoding processes per worker (default: spare cores).", minimum=0)
    device: str | None = option(None, "cuda or cpu (default: cuda when available).")

    def __post_init__(self) -> None:
        """Refuse settings that cannot work, in one line, before anything is loaded."""
        for name, value in (("--nprobe", self.nprobe), ("--ef-search", self.ef_search)):
            if value is not None and value < 1:
                raise ValueError(f"{name} {value}: must be at least 1 (or left out for the default)")
        for name, value in (("--min-count", self.min_count), ("--max-words", self.max_words)):
            if value < 1:
                raise ValueError(f"{name} {value}: must be at least 1")
        check_weights_file(self.pretrained)
