"""The bank: everything enrich needs about the index corpus, in one directory, built resumably.

Layout of ``BANK/``::

    manifest.json         written last: model, embedding dim, rows, index factory, vocabulary digest,
                          source shards with sha256, tool version, prompt template (its presence = complete)
    vocabulary.json       the concept vocabulary (cocu.curation.concepts.Vocabulary)
    concepts.parquet      id, concept, count (captions naming it), prompt, embedding (float16, normalized)
    images.parquet        id (= FAISS id), key, sha256 (of the image bytes), shard, caption_concepts,
                          caption_concept_sims (t_c·v)
    embeddings.npy        (rows, dim) float16 normalized image embeddings, opened memory-mapped
    index.faiss           inner-product FAISS index over the embeddings
    clip/<model>.json     the custom open_clip config, when the model used one
    parts/                per-shard embeddings (key, sha256, caption, embedding): the resumable embed stage
    index_parts/          an IVF index while it is built (``index_build``): trained quantizer, filled parts
    build.json            digests of the finished assembly steps and their files' size and sha256, so a rerun
                          resumes where it stopped and redoes a step whose file was damaged

Building runs the per-shard embed stage through ``run_stage`` (skips finished shards), then the
assembly steps, each skipped when its inputs are unchanged: vocabulary (mined from the captions),
concept prompts' text embeddings, the aligned image tables, the index, and the manifest last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .clip import ClipModel, ModelSpec, load_clip, model_spec
from .clustering import ConceptGram
from .errors import CocuError
from .index import (
    Searcher,
    SearchParams,
    build_index,
    choose_factory,
    default_nprobe,
    gpu_available,
    read_index,
    write_index,
)
from .index_build import build_index_in_parts, is_ivf
from .locking import folder_lock
from .placement import ShardSlice, default_workers, wants_gpu, worker_devices
from .ranking import Ragged, local_floor, offsets_from_lengths, pair_similarities
from .shards import (
    atomic_path,
    atomic_write_json,
    check_keys_across_shards,
    decode_text,
    expand_shards,
    iter_batches,
    sha256_file,
    write_table,
)
from .stage import (
    ShardTask,
    StageSummary,
    is_done,
    params_digest,
    read_manifest,
    run_stage,
    tool_version,
    worker_threads,
)

BANK_FORMAT = 2  # 2: images.parquet holds each image's sha256, so enrich reuses an embedding only for the same image
PART_FORMAT = 2  # 2: parts hold the sha256 of each image's bytes
MANIFEST, BUILD, VOCABULARY = "manifest.json", "build.json", "vocabulary.json"
CONCEPTS, IMAGES, EMBEDDINGS, INDEX = "concepts.parquet", "images.parquet", "embeddings.npy", "index.faiss"
PARTS, CLIP_DIR, INDEX_PARTS = "parts", "clip", "index_parts"


class BankError(CocuError):
    """A bank that is missing, incomplete, or made with another model: said in one line."""


@dataclass(frozen=True)
class BankConfig:
    """How to build a bank. Only ``model``/``pretrained`` are required."""

    model: str
    pretrained: str | None = None
    model_config: str | None = None  # custom open_clip architecture JSON (<model>.json)
    vocabulary: str | None = None  # an existing vocabulary file; None mines one from the captions
    min_count: int = 5
    max_words: int = 4
    user_concepts: tuple[str, ...] = ()
    template: str = "cocu"  # a name in concepts.TEMPLATES (release, cocu) or a literal with a {} slot
    factory: str | None = None  # FAISS factory string; None chooses by corpus size
    nprobe: int | None = None
    ef_search: int | None = None
    seed: int = 0
    batch_size: int = 256
    decode_workers: int | None = None  # None: the worker's share of the cores minus one, at least 1
    device: str | None = None


@dataclass
class BankSummary:
    path: Path
    embed: StageSummary
    rows: int = 0
    undecodable: int = 0
    concepts: int = 0
    factory: str = ""
    steps_run: list[str] = field(default_factory=list)
    seconds: float = 0.0
    part: ShardSlice = ShardSlice()

    @property
    def ok(self) -> bool:
        return self.embed.ok

    def line(self) -> str:
        if not self.ok:
            return f"bank {self.path}: NOT built, {len(self.embed.failures)} shard(s) failed; fix them and rerun (finished shards are kept)"
        if not self.part.whole:
            return (
                f"bank {self.path}: {self.part.describe()} embedded; when every task is done, run build-bank "
                f"--finalize to build the bank"
            )
        steps = ", ".join(self.steps_run) if self.steps_run else "none (up to date)"
        return (
            f"bank {self.path}: {self.rows} images indexed ({self.undecodable} rows with a missing or undecodable image left out), "
            f"{self.concepts} concepts, index {self.factory}; steps run: {steps}; {self.seconds:.1f}s"
        )


# ---------------------------------------------------------------------------------------------- embed stage

_models: dict[tuple, ClipModel] = {}  # a memo: one loaded model per process and spec


def cached_clip(model: str, pretrained: str | None, model_config: str | None, device: str | None) -> ClipModel:
    """One loaded model per process and spec."""
    key = (model, pretrained, model_config, device)
    if key not in _models:
        _models[key] = load_clip(model, pretrained, model_config, device)
    return _models[key]


def set_worker_threads(workers: int, decode_workers: int | None) -> int:
    """Give this process its share of the cores (``worker_threads``); returns its number of image decoders.

    FAISS gets the whole share. Torch gets what the decoders leave, since they run while the model
    does and oversubscribed OpenMP threads wait on each other (3x slower on this 2-core machine).
    """
    import faiss
    import torch

    share = worker_threads(workers)
    decoders = max(1, min(8, share - 1)) if decode_workers is None else decode_workers
    torch.set_num_threads(max(1, share - decoders))
    faiss.omp_set_num_threads(share)
    return decoders


@contextlib.contextmanager
def restored_threads() -> Iterator[None]:
    """Give back the caller's torch and FAISS thread counts after a stage ran workers in this process."""
    import faiss
    import torch

    saved = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        faiss.omp_set_num_threads(saved[1])


