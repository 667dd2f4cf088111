"""The benchmark report (``report.md``): findings, links, every table and figure, from the records of one run.

Nothing here computes a result: it reads ``world.json``, ``teacher.json``, ``quality.json`` and each
run's ``metrics.json`` (plus a few predictions for the example figure) and lays them out.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cocu.benchmarks.report.figures import figure_curation, figure_curves, figure_examples, figure_per_class
from cocu.benchmarks.report.tables import (
    class_groups,
    curation_tables,
    grouping_table,
    paired_table,
    pct,
    per_class_table,
    seeds_table,
    segmentation_table,
    spread,
    teacher_section,
    throughput_table,
)
from cocu.benchmarks.results import run_label
from cocu.curation.core.shards import atomic_path


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def load_runs(out: Path, modes: Sequence[str], seed: int) -> dict[str, dict[str, Any]]:
    """The metrics of each mode's first-seed run (the per-class tables and figures show one seed)."""
    return {mode: _load(out / "runs" / run_label(mode, seed) / "eval" / "metrics.json") for mode in modes}


CURATED_MODES = ("cocu-cluster", "cocu-top", "release")


def best_curated_mode(runs: dict[str, Any]) -> str | None:
    """The CoCu run the benchmark's claim rests on: the most seeds first, then the highest mean mIoU."""
    present = [mode for mode in CURATED_MODES if mode in runs]
    return max(present, key=lambda m: (len(runs[m]["seeds"]), runs[m]["mean"]["miou"]), default=None)


def what_it_shows(results: dict[str, Any]) -> str | None:
    """The run read in one sentence: where the best CoCu mode's gain lies, and whether the oracle is a ceiling."""
    runs, paired = results["runs"], results["paired"]
    mode = best_curated_mode(runs)
    difference = paired.get(f"{mode} - caption") if mode else None
    if mode is None or difference is None or "caption" not in runs:
        return None
    stuff_gain = runs[mode]["mean"]["stuff"] - runs["caption"]["mean"]["stuff"]
    overall = "clear of zero" if not difference["includes_zero"] else "**including zero**"
    sentence = (
        f"- **What this run shows**: `{mode}` gains {difference['mean']:+.1f} mIoU over captions (interval {overall}), "
        f"{stuff_gain:+.1f} points on stuff"
    )
    things = difference.get("things")
    if things:
        shown = "no gain is shown" if things["includes_zero"] else f"{things['mean']:+.1f}, interval clear of zero"
        sentence += f"; on things {shown}"
    above = [m for m, closed in results["oracle_gap_closed"].items() if closed > 1]
    if above:
        names = ", ".join(f"`{m}`" for m in above)
        sentence += f"; `oracle-all` is no ceiling here ({names} score above it)"
    return sentence + "."


