"""The benchmark report's Markdown tables, each from the figures of one run (``results.json``, ``quality.json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cocu.benchmarks.results import group_miou

RUN_TITLES = {
    "caption": "caption (GroupViT baseline)",
    "cocu-cluster": "CoCu, cluster-guided",
    "cocu-top": "CoCu, top-3 (cocu formula)",
    "oracle": "oracle (K of the true concepts, drawn)",
    "oracle-all": "oracle-all (every true concept above the area threshold)",
    "oracle-top3": "oracle-top3 (the 3 largest true concepts)",
    "release": "CoCu as released (release formula, top-3)",
}


def pct(fraction: float | None) -> str:
    """A fraction (curation and teacher figures) as a percentage."""
    return "-" if fraction is None else f"{100 * fraction:.1f}"


def num(percent: float | None) -> str:
    """A figure already in percent (segmentation metrics, as mmseg and GroupViT report them)."""
    return "-" if percent is None else f"{percent:.1f}"


def spread(run: dict[str, Any], key: str) -> str:
    mean, std = run["mean"][key], run["std"][key]
    if mean is None:
        return "-"
    return f"{mean:.1f}" if len(run["seeds"]) == 1 else f"{mean:.1f} ± {std:.1f}"


def class_groups(world: dict[str, Any]) -> dict[str, list[str]]:
    return {"things": world["things"], "stuff": world["stuff"]}


def segmentation_table(runs: dict[str, dict[str, Any]], world: dict[str, Any]) -> list[str]:
    groups = class_groups(world)
    lines = [
        "| run | text mode | mIoU | mIoU things | mIoU stuff | pixel acc. | images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, m in runs.items():
        lines.append(
            f"| {RUN_TITLES.get(mode, mode)} | `{mode}` | **{num(m['miou'])}** | "
            f"{num(group_miou(m, groups['things']))} | "
            f"{num(group_miou(m, groups['stuff']))} | {num(m['pixel_accuracy'])} | {m['images_per_second']:.1f} |"
        )
    return lines


def per_class_table(runs: dict[str, dict[str, Any]], classes: Sequence[str]) -> list[str]:
    lines = ["| class | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for name in classes:
        lines.append(f"| {name} | " + " | ".join(num(m["per_class_iou"].get(name)) for m in runs.values()) + " |")
    return lines


def curation_tables(quality: dict[str, Any]) -> list[str]:
    ks = quality["ks"]
    head = "| curator | " + " | ".join(f"P@{k} | R@{k}" for k in ks) + " |"
    lines = [head, "|---|" + "---|---|" * len(ks)]
    for name, rows in quality["ranking"].items():
        lines.append(f"| {name} | " + " | ".join(f"{pct(r['precision'])} | {pct(r['recall'])}" for r in rows) + " |")
    lines += [
        "",
        "| text mode (3 prompts) | precision | recall of present | recall of omitted | concepts / image |",
        "|---|---|---|---|---|",
    ]
    for name, p in quality["prompts"].items():
        lines.append(
            f"| {name} | {pct(p['precision'])} | {pct(p['present_recall'])} | {pct(p['omitted_recall'])} | "
            f"{p['per_image']:.2f} |"
        )
    if "departures" in quality:
        lines += ["", *departures_table(quality["departures"])]
    return lines


def departures_table(departures: dict[str, Any]) -> list[str]:
    """``release``, plus one of cocu's departures at a time, then ``cocu``: recall of omitted concepts (its change)."""
    ks = departures["ks"]
    rows = departures["rows"]
    base = {r["k"]: r["recall"] for r in rows[0]["ranking"]}
    lines = [
        "| formula | what changes | " + " | ".join(f"R@{k} (change)" for k in ks) + " |",
        "|---|---|" + "---|" * len(ks),
    ]
    for row in rows:
        cells = [f"{pct(r['recall'])} ({100 * (r['recall'] - base[r['k']]):+.1f})" for r in row["ranking"]]
        lines.append(f"| `{row['name']}` | {row['what']} | " + " | ".join(cells) + " |")
    kmeans = departures.get("kmeans")
    floor = departures.get("local_floor")
    if floor is not None:
        lines += ["", f"Local-term floor of this bank (5th percentile of its named pairs' t_c·v): {floor:.4f}."]
    if kmeans:
        lines.append(
            f"k-means inertia against scikit-learn `KMeans(n_init=10)` on {kmeans['archives']} whole "
            f"archives: {kmeans['ratio']:.4f}x."
        )
    return lines


