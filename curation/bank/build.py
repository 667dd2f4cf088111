"""The bank: everything enrich needs about the index corpus, in one directory, built resumably.

Layout of ``BANK/``::

    manifest.json         written last: model, embedding dim, rows, index factory, vocabulary digest,
                          source shards with sha256, tool version, prompt template (its presence = complete)
    vocabulary.json       the concept vocabulary (cocu.curation.concepts.vocabulary.Vocabulary)
    concepts.parquet      id, concept, count (captions naming it), prompt, embedding (float16, normalized)
    images.parquet        id (= FAISS id), key, sha256 (of the image bytes), shard, caption_concepts,
                          caption_concept_sims (t_c·v)
    embeddings.npy        (rows, dim) float16 normalized image embeddings, opened memory-mapped
    index.faiss           inner-product FAISS index over the embeddings
    clip/<model>.json     the custom open_clip config, when the model used one
    parts/                per-shard embeddings (key, sha256, caption, embedding): the resumable embed stage
    index_parts/          an IVF index while it is built (``index_parts``): trained quantizer, filled parts
    build.json            digests of the finished assembly steps and their files' size and sha256, so a rerun
                          resumes where it stopped and redoes a step whose file was damaged

Building runs the per-shard embed stage through ``run_stage`` (skips finished shards), then the
assembly steps, each skipped when its inputs are unchanged: vocabulary (mined from the captions),
concept prompts' text embeddings, the aligned image tables, the index, and the manifest last.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cocu.curation.bank.assembly import Assembly
from cocu.curation.bank.clip import ModelSpec, load_clip, model_spec
from cocu.curation.bank.config import BankConfig
from cocu.curation.bank.embed import (
    PART_FORMAT,
    cached_clip,
    embed_part,
    init_embed_worker,
    part_name,
    restored_threads,
    set_worker_threads,
)
from cocu.curation.bank.layout import BANK_FILES, MANIFEST, PARTS, BankError
from cocu.curation.concepts.names import resolve_template
from cocu.curation.core.locking import folder_lock
from cocu.curation.core.outputs import check_output_folder, input_places
from cocu.curation.core.placement import ShardSlice
from cocu.curation.core.shards import check_keys_across_shards, expand_shards
from cocu.curation.core.stage import (
    Executor,
    Resources,
    ShardTask,
    Stage,
    StageSummary,
    is_done,
    params_digest,
    run_stage,
)
from cocu.curation.core.stopping import stop_on_sigterm
from cocu.curation.executors.local import LocalExecutor


def _bank_made(entry: Path) -> bool:
    """What build-bank leaves in its folder (and the killed runs' temporaries, which are hidden)."""
    return entry.name in BANK_FILES


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
            return (
                f"bank {self.path}: NOT built, {len(self.embed.failures)} shard(s) failed; "
                f"fix them and rerun (finished shards are kept)"
            )
        if not self.part.whole:
            return (
                f"bank {self.path}: {self.part.describe()} embedded; when every task is done, run build-bank "
                f"--finalize to build the bank"
            )
        steps = ", ".join(self.steps_run) if self.steps_run else "none (up to date)"
        return (
            f"bank {self.path}: {self.rows} images indexed "
            f"({self.undecodable} rows with a missing or undecodable image left out), "
            f"{self.concepts} concepts, index {self.factory}; steps run: {steps}; {self.seconds:.1f}s"
        )


def build_bank(
    shards: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: BankConfig,
    workers: int | None = None,
    progress: bool = True,
    executor: Executor | None = None,
    part: ShardSlice = ShardSlice(),
    finalize: bool = False,
) -> BankSummary:
    """Embed the shards, mine the vocabulary, embed the concept prompts, assemble the tables and the index.

    ``workers`` None is one per visible GPU (one without); ``executor`` runs the embed stage elsewhere
    (``RayExecutor``; ``workers`` is then its business). A ``part`` of an array job embeds its slice of the
    shards only; ``finalize`` then embeds nothing and runs the global steps once every shard's part is there.
    """
    started = time.perf_counter()
    resolve_template(config.template)  # a bad template fails before any embedding
    out = Path(out).absolute()  # pyarrow reads a relative path with a ':' as a URI
    sources = expand_shards(shards)
    patterns = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    check_output_folder(out, input_places(patterns, sources), _bank_made, "build-bank")
    spec = model_spec(config.model, config.pretrained)
    if not finalize:
        _check_model_loads(config)
    check_keys_across_shards(sources)  # before hours of embedding, not after
    stopped = (
        f"build-bank stopped by SIGTERM; its temporaries and lock are removed and {out} keeps the finished parts; "
        "rerun the same command to resume"
    )
    executor = executor or LocalExecutor(workers)
    with stop_on_sigterm(stopped), folder_lock(out, slot=None if part.whole else part.describe()), restored_threads():
        return _build_locked(sources, out, config, spec, progress, started, executor, part, finalize)


def _build_locked(
    sources: list[Path],
    out: Path,
    config: BankConfig,
    spec: ModelSpec,
    progress: bool,
    started: float,
    executor: Executor,
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
        stage = Stage(
            "embed",
            embed_part,
            embed_params,
            setup=init_embed_worker,
            setup_args=(settings,),
            resources=Resources.for_device(config.device),
        )
        embed = run_stage(stage, part.take(tasks), executor, progress)
    summary = BankSummary(out, embed, part=part)
    if not embed.ok or not part.whole:
        return summary
    set_worker_threads(os.cpu_count() or 1, config.decode_workers)  # the assembly runs here, on the whole machine
    builder = Assembly(out, config, spec, tasks, progress)
    summary.steps_run = builder.run()
    manifest = json.loads((out / MANIFEST).read_text())
    summary.rows, summary.undecodable = manifest["rows"], manifest["undecodable"]
    summary.concepts, summary.factory = manifest["vocabulary"]["size"], manifest["index"]["factory"]
    summary.seconds = time.perf_counter() - started
    return summary


def _check_model_loads(config: BankConfig) -> None:
    """A bad model fails here, once, before any shard; loaded on the CPU, so no GPU holds a copy no worker uses."""
    if config.device == "cpu":
        cached_clip(config.model, config.pretrained, config.model_config, "cpu")  # the shards reuse it in this process
    else:
        load_clip(config.model, config.pretrained, config.model_config, "cpu")


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
