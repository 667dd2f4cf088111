"""The benchmark report: Markdown tables and PNG figures, from the records of one run.

Nothing here computes a result: it reads ``world.json``, ``teacher.json``, ``quality.json`` and each
run's ``metrics.json`` (plus a few predictions for the example figure) and lays them out.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cocu.curation.shards import atomic_path  # noqa: E402

RUN_TITLES = {
    "caption": "caption (GroupViT baseline)",
    "cocu-cluster": "CoCu, cluster-guided",
    "cocu-top": "CoCu, top-3 (cocu formula)",
    "oracle": "oracle (true concepts)",
    "release": "CoCu as released (release formula, top-3)",
}


def _pct(fraction: float | None) -> str:
    """A fraction (curation and teacher figures) as a percentage."""
    return "-" if fraction is None else f"{100 * fraction:.1f}"


def _num(percent: float | None) -> str:
    """A figure already in percent (segmentation metrics, as mmseg and GroupViT report them)."""
    return "-" if percent is None else f"{percent:.1f}"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def load_runs(out: Path, modes: Sequence[str]) -> dict[str, dict[str, Any]]:
    return {mode: _load(out / "runs" / mode / "eval" / "metrics.json") for mode in modes}


def class_groups(world: dict[str, Any]) -> dict[str, list[str]]:
    return {"things": world["things"], "stuff": world["stuff"]}


def group_miou(metrics: dict[str, Any], names: Sequence[str]) -> float | None:
    values = [metrics["per_class_iou"][n] for n in names if metrics["per_class_iou"].get(n) is not None]
    return float(np.mean(values)) if values else None


# ------------------------------------------------------------------------------------------ figures


def figure_per_class(runs: dict[str, dict[str, Any]], classes: Sequence[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(max(12, 0.32 * len(classes)), 4.2), dpi=110)
    width = 0.8 / max(len(runs), 1)
    x = np.arange(len(classes))
    for i, (mode, metrics) in enumerate(runs.items()):
        values = [metrics["per_class_iou"].get(c) or 0.0 for c in classes]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, label=RUN_TITLES.get(mode, mode))
    ax.set_xticks(x, classes, rotation=70, fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_title("Per-class IoU on the synthetic val split")
    ax.legend(fontsize=8, ncol=len(runs))
    ax.margins(x=0.005)
    _save(fig, path)


def figure_curation(quality: dict[str, Any], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2), dpi=110)
    ks = quality["ks"]
    for name, rows in quality["ranking"].items():
        left.plot([r["recall"] for r in rows], [r["precision"] for r in rows], marker="o", label=name)
        for r in rows:
            left.annotate(
                f"@{r['k']}", (r["recall"], r["precision"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    left.set_xlabel("recall of omitted concepts")
    left.set_ylabel("precision of new concepts")
    left.set_title(f"Ranked curation, new concepts at k = {', '.join(map(str, ks))}")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    names = list(quality["prompts"])
    values = np.array(
        [[quality["prompts"][n][m] for m in ("precision", "present_recall", "omitted_recall")] for n in names]
    )
    y = np.arange(len(names))
    for j, label in enumerate(("precision", "recall of present", "recall of omitted")):
        right.barh(y + (j - 1) * 0.27, values[:, j], 0.27, label=label)
    right.set_yticks(y, names, fontsize=8)
    right.invert_yaxis()
    right.set_xlim(0, 1)
    right.set_title("The 3 concepts each text mode feeds the model")
    right.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def figure_examples(examples: dict[str, Any], classes: Sequence[str], path: Path) -> None:
    from cocu.evaluation.visualize import colorize, palette

    images, labels, preds = examples["images"], examples["labels"], examples["predictions"]
    columns = ["image", "ground truth", *[RUN_TITLES.get(m, m) for m in preds]]
    colours = palette(len(classes))
    fig, axes = plt.subplots(
        len(images), len(columns), figsize=(1.9 * len(columns), 1.9 * len(images) + 0.4), dpi=110, squeeze=False
    )
    for row, (image, label) in enumerate(zip(images, labels)):
        panels = [image, colorize(label, colours, 255)] + [colorize(p[row], colours, 255) for p in preds.values()]
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(panel, interpolation="nearest")
            ax.axis("off")
            if row == 0:
                ax.set_title(columns[col], fontsize=7)
            if col == 1:
                shown = [classes[c] for c in np.unique(label) if c < len(classes)]
                ax.text(0, label.shape[0] + 2, ", ".join(shown), fontsize=5, va="top")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# ------------------------------------------------------------------------------------------ tables


def segmentation_table(runs: dict[str, dict[str, Any]], world: dict[str, Any]) -> list[str]:
    groups = class_groups(world)
    lines = [
        "| run | text mode | mIoU | mIoU things | mIoU stuff | pixel acc. | images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, m in runs.items():
        lines.append(
            f"| {RUN_TITLES.get(mode, mode)} | `{mode}` | **{_num(m['miou'])}** | {_num(group_miou(m, groups['things']))} | "
            f"{_num(group_miou(m, groups['stuff']))} | {_num(m['pixel_accuracy'])} | {m['images_per_second']:.1f} |"
        )
    return lines


def per_class_table(runs: dict[str, dict[str, Any]], classes: Sequence[str]) -> list[str]:
    lines = ["| class | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for name in classes:
        lines.append(f"| {name} | " + " | ".join(_num(m["per_class_iou"].get(name)) for m in runs.values()) + " |")
    return lines


def curation_tables(quality: dict[str, Any]) -> list[str]:
    ks = quality["ks"]
    head = "| curator | " + " | ".join(f"P@{k} | R@{k}" for k in ks) + " |"
    lines = [head, "|---|" + "---|---|" * len(ks)]
    for name, rows in quality["ranking"].items():
        lines.append(f"| {name} | " + " | ".join(f"{_pct(r['precision'])} | {_pct(r['recall'])}" for r in rows) + " |")
    lines += [
        "",
        "| text mode (3 prompts) | precision | recall of present | recall of omitted | concepts / image |",
        "|---|---|---|---|---|",
    ]
    for name, p in quality["prompts"].items():
        lines.append(
            f"| {name} | {_pct(p['precision'])} | {_pct(p['present_recall'])} | {_pct(p['omitted_recall'])} | {p['per_image']:.2f} |"
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
        cells = [f"{_pct(r['recall'])} ({100 * (r['recall'] - base[r['k']]):+.1f})" for r in row["ranking"]]
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


def _resumed(stages: Sequence[Any]) -> str:
    earlier = [s.name for s in stages if s.earlier]
    return f", after resuming: {', '.join(earlier)} ran in an earlier invocation" if earlier else ""


def throughput_table(stages: Sequence[Any]) -> list[str]:
    lines = ["| stage | items | wall time (s) | items/s |", "|---|---|---|---|"]
    for s in stages:
        rate = f"{s.rate:.1f} {s.unit}/s" if s.rate else "-"
        lines.append(f"| {s.name} | {s.items if s.items else '-'} | {s.seconds:.1f} | {rate} |")
    return lines


def findings(
    runs: dict[str, dict[str, Any]],
    quality: dict[str, Any],
    world: dict[str, Any] | None = None,
    teacher_zero_shot: dict[str, Any] | None = None,
) -> list[str]:
    """Plain sentences that read the numbers; what they say depends only on this run's figures."""
    out = []
    base = runs.get("caption", {}).get("miou")
    oracle = runs.get("oracle", {}).get("miou")
    for mode in ("cocu-cluster", "cocu-top", "release"):
        if mode not in runs or base is None:
            continue
        value = runs[mode]["miou"]
        sentence = (
            f"- `{mode}` scores {value:.1f} mIoU against {base:.1f} for the caption-only baseline ({value - base:+.1f})"
        )
        if oracle is not None and oracle > base:
            sentence += f"; the oracle scores {oracle:.1f}, so CoCu closes {100 * (value - base) / (oracle - base):.0f}% of the baseline-to-oracle gap"
        out.append(sentence + ".")
    if world is not None and runs:
        out += _group_findings(runs, world)
    if teacher_zero_shot:
        z = teacher_zero_shot
        out.append(
            f"- The teacher CLIP finds {_pct(z['stuff_recall'])}% of the stuff and {_pct(z['thing_recall'])}% of the "
            f"things an image shows (recall@|present|, chance {_pct(z['chance_recall'])}%): curation can only add "
            "what its teacher sees."
        )
    ranking = quality["ranking"]
    k = quality["ks"][1] if len(quality["ks"]) > 1 else quality["ks"][0]
    at_k = {name: next(r for r in rows if r["k"] == k) for name, rows in ranking.items()}
    best = max(at_k, key=lambda n: at_k[n]["recall"])
    out.append(
        f"- Among the curators, **{best}** recovers the most caption-omitted concepts at k = {k} "
        f"(recall {_pct(at_k[best]['recall'])}, precision {_pct(at_k[best]['precision'])})."
    )
    out.append(
        "- One seed per run: the run-to-run spread was not measured, so read differences of a point or two with care."
    )
    return out


