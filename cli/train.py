"""`cocu-train`: `fit` pretrains GroupViT on (curated) Parquet shards (``training/fit.py``, LightningCLI); `clip`
trains the teacher CLIP (``cli/clip.py``); `export` writes a checkpoint as a transformers GroupViT folder
(``cli/export.py``).

    cocu-train fit --config synthetic --data.shards WORLD/train --data.text_mode caption
    cocu-train fit --config synthetic ... --ckpt_path last     # resume after a kill
    cocu-train export --checkpoint runs/x/checkpoints/last.ckpt --format transformers --out hf/x
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Entry point of `cocu-train`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "clip":
        from cocu.cli.clip import main as clip_main

        clip_main(args[1:])
        return
    if args and args[0] == "export":
        from cocu.cli.export import main as export_main

        export_main(args[1:])
        return
    from cocu.training.fit import fit

    fit(argv)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
