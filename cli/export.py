"""`cocu-train export`: a `cocu-train fit` checkpoint as a folder another library loads (transformers' GroupViT)."""

from __future__ import annotations

from pathlib import Path

import typer

from cocu.cli.errors import one_line_errors
from cocu.cli.options import config_options
from cocu.training.export import ExportConfig

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
@config_options(ExportConfig)
def export(
    config: ExportConfig,
    checkpoint: Path = typer.Option(..., exists=True, dir_okay=False, help="A checkpoint written by `cocu-train fit`."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the model, tokenizer, processor and README.md."),
) -> None:
    """Write OUT so that transformers.GroupViTModel.from_pretrained(OUT) and AutoProcessor/CLIPTokenizer load it,
    with a model card (recipe, data, text mode, steps, the evaluation results found beside the checkpoint)."""
    from cocu.curation.core.errors import CocuError
    from cocu.training.export import export_checkpoint

    with one_line_errors(CocuError, FileNotFoundError):
        record = export_checkpoint(checkpoint, out, config)
    typer.echo(
        f"exported {record['model'].get('name')} ({record['steps']} steps) as transformers {record['transformers']} "
        f"GroupViTModel, {len(record['evaluations'])} evaluation(s) in its card | {out} | "
        f"load with: GroupViTModel.from_pretrained('{out}')"
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point for `cocu-train export ...` (argv without the `cocu-train export` prefix)."""
    app(args=argv, prog_name="cocu-train export")


if __name__ == "__main__":
    main()
