"""An opened bank: what enrich reads, checked against its manifest and its model."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cocu.curation.bank.clip import ClipModel, ModelSpec
from cocu.curation.bank.embed import cached_clip
from cocu.curation.bank.index import Searcher, SearchParams, read_index
from cocu.curation.bank.layout import (
    CONCEPTS,
    EMBEDDINGS,
    IMAGES,
    INDEX,
    BankError,
    bank_spec,
    check_bank_model,
    last_line,
    load_concept_table,
    read_bank_manifest,
)
from cocu.curation.concepts.vocabulary import Vocabulary
from cocu.curation.core.shards import sha256_file
from cocu.curation.enrich.clustering import ConceptGram
from cocu.curation.enrich.ranking import Ragged, local_floor, offsets_from_lengths


@dataclass
class Bank:
    """An opened bank: what enrich reads. Embeddings are memory-mapped; the index is mmapped when FAISS can."""

    path: Path
    manifest: dict[str, Any]
    vocabulary: Any
    concept_names: pa.Array
    text: np.ndarray
    image_concepts: Ragged
    image_sims: np.ndarray
    keys: pa.Array
    embeddings: np.ndarray
    searcher: Searcher
    digests: pa.Array | None = None  # sha256 of each image's bytes; None: no reuse can be verified

    def searching_here(self) -> Bank:
        """This bank with its index placed for this process: on its GPUs when faiss-gpu sees any.

        A driver opens a bank on the CPU (``use_gpu=False``) to check it; the process that searches places it, so
        each GPU holds one copy, that of the worker pinned to it, and the driver none.
        """
        return self if self.searcher.on_gpu else replace(self, searcher=self.searcher.placed())

    @property
    def spec(self) -> ModelSpec:
        return bank_spec(self.manifest)

    @cached_property
    def gram(self) -> ConceptGram:
        return ConceptGram(self.text)

    @cached_property
    def local_floor(self) -> float:
        """The least denominator of ``cocu``'s local term (``ranking.local_floor`` of the stored named pairs)."""
        return local_floor(self.image_sims)

    @cached_property
    def concept_index(self):
        """A flat inner-product FAISS index over the concept text embeddings (the hybrid archive's search)."""
        import faiss

        index = faiss.IndexFlatIP(self.text.shape[1])
        index.add(np.ascontiguousarray(self.text, dtype=np.float32))
        return index

    @property
    def bank_id(self) -> str:
        return self.manifest["bank_id"]

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        nprobe: int | None = None,
        ef_search: int | None = None,
        use_gpu: bool | None = None,
    ) -> Bank:
        """Open a complete bank; ``nprobe``/``ef_search`` override the manifest's search defaults."""
        path = Path(path).absolute()  # pyarrow reads a relative path with a ':' as a URI
        manifest = read_bank_manifest(path)
        with _bank_file(path / manifest["vocabulary"]["file"]):
            vocabulary = Vocabulary.load(path / manifest["vocabulary"]["file"])
        with _bank_file(path / CONCEPTS):
            names, text = load_concept_table(path)
        if tuple(names) != tuple(vocabulary.concepts):
            raise BankError(
                f"{path / CONCEPTS}: concept table does not match {manifest['vocabulary']['file']}; rebuild the bank"
            )
        concept_names = pa.array(names, pa.string())
        with _bank_file(path / IMAGES):
            images = pq.read_table(path / IMAGES, columns=["key", "sha256", "caption_concepts", "caption_concept_sims"])
        lists = images.column("caption_concepts").combine_chunks()
        ids = pc.index_in(lists.flatten(), value_set=concept_names).to_numpy(zero_copy_only=False).astype(np.int32)
        image_concepts = Ragged(offsets_from_lengths(pc.list_value_length(lists).to_numpy(zero_copy_only=False)), ids)
        sims = (
            images.column("caption_concept_sims")
            .combine_chunks()
            .flatten()
            .to_numpy(zero_copy_only=False)
            .astype(np.float64)
        )
        with _bank_file(path / EMBEDDINGS):
            embeddings = np.load(path / EMBEDDINGS, mmap_mode="r")
        with _bank_file(path / INDEX):
            index = read_index(path / INDEX)
        if index.ntotal != len(embeddings) or len(embeddings) != images.num_rows:
            raise BankError(
                f"{path}: index ({index.ntotal}), embeddings ({len(embeddings)}) and images.parquet "
                f"({images.num_rows}) disagree; rebuild the bank"
            )
        params = SearchParams(
            manifest["index"].get("nprobe") if nprobe is None else nprobe,
            manifest["index"].get("ef_search") if ef_search is None else ef_search,
        )
        return cls(
            path,
            manifest,
            vocabulary,
            concept_names,
            text,
            image_concepts,
            sims,
            images.column("key").combine_chunks(),
            embeddings,
            Searcher(index, params, use_gpu),
            images.column("sha256").combine_chunks(),
        )

    def lookup(self, keys: pa.Array | Sequence[str], digests: Sequence[bytes | None] | None = None) -> np.ndarray:
        """FAISS ids of the given keys, -1 for keys not in the bank.

        With ``digests`` (``image_digests`` of the rows) a key counts only when its image bytes are the ones embedded
        in the bank: keys alone would hand another picture's embedding, and so its concepts, to a shard from another
        corpus whose keys happen to coincide. Leave it out only for rows known to come from the bank's own corpus.
        """
        found = pc.index_in(
            pa.array(keys, pa.string()) if not isinstance(keys, pa.Array) else keys, value_set=self.keys
        )
        ids = pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        known = np.nonzero(ids >= 0)[0]
        if digests is None:
            return ids
        if self.digests is None:
            ids[:] = -1
        elif len(known):
            stored = self.digests.take(pa.array(ids[known]))
            given = pa.array(digests, pa.binary(32)).take(pa.array(known))
            same = pc.fill_null(pc.equal(stored, given), False).to_numpy(zero_copy_only=False)
            ids[known[~same]] = -1
        return ids

    def check_model(self, model: str | None, pretrained: str | None) -> None:
        check_bank_model(self.path, self.manifest, model, pretrained)

    def load_model(self, pretrained: str | None = None, device: str | None = None) -> ClipModel:
        """The bank's CLIP, with its weights checked against the recorded sha256."""
        spec = self.spec
        config = self.manifest["model"].get("config_file")
        weights = pretrained or spec.pretrained
        if spec.checkpoint_sha256 and not spec.name.startswith("local-dir:"):
            if not weights or not os.path.isfile(weights):
                raise BankError(
                    f"bank {self.path}: checkpoint {weights} is missing; pass --pretrained with the file "
                    f"(sha256 {spec.checkpoint_sha256[:12]}...)"
                )
            if sha256_file(weights) != spec.checkpoint_sha256:
                raise BankError(
                    f"{weights}: checkpoint changed since bank {self.path} was built "
                    f"(sha256 differs from {spec.checkpoint_sha256[:12]}...)"
                )
        clip = cached_clip(spec.name, weights, str(self.path / config) if config else None, device)
        if not clip.spec.same_model(spec):
            raise BankError(f"bank {self.path} was built with {spec.describe()}, but {clip.spec.describe()} was loaded")
        return clip


@contextlib.contextmanager
def _bank_file(path: Path) -> Iterator[None]:
    """Turn a damaged bank file's loader error (FAISS, Arrow, NumPy, JSON) into one line naming the file."""
    try:
        yield
    except BankError:
        raise
    except (RuntimeError, ValueError, OSError, KeyError, EOFError, pa.ArrowException) as err:
        raise BankError(
            f"{path}: unreadable bank file ({last_line(err)}); rerun cocu-curate build-bank to repair it"
        ) from None