def findings(results: dict[str, Any], quality: dict[str, Any], world: dict[str, Any]) -> list[str]:
    """Plain sentences that read the numbers; what they say depends only on this run's figures."""
    summary = what_it_shows(results)
    out = [summary] if summary else []
    runs, paired = results["runs"], results["paired"]
    base = runs.get("caption", {}).get("mean", {}).get("miou")
    for mode in (*CURATED_MODES, "oracle-top3", "oracle-all", "oracle"):
        if mode not in runs or base is None:
            continue
        run, difference = runs[mode], paired.get(f"{mode} - caption")
        sentence = (
            f"- `{mode}` scores {spread(run, 'miou')} mIoU ({len(run['seeds'])} seed(s)) against "
            f"{spread(runs['caption'], 'miou')} for captions only"
        )
        if difference:
            low, high = difference["ci95"]
            sentence += (
                f": {difference['mean']:+.1f} points, 95 % interval over seeds and val images [{low:+.1f}, {high:+.1f}]"
            )
            if difference["includes_zero"]:
                sentence += " **which includes zero: no difference is shown**"
            if 1 in difference.get("seeds", []):
                sentence += " (one seed on a side: its seed spread is not in the interval)"
            things = difference.get("things")
            if things:
                t_low, t_high = things["ci95"]
                sentence += f"; on things {things['mean']:+.1f} [{t_low:+.1f}, {t_high:+.1f}]"
                if things["includes_zero"]:
                    sentence += " (includes zero)"
        closed = results["oracle_gap_closed"].get(mode)
        if closed is not None and closed > 1:
            sentence += "; it scores above `oracle-all`, so here that oracle is no ceiling and the gap no scale"
        elif closed is not None:
            sentence += f"; it closes {100 * closed:.0f} % of the caption-to-`oracle-all` gap"
        out.append(sentence + ".")
    groups = class_groups(world)
    for group in ("things", "stuff"):
        values = ", ".join(f"`{mode}` {spread(run, group)}" for mode, run in runs.items())
        out.append(f"- mIoU over the {len(groups[group])} {group} classes: {values}.")
    teacher = results["teacher"]
    if teacher.get("thing_recall") is not None:
        out.append(
            f"- The teacher CLIP finds {pct(teacher['stuff_recall'])} % of the stuff and "
            f"{pct(teacher['thing_recall'])} % of the things an image shows (recall@|present|, chance "
            f"{pct(teacher['chance_recall'])} %): curation can only add what its teacher sees."
        )
    ranking = quality["ranking"]
    k = quality["ks"][1] if len(quality["ks"]) > 1 else quality["ks"][0]
    at_k = {name: next(r for r in rows if r["k"] == k) for name, rows in ranking.items()}
    best = max(at_k, key=lambda n: at_k[n]["recall"])
    out.append(
        f"- Among the curators, **{best}** recovers the most caption-omitted concepts at k = {k} "
        f"(recall {pct(at_k[best]['recall'])}, precision {pct(at_k[best]['precision'])})."
    )
    return out


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
    if (out / "predict" / "index.html").exists():
        shown = len(_load(out / "predict" / "predictions.json")["pictures"])
        lines.append(
            f"- Pictures segmented as a user would (`cocu-eval predict`, {shown} val pictures, the world's class "
            "names): [label maps and overlays](predict/index.html)."
        )
    return lines


def _resumed(stages: Sequence[Any]) -> str:
    earlier = [s.name for s in stages if s.earlier]
    return f", after resuming: {', '.join(earlier)} ran in an earlier invocation" if earlier else ""


def _cpu_count() -> int:
    return os.cpu_count() or 1


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
        f"steps of {cfg.train_batch} images, config `{cfg.train_config}`); only the concepts in the prompts (3, but "
        "`oracle-all`: as many as the train truth's busiest image needs, its own concepts repeated in other templates "
        f"for the rest) and the seed differ. Seeds (model initialisation and data order): {cfg.seeds} for "
        f"{', '.join(f'`{m}`' for m in cfg.seeded_runs)}, one for the others; mean ± std over seeds.",
        "",
        *seeds_table(results),
        "",
        "Hierarchical bootstrap of the difference in mean mIoU (2,000 resamples; `benchmarks/paired.py`): each "
        "resample draws each side's seeds with replacement, then the val images (one draw for every seed of both "
        "sides, as all are scored on the same images), so the interval holds the seeds' spread and the val images'. "
        "A side with one seed adds no seed spread. *images only*: the interval of the val images alone.",
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
        "log). Right: GroupViT's val mIoU (solid) and things mIoU (dashed) at periodic checkpoints of "
        f"{', '.join(f'`{m}`' for m in cfg.curve_runs)} (seed {cfg.seed}).",
        "",
        "![learning curves](figures/learning_curves.png)",
        "",
        "## Grouping or naming",
        "",
        "Zero-shot segmentation needs groups that follow the objects and group embeddings that name them. Each "
        "run's first seed, on the val split: every group labelled with the class most of its pixels truly are "
        "(*true labels*: the best any naming could do with these groups), and with its nearest class text (*nearest "
        "text*: the harness without its image-level prior; `benchmarks/grouping_bound.py`). *Naming efficiency*: "
        "nearest-text mIoU over true-label mIoU. *Nearest present text*: the nearest text among the classes the "
        "image truly shows. *BatchNorm on groups*: nearest text after the image projector's BatchNorm statistics are "
        "re-estimated on the val images' group tokens (it learned them on image embeddings, the mean of the groups). "
        "*Group cosine*: the mean cosine between the embeddings of an image's used groups. *Text cosine*: between the "
        "class texts (the evaluation template) of two things, of a confusable pair, of two stuff classes; near 1, no "
        "group can be named right whatever it sees.",
        "",
        *grouping_table(results),
        "",
        "## Curation quality (against the world's truth)",
        "",
        f"{quality['images']} train images. A caption names {omission['named_per_image']} of the "
        f"{omission['present_per_image']} concepts an image shows (omitted share {pct(omission['measured_train'])}%). "
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
