"""`cocu-train clip`: train the teacher CLIP on fully-captioned shards and report what it knows."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import typer

from cocu.cli.errors import one_line_errors
from cocu.cli.options import config_options
from cocu.training.clip import RECORD_NAME, TeacherConfig

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
@config_options(TeacherConfig, param="cfg")
def clip(
    cfg: TeacherConfig,
    data: list[str] = typer.Argument(
        ...,
        help="A world folder (trains on its teacher/ split, evaluates on its truth), "
        "or teacher shards: files, folders, globs.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for <name>.json, <name>.safetensors, open_clip_config.json, teacher.json."
    ),
    curve_every: int | None = typer.Option(
        None, min=1, help="Samples between zero-shot probes of the learning curve (default: none)."
    ),
    eval_world: Path | None = typer.Option(
        None, help="World folder to evaluate on (default: DATA when it is a world)."
    ),
) -> None:
    """Train an open_clip model with a small custom config, save it as a standard open_clip
    checkpoint, and measure its zero-shot concept ranking on the world."""
    from cocu.curation.core.errors import CocuError
    from cocu.training.clip import train_teacher

    shards: list[str] = data
    if len(data) == 1 and (Path(data[0]) / "world.json").is_file():
        shards = [str(Path(data[0]) / "teacher")]
        eval_world = eval_world or Path(data[0])
    with one_line_errors(CocuError, ValueError, FloatingPointError):
        evaluated = eval_world is not None and cfg.eval_images > 0
        cfg = replace(cfg, eval_world=eval_world if evaluated else None, curve_every=curve_every if evaluated else None)
        weights = train_teacher(shards, out, cfg)
    record = json.loads((out / RECORD_NAME).read_text())
    training = record["training"]
    typer.echo(
        f"teacher {record['model']}: {record['parameters'] / 1e6:.2f} M parameters | {training['samples']} samples "
        f"({training['epochs']} epochs) in {training['seconds']:.0f} s, {training['samples_per_second']:.0f} samples/s "
        f"| final loss {training['final_loss']}"
    )
    if "zero_shot" in record:
        z = record["zero_shot"]
        typer.echo(
            f"zero-shot on {z['images']} {z['split']} images, {z['classes']} concepts: "
            f"recall@|present| {z['recall_at_present']} "
            f"(chance {z['chance_recall']}), things {z['thing_recall']}, stuff {z['stuff_recall']}, "
            f"salient top-1 {z['salient_top1']} (among things {z['salient_top1_among_things']}), mAP {z['mean_ap']}"
        )
    typer.echo(
        f"load with: open_clip.add_model_config('{out / (record['model'] + '.json')}'); "
        f"open_clip.create_model_and_transforms('{record['model']}', pretrained='{weights}')"
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point for `cocu-train clip ...` (argv without the `cocu-train clip` prefix)."""
    app(args=argv, prog_name="cocu-train clip")


if __name__ == "__main__":
    main()
