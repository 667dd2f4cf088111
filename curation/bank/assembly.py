"""The bank's assembly steps after the embed stage: vocabulary, concept prompts, image tables, index, manifest.

Each step runs only when the digest of its inputs changed or its files were damaged (``build.json`` records both),
so a rerun after a crash resumes at the step that did not finish.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from cocu.curation.bank.clip import ClipModel, ModelSpec
from cocu.curation.bank.config import BankConfig
from cocu.curation.bank.embed import cached_clip
from cocu.curation.bank.index import build_index, choose_factory, default_nprobe, gpu_available, write_index
from cocu.curation.bank.index_parts import build_index_in_parts, is_ivf
from cocu.curation.bank.layout import (
    BANK_FORMAT,
    BUILD,
    CLIP_DIR,
    CONCEPTS,
    EMBEDDINGS,
    IMAGES,
    INDEX,
    INDEX_PARTS,
    MANIFEST,
    VOCABULARY,
    BankError,
    last_line,
    load_concept_table,
    read_json,
)
from cocu.curation.concepts.mining import build_vocabulary
from cocu.curation.concepts.names import prompt, resolve_template
from cocu.curation.concepts.vocabulary import Vocabulary
from cocu.curation.core.shards import atomic_path, atomic_write_json, sha256_file, write_table
from cocu.curation.core.stage import ShardTask, params_digest, read_manifest, tool_version
from cocu.curation.enrich.ranking import Ragged, offsets_from_lengths, pair_similarities


class Assembly:
    """The global steps after the embed stage; each runs only when its inputs' digest changed."""

    def __init__(self, out: Path, config: BankConfig, spec: ModelSpec, tasks: list[ShardTask], progress: bool):
        self.out, self.config, self.spec, self.tasks, self.progress = out, config, spec, tasks, progress
        self.sources: list[dict[str, Any]] = []
        for task in tasks:
            manifest = read_manifest(task)
            if manifest is None:  # the embed stage finished every task just before: only a concurrent delete does this
                raise BankError(f"{task.manifest}: the part's record vanished; rerun build-bank")
            self.sources.append(
                {
                    "path": str(task.source),
                    "sha256": manifest["source_sha256"],
                    "rows": manifest["counts"]["images"],
                    "embedded": manifest["counts"]["embedded"],
                    "part": task.target.name,
                    "part_sha256": manifest["target_sha256"],
                }
            )
        self.record: dict[str, Any] = read_json(out / BUILD) or {}
        self.ran: list[str] = []
        self._clip: ClipModel | None = None

    @property
    def clip(self) -> ClipModel:
        if self._clip is None:
            c = self.config
            self._clip = cached_clip(c.model, c.pretrained, c.model_config, c.device)
        return self._clip

    def run(self) -> list[str]:
        vocab_digest = self._step(
            "vocabulary",
            {
                "given": sha256_file(self.config.vocabulary) if self.config.vocabulary else None,
                "sources": [s["sha256"] for s in self.sources],
                "min_count": self.config.min_count,
                "max_words": self.config.max_words,
                "user_concepts": sorted(self.config.user_concepts),
            },
            self._vocabulary,
            [VOCABULARY],
        )
        self.vocabulary = Vocabulary.load(self.out / VOCABULARY)
        concepts_digest = self._step(
            "concepts",
            {
                "vocabulary": vocab_digest,
                "vocab": self.vocabulary.digest(),
                "model": self.spec.to_dict(),
                "template": self._template(),
            },
            self._concepts,
            [CONCEPTS],
        )
        images_digest = self._step(
            "images",
            {"concepts": concepts_digest, "parts": [s["part_sha256"] for s in self.sources]},
            self._images,
            [IMAGES, EMBEDDINGS],
        )
        factory = self.config.factory or choose_factory(self._rows(), self._dim(), gpu=gpu_available())
        index_inputs = {"images": images_digest, "factory": factory, "seed": self.config.seed}
        index_digest = self._step(
            "index", index_inputs, lambda: self._index(factory, params_digest(index_inputs)), [INDEX]
        )
        manifest = self._manifest(factory, index_digest)
        if read_json(self.out / MANIFEST) != manifest:
            atomic_write_json(self.out / MANIFEST, manifest)
            self.ran.append("manifest")
        return self.ran

    def _step(self, name: str, inputs: dict[str, Any], fn: Callable[[], None], outputs: list[str]) -> str:
        digest = params_digest({"step": name, **inputs})
        entry = self.record.get(name)
        if isinstance(entry, dict) and entry.get("digest") == digest:
            if _files_intact(self.out, entry.get("files", {}), outputs):
                return digest
        (self.out / MANIFEST).unlink(missing_ok=True)  # the bank is incomplete until the manifest is rewritten
        fn()
        self.record[name] = {"digest": digest, "files": {o: _file_record(self.out / o) for o in outputs}}
        atomic_write_json(self.out / BUILD, self.record)
        self.ran.append(name)
        return digest

    def _parts(self, columns: list[str]) -> Iterator[tuple[dict[str, Any], pa.Table]]:
        for source, task in zip(self.sources, self.tasks):
            yield source, pq.read_table(task.target, columns=columns)

    def _vocabulary(self) -> None:
        if self.config.vocabulary:
            vocabulary = Vocabulary.load(self.config.vocabulary)
        else:
            captions = (c for _, table in self._parts(["caption"]) for c in table.column("caption").to_pylist())
            vocabulary = build_vocabulary(
                captions,
                min_count=self.config.min_count,
                max_words=self.config.max_words,
                user_concepts=list(self.config.user_concepts) or None,
                progress=self.progress,
            )
        if not vocabulary.concepts:
            raise BankError(
                f"{self.out}: the vocabulary is empty (min_count {self.config.min_count} too high for these captions?)"
            )
        vocabulary.save(self.out / VOCABULARY)

    def _concepts(self) -> None:
        vocab = self.vocabulary
        template, articles = self._template()
        prompts = [prompt(c, template, articles) for c in vocab.concepts]
        with tqdm(
            total=len(prompts),
            unit="prompt",
            unit_scale=True,
            desc="concept prompts",
            disable=not self.progress,
            dynamic_ncols=True,
        ) as bar:
            embeddings = self.clip.embed_texts(prompts, progress=bar.update)
        write_table(
            self.out / CONCEPTS,
            pa.table(
                {
                    "id": pa.array(np.arange(len(prompts), dtype=np.int32)),
                    "concept": pa.array(vocab.concepts, pa.string()),
                    "count": pa.array(vocab.counts, pa.int64()),
                    "prompt": pa.array(prompts, pa.string()),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.ravel()), embeddings.shape[1]),
                }
            ),
        )

    def _images(self) -> None:
        """Concatenate the parts into the FAISS-id-aligned image table and embedding matrix."""
        rows, dim = sum(s["embedded"] for s in self.sources), self._part_dim()
        text = load_concept_table(self.out)[1]
        concept_names = pa.array(self.vocabulary.concepts, pa.string())
        schema = pa.schema(
            [
                ("id", pa.int64()),
                ("key", pa.string()),
                ("sha256", pa.binary(32)),
                ("shard", pa.string()),
                ("caption_concepts", pa.list_(pa.string())),
                ("caption_concept_sims", pa.list_(pa.float64())),
            ]
        )
        bar = tqdm(
            total=rows, unit="img", unit_scale=True, desc="bank tables", disable=not self.progress, dynamic_ncols=True
        )
        with atomic_path(self.out / EMBEDDINGS) as tmp_embeddings, atomic_path(self.out / IMAGES) as tmp_images:
            matrix = np.lib.format.open_memmap(tmp_embeddings, mode="w+", dtype=np.float16, shape=(rows, dim))
            writer = pq.ParquetWriter(tmp_images, schema, compression="zstd")
            start = 0
            for source, table in self._parts(["key", "sha256", "caption", "embedding"]):
                n = table.num_rows
                vectors = (
                    table.column("embedding").combine_chunks().values.to_numpy(zero_copy_only=False).reshape(n, dim)
                )
                matrix[start : start + n] = vectors
                concepts = self.vocabulary.match_many(table.column("caption").to_pylist())
                lists = pa.array(concepts, pa.list_(pa.string()))
                ids = Ragged(
                    offsets_from_lengths(pc.list_value_length(lists).to_numpy(zero_copy_only=False)),
                    pc.index_in(lists.flatten(), value_set=concept_names)
                    .to_numpy(zero_copy_only=False)
                    .astype(np.int64),
                )
                sims = pair_similarities(ids, vectors, text)
                writer.write_table(
                    pa.table(
                        {
                            "id": pa.array(np.arange(start, start + n, dtype=np.int64)),
                            "key": table.column("key"),
                            "sha256": table.column("sha256"),
                            "shard": pa.array([Path(source["path"]).name] * n, pa.string()),
                            "caption_concepts": lists,
                            "caption_concept_sims": pa.ListArray.from_arrays(
                                pa.array(ids.offsets.astype(np.int32)), pa.array(sims)
                            ),
                        },
                        schema=schema,
                    ),
                    row_group_size=65536,
                )
                start += n
                bar.update(n)
            writer.close()
            matrix.flush()
            del matrix
        bar.close()

    def _index(self, factory: str, digest: str) -> None:
        """Flat in one go; IVF trained once and filled part by part in ``index_parts/``, so a crash resumes."""
        vectors = np.load(self.out / EMBEDDINGS, mmap_mode="r")
        bar = tqdm(
            total=len(vectors),
            unit="vec",
            unit_scale=True,
            desc=f"index {factory}",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        try:
            if is_ivf(factory):
                index = build_index_in_parts(
                    vectors, factory, self.out / INDEX_PARTS, digest, seed=self.config.seed, progress=bar.update
                )
            else:
                index = build_index(vectors, factory, seed=self.config.seed, progress=bar.update)
        except RuntimeError as err:
            raise BankError(
                f"index factory '{factory}' failed for {len(vectors)} x {vectors.shape[1]} vectors: {last_line(err)}"
            ) from None
        finally:
            bar.close()
        write_index(index, self.out / INDEX)
        shutil.rmtree(self.out / INDEX_PARTS, ignore_errors=True)

    def _template(self) -> tuple[str, bool]:
        return resolve_template(self.config.template)

    def _rows(self) -> int:
        return sum(s["embedded"] for s in self.sources)

    def _dim(self) -> int:
        return int(np.load(self.out / EMBEDDINGS, mmap_mode="r").shape[1])

    def _part_dim(self) -> int:
        return pq.read_schema(self.tasks[0].target).field("embedding").type.list_size

    def _manifest(self, factory: str, index_digest: str) -> dict[str, Any]:
        config_file = None
        source = Path(self.config.model_config) if self.config.model_config else _beside_checkpoint(self.config)
        if source is not None:
            config_file = f"{CLIP_DIR}/{source.name}"
            if not (self.out / config_file).exists() or (self.out / config_file).read_bytes() != source.read_bytes():
                (self.out / CLIP_DIR).mkdir(exist_ok=True)
                with atomic_path(self.out / config_file) as tmp:
                    shutil.copyfile(source, tmp)
        rows = self._rows()
        return {
            "format": BANK_FORMAT,
            "bank_id": index_digest,
            "cocu_version": tool_version(),
            "model": {**self.spec.to_dict(), "config_file": config_file},
            "embedding_dim": self._dim(),
            "rows": rows,
            "undecodable": sum(s["rows"] for s in self.sources) - rows,
            "index": {
                "factory": factory,
                "file": INDEX,
                "metric": "inner_product",
                "seed": self.config.seed,
                "nprobe": self.config.nprobe if self.config.nprobe is not None else default_nprobe(factory),
                "ef_search": self.config.ef_search,
            },
            "vocabulary": {
                "file": VOCABULARY,
                "digest": self.vocabulary.digest(),
                "size": len(self.vocabulary.concepts),
                "min_count": self.config.min_count,
                "max_words": self.config.max_words,
                "given": self.config.vocabulary,
            },
            "prompt_template": self._template()[0],
            "prompt_articles": self._template()[1],
            "files": {"concepts": CONCEPTS, "images": IMAGES, "embeddings": EMBEDDINGS, "index": INDEX},
            "sources": [{k: s[k] for k in ("path", "sha256", "rows", "embedded")} for s in self.sources],
        }


def _beside_checkpoint(config: BankConfig) -> Path | None:
    if config.pretrained and os.path.isfile(config.pretrained):
        candidate = Path(config.pretrained).parent / f"{config.model}.json"
        return candidate if candidate.is_file() else None
    return None


def _file_record(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(path)}


def _files_intact(folder: Path, recorded: dict[str, Any], names: list[str]) -> bool:
    """True when each file is as a finished step left it: same size, and same sha256 unless untouched since."""
    for name in names:
        path, entry = folder / name, recorded.get(name)
        if entry is None or not path.is_file():
            return False
        stat = path.stat()
        if stat.st_size != entry["size"]:
            return False
        if stat.st_mtime_ns != entry["mtime_ns"] and sha256_file(path) != entry["sha256"]:
            return False
    return True