def throughput_table(stages: Sequence[Any]) -> list[str]:
    lines = ["| stage | items | wall time (s) | items/s |", "|---|---|---|---|"]
    for s in stages:
        rate = f"{s.rate:.1f} {s.unit}/s" if s.rate else "-"
        lines.append(f"| {s.name} | {s.items if s.items else '-'} | {s.seconds:.1f} | {rate} |")
    return lines


def seeds_table(results: dict[str, Any]) -> list[str]:
    lines = ["| run | seeds | mIoU | things | stuff | per seed (mIoU) |", "|---|---|---|---|---|---|"]
    for mode, run in results["runs"].items():
        per_seed = ", ".join(num(v) for v in run["miou"])
        lines.append(
            f"| {RUN_TITLES.get(mode, mode)} | {len(run['seeds'])} | **{spread(run, 'miou')}** | "
            f"{spread(run, 'things')} | {spread(run, 'stuff')} | {per_seed} |"
        )
    return lines


def _interval(d: dict[str, Any]) -> str:
    low, high = d["ci95"]
    return f"[{low:+.2f}, {high:+.2f}]"


def _zero(d: dict[str, Any]) -> str:
    return "**yes: no difference shown**" if d["includes_zero"] else "no"


def paired_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| difference | mean (mIoU points) | 95 % interval (seeds and images) | includes zero | images only "
        "| things: mean | things: 95 % interval | things: includes zero |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, d in results["paired"].items():
        images_only = d.get("images_only_ci95")
        alone = f"[{images_only[0]:+.2f}, {images_only[1]:+.2f}]" if images_only else "-"
        things = d.get("things")
        thing_cells = f"{things['mean']:+.2f} | {_interval(things)} | {_zero(things)}" if things else "- | - | -"
        lines.append(f"| `{name}` | {d['mean']:+.2f} | {_interval(d)} | {_zero(d)} | {alone} | {thing_cells} |")
    return lines


def grouping_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| run | groups used per image | true labels: mIoU / things / stuff | nearest text: mIoU / things / stuff "
        "| naming efficiency | nearest present text: mIoU / things / stuff | nearest text, BatchNorm on groups: "
        "mIoU / things / stuff | group cosine | text cosine: two things / confusable pair / two stuff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def three(side: dict[str, Any] | None) -> str:
        return " / ".join(num(side[k]) for k in ("miou", "things", "stuff")) if side else "-"

    def cos(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for mode, g in results.get("grouping", {}).items():
        efficiency = g.get("naming_efficiency")
        text = g.get("text_cosine")
        texts = " / ".join(cos(text[k]) for k in ("things", "confusable", "stuff")) if text else "-"
        lines.append(
            f"| {RUN_TITLES.get(mode, mode)} | {g['groups_used_per_image']} | {three(g['true_labels'])} | "
            f"{three(g['nearest_text'])} | {'-' if efficiency is None else f'{efficiency:.2f}'} | "
            f"{three(g.get('nearest_present_text'))} | {three(g.get('nearest_text_bn'))} | "
            f"{cos(g.get('group_cosine'))} | {texts} |"
        )
    return lines


def teacher_section(results: dict[str, Any], teacher_folder: Path) -> list[str]:
    t = results["teacher"]
    lines = [
        f"`{t['model']}`, {t['source']}, trained for {t['samples']} samples (sha256 `{t['weights_sha256']}`). "
        f"Zero-shot over all class names on train images: things {pct(t['thing_recall'])} %, stuff "
        f"{pct(t['stuff_recall'])} % (recall@|present|; chance {pct(t['chance_recall'])} %).",
    ]
    recipe = teacher_folder / "recipe.json"
    if recipe.is_file():
        made = json.loads(recipe.read_text())
        lines += ["", "How it was made (`make teacher` runs this):", "", "```", made["command"], "```"]
    return lines
