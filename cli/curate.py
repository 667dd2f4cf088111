"""`cocu-curate`: build the CLIP bank of an index corpus, then curate shards against it."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Any

import typer

# FAISS and torch run OpenMP; by default idle OpenMP threads spin between parallel regions, which on a
# shared or oversubscribed CPU wastes half the search's CPU time (batched flat search: 344 -> 505
# queries/s on the 2-core test machine). Set before either library loads; the user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = typer.Typer(
    help="Concept curation (CoCu): build-bank embeds and indexes a corpus once; enrich adds curated "
    "concepts to image-caption Parquet shards. Both resume where they stopped.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


class Executor(str, Enum):
    local = "local"
    ray = "ray"


# Options build-bank and enrich share: both run a per-shard stage, locally or on Ray, whole or as array tasks.
DECODE_WORKERS = typer.Option(None, min=0, help="Image decoding processes per worker (default: spare cores).")
EXECUTOR = typer.Option(Executor.local, help="local: processes here; ray: actors on a Ray cluster.")
RAY_ADDRESS = typer.Option(None, help="Ray cluster to join (auto or HOST:PORT; default: start a local one).")
NUM_SHARDS = typer.Option(None, min=1, help="Array task: the number n of tasks (default: $SLURM_ARRAY_TASK_COUNT).")


def workers_option(done: str) -> Any:
    """The --workers option of a stage whose shards are ``done`` (embedded, curated) in parallel."""
    return typer.Option(
        None,
        min=1,
        help=f"Shards {done} in parallel, each worker on its own GPU "
        "(default: one per visible GPU, else 1; with Ray: per GPU, else per CPU).",
    )


def shard_index_option(verb: str) -> Any:
    """The --shard-index option of an array task that does ``verb`` to its slice of the shards."""
    return typer.Option(
        None,
        min=0,
        help=f"Array task: {verb} only shards index, index+n, ... (default: $SLURM_ARRAY_TASK_ID when set).",
    )


def _executor(kind: Executor, address: str | None, workers: int | None):
    """None for the local process pool; a RayExecutor (the ``ray`` extra) for a Ray cluster."""
    if kind is Executor.local:
        if address is not None:
            raise typer.BadParameter("--ray-address needs --executor ray")
        return None
    try:
        import ray  # noqa: F401
    except ImportError:
        raise typer.BadParameter("--executor ray needs Ray: pip install 'cocu[ray]'") from None
    from cocu.curation.executors.ray_actors import RayExecutor

    return RayExecutor(address=address, workers=workers)


@app.command("build-bank")
def build_bank(
    shards: list[str] = typer.Option(..., "--shards", help="Input shards: a glob, folder or file (repeat for more)."),
    model: str = typer.Option(..., help="open_clip model name (ViT-B-16), hf-hub:org/repo or local-dir:PATH."),
    pretrained: str = typer.Option(
        None, help="Pretrained tag (openai, laion2b_s34b_b79k) or checkpoint file; omit for random init."
    ),
    out: Path = typer.Option(..., help="Bank directory to create or resume."),
    model_config: Path = typer.Option(
        None, help="Custom open_clip config JSON named <model>.json (found beside the checkpoint when omitted)."
    ),
    vocabulary: Path = typer.Option(None, help="Use this vocabulary file instead of mining one from the captions."),
    min_count: int = typer.Option(5, min=1, help="Keep caption concepts mentioned in at least this many captions."),
    max_words: int = typer.Option(4, min=1, help="Longest concept in words."),
    concepts: Path = typer.Option(None, help="Text file of extra concepts (one per line), kept even when rare."),
    template: str = typer.Option(
        "cocu",
        help="Concept prompt: 'cocu' (\"a photo of a {}.\", article fixed), "
        "'release' (the authors' \"a photo of a {}\", always 'a') or a "
        "template with a {} slot.",
    ),
    index_factory: str = typer.Option(
        None, help="FAISS factory string (default: Flat up to 1M images, IVF-HNSW beyond)."
    ),
    nprobe: int = typer.Option(None, help="Default IVF lists to probe at search time (stored in the manifest)."),
    ef_search: int = typer.Option(None, help="Default HNSW efSearch at search time (stored in the manifest)."),
    batch_size: int = typer.Option(256, min=1, help="Images per model batch."),
    decode_workers: int = DECODE_WORKERS,
    workers: int = workers_option("embedded"),
    device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
    executor: Executor = EXECUTOR,
    ray_address: str = RAY_ADDRESS,
    shard_index: int = shard_index_option("embed"),
    num_shards: int = NUM_SHARDS,
    finalize: bool = typer.Option(False, help="Embed nothing: build the bank from the parts the array tasks wrote."),
) -> None:
    """Embed the images of SHARDS with a CLIP, mine their caption concepts and build the FAISS bank in OUT."""
    from cocu.curation.bank.build import BankConfig
    from cocu.curation.bank.build import build_bank as build
    from cocu.curation.core.errors import CocuError
    from cocu.curation.core.placement import ShardSlice, shard_slice

    try:
        user = tuple(line.strip() for line in concepts.read_text().splitlines() if line.strip()) if concepts else ()
        config = BankConfig(
            model=model,
            pretrained=pretrained,
            model_config=str(model_config) if model_config else None,
            vocabulary=str(vocabulary) if vocabulary else None,
            min_count=min_count,
            max_words=max_words,
            user_concepts=user,
            template=template,
            factory=index_factory,
            nprobe=nprobe,
            ef_search=ef_search,
            batch_size=batch_size,
            decode_workers=decode_workers,
            device=device,
        )
        part = ShardSlice() if finalize else shard_slice(shard_index, num_shards)
        summary = build(
            shards,
            out,
            config,
            workers=workers,
            executor=_executor(executor, ray_address, workers),
            part=part,
            finalize=finalize,
        )
    except (CocuError, ValueError, FileNotFoundError, OSError) as err:
        _fail(err)
    for failure in summary.embed.failures:
        typer.echo(f"error: {failure}", err=True)
    typer.echo(summary.embed.line())
    typer.echo(summary.line())
    raise typer.Exit(0 if summary.ok else 1)


@app.command()
def enrich(
    bank: Path = typer.Option(..., help="Bank directory made by build-bank."),
    shards: list[str] = typer.Option(
        ..., "--shards", help="Shards to curate: a glob, folder or file (repeat for more)."
    ),
    out: Path = typer.Option(..., help="Output folder; each curated shard keeps its input's file name."),
    neighbors: int = typer.Option(8, "--neighbors", "-L", min=1, help="Retrieved images per anchor (L)."),
    top_k: int = typer.Option(
        0,
        min=0,
        help="Curated concepts kept per image (K); 0 keeps the whole archive, which "
        "cluster-guided sampling draws from.",
    ),
    clusters: bool = typer.Option(
        True, "--clusters/--no-clusters", help="Store k-means cluster ids for cluster-guided sampling."
    ),
    formula: str = typer.Option(
        "cocu",
        help="Ranking: 'release' (the authors' exactly, crash bugs fixed) or 'cocu' "
        "(cocu's departures, docs/curation.md).",
    ),
    archive: str = typer.Option(
        "neighbours",
        help="Archive: 'neighbours' (the L images' captions, as the paper), "
        "'vocabulary' (top-M of the whole vocabulary by CLIP) or 'both'.",
    ),
    vocabulary_top: int = typer.Option(
        16, min=1, help="M: concepts the vocabulary search adds (--archive vocabulary|both)."
    ),
    seed: int = typer.Option(0, help="Seed of the clustering."),
    nprobe: int = typer.Option(None, help="IVF lists to probe (default: the bank's)."),
    ef_search: int = typer.Option(None, help="HNSW efSearch (default: the bank's)."),
    model: str = typer.Option(None, help="Refuse to run unless the bank was built with this model."),
    pretrained: str = typer.Option(None, help="The bank's weights (a tag, or the checkpoint file if it moved)."),
    batch_size: int = typer.Option(1024, min=1, help="Images per search/ranking batch."),
    embed_batch_size: int = typer.Option(256, min=1, help="Images per model batch (images not in the bank)."),
    decode_workers: int = DECODE_WORKERS,
    workers: int = workers_option("curated"),
    device: str = typer.Option(None, help="cuda or cpu for embedding images not in the bank."),
    executor: Executor = EXECUTOR,
    ray_address: str = RAY_ADDRESS,
    shard_index: int = shard_index_option("curate"),
    num_shards: int = NUM_SHARDS,
) -> None:
    """Add caption_concepts, cocu_concepts, cocu_scores, cocu_clusters and cocu_error to every row of SHARDS."""
    from cocu.curation.bank.layout import read_bank_manifest
    from cocu.curation.core.errors import CocuError
    from cocu.curation.core.placement import shard_slice
    from cocu.curation.enrich.curator import EnrichConfig
    from cocu.curation.enrich.run import enrich as run
    from cocu.curation.enrich.run import summary_line, template_note

    config = EnrichConfig(
        neighbors=neighbors,
        top_k=top_k,
        clusters=clusters,
        seed=seed,
        nprobe=nprobe,
        ef_search=ef_search,
        batch_size=batch_size,
        model=model,
        pretrained=pretrained,
        embed_batch_size=embed_batch_size,
        decode_workers=decode_workers,
        device=device,
        formula=formula,
        archive=archive,
        vocabulary_top=vocabulary_top,
    )
    try:
        note = template_note(read_bank_manifest(bank), formula)
        if note:
            typer.echo(note, err=True)
        summary = run(
            bank,
            shards,
            out,
            config,
            workers=workers,
            executor=_executor(executor, ray_address, workers),
            part=shard_slice(shard_index, num_shards),
        )
    except (CocuError, ValueError, FileNotFoundError, OSError) as err:
        _fail(err)
    for failure in summary.failures:
        typer.echo(f"error: {failure}", err=True)
    typer.echo(summary.line())
    typer.echo(summary_line(summary))
    raise typer.Exit(0 if summary.ok else 1)


@app.command()
def show(
    curated: list[str] = typer.Option(..., "--curated", help="Curated shards: glob, folder or file (repeat for more)."),
    out: Path = typer.Option(..., help="Gallery folder to write (replaced whole; open OUT/index.html)."),
    truth: Path = typer.Option(
        None, help="Truth sidecars of the synthetic world (WORLD/truth/train): mark each added concept right or wrong."
    ),
    limit: int = typer.Option(50_000, min=1, help="Rows with a card (the summary counts every row)."),
    thumb_size: int = typer.Option(128, min=16, help="Longest side of a thumbnail in pixels."),
    page_size: int = typer.Option(60, min=1, help="Cards per page."),
) -> None:
    """Write a static HTML gallery of curated shards: thumbnails, captions, curated concepts, and a summary page."""
    from cocu.curation.core.errors import CocuError
    from cocu.curation.show.gallery import GalleryConfig, write_gallery

    try:
        config = GalleryConfig(limit=limit, thumb_size=thumb_size, page_size=page_size)
        summary = write_gallery(curated, out, truth, config)
    except (CocuError, ValueError, FileNotFoundError, FileExistsError, OSError) as err:
        _fail(err)
    typer.echo(summary.line())


@app.command()
def status(out: Path = typer.Option(..., help="An enrich output folder or a bank directory.")) -> None:
    """Say what is done in OUT: finished shards and their counts (from the per-shard manifests)."""
    folders = [out / "parts", out] if (out / "parts").is_dir() else [out]
    bank = out / "manifest.json"
    if bank.is_file():
        manifest = json.loads(bank.read_text())
        typer.echo(
            f"bank {out}: complete; {manifest['rows']} images, {manifest['vocabulary']['size']} concepts, "
            f"model {manifest['model']['name']} / {manifest['model']['pretrained']}, "
            f"index {manifest['index']['factory']}"
        )
    elif (out / "parts").is_dir():
        typer.echo(f"bank {out}: incomplete (no manifest.json yet)")
    for folder in folders:
        manifests = sorted(folder.glob("*.manifest.json"))
        if not manifests:
            continue
        stages: dict[str, dict] = {}
        for path in manifests:
            record = json.loads(path.read_text())
            entry = stages.setdefault(record.get("stage", "?"), {"shards": 0, "seconds": 0.0, "counts": {}})
            entry["shards"] += 1
            entry["seconds"] += record.get("seconds", 0.0)
            for name, value in record.get("counts", {}).items():
                entry["counts"][name] = entry["counts"].get(name, 0) + value
        for stage, entry in stages.items():
            counts = ", ".join(f"{k} {v}" for k, v in sorted(entry["counts"].items()))
            rate = entry["counts"].get("images", 0) / entry["seconds"] if entry["seconds"] else 0.0
            typer.echo(f"{stage} ({folder}): {entry['shards']} shard(s) done; {counts}; {rate:.0f} images/s per worker")
    if not bank.is_file() and not any(f.glob("*.manifest.json") for f in folders if f.is_dir()):
        typer.echo(f"{out}: nothing done yet")


if __name__ == "__main__":
    app()