def _group_findings(runs: dict[str, dict[str, Any]], world: dict[str, Any]) -> list[str]:
    """Where the differences come from: the things, the stuff, or both."""
    groups = class_groups(world)
    miou = {mode: {g: group_miou(m, names) for g, names in groups.items()} for mode, m in runs.items()}
    out = []
    for group in ("stuff", "things"):
        values = ", ".join(f"`{mode}` {_num(v[group])}" for mode, v in miou.items())
        out.append(f"- mIoU over the {len(groups[group])} {group} classes: {values}.")
    best_things = max((v["things"] or 0.0) for v in miou.values())
    if best_things < 5.0:
        included = ", the oracle's run included" if "oracle" in runs else ""
        out.append(
            f"- No run learned to segment things (at most {best_things:.1f} mIoU{included}): at this "
            "training length the differences between runs are differences on stuff."
        )
    return out


def page_links(out: Path, modes: Sequence[str]) -> list[str]:
    """Links to the HTML pages of this run that exist: the curation gallery and one page per evaluation."""
    lines = []
    if (out / "gallery" / "index.html").exists():
        lines.append(
            "- Curation: [gallery of the curated shards](gallery/index.html) (filter by concept, added or "
            "named, right or wrong) and its [summary](gallery/summary.html)."
        )
    evaluations = [
        f"[{RUN_TITLES.get(m, m)}](runs/{m}/eval/index.html)"
        for m in modes
        if (out / "runs" / m / "eval" / "index.html").exists()
    ]
    if evaluations:
        lines.append(f"- Evaluation pages (metrics, per-class IoU, overlays): {', '.join(evaluations)}.")
    return lines


