"""open_clip loading and batched embedding of images and concept prompts (L2-normalized, float16).

The model is loaded through the very call a user makes, ``open_clip.create_model_and_transforms(name,
pretrained=...)``, so a built-in ``ViT-B-16``/``openai``, an ``hf-hub:`` or ``local-dir:`` model and a
custom config plus checkpoint file (the synthetic world's teacher CLIP) all take one path. Images are
decoded in DataLoader worker processes while the model runs, so the slower of the two sets the pace.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from cocu.curation.bank.images import ShardImages
from cocu.curation.core.errors import PICKLED_CHECKPOINT, FileError
from cocu.curation.core.shards import sha256_file

LOCAL_DIR_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)
RANDOM_INIT_SEED = 0
Progress = Callable[[int], None]


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a CLIP: its name plus the weights (a tag, or a file's sha256)."""

    name: str
    pretrained: str | None = None
    checkpoint_sha256: str | None = None

    def describe(self) -> str:
        weights = self.pretrained or f"random init (seed {RANDOM_INIT_SEED})"
        if self.checkpoint_sha256:
            name = Path(self.pretrained).name if self.pretrained else "checkpoint"
            weights = f"{name} (sha256 {self.checkpoint_sha256[:12]})"
        return f"{self.name} / {weights}"

    def same_model(self, other: ModelSpec) -> bool:
        if self.name != other.name:
            return False
        if self.checkpoint_sha256 or other.checkpoint_sha256:
            return self.checkpoint_sha256 == other.checkpoint_sha256
        return self.pretrained == other.pretrained

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pretrained": self.pretrained, "checkpoint_sha256": self.checkpoint_sha256}


def model_spec(name: str, pretrained: str | None = None) -> ModelSpec:
    """Identify a model without loading it: checkpoint files (and ``local-dir:`` weights) are known by sha256."""
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:") :])
        weights = next((folder / w for w in LOCAL_DIR_WEIGHTS if (folder / w).is_file()), None)
        return ModelSpec(name, None, sha256_file(weights) if weights else None)
    if name.startswith("hf-hub:"):
        return ModelSpec(name, None, None)
    if pretrained and os.path.isfile(pretrained) and not _is_known_tag(name, pretrained):
        return ModelSpec(name, str(Path(pretrained).resolve()), sha256_file(pretrained))
    return ModelSpec(name, pretrained or None, None)


def _is_known_tag(name: str, pretrained: str) -> bool:
    return pretrained in open_clip.list_pretrained_tags_by_model(name.replace("/", "-"))


def check_weights_file(pretrained: str | None) -> None:
    """A --pretrained value that names a file (a path, or a weights suffix) must exist: say so, not that the
    model's config is missing."""
    if not pretrained or os.path.isfile(pretrained):
        return
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt")):
        raise FileNotFoundError(f"{pretrained}: no such file (--pretrained takes a checkpoint file or a tag)")


def register_config_file(path: str | os.PathLike) -> str:
    """Register an open_clip model config file and return its model name (the file stem).

    Refuses a name that open_clip already knows with a different config, so a custom config can never
    silently replace a built-in architecture such as ``ViT-B-16``.
    """
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable model config ({err})") from None
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config]
    if missing:
        raise ValueError(f"{path}: model config lacks {', '.join(missing)}")
    name = path.stem
    known = open_clip.get_model_config(name)
    if known is not None and known != config:
        raise ValueError(f"{path}: model name '{name}' is already registered with a different config; rename the file")
    if known is None:
        open_clip.add_model_config(path)
    return name


def register_model_config(name: str, pretrained: str | None, model_config: str | os.PathLike | None) -> Path | None:
    """Register a custom architecture JSON: the one given, or ``<name>.json`` beside the checkpoint file."""
    if model_config is not None:
        path = Path(model_config)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model config not found")
        if path.stem != name:
            raise ValueError(
                f"{path}: model config file must be named {name}.json "
                f"(open_clip registers a config under its file stem)"
            )
    elif pretrained and os.path.isfile(pretrained) and (Path(pretrained).parent / f"{name}.json").is_file():
        path = Path(pretrained).parent / f"{name}.json"
    else:
        return None
    register_config_file(path)
    return path


OpenClipModel: TypeAlias = (
    open_clip.CLIP | open_clip.CustomTextCLIP
)  # what open_clip.create_model_and_transforms returns


