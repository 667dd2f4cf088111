"""The bank's on-disk layout: its file names, format, manifest and the checks that read them.

Shared by the builder (``build``), its assembly steps (``assembly``) and the reader (``reader``), so each
file name and the manifest's meaning are written down once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from cocu.curation.bank.clip import ModelSpec, model_spec
from cocu.curation.core.errors import CocuError

BANK_FORMAT = 2  # 2: images.parquet holds each image's sha256, so enrich reuses an embedding only for the same image
PART_FORMAT = 2  # 2: parts hold the sha256 of each image's bytes
MANIFEST, BUILD, VOCABULARY = "manifest.json", "build.json", "vocabulary.json"
CONCEPTS, IMAGES, EMBEDDINGS, INDEX = "concepts.parquet", "images.parquet", "embeddings.npy", "index.faiss"
PARTS, CLIP_DIR, INDEX_PARTS = "parts", "clip", "index_parts"
BANK_FILES = frozenset({MANIFEST, BUILD, VOCABULARY, CONCEPTS, IMAGES, EMBEDDINGS, INDEX, PARTS, CLIP_DIR, INDEX_PARTS})


class BankError(CocuError):
    """A bank that is missing, incomplete, or made with another model: said in one line."""


def last_line(err: BaseException) -> str:
    """The message of a FAISS error without its C++ location ("Error in ... at index_factory.cpp:1228: ...")."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return re.sub(r"^Error in .* at \S+:\d+: ", "", lines[-1]) if lines else type(err).__name__


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load_concept_table(path: Path) -> tuple[list[str], np.ndarray]:
    """Concepts and their normalized text embeddings as float32 (V, D)."""
    table = pq.read_table(Path(path) / CONCEPTS, columns=["concept", "embedding"])
    column = table.column("embedding").combine_chunks()
    text = column.values.to_numpy(zero_copy_only=False).reshape(len(table), column.type.list_size).astype(np.float32)
    return table.column("concept").to_pylist(), text


def bank_spec(manifest: dict[str, Any]) -> ModelSpec:
    m = manifest["model"]
    return ModelSpec(m["name"], m["pretrained"], m["checkpoint_sha256"])


def check_bank_model(path: Path, manifest: dict[str, Any], model: str | None, pretrained: str | None) -> None:
    """Refuse a run that names another CLIP than the one the bank was built with."""
    if model is None and pretrained is None:
        return
    built = bank_spec(manifest)
    name = model or built.name
    wanted = (
        model_spec(name, pretrained)
        if pretrained is not None
        else ModelSpec(name, built.pretrained, built.checkpoint_sha256)
    )
    if not wanted.same_model(built):
        raise BankError(
            f"bank {path} was built with {built.describe()}, but this run names {wanted.describe()}; "
            f"use the bank's model (or leave --model/--pretrained out) or build a bank with the new one"
        )


def read_bank_manifest(path: Path) -> dict[str, Any]:
    manifest = read_json(Path(path) / MANIFEST)
    if manifest is None:
        if not Path(path).exists():
            raise BankError(f"{path}: no such bank directory")
        raise BankError(f"{path}: not a complete bank (no {MANIFEST}); run cocu-curate build-bank again to finish it")
    if manifest.get("format") != BANK_FORMAT:
        raise BankError(
            f"{path / MANIFEST}: bank format {manifest.get('format')} is not {BANK_FORMAT}; rebuild the bank"
        )
    return manifest