def _init_embed_worker(settings: dict[str, Any], workers: int) -> dict[str, Any]:
    """The embed stage's worker initializer: this process's thread share; the settings are the worker's context."""
    return {**settings, "decode_workers": set_worker_threads(workers, settings["decode_workers"])}


def _embed_part(task: ShardTask, params: dict[str, Any], progress, s: dict[str, Any]) -> dict[str, int]:
    """Embed one shard's images into ``parts/<shard>.parquet`` (key, caption, embedding); failed images are left out."""
    keys, captions, digests, bad_captions = [], [], [], 0
    for batch in iter_batches(task.source, batch_size=1024, columns=["key", "caption", "jpg"]):
        keys.extend(batch.column("key").to_pylist())
        text, bad = decode_text(batch.column("caption"))
        captions.extend(text)  # a caption that is not UTF-8 counts as empty: the image still joins the bank
        bad_captions += len(bad)
        digests.extend(image_digests(batch.column("jpg")))
    clip = cached_clip(s["model"], s["pretrained"], s["model_config"], s["device"])
    result = clip.embed_shard(
        task.source, batch_size=s["batch_size"], num_workers=s["decode_workers"], progress=progress
    )
    ok = result.ok
    keep = np.nonzero(ok)[0]
    table = pa.table(
        {
            "key": pa.array([keys[i] for i in keep], pa.string()),
            "sha256": pa.array([digests[i] for i in keep], pa.binary(32)),
            "caption": pa.array([captions[i] or "" for i in keep], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(result.vectors[keep].ravel()), clip.embed_dim),
        }
    )
    write_table(task.target, table)
    missing = sum(1 for e in result.errors if e is not None and e.startswith("no image"))
    return {
        "images": len(keys),
        "embedded": len(keep),
        "no_image": missing,
        "undecodable": int((~ok).sum()) - missing,
        "bad_caption": bad_captions,
    }


def image_digests(jpgs: pa.Array | pa.ChunkedArray) -> list[bytes | None]:
    """sha256 of each image's bytes (None for a null image): what makes a stored embedding reusable for a row."""
    return [None if data is None else hashlib.sha256(data).digest() for data in jpgs.to_pylist()]


def part_name(source: Path) -> str:
    """A part file name unique per source path (shards of different folders may share a file name)."""
    digest = params_digest({"path": str(source.resolve())})[:8]
    return f"{source.name.split('.')[0]}-{digest}.parquet"


