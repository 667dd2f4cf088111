"""`cocu-eval`: zero-shot segmentation of a cocu GroupViT checkpoint on a benchmark split (`seg`, `show`) or on any
pictures (`predict`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from cocu.cli.errors import one_line_errors
from cocu.cli.options import config_options
from cocu.evaluation.dataset_layouts import LAYOUTS
from cocu.evaluation.predict import PredictConfig
from cocu.evaluation.presets import SEGMENTATION_PRESETS
from cocu.evaluation.segeval import EvalConfig, evaluate

app = typer.Typer(
    help="Evaluate cocu GroupViT checkpoints (zero-shot semantic segmentation, mmseg mIoU).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# typer offers choices through Enum classes; members come from the tables, which mypy's Enum analysis cannot follow
DatasetName = Enum("DatasetName", {name: name for name in LAYOUTS}, type=str)  # type: ignore[misc]
PresetName = Enum("PresetName", {name: name for name in SEGMENTATION_PRESETS}, type=str)  # type: ignore[misc]


@app.callback()
def main() -> None:
    """Zero-shot evaluation commands."""


@app.command()
@config_options(EvalConfig)
def seg(
    config: EvalConfig,
    checkpoint: Path = typer.Option(..., exists=True, dir_okay=False, help="A checkpoint written by `cocu-train fit`."),
    dataset: DatasetName = typer.Option(..., help="Benchmark split to read (its standard folder layout)."),
    root: Path = typer.Option(..., help="The dataset's folder, or a data root holding it under its usual name."),
    preset: PresetName = typer.Option("groupvit", help="Harness settings: GroupViT/CoCu or TCL (see README)."),
    out: Path = typer.Option(..., help="Folder for metrics.json, results.md and overlays/."),
    html: bool = typer.Option(False, "--html", help="Also write OUT/index.html: metrics, per-class IoU, overlays."),
) -> None:
    """Segment every image of the split, score mIoU as mmseg does, write metrics.json and a Markdown table."""
    from cocu.curation.core.errors import CocuError
    from cocu.evaluation.datasets import open_dataset
    from cocu.evaluation.presets import get_preset

    try:
        settings = get_preset(preset.value, dataset.value)
        data = open_dataset(dataset.value, root)
    except (CocuError, KeyError) as err:
        typer.echo(f"error: {err.args[0]}", err=True)
        raise typer.Exit(2) from None
    import torch

    from cocu.curation.bank.clip import resolve_device
    from cocu.curation.core.shards import sha256_file
    from cocu.evaluation.segeval import check_eval_folder, write_metrics
    from cocu.training.checkpoint import load_groupvit

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    with one_line_errors(ValueError, FileNotFoundError):
        check_eval_folder(out, [checkpoint, root])
        model, model_config = load_groupvit(checkpoint, device=resolve_device(config.device))
    with one_line_errors(CocuError):
        record = evaluate(model, data, settings, config, out_dir=out)
    record = {
        "checkpoint": {
            "path": str(checkpoint.resolve()),
            "sha256": sha256_file(checkpoint),
            "model": getattr(model_config, "name", None),
        },
        **record,
    }
    with one_line_errors(CocuError):
        metrics_path, table_path = write_metrics(record, out)
        page = ""
        if html:
            from cocu.evaluation.eval_page import write_eval_page

            page = f" | {write_eval_page(out)}"
    typer.echo(
        f"{data.name} [{settings.name}] {record['images']}/{record['split_size']} images: "
        f"mIoU {record['miou']}, pixel acc. {record['pixel_accuracy']}, {record['classes_counted']} classes counted, "
        f"{record['images_per_second']} images/s on {record['device']}, {record['overlays']} overlays | "
        f"{metrics_path} | {table_path}{page}"
    )


@app.command()
@config_options(PredictConfig)
def predict(
    config: PredictConfig,
    pictures: list[Path] = typer.Argument(..., help="Picture files or folders of pictures (any size, grey, RGBA)."),
    checkpoint: Path = typer.Option(..., exists=True, dir_okay=False, help="A checkpoint written by `cocu-train fit`."),
    out: Path = typer.Option(..., help="Folder for labels/, overlays/, legend.json and predictions.json."),
    html: bool = typer.Option(False, "--html", help="Also write OUT/index.html with every overlay."),
) -> None:
    """Segment your own pictures into your own class names, as `cocu-eval seg` does (sliding windows, the groups'
    soft maps, top-k class masking): a label PNG and an overlay per picture, one line each."""
    from cocu.curation.core.errors import CocuError
    from cocu.evaluation.predict import check_predict_folder, class_names, picture_files, predict_pictures

    try:
        class_names(config)
        files = picture_files(pictures)
        check_predict_folder(out, [checkpoint, *[p for p in pictures if p.exists()]])
    except CocuError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if not files:
        typer.echo(f"error: no pictures in {', '.join(map(str, pictures))}", err=True)
        raise typer.Exit(2)
    import torch

    from cocu.curation.bank.clip import resolve_device
    from cocu.training.checkpoint import load_groupvit

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    with one_line_errors(CocuError, ValueError, FileNotFoundError):
        model, _ = load_groupvit(checkpoint, device=resolve_device(config.device))
        record = predict_pictures(model, files, config, out, report=typer.echo)
        page = ""
        if html:
            from cocu.evaluation.predict import write_predict_page

            page = f" | {write_predict_page(out, record)}"
    done, failed = len(record["pictures"]), len(record["failed"])
    typer.echo(
        f"predicted {done} of {done + failed} pictures ({failed} unreadable) into {len(record['classes'])} labels in "
        f"{record['seconds']} s, {record['pictures_per_second']} pictures/s on {record['device']} | "
        f"{out / 'predictions.json'}{page}"
    )
    if done == 0:
        raise typer.Exit(1)


@app.command()
def show(out: Path = typer.Option(..., help="A folder written by `cocu-eval seg` (metrics.json, overlays/).")) -> None:
    """Write OUT/index.html from an evaluation's metrics.json and overlays: open it in a browser."""
    from cocu.evaluation.eval_page import write_eval_page

    with one_line_errors(ValueError, FileNotFoundError, OSError):
        page = write_eval_page(out)
    typer.echo(f"evaluation page: {page}")


if __name__ == "__main__":
    app()
