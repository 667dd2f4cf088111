"""The model card of ``cocu-train export`` (its ``README.md``): what the run was, found beside the checkpoint.

Kept apart from the conversion (``export``): the card reads the fit's ``config.yaml`` and the ``cocu-eval seg``
records near the checkpoint, none of which the transformers model needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def training_facts(checkpoint: Path) -> dict[str, Any]:
    """Steps from the checkpoint; recipe, data and text mode from the fit's config.yaml beside it (when found)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    facts: dict[str, Any] = {"steps": ckpt.get("global_step"), "epoch": ckpt.get("epoch")}
    hp = ckpt.get("hyper_parameters", {})
    facts["arch"] = hp.get("arch")
    found = _nearby(checkpoint, "config.yaml")
    if found:
        import yaml

        try:
            fit = yaml.safe_load(found[0].read_text()) or {}
        except (OSError, yaml.YAMLError):
            fit = {}
        data, trainer = fit.get("data") or {}, fit.get("trainer") or {}
        facts.update(
            fit_config=str(found[0]),
            shards=data.get("shards"),
            text_mode=data.get("text_mode"),
            batch_size=data.get("batch_size"),
            max_steps=trainer.get("max_steps"),
        )
    return facts


def evaluations_beside(checkpoint: Path, sha256: str) -> list[dict[str, Any]]:
    """The ``cocu-eval seg`` records of this checkpoint (same sha256) in the fit's folders near it."""
    from cocu.curation.core.outputs import is_eval_record

    found = []
    for path in _nearby(checkpoint, "metrics.json"):
        if not is_eval_record(path):
            continue
        record = json.loads(path.read_text())
        if record.get("checkpoint", {}).get("sha256") != sha256:
            continue
        preset = record.get("preset", {})
        found.append(
            {
                "dataset": record.get("dataset"),
                "preset": preset.get("name"),
                "pamr": preset.get("pamr", False),
                "images": record.get("images"),
                "split_size": record.get("split_size"),
                "miou": record.get("miou"),
                "pixel_accuracy": record.get("pixel_accuracy"),
                "file": str(path),
            }
        )
    return found


def _nearby(checkpoint: Path, name: str) -> list[Path]:
    """Files called ``name`` in the checkpoint's folder, its parent (the fit root) and up to three levels below."""
    roots = [checkpoint.resolve().parent, checkpoint.resolve().parent.parent]
    seen: dict[Path, None] = {}
    for root in roots:
        for depth in range(4):
            for path in sorted(root.glob("/".join(["*"] * depth + [name]))):
                seen.setdefault(path, None)
    return sorted(seen, key=lambda p: p.stat().st_mtime, reverse=True)


def model_card(record: dict[str, Any]) -> str:
    """The README.md of the exported folder."""
    model = record["model"]
    vision, text = model["vision"], model["text"]
    lines = [
        "---",
        "library_name: transformers",
        "tags: [groupvit, zero-shot-segmentation, cocu]",
        "---",
        "",
        f"# GroupViT ({model.get('name', 'custom')}) trained with cocu",
        "",
        "Exported by `cocu-train export --format transformers` from "
        f"`{Path(record['checkpoint']['path']).name}` (sha256 `{record['checkpoint']['sha256'][:12]}`), "
        f"transformers {record['transformers']}.",
        "",
        "## Training",
        "",
        "| what | value |",
        "|---|---|",
        f"| recipe (model config) | {record.get('arch') or model.get('name')} |",
        f"| data (shards) | {record.get('shards') or 'not recorded'} |",
        f"| text mode | {record.get('text_mode') or 'not recorded'} |",
        f"| steps | {record.get('steps')} (max_steps {record.get('max_steps', 'not recorded')}) |",
        f"| batch size per device | {record.get('batch_size') or 'not recorded'} |",
        f"| image size / patch | {vision['image_size']} / {vision['patch_size']} |",
        f"| stages | depths {vision['depths']}, group tokens {vision['num_group_tokens']}, "
        f"output groups {vision['num_output_groups']} |",
        f"| text tower | {text['layers']} layers, width {text['width']}, context {text['context_length']} |",
        "",
        "## Evaluation results found beside the checkpoint",
        "",
    ]
    if record["evaluations"]:
        lines += ["| dataset | preset | PAMR | images | mIoU | pixel acc. |", "|---|---|---|---|---|---|"]
        for e in record["evaluations"]:
            lines.append(
                f"| {e['dataset']} | {e['preset']} | {'on' if e['pamr'] else 'off'} | {e['images']} / "
                f"{e['split_size']} | {e['miou']} | {e['pixel_accuracy']} |"
            )
    else:
        lines.append("None: no `cocu-eval seg` metrics.json of this checkpoint lies in the fit's folders.")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoProcessor, GroupViTModel",
        "model = GroupViTModel.from_pretrained(FOLDER)",
        "processor = AutoProcessor.from_pretrained(FOLDER)",
        'inputs = processor(text=["a photo of a dog."], images=image, return_tensors="pt", padding="max_length")',
        "seg = model(**inputs, output_segmentation=True).segmentation_logits",
        "```",
        "",
        "cocu's own evaluation (`cocu-eval seg`, `cocu-eval predict`) adds sliding windows, top-k class masking and "
        "the background rule on top of these logits.",
    ]
    return "\n".join(lines) + "\n"