# ---------------------------------------------------------------------------------------------- build


def build_bank(
    shards: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: BankConfig,
    workers: int | None = None,
    progress: bool = True,
    executor: Any = None,
    part: ShardSlice = ShardSlice(),
    finalize: bool = False,
) -> BankSummary:
    """Embed the shards, mine the vocabulary, embed the concept prompts, assemble the tables and the index.

    ``workers`` None is one per visible GPU (one without). ``executor`` runs the embed stage elsewhere
    (``RayExecutor``). A ``part`` of an array job embeds its slice of the shards only; ``finalize`` then
    embeds nothing and runs the global steps once every shard's part is there.
    """
    from .concepts import resolve_template

    started = time.perf_counter()
    resolve_template(config.template)  # a bad template fails before any embedding
    out = Path(out)
    sources = expand_shards(shards)
    spec = model_spec(config.model, config.pretrained)
    if not finalize:
        cached_clip(config.model, config.pretrained, config.model_config, config.device)  # a bad model fails here
    check_keys_across_shards(sources)  # before hours of embedding, not after
    with folder_lock(out, slot=None if part.whole else part.describe()), restored_threads():
        return _build_locked(sources, out, config, spec, workers, progress, started, executor, part, finalize)


def _build_locked(
    sources: list[Path],
    out: Path,
    config: BankConfig,
    spec: ModelSpec,
    workers: int | None,
    progress: bool,
    started: float,
    executor: Any,
    part: ShardSlice,
    finalize: bool,
) -> BankSummary:
    tasks = [ShardTask(src, out / PARTS / part_name(src)) for src in sources]
    settings = {
        "model": config.model,
        "pretrained": config.pretrained,
        "model_config": config.model_config,
        "device": config.device,
        "batch_size": config.batch_size,
        "decode_workers": config.decode_workers,
    }
    embed_params = {"model": spec.to_dict(), "part_format": PART_FORMAT}
    if finalize:
        embed = _check_parts_done(tasks, embed_params)
    else:
        workers = default_workers(config.device) if workers is None else workers
        if executor is not None and not wants_gpu(config.device):
            executor = replace(executor, num_gpus=0.0)
        embed = run_stage(
            "embed",
            part.take(tasks),
            _embed_part,
            embed_params,
            workers=workers,
            progress=progress,
            initializer=_init_embed_worker,
            initargs=(settings, workers),
            devices=worker_devices(workers, config.device),
            executor=executor,
        )
    summary = BankSummary(out, embed, part=part)
    if not embed.ok or not part.whole:
        return summary
    set_worker_threads(1, config.decode_workers)  # the assembly runs here, on the whole machine
    builder = _Assembly(out, config, spec, tasks, progress)
    summary.steps_run = builder.run()
    manifest = json.loads((out / MANIFEST).read_text())
    summary.rows, summary.undecodable = manifest["rows"], manifest["undecodable"]
    summary.concepts, summary.factory = manifest["vocabulary"]["size"], manifest["index"]["factory"]
    summary.seconds = time.perf_counter() - started
    return summary


def _check_parts_done(tasks: list[ShardTask], params: dict[str, Any]) -> StageSummary:
    """The embed stage as the array tasks left it: every part must be there, made from its shard as it is now."""
    summary = StageSummary("embed")
    digest = params_digest({"stage": "embed", **params})
    missing = [task for task in tasks if not is_done(task, digest)]
    if missing:
        raise BankError(
            f"{missing[0].source}: not embedded yet ({len(missing)} of {len(tasks)} shard(s) missing or "
            f"changed); run the array tasks (or build-bank without --finalize) first"
        )
    summary.skipped = len(tasks)
    return summary