@dataclass
class ClipModel:
    """A loaded open_clip model with its eval preprocessing and tokenizer."""

    spec: ModelSpec
    model: OpenClipModel
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    device: torch.device
    embed_dim: int
    config_path: Path | None = None
    autocast: bool = field(init=False)

    def __post_init__(self) -> None:
        self.autocast = self.device.type == "cuda"

    @cached_property
    def decode_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """What a decoder runs: the model's transform up to its uint8 pixels (float scaling is ``embed_pixels``'s).

        open_clip's eval transform ends in ToTensor (to float, / 255) and Normalize; without a Normalize at its end
        (a transform cocu does not know) the whole transform runs in the decoder, as before.
        """
        steps = list(getattr(self.preprocess, "transforms", []))
        if (
            len(steps) < 2
            or not isinstance(steps[-1], transforms.Normalize)
            or "ToTensor" not in type(steps[-2]).__name__
        ):
            return self.preprocess
        return transforms.Compose([*steps[:-2], transforms.PILToTensor()])

    @cached_property
    def _normalization(self) -> tuple[torch.Tensor, torch.Tensor]:
        normalize = self.preprocess.transforms[-1]  # type: ignore[attr-defined]  # decode_transform checked it
        return torch.tensor(normalize.mean).view(3, 1, 1), torch.tensor(normalize.std).view(3, 1, 1)

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Preprocessed images (B, 3, H, W) to normalized float16 embeddings (B, D).

        ``uint8`` pixels (what the decoders send: a quarter of float32's bytes through shared memory and the bus)
        are scaled and normalized here, on the device, with the very operations of the model's own transform.
        """
        if len(pixels) == 0:
            return np.zeros((0, self.embed_dim), np.float16)
        pixels = pixels.to(self.device, non_blocking=True)
        if pixels.dtype == torch.uint8:
            mean, std = self._normalization
            pixels = (pixels.float().div(255) - mean.to(self.device)) / std.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            features = self.model.encode_image(pixels)
        return F.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float16)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256, progress: Progress | None = None) -> np.ndarray:
        """Texts to normalized float16 embeddings (N, D)."""
        out = np.zeros((len(texts), self.embed_dim), np.float16)
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                features = self.model.encode_text(tokens)
            out[start : start + len(tokens)] = F.normalize(features.float(), dim=-1).cpu().numpy()
            if progress is not None:
                progress(len(tokens))
        return out

    def iter_shard(
        self, path: str | os.PathLike, rows: np.ndarray | None = None, batch_size: int = 256, num_workers: int = 1
    ) -> Iterator[ShardEmbeddings]:
        """Embeddings of a shard's images (all rows, or the given ``rows``) chunk by chunk, in row order.

        Decoding runs in ``num_workers`` DataLoader processes, ahead of the model.
        """
        selected = None if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        # uint8 to a GPU (a quarter of the bytes); on the CPU the decoders normalize, sparing the model's process
        transform = self.decode_transform if self.device.type == "cuda" else self.preprocess
        dataset = ShardImages(str(path), transform, batch_size, selected)
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if num_workers > 0 else None,
        )
        for chunk in loader:
            if len(chunk.rows) == 0:
                continue
            vectors = np.zeros((len(chunk.rows), self.embed_dim), np.float16)
            vectors[chunk.ok] = self.embed_pixels(chunk.pixels)
            errors: list[str | None] = [None] * len(chunk.rows)
            for place, error in zip(np.nonzero(~chunk.ok)[0], chunk.errors):
                errors[place] = error
            yield ShardEmbeddings(chunk.rows, vectors, errors)

    def embed_shard(
        self,
        path: str | os.PathLike,
        rows: np.ndarray | None = None,
        batch_size: int = 256,
        num_workers: int = 1,
        progress: Progress | None = None,
    ) -> ShardEmbeddings:
        """All of :meth:`iter_shard` at once."""
        parts = []
        for part in self.iter_shard(path, rows, batch_size, num_workers):
            parts.append(part)
            if progress is not None:
                progress(len(part.rows))
        if not parts:
            return ShardEmbeddings(np.zeros(0, np.int64), np.zeros((0, self.embed_dim), np.float16), [])
        return ShardEmbeddings(
            np.concatenate([p.rows for p in parts]),
            np.concatenate([p.vectors for p in parts]),
            [e for p in parts for e in p.errors],
        )


@dataclass
class ShardEmbeddings:
    """Embeddings of a shard's rows; rows whose image failed have a zero vector and an error."""

    rows: np.ndarray
    vectors: np.ndarray
    errors: list[str | None]

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], dtype=bool)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` or None: CUDA when available, else the CPU; anything else as torch reads it."""
    return default_device() if name in (None, "auto") else torch.device(name)


def load_clip(
    model: str,
    pretrained: str | None = None,
    model_config: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | None = None,
) -> ClipModel:
    """Load any open_clip model as a user would: built-in name + tag, ``hf-hub:``/``local-dir:``, or a checkpoint file.

    A custom architecture (``model_config``, or ``<model>.json`` beside the checkpoint) is registered
    with ``open_clip.add_model_config`` first. Without weights the model is randomly initialized from a
    fixed seed, so two loads of the same spec embed alike.
    """
    check_weights_file(pretrained)
    config_path = register_model_config(model, pretrained, model_config)
    spec = model_spec(model, pretrained)
    device = resolve_device(device)
    schema = model.startswith(("hf-hub:", "local-dir:"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        try:
            net, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=None if schema else (pretrained or None), device=device, cache_dir=cache_dir
            )
        except RuntimeError as err:
            raise ValueError(f"cannot load CLIP {spec.describe()}: {str(err).splitlines()[0]}") from None
        except pickle.UnpicklingError:  # torch's message advises weights_only=False: never repeat that
            raise FileError(pretrained or model, f"not a loadable checkpoint: it {PICKLED_CHECKPOINT}") from None
    net.eval()
    tokenizer = open_clip.get_tokenizer(model)
    embed_dim = _embed_dim(net, preprocess, device)
    return ClipModel(spec, net, preprocess, tokenizer, device, embed_dim, config_path)


def _embed_dim(net: OpenClipModel, preprocess: Callable, device: torch.device) -> int:
    projection = getattr(net, "text_projection", None)
    if isinstance(projection, torch.Tensor):
        return int(projection.shape[-1])
    probe = preprocess(Image.new("RGB", (8, 8)))[None].to(device)
    with torch.inference_mode():
        return int(net.encode_image(probe).shape[-1])