def write_benchmark_report(
    out: Path,
    cfg: Any,
    preset: str,
    stages: Sequence[Any],
    total_seconds: float,
    examples: dict[str, Any] | None = None,
) -> Path:
    world = _load(out / "world" / "world.json")
    teacher = _load(out / "teacher" / "teacher.json")
    quality = _load(out / "quality.json")
    runs = load_runs(out, cfg.runs)
    figures = out / "figures"
    classes = world["classes"]
    figure_per_class(runs, classes, figures / "per_class_iou.png")
    figure_curation(quality, figures / "curation.png")
    if examples:
        figure_examples(examples, classes, figures / "examples.png")
    omission = world["omission"]
    zs = teacher.get("zero_shot", {})
    training = teacher.get("training", {})
    lines = [
        "# cocu benchmark: CoCu on the synthetic semantic-gap world",
        "",
        f"Preset `{preset}`, total wall time {total_seconds / 60:.1f} min on {platform.machine()} "
        f"({_cpu_count()} CPU threads){_resumed(stages)}. Every number below was measured in this run.",
        "",
        "## Findings",
        "",
        *findings(runs, quality, world, zs),
        "",
        "## Pages to look at",
        "",
        *page_links(out, cfg.runs),
        "",
        "## Segmentation (zero-shot, synthetic val split)",
        "",
        f"{world['counts']['val']} val images, {len(classes)} classes ({len(world['things'])} things, {len(world['stuff'])} stuff), "
        f"no background. Identical GroupViT settings and seeds for every run ({cfg.train_steps} steps of {cfg.train_batch} "
        f"images, config `{cfg.train_config}`); only the concepts in the 3 prompts differ.",
        "",
        *segmentation_table(runs, world),
        "",
        "![per-class IoU](figures/per_class_iou.png)",
        "",
        *(["![examples](figures/examples.png)", ""] if examples else []),
        "## Curation quality (against the world's truth)",
        "",
        f"{quality['images']} train images. A caption names {omission['named_per_image']} of the "
        f"{omission['present_per_image']} concepts an image shows (omitted share {_pct(omission['measured_train'])}%). "
        "Ranked curators are scored on the concepts they add beyond the caption: precision = share of those that the "
        "image shows, recall = share of the caption-omitted concepts they find. Micro-averaged over images.",
        "",
        *curation_tables(quality),
        "",
        "![curation](figures/curation.png)",
        "",
        "## Teacher CLIP",
        "",
        f"`{teacher['model']}` trained on the teacher split: {training.get('samples', '-')} samples in "
        f"{training.get('seconds', '-')} s ({training.get('samples_per_second', '-')} samples/s). Zero-shot on "
        f"{zs.get('images', '-')} train images over all {zs.get('classes', '-')} class names: recall@|present| "
        f"{_pct(zs.get('recall_at_present'))} (chance {_pct(zs.get('chance_recall'))}), things {_pct(zs.get('thing_recall'))}, "
        f"stuff {_pct(zs.get('stuff_recall'))}, salient top-1 {_pct(zs.get('salient_top1'))}, mAP {_pct(zs.get('mean_ap'))}.",
        "",
        "## Throughput",
        "",
        f"Wall time of each stage. The GroupViT runs trained {cfg.parallel_runs} at a time, one torch "
        "thread each, so their rates are per run, not per machine.",
        "",
        *throughput_table(stages),
        "",
        "## Per-class IoU",
        "",
        *per_class_table(runs, classes),
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(asdict(cfg), indent=2, default=str),
        "```",
        "",
    ]
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines))
    return report


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1