class _Assembly:
    """The global steps after the embed stage; each runs only when its inputs' digest changed."""

    def __init__(self, out: Path, config: BankConfig, spec: ModelSpec, tasks: list[ShardTask], progress: bool):
        self.out, self.config, self.spec, self.tasks, self.progress = out, config, spec, tasks, progress
        self.sources = []
        for task in tasks:
            manifest = read_manifest(task)
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
        self.record: dict[str, str] = _read_json(out / BUILD) or {}
        self.ran: list[str] = []
        self._clip: ClipModel | None = None

    @property
    def clip(self) -> ClipModel:
        if self._clip is None:
            c = self.config
            self._clip = cached_clip(c.model, c.pretrained, c.model_config, c.device)
        return self._clip

    def run(self) -> list[str]:
        from .concepts import Vocabulary

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
        if _read_json(self.out / MANIFEST) != manifest:
            atomic_write_json(self.out / MANIFEST, manifest)
            self.ran.append("manifest")
        return self.ran

    def _step(self, name: str, inputs: dict[str, Any], fn, outputs: list[str]) -> str:
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

    def _parts(self, columns: list[str]):
        for source, task in zip(self.sources, self.tasks):
            yield source, pq.read_table(task.target, columns=columns)

    def _vocabulary(self) -> None:
        from .concepts import Vocabulary, build_vocabulary

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
        from .concepts import prompt

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
                f"index factory '{factory}' failed for {len(vectors)} x {vectors.shape[1]} vectors: {_last_line(err)}"
            ) from None
        finally:
            bar.close()
        write_index(index, self.out / INDEX)
        shutil.rmtree(self.out / INDEX_PARTS, ignore_errors=True)

    def _template(self) -> tuple[str, bool]:
        from .concepts import resolve_template

        return resolve_template(self.config.template)

    def _rows(self) -> int:
        return sum(s["embedded"] for s in self.sources)

    def _dim(self) -> int:
        return int(np.load(self.out / EMBEDDINGS, mmap_mode="r").shape[1])

    def _part_dim(self) -> int:
        return pq.read_schema(self.tasks[0].target).field("embedding").type.list_size

    def _manifest(self, factory: str, index_digest: str) -> dict[str, Any]:
        config_file = None
        if self.config.model_config or _beside_checkpoint(self.config):
            source = Path(self.config.model_config) if self.config.model_config else _beside_checkpoint(self.config)
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


def _last_line(err: BaseException) -> str:
    """The message of a FAISS error without its C++ location ("Error in ... at index_factory.cpp:1228: ...")."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return re.sub(r"^Error in .* at \S+:\d+: ", "", lines[-1]) if lines else type(err).__name__


def _read_json(path: Path) -> Any:
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


# ---------------------------------------------------------------------------------------------- open


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
        from .concepts import Vocabulary

        path = Path(path)
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
                f"{path}: index ({index.ntotal}), embeddings ({len(embeddings)}) and images.parquet ({images.num_rows}) disagree; rebuild the bank"
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
        if digests is not None and self.digests is None:
            ids[:] = -1
        elif digests is not None and len(known):
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
                    f"bank {self.path}: checkpoint {weights} is missing; pass --pretrained with the file (sha256 {spec.checkpoint_sha256[:12]}...)"
                )
            if sha256_file(weights) != spec.checkpoint_sha256:
                raise BankError(
                    f"{weights}: checkpoint changed since bank {self.path} was built (sha256 differs from {spec.checkpoint_sha256[:12]}...)"
                )
        clip = cached_clip(spec.name, weights, str(self.path / config) if config else None, device)
        if not clip.spec.same_model(spec):
            raise BankError(f"bank {self.path} was built with {spec.describe()}, but {clip.spec.describe()} was loaded")
        return clip


@contextlib.contextmanager
def _bank_file(path: Path):
    """Turn a damaged bank file's loader error (FAISS, Arrow, NumPy, JSON) into one line naming the file."""
    try:
        yield
    except BankError:
        raise
    except (RuntimeError, ValueError, OSError, KeyError, EOFError, pa.ArrowException) as err:
        raise BankError(
            f"{path}: unreadable bank file ({_last_line(err)}); rerun cocu-curate build-bank to repair it"
        ) from None


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
    manifest = _read_json(Path(path) / MANIFEST)
    if manifest is None:
        if not Path(path).exists():
            raise BankError(f"{path}: no such bank directory")
        raise BankError(f"{path}: not a complete bank (no {MANIFEST}); run cocu-curate build-bank again to finish it")
    if manifest.get("format") != BANK_FORMAT:
        raise BankError(
            f"{path / MANIFEST}: bank format {manifest.get('format')} is not {BANK_FORMAT}; rebuild the bank"
        )
    return manifest
