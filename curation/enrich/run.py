"""Enrich: curated concepts for every row of every shard, one shard per unit of work.

``enrich`` runs ``enrich_shard`` over every shard through ``run_stage``, which skips shards already done with the same
bank and parameters and runs the rest in parallel; ``curator`` holds the per-batch algorithm.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cocu.curation.bank.embed import restored_threads
from cocu.curation.bank.layout import check_bank_model, read_bank_manifest
from cocu.curation.bank.reader import Bank
from cocu.curation.concepts.names import TEMPLATES
from cocu.curation.core.locking import folder_lock
from cocu.curation.core.outputs import check_output_folder, input_places
from cocu.curation.core.placement import ShardSlice
from cocu.curation.core.shards import MANIFEST_SUFFIX, ShardError, expand_shards, open_parquet
from cocu.curation.core.stage import Executor, Resources, ShardTask, Stage, StageSummary, run_stage
from cocu.curation.core.stopping import stop_on_sigterm
from cocu.curation.enrich.curator import EnrichConfig
from cocu.curation.enrich.shard import CURATED_NAMES, enrich_shard, open_enrich_worker
from cocu.curation.executors.local import LocalExecutor


def enrich(
    bank: str | os.PathLike,
    shards: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: EnrichConfig = EnrichConfig(),
    workers: int | None = None,
    progress: bool = True,
    executor: Executor | None = None,
    part: ShardSlice = ShardSlice(),
) -> StageSummary:
    """Curate every shard into ``out/<shard name>`` (skipping shards already done with this bank and parameters).

    ``workers`` None is one per visible GPU (one without), each pinned to its own; ``executor`` runs the
    shards elsewhere (``RayExecutor``; ``workers`` is then its business); ``part`` is an array task's slice.
    """
    bank_path = Path(bank)
    manifest = read_bank_manifest(bank_path)
    check_bank_model(bank_path, manifest, config.model, config.pretrained)
    config.check()
    sources = expand_shards(shards)
    patterns = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    check_output_folder(out, [bank_path, *input_places(patterns, sources)], _enrich_made, "enrich")
    out = Path(out).absolute()  # pyarrow reads a relative path with a ':' as a URI
    tasks = [ShardTask(src, out / src.name) for src in sources]
    _check_distinct_targets(tasks)
    # a damaged bank: one error, not one per shard; on the CPU, so the driver puts no copy of the index on a GPU
    opened = Bank.open(bank_path, config.nprobe, config.ef_search, use_gpu=False)
    stage = Stage(
        "enrich",
        enrich_shard,
        config.output_params(manifest["bank_id"]),
        setup=open_enrich_worker,
        setup_args=(str(bank_path), config),
        resources=Resources.for_device(config.device),
        prepared={"opened": opened},  # the shards that run in this process reuse it; worker processes open their own
    )
    stopped = (
        f"enrich stopped by SIGTERM; its temporaries and lock are removed and {out} keeps the finished shards; "
        "rerun the same command to resume"
    )
    with stop_on_sigterm(stopped), folder_lock(out, slot=None if part.whole else part.describe()), restored_threads():
        return run_stage(stage, part.take(tasks), executor or LocalExecutor(workers), progress)


def _enrich_made(entry: Path) -> bool:
    """A curated shard (it has the curated columns) or a per-shard manifest of enrich: what enrich leaves in --out."""
    if entry.name.endswith(MANIFEST_SUFFIX):
        try:
            return json.loads(entry.read_text()).get("stage") == "enrich"
        except (OSError, ValueError, AttributeError):
            return False
    if entry.suffix == ".parquet" and entry.is_file():
        try:
            names = open_parquet(entry).schema_arrow.names
        except ShardError:
            return False
        return all(name in names for name in CURATED_NAMES)
    return False


def template_note(manifest: dict[str, Any], formula: str) -> str | None:
    """One line when ``--formula release`` runs on a bank whose concept prompts are not the release's."""
    template = (manifest.get("prompt_template"), manifest.get("prompt_articles", True))
    if formula != "release" or template == TEMPLATES["release"]:
        return None
    articles = " with articles fixed" if template[1] else ""
    return (
        f"note: the bank's concept prompts are {template[0]!r}{articles}, not the release's "
        f"{TEMPLATES['release'][0]!r}; build the bank with --template release to rank exactly as the release"
    )


def _check_distinct_targets(tasks: list[ShardTask]) -> None:
    seen: dict[Path, Path] = {}
    for task in tasks:
        for target in (task.target, task.manifest):
            if target in seen:
                raise ShardError(
                    task.source,
                    f"writes the same output as {seen[target]} ({target.name}); "
                    f"enrich them into separate --out folders",
                )
            seen[target] = task.source


def summary_line(summary: StageSummary) -> str:
    """The closing line of an enrich run: images, concepts per image, empty archives, errors."""
    c = summary.counts
    curated = max(c.get("curated", 0), 1)
    return (
        f"images {c.get('images', 0)} (curated {c.get('curated', 0)}, errors {c.get('errors', 0)}, "
        f"empty archives {c.get('empty_archives', 0)}); concepts/image {c.get('concepts', 0) / curated:.2f}, "
        f"archive/image {c.get('archive', 0) / curated:.2f}; embeddings reused {c.get('reused', 0)}, "
        f"embedded {c.get('embedded', 0)}"
    )
