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

from cocu.benchmarks.results import group_miou, run_label  # noqa: E402
from cocu.curation.core.shards import atomic_path  # noqa: E402

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


def load_runs(out: Path, modes: Sequence[str], seed: int) -> dict[str, dict[str, Any]]:
    """The metrics of each mode's first-seed run (the per-class tables and figures show one seed)."""
    return {mode: _load(out / "runs" / run_label(mode, seed) / "eval" / "metrics.json") for mode in modes}


def class_groups(world: dict[str, Any]) -> dict[str, list[str]]:
    return {"things": world["things"], "stuff": world["stuff"]}


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
            f"| {RUN_TITLES.get(mode, mode)} | `{mode}` | **{_num(m['miou'])}** | "
            f"{_num(group_miou(m, groups['things']))} | "
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
            f"| {name} | {_pct(p['precision'])} | {_pct(p['present_recall'])} | {_pct(p['omitted_recall'])} | "
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


def findings(results: dict[str, Any], quality: dict[str, Any], world: dict[str, Any]) -> list[str]:
    """Plain sentences that read the numbers; what they say depends only on this run's figures."""
    out = []
    runs, paired = results["runs"], results["paired"]
    base = runs.get("caption", {}).get("mean", {}).get("miou")
    for mode in ("cocu-cluster", "cocu-top", "release", "oracle"):
        if mode not in runs or base is None:
            continue
        run, difference = runs[mode], paired.get(f"{mode} - caption")
        sentence = (
            f"- `{mode}` scores {_spread(run, 'miou')} mIoU ({len(run['seeds'])} seed(s)) against "
            f"{_spread(runs['caption'], 'miou')} for captions only"
        )
        if difference:
            low, high = difference["ci95"]
            sentence += f": {difference['mean']:+.1f} points, paired 95 % interval [{low:+.1f}, {high:+.1f}]"
            if difference["includes_zero"]:
                sentence += " **which includes zero: no difference is shown**"
        closed = results["oracle_gap_closed"].get(mode)
        if closed is not None and closed > 1:
            sentence += "; it scores above the oracle, so here the oracle is no ceiling and the gap no scale"
        elif closed is not None:
            sentence += f"; it closes {100 * closed:.0f} % of the caption-to-oracle gap"
        out.append(sentence + ".")
    groups = class_groups(world)
    for group in ("things", "stuff"):
        values = ", ".join(f"`{mode}` {_spread(run, group)}" for mode, run in runs.items())
        out.append(f"- mIoU over the {len(groups[group])} {group} classes: {values}.")
    best_things = max((run["mean"]["things"] or 0.0) for run in runs.values()) if runs else 0.0
    if best_things < 5.0:
        included = ", the oracle's run included" if "oracle" in runs else ""
        out.append(
            f"- No run learned to segment things (at most {best_things:.1f} mIoU{included}): at this "
            "training length the differences between runs are differences on stuff."
        )
    teacher = results["teacher"]
    if teacher.get("thing_recall") is not None:
        out.append(
            f"- The teacher CLIP finds {_pct(teacher['stuff_recall'])} % of the stuff and "
            f"{_pct(teacher['thing_recall'])} % of the things an image shows (recall@|present|, chance "
            f"{_pct(teacher['chance_recall'])} %): curation can only add what its teacher sees."
        )
    ranking = quality["ranking"]
    k = quality["ks"][1] if len(quality["ks"]) > 1 else quality["ks"][0]
    at_k = {name: next(r for r in rows if r["k"] == k) for name, rows in ranking.items()}
    best = max(at_k, key=lambda n: at_k[n]["recall"])
    out.append(
        f"- Among the curators, **{best}** recovers the most caption-omitted concepts at k = {k} "
        f"(recall {_pct(at_k[best]['recall'])}, precision {_pct(at_k[best]['precision'])})."
    )
    return out


def _spread(run: dict[str, Any], key: str) -> str:
    mean, std = run["mean"][key], run["std"][key]
    if mean is None:
        return "-"
    return f"{mean:.1f}" if len(run["seeds"]) == 1 else f"{mean:.1f} ± {std:.1f}"


def seeds_table(results: dict[str, Any]) -> list[str]:
    lines = ["| run | seeds | mIoU | things | stuff | per seed (mIoU) |", "|---|---|---|---|---|---|"]
    for mode, run in results["runs"].items():
        per_seed = ", ".join(_num(v) for v in run["miou"])
        lines.append(
            f"| {RUN_TITLES.get(mode, mode)} | {len(run['seeds'])} | **{_spread(run, 'miou')}** | "
            f"{_spread(run, 'things')} | {_spread(run, 'stuff')} | {per_seed} |"
        )
    return lines


def paired_table(results: dict[str, Any]) -> list[str]:
    lines = ["| difference | mean (mIoU points) | paired 95 % interval | includes zero |", "|---|---|---|---|"]
    for name, d in results["paired"].items():
        low, high = d["ci95"]
        lines.append(
            f"| `{name}` | {d['mean']:+.2f} | [{low:+.2f}, {high:+.2f}] | {'yes' if d['includes_zero'] else 'no'} |"
        )
    return lines


def grouping_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| run | groups used per image | true labels: mIoU / things / stuff | nearest text: mIoU / things / stuff |",
        "|---|---|---|---|",
    ]
    for mode, g in results.get("grouping", {}).items():
        true, near = (
            " / ".join(_num(g[side][k]) for k in ("miou", "things", "stuff"))
            for side in ("true_labels", "nearest_text")
        )
        lines.append(f"| {RUN_TITLES.get(mode, mode)} | {g['groups_used_per_image']} | {true} | {near} |")
    return lines


