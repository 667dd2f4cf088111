"""`cocu-data`: make, fetch and check image-caption shards."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from cocu.cli.errors import one_line_errors
from cocu.cli.options import config_options
from cocu.curation.inputs.download import DownloadConfig
from cocu.curation.inputs.synthetic.world import WorldConfig

app = typer.Typer(
    help="Make, fetch and check image-caption Parquet shards (key, jpg, caption).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
@config_options(WorldConfig, param="settings")
def synth(
    settings: WorldConfig,
    out: Path = typer.Argument(..., help="Folder to write the world into."),
    workers: int = typer.Option(2, min=1, help="Processes drawing shards in parallel."),
    config: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="A JSON of WorldConfig fields: every setting, the options below unused."
    ),
) -> None:
    """Generate the synthetic semantic-gap world: captions omit concepts that the truth sidecar records."""
    import json
    from dataclasses import fields

    from cocu.curation.inputs.synthetic import generate_world

    if config is not None:
        values = json.loads(config.read_text())
        unknown = set(values) - {f.name for f in fields(WorldConfig)}
        if unknown:
            raise typer.BadParameter(f"{config}: not WorldConfig fields: {sorted(unknown)}")
        try:
            settings = WorldConfig(**values)
        except ValueError as error:
            raise typer.BadParameter(f"{config}: {error}") from None
    record = generate_world(out, settings, workers=workers)
    _say_world(out, record, settings)


def _say_world(out: Path, record: dict, cfg) -> None:
    omission = record["omission"]
    if abs(omission["reachable_train"] - cfg.omit) > 0.005:
        typer.echo(
            f"warning: --omit {cfg.omit} is out of reach for this world (a caption always names the salient thing); "
            f"the closest share is {omission['reachable_train']:.3f}",
            err=True,
        )
    typer.echo(
        f"world: {out} | {len(record['classes'])} classes ({len(record['things'])} things, {len(record['stuff'])} "
        f"stuff) | train {cfg.train}, teacher {cfg.teacher}, val {cfg.val} | omitted share "
        f"{omission['measured_train']:.3f} (target {omission['target']}) | "
        f"{record['generation']['pairs_per_second']:.0f} pairs/s"
    )


@app.command()
def validate(shards: list[str] = typer.Argument(..., help="Shard files, folders or globs.")) -> None:
    """Check shards against the data contract: one line per bad file, exit 1 if any."""
    from cocu.curation.core.errors import CocuError
    from cocu.curation.core.shards import check_keys_across_shards, expand_shards, validate_shard

    with one_line_errors(CocuError):
        paths = expand_shards(shards)
    bad = rows = 0
    for path in paths:
        try:
            rows += validate_shard(path)
        except CocuError as err:
            bad += 1
            typer.echo(f"error: {err}", err=True)
    try:
        check_keys_across_shards(paths)
    except CocuError as err:
        bad += 1
        typer.echo(f"error: {err}", err=True)
    typer.echo(f"{len(paths)} shard(s), {rows} rows, {bad} invalid")
    raise typer.Exit(1 if bad else 0)


class Preset(str, Enum):
    cc3m = "cc3m"
    cc12m = "cc12m"


@app.command()
@config_options(DownloadConfig, param="cfg")
def download(
    cfg: DownloadConfig,
    url_list: Path = typer.Argument(
        ..., help="URL + caption list: a tsv/csv/parquet/jsonl/json file (optionally .gz) or a folder of them."
    ),
    out: Path = typer.Argument(
        ..., help="Output folder: NNNNN.parquet shards (cocu input as is) and NNNNN_stats.json."
    ),
    preset: Preset | None = typer.Option(
        None, help="Official header-less TSVs: cc3m is caption<TAB>url, cc12m is url<TAB>caption."
    ),
    columns: str | None = typer.Option(
        None, help="Comma-separated names of a header-less csv/tsv list's columns, e.g. 'caption,url'."
    ),
) -> None:
    """Download images with img2dataset into Parquet shards; rerun the same command to resume."""
    from cocu.curation.core.errors import CocuError
    from cocu.curation.inputs.download import DownloadInterrupted
    from cocu.curation.inputs.download import download as run_download
    from cocu.curation.inputs.url_lists import LIST_LAYOUTS

    if preset is not None and columns is not None:
        raise typer.BadParameter("give --preset or --columns, not both")
    if preset is not None:
        cfg.columns = LIST_LAYOUTS[preset.value]
    elif columns:
        cfg.columns = tuple(name.strip() for name in columns.split(","))
    try:
        with one_line_errors(CocuError):
            summary = run_download(url_list, out, cfg)
    except DownloadInterrupted as err:
        typer.echo(f"interrupted: {err}", err=True)
        raise typer.Exit(130) from None
    typer.echo(summary.line())
    raise typer.Exit(1 if summary.shards_failed else 0)


@app.command()
def convert(
    tars: list[str] = typer.Argument(
        ..., help="Webdataset tars: files, folders, globs or braces ('cc3m-{000000..000436}.tar')."
    ),
    out: Path = typer.Argument(..., help="Output folder: one Parquet shard per tar."),
    workers: int = typer.Option(2, min=1, help="Tars converted in parallel."),
) -> None:
    """Convert webdataset tars (jpg/png + txt, the GroupViT format) to Parquet shards; resumable."""
    from cocu.curation.core.errors import CocuError
    from cocu.curation.inputs.convert import convert_webdataset

    with one_line_errors(CocuError):
        summary = convert_webdataset(tars, out, workers=workers)
    for failure in summary.failures:
        typer.echo(f"error: {failure}", err=True)
    typer.echo(summary.line())
    raise typer.Exit(0 if summary.ok else 1)


if __name__ == "__main__":
    app()
