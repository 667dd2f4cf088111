"""`cocu-data`: make, fetch and check image-caption shards."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(
    help="Make, fetch and check image-caption Parquet shards (key, jpg, caption).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write the world into."),
    train: int = typer.Option(20000, help="Pairs in train/ (web-style captions that omit concepts)."),
    teacher: int = typer.Option(20000, help="Pairs in teacher/ (full captions, for the teacher CLIP)."),
    val: int = typer.Option(300, help="Images in val/ with per-pixel labels."),
    image_size: int = typer.Option(64, help="Side of train/teacher images in pixels."),
    val_image_size: int = typer.Option(64, help="Side of val images in pixels."),
    omit: float = typer.Option(0.65, min=0.0, max=1.0, help="Share of present concepts the train captions leave out."),
    stuff_mention: float = typer.Option(
        0.1, min=0.0, max=1.0, help="Chance that a caption names a visible background stuff."
    ),
    things_min: int = typer.Option(2, min=1, help="Fewest thing concepts drawn per image."),
    things_max: int = typer.Option(5, min=1, help="Most thing concepts drawn per image."),
    things_per_group: int = typer.Option(
        0, min=0, help="Keep the first N things of each confusable group (0: all 44; the benchmark's world: 2)."
    ),
    shard_size: int = typer.Option(2500, min=1, help="Rows per Parquet shard."),
    seed: int = typer.Option(0, help="Same seed, byte-identical shards."),
    workers: int = typer.Option(2, min=1, help="Processes drawing shards in parallel."),
    config: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="A JSON of WorldConfig fields: every setting, the options above unused."
    ),
) -> None:
    """Generate the synthetic semantic-gap world: captions omit concepts that the truth sidecar records."""
    import json
    from dataclasses import fields

    from cocu.curation.inputs.synthetic import WorldConfig, generate_world

    if config is not None:
        settings = json.loads(config.read_text())
        unknown = set(settings) - {f.name for f in fields(WorldConfig)}
        if unknown:
            raise typer.BadParameter(f"{config}: not WorldConfig fields: {sorted(unknown)}")
        try:
            cfg = WorldConfig(**settings)
        except ValueError as error:
            raise typer.BadParameter(f"{config}: {error}") from None
        record = generate_world(out, cfg, workers=workers)
        _say_world(out, record, cfg)
        return
    if things_max < things_min:
        raise typer.BadParameter("--things-max must be at least --things-min")
    try:
        cfg = WorldConfig(
            things_per_group=things_per_group,
            seed=seed,
            train=train,
            teacher=teacher,
            val=val,
            image_size=image_size,
            val_image_size=val_image_size,
            omit=omit,
            stuff_mention=stuff_mention,
            things_min=things_min,
            things_max=things_max,
            shard_size=shard_size,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    record = generate_world(out, cfg, workers=workers)
    _say_world(out, record, cfg)


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

    try:
        paths = expand_shards(shards)
    except CocuError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
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


class Distributor(str, Enum):
    multiprocessing = "multiprocessing"
    pyspark = "pyspark"
    ray = "ray"


@app.command()
def download(
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
    url_col: str = typer.Option("url", help="Column holding the image URL."),
    caption_col: str = typer.Option("caption", help="Column holding the caption."),
    input_format: str | None = typer.Option(
        None, help="tsv, csv, parquet, jsonl, json (+ .gz); inferred from the file names."
    ),
    extra_col: list[str] = typer.Option([], help="Input column to carry into the shards (repeatable)."),
    image_size: int = typer.Option(512, min=1, help="Target size; with keep_ratio the smaller side (GroupViT recipe)."),
    resize_mode: str = typer.Option(
        "keep_ratio", help="img2dataset resize mode: keep_ratio, center_crop, border, no, ..."
    ),
    resize_only_if_bigger: bool = typer.Option(True, help="Only shrink, never enlarge."),
    processes_count: int = typer.Option(
        os.cpu_count() or 1, min=1, help="Download processes (one shard each at a time)."
    ),
    thread_count: int = typer.Option(64, min=1, help="Download threads per process."),
    shard_size: int = typer.Option(10000, min=1, help="URLs per output shard (img2dataset's number_sample_per_shard)."),
    timeout: int = typer.Option(10, min=1, help="Seconds before a URL counts as failed."),
    retries: int = typer.Option(0, min=0, help="Extra tries per failed URL."),
    overwrite: bool = typer.Option(False, help="Delete OUT first instead of resuming after its finished shards."),
    distributor: Distributor = typer.Option(
        Distributor.multiprocessing,
        help="How img2dataset spreads shards: processes here, a pyspark session, or a Ray cluster.",
    ),
    ray_address: str | None = typer.Option(
        None, help="With --distributor ray: the cluster (auto or HOST:PORT; default: a local one)."
    ),
) -> None:
    """Download images with img2dataset into Parquet shards; rerun the same command to resume."""
    from cocu.curation.core.errors import CocuError
    from cocu.curation.inputs.download import DownloadConfig, DownloadInterrupted
    from cocu.curation.inputs.download import download as run_download
    from cocu.curation.inputs.url_lists import LIST_LAYOUTS

    if preset is not None and columns is not None:
        raise typer.BadParameter("give --preset or --columns, not both")
    if preset is not None:
        names = LIST_LAYOUTS[preset.value]
    else:
        names = tuple(name.strip() for name in columns.split(",")) if columns else None
    cfg = DownloadConfig(
        columns=names,
        url_col=url_col,
        caption_col=caption_col,
        input_format=input_format,
        extra_columns=tuple(extra_col),
        image_size=image_size,
        resize_mode=resize_mode,
        resize_only_if_bigger=resize_only_if_bigger,
        processes_count=processes_count,
        thread_count=thread_count,
        number_sample_per_shard=shard_size,
        timeout=timeout,
        retries=retries,
        overwrite=overwrite,
        distributor=distributor.value,
        ray_address=ray_address,
    )
    try:
        summary = run_download(url_list, out, cfg)
    except CocuError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
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

    try:
        summary = convert_webdataset(tars, out, workers=workers)
    except CocuError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    for failure in summary.failures:
        typer.echo(f"error: {failure}", err=True)
    typer.echo(summary.line())
    raise typer.Exit(0 if summary.ok else 1)


if __name__ == "__main__":
    app()