def figure_curves(results: dict[str, Any], path: Path) -> None:
    """Where the budget goes: the teacher's zero-shot recall and GroupViT's mIoU against samples seen."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    curve = results["teacher"]["curve"]
    if curve:
        samples = [p["samples"] for p in curve]
        left.plot(samples, [100 * p["thing_recall"] for p in curve], marker="o", label="things")
        left.plot(samples, [100 * p["stuff_recall"] for p in curve], marker="o", label="stuff")
        chance = results["teacher"].get("chance_recall")
        if chance is not None:
            left.axhline(100 * chance, color="gray", linestyle=":", label="chance")
    left.set_xlabel("teacher samples seen")
    left.set_ylabel("zero-shot recall@|present| (%)")
    left.set_title("Teacher CLIP")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for label, points in results["curves"].items():
        samples = [p["samples"] for p in points]
        for key in ("miou", "things", "stuff"):
            right.plot(samples, [p[key] or 0.0 for p in points], marker="o", label=f"{label}: {key}")
    right.set_xlabel("GroupViT samples seen")
    right.set_ylabel("mIoU (%)")
    right.set_title("GroupViT on the val split")
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    _save(fig, path)


def teacher_section(results: dict[str, Any], teacher_folder: Path) -> list[str]:
    t = results["teacher"]
    lines = [
        f"`{t['model']}`, {t['source']}, trained for {t['samples']} samples (sha256 `{t['weights_sha256']}`). "
        f"Zero-shot over all class names on train images: things {_pct(t['thing_recall'])} %, stuff "
        f"{_pct(t['stuff_recall'])} % (recall@|present|; chance {_pct(t['chance_recall'])} %).",
    ]
    recipe = teacher_folder / "recipe.json"
    if recipe.is_file():
        made = json.loads(recipe.read_text())
        lines += ["", "How it was made (`make teacher` runs this):", "", "```", made["command"], "```"]
    return lines


def page_links(out: Path, labels: Sequence[str]) -> list[str]:
    """Links to the HTML pages of this run that exist: the curation gallery and one page per evaluation."""
    lines = []
    if (out / "gallery" / "index.html").exists():
        lines.append(
            "- Curation: [gallery of the curated shards](gallery/index.html) (filter by concept, added or "
            "named, right or wrong) and its [summary](gallery/summary.html)."
        )
    evaluations = [
        f"[{label}](runs/{label}/eval/index.html)"
        for label in labels
        if (out / "runs" / label / "eval" / "index.html").exists()
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
    results: dict[str, Any],
    examples: dict[str, Any] | None = None,
) -> Path:
    world = _load(out / "world" / "world.json")
    quality = _load(out / "quality.json")
    runs = load_runs(out, cfg.runs, cfg.seed)
    figures = out / "figures"
    classes = world["classes"]
    figure_per_class(runs, classes, figures / "per_class_iou.png")
    figure_curation(quality, figures / "curation.png")
    figure_curves(results, figures / "learning_curves.png")
    if examples:
        figure_examples(examples, classes, figures / "examples.png")
    omission = world["omission"]
    teacher_folder = out / "teacher" if cfg.retrain_teacher else cfg.shipped_teacher
    labels = [run_label(mode, seed) for mode in cfg.runs for seed in cfg.run_seeds(mode)]
    lines = [
        "# cocu benchmark: CoCu on the synthetic semantic-gap world",
        "",
        f"Preset `{preset}`, total wall time {total_seconds / 60:.1f} min on {platform.machine()} "
        f"({_cpu_count()} CPU threads){_resumed(stages)}. Every number below was measured in this run; "
        "`results.json` beside this file holds the same figures for programs.",
        "",
        "## Findings",
        "",
        *findings(results, quality, world),
        "",
        "## Pages to look at",
        "",
        *page_links(out, labels),
        "",
        "## Segmentation (zero-shot, synthetic val split)",
        "",
        f"{world['counts']['val']} val images, {len(classes)} classes ({len(world['things'])} things, "
        f"{len(world['stuff'])} stuff), no background. Identical GroupViT settings for every run ({cfg.train_steps} "
        f"steps of {cfg.train_batch} images, config `{cfg.train_config}`); only the concepts in the 3 prompts and the "
        f"seed differ. Seeds (model initialisation and data order): {cfg.seeds} for "
        f"{', '.join(f'`{m}`' for m in cfg.seeded_runs)}, one for the others; mean ± std over seeds.",
        "",
        *seeds_table(results),
        "",
        "Paired bootstrap over the val images (2,000 resamples, the same draw for both sides and every seed) of the "
        "difference in mean mIoU: the interval says how much the choice of val images leaves open; the seeds' "
        "spread is the ± above.",
        "",
        *paired_table(results),
        "",
        f"The first seed of each run in detail (seed {cfg.seed}):",
        "",
        *segmentation_table(runs, world),
        "",
        "![per-class IoU](figures/per_class_iou.png)",
        "",
        *(["![examples](figures/examples.png)", ""] if examples else []),
        "## Learning curves",
        "",
        "Left: the teacher's zero-shot recall of things and stuff against the samples it has seen (its training "
        "log). Right: GroupViT's val mIoU at periodic checkpoints of "
        f"{', '.join(f'`{m}`' for m in cfg.curve_runs)} (seed {cfg.seed}).",
        "",
        "![learning curves](figures/learning_curves.png)",
        "",
        "## Grouping or naming",
        "",
        "Zero-shot segmentation needs groups that follow the objects and group embeddings that name them. Each "
        "run's first seed, on the val split: every group labelled with the class most of its pixels truly are "
        "(*true labels*: the best any naming could do with these groups), and with its nearest class text (*nearest "
        "text*: the harness without its image-level prior; `benchmarks/grouping_bound.py`).",
        "",
        *grouping_table(results),
        "",
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
        *teacher_section(results, teacher_folder),
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
