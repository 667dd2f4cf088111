"""`cocu-curate`: build the CLIP bank of an index corpus, then curate shards against it."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import typer

# FAISS and torch run OpenMP; by default idle OpenMP threads spin between parallel regions, which on a
# shared or oversubscribed CPU wastes half the search's CPU time (batched flat search: 344 -> 505
# queries/s on the 2-core test machine). Set before either library loads; the user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cocu.cli.errors import one_line_errors
from cocu.cli.options import config_options  # noqa: E402 - after OMP_WAIT_POLICY
from cocu.curation.bank.config import BankConfig  # noqa: E402
from cocu.curation.core.errors import CocuError  # noqa: E402
from cocu.curation.enrich.curator import EnrichConfig  # noqa: E402
from cocu.curation.executors.config import ExecutorConfig  # noqa: E402
from cocu.curation.show.gallery import GalleryConfig  # noqa: E402

app = typer.Typer(
    help="Concept curation (CoCu): build-bank embeds and indexes a corpus once; enrich adds curated "
    "concepts to image-caption Parquet shards. Both resume where they stopped.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("build-bank")
@config_options(ExecutorConfig, param="run")
@config_options(BankConfig, exclude=("user_concepts",))
def build_bank(
    config: BankConfig,
    run: ExecutorConfig,
    shards: list[str] = typer.Option(..., "--shards", help="Input shards: a glob, folder or file (repeat for more)."),
    out: Path = typer.Option(..., help="Bank directory to create or resume."),
    concepts: Path = typer.Option(None, help="Text file of extra concepts (one per line), kept even when rare."),
    finalize: bool = typer.Option(False, help="Embed nothing: build the bank from the parts the array tasks wrote."),
) -> None:
    """Embed the images of SHARDS with a CLIP, mine their caption concepts and build the FAISS bank in OUT."""
    from cocu.curation.bank.build import build_bank as build
    from cocu.curation.core.placement import ShardSlice

    with one_line_errors(CocuError, ValueError, FileNotFoundError, OSError):
        if concepts:
            user = tuple(line.strip() for line in concepts.read_text().splitlines() if line.strip())
            config = replace(config, user_concepts=user)
        part = ShardSlice() if finalize else run.part()
        summary = build(shards, out, config, executor=run.build(connect=not finalize), part=part, finalize=finalize)
    for failure in summary.embed.failures:
        typer.echo(f"error: {failure}", err=True)
    typer.echo(summary.embed.line())
    typer.echo(summary.line())
    raise typer.Exit(0 if summary.ok else 1)


@app.command()
@config_options(ExecutorConfig, param="run")
@config_options(EnrichConfig)
def enrich(
    config: EnrichConfig,
    run: ExecutorConfig,
    bank: Path = typer.Option(..., help="Bank directory made by build-bank."),
    shards: list[str] = typer.Option(
        ..., "--shards", help="Shards to curate: a glob, folder or file (repeat for more)."
    ),
    out: Path = typer.Option(..., help="Output folder; each curated shard keeps its input's file name."),
) -> None:
    """Add caption_concepts, cocu_concepts, cocu_scores, cocu_clusters and cocu_error to every row of SHARDS."""
    from cocu.curation.bank.layout import read_bank_manifest
    from cocu.curation.enrich.run import enrich as curate
    from cocu.curation.enrich.run import summary_line, template_note

    with one_line_errors(CocuError, ValueError, FileNotFoundError, OSError):
        note = template_note(read_bank_manifest(bank), config.formula)
        if note:
            typer.echo(note, err=True)
        summary = curate(bank, shards, out, config, executor=run.build(), part=run.part())
    for failure in summary.failures:
        typer.echo(f"error: {failure}", err=True)
    typer.echo(summary.line())
    typer.echo(summary_line(summary))
    raise typer.Exit(0 if summary.ok else 1)


@app.command()
@config_options(GalleryConfig)
def show(
    config: GalleryConfig,
    curated: list[str] = typer.Option(..., "--curated", help="Curated shards: glob, folder or file (repeat for more)."),
    out: Path = typer.Option(..., help="Gallery folder to write (replaced whole; open OUT/index.html)."),
    truth: Path = typer.Option(
        None, help="Truth sidecars of the synthetic world (WORLD/truth/train): mark each added concept right or wrong."
    ),
) -> None:
    """Write a static HTML gallery of curated shards: thumbnails, captions, curated concepts, and a summary page."""
    from cocu.curation.show.gallery import write_gallery

    with one_line_errors(CocuError, ValueError, FileNotFoundError, FileExistsError, OSError):
        summary = write_gallery(curated, out, truth, config)
    typer.echo(summary.line())


@app.command()
def status(out: Path = typer.Option(..., help="An enrich output folder or a bank directory.")) -> None:
    """Say what is done in OUT: finished shards and their counts (from the per-shard manifests)."""
    from cocu.curation.show.status import status_lines

    for line in status_lines(out):
        typer.echo(line)


if __name__ == "__main__":
    app()
