"""`cocu-data`: make, fetch and check image-caption shards."""
from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Make, fetch and check image-caption Parquet shards (key, jpg, caption).", no_args_is_help=True,
                  add_completion=False,
                  pretty_exceptions_enable=False)


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write the world into."),
    train: int = typer.Option(20000, help="Pairs in train/ (web-style captions that omit concepts)."),
    teacher: int = typer.Option(20000, help="Pairs in teacher/ (full captions, for the teacher CLIP)."),
    val: int = typer.Option(300, help="Images in val/ with per-pixel labels."),
    image_size: int = typer.Option(64, help="Side of train/teacher images in pixels."),
    val_image_size: int = typer.Option(64, help="Side of val images in pixels."),
    omit: float = typer.Option(0.65, min=0.0, max=1.0, help="Share of present concepts the train captions leave out."),
    stuff_mention: float = typer.Option(0.1, min=0.0, max=1.0, help="Chance that a caption names a visible background stuff."),
    things_min: int = typer.Option(2, min=1, help="Fewest thing concepts drawn per image."),
    things_max: int = typer.Option(5, min=1, help="Most thing concepts drawn per image."),
    shard_size: int = typer.Option(2500, min=1, help="Rows per Parquet shard."),
    seed: int = typer.Option(0, help="Same seed, byte-identical shards."),
    workers: int = typer.Option(2, min=1, help="Processes drawing shards in parallel."),
) -> None:
    """Generate the synthetic semantic-gap world: captions omit concepts that the truth sidecar records."""
    from cocu.evaluation.synthetic import WorldConfig, generate_world

    if things_max < things_min:
        raise typer.BadParameter("--things-max must be at least --things-min")
    cfg = WorldConfig(seed=seed, train=train, teacher=teacher, val=val, image_size=image_size, val_image_size=val_image_size,
                      omit=omit, stuff_mention=stuff_mention, things_min=things_min, things_max=things_max, shard_size=shard_size)
    record = generate_world(out, cfg, workers=workers)
    omission = record["omission"]
    if abs(omission["reachable_train"] - omit) > 0.005:
        typer.echo(f"warning: --omit {omit} is out of reach for this world (a caption always names the salient thing); "
                   f"the closest share is {omission['reachable_train']:.3f}", err=True)
    typer.echo(f"world: {out} | {len(record['classes'])} classes ({len(record['things'])} things, {len(record['stuff'])} stuff) | "
               f"train {train}, teacher {teacher}, val {val} | omitted share {omission['measured_train']:.3f} "
               f"(target {omission['target']}) | {record['generation']['pairs_per_second']:.0f} pairs/s")


@app.command()
def validate(shards: list[str] = typer.Argument(..., help="Shard files, folders or globs.")) -> None:
    """Check shards against the data contract: one line per bad file, exit 1 if any."""
    from cocu.curation.shards import ShardError, expand_shards, validate_shard

    try:
        paths = expand_shards(shards)
    except ShardError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    bad = rows = 0
    for path in paths:
        try:
            rows += validate_shard(path)
        except ShardError as err:
            bad += 1
            typer.echo(f"error: {err}", err=True)
    typer.echo(f"{len(paths)} shard(s), {rows} rows, {bad} invalid")
    raise typer.Exit(1 if bad else 0)
if __name__ == "__main__":
    app()
