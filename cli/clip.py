"""`cocu-train clip`: train the teacher CLIP on fully-captioned shards and report what it knows."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cocu.training.clip import DEFAULT_MODEL_CONFIG, DEFAULT_PROMPT, RECORD_NAME, TeacherConfig

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def clip(
    data: list[str] = typer.Argument(
        ...,
        help="A world folder (trains on its teacher/ split, evaluates on its truth), "
        "or teacher shards: files, folders, globs.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for <name>.json, <name>.safetensors, open_clip_config.json, teacher.json."
    ),
    model_config: Path = typer.Option(
        DEFAULT_MODEL_CONFIG, help="open_clip model config JSON; its file stem is the model name."
    ),
    samples: int = typer.Option(TeacherConfig.samples, min=1, help="Training samples to see: the whole budget."),
    deadline_minutes: float = typer.Option(
        0.0, min=0.0, help="Stop with an error past this many minutes (0: no deadline); never shortens training."
    ),
    curve_every: int = typer.Option(0, min=0, help="Samples between zero-shot probes of the learning curve (0: none)."),
    batch_size: int = typer.Option(TeacherConfig.batch_size, min=2),
    lr: float = typer.Option(TeacherConfig.lr, help="Peak AdamW learning rate (linear warmup, cosine to zero)."),
    weight_decay: float = typer.Option(TeacherConfig.weight_decay),
    workers: int = typer.Option(TeacherConfig.workers, min=0, help="DataLoader processes decoding images."),
    threads: int = typer.Option(0, min=0, help="torch CPU threads (0: torch's default, one per core)."),
    seed: int = typer.Option(TeacherConfig.seed),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ..."),
    eval_world: Path | None = typer.Option(
        None, help="World folder to evaluate on (default: DATA when it is a world)."
    ),
    eval_split: str = typer.Option("train", help="Split of the eval world whose truth says what each image shows."),
    eval_images: int = typer.Option(
        TeacherConfig.eval_images, min=0, help="Images to evaluate (0: skip the evaluation)."
    ),
    prompt: str = typer.Option(DEFAULT_PROMPT, help="Zero-shot prompt template."),
) -> None:
    """Train an open_clip model with a small custom config, save it as a standard open_clip
    checkpoint, and measure its zero-shot concept ranking on the world."""
    from cocu.curation.core.errors import CocuError
    from cocu.training.clip import train_teacher

    shards: list[str] = data
    if len(data) == 1 and (Path(data[0]) / "world.json").is_file():
        shards = [str(Path(data[0]) / "teacher")]
        eval_world = eval_world or Path(data[0])
    try:
        cfg = TeacherConfig(
            model_config=model_config,
            samples=samples,
            deadline_minutes=deadline_minutes or None,
            curve_every=(curve_every or None) if eval_world and eval_images else None,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            workers=workers,
            threads=threads or None,
            seed=seed,
            device=device,
            eval_world=eval_world if eval_images else None,
            eval_split=eval_split,
            eval_images=eval_images,
            prompt=prompt,
        )
        weights = train_teacher(shards, out, cfg)
    except (CocuError, ValueError, FloatingPointError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
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
