"""`make benchmark` at a tiny size: every stage runs through the user's commands and the report is complete."""

import json
import re
import sys

import pytest

from cocu.benchmarks.benchmark import main
from cocu.benchmarks.presets import BENCH_PRESETS
from cocu.benchmarks.runner import Runner, claim_run_dir
from cocu.benchmarks.teacher.recipe import TeacherRecipe, make_teacher


@pytest.mark.slow
def test_tiny_benchmark_writes_every_section_and_resumes(tmp_path, capsys):
    out = tmp_path / "bench"
    teacher = make_teacher(
        BENCH_PRESETS["quick"].world,
        out / "world",
        tmp_path / "teacher",
        TeacherRecipe(samples=256, batch=64, curve_every=128, threads=1),
    )  # what `make teacher` does, for the quick world
    assert json.loads((teacher / "recipe.json").read_text())["command"].startswith("cocu-train clip WORLD/teacher")
    runs = ["caption", "cocu-cluster", "oracle-all"]
    args = ["--preset", "quick", "--out", str(out), "--runs", *runs, "--teacher", str(teacher)]
    report = main([*args, "--in-process"])
    text = report.read_text()
    for heading in (
        "## Findings",
        "## Segmentation",
        "## Learning curves",
        "## Curation quality",
        "## Teacher CLIP",
        "## Throughput",
        "## Per-class IoU",
        "## Settings",
    ):
        assert heading in text, heading
    for figure in ("per_class_iou.png", "curation.png", "examples.png", "learning_curves.png"):
        assert (out / "figures" / figure).stat().st_size > 1000
        assert f"figures/{figure}" in text
    segmentation = text.split("## Segmentation")[1].split("##")[0]
    assert re.search(r"\| caption \(GroupViT baseline\) \| 2 \| \*\*\d+\.\d ± \d+\.\d\*\*", segmentation)
    interval = r"\[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]"
    zero = r"(\*\*yes: no difference shown\*\*|no)"
    for difference in ("cocu-cluster - caption", "oracle-all - caption"):
        assert re.search(
            rf"\| `{difference}` \| [+-]\d+\.\d\d \| {interval} \| {zero} \| {interval} \| [+-]\d+\.\d\d \| "
            rf"{interval} \| {zero} \|",
            segmentation,
        ), difference
    assert "`cocu-cluster`" in segmentation and "`oracle-all`" in segmentation and "`oracle-top3`" not in segmentation
    curation = text.split("## Curation quality")[1].split("## Teacher")[0]
    for row in (
        "release (the authors' formula)",
        "cocu (expansion + ranking)",
        "cocu, hybrid archive (+ vocabulary top-M)",
        "neighbours' captions, most frequent",
        "teacher CLIP over the whole vocabulary",
        "release top-3",
        "cocu-top (cocu formula, top-3)",
        "cocu-cluster (cluster-guided)",
        "oracle (true concepts)",
    ):
        assert f"| {row} |" in curation, row
    for row in (
        "`release`",
        "`+ exclude_anchor`",
        "`+ anchor_once`",
        "`+ floor_local`",
        "`+ own_concepts`",
        "`+ prompt template`",
        "`cocu`",
    ):
        assert f"| {row} |" in curation, row  # the departures, one at a time
    throughput = text.split("## Throughput")[1].split("##")[0]
    for stage in (
        "synth",
        "teacher-eval",
        "bank",
        "bank-release",
        "enrich",
        "enrich-release",
        "enrich-hybrid",
        "quality",
        "train-caption-s0",
        "eval-caption-s0",
        "curve-caption-s0-2",
        "curve-caption-s0-4",
        "train-caption-s1",
        "train-cocu-cluster-s0",
        "eval-cocu-cluster-s1",
        "train-oracle-all-s0",
        "grouping-caption-s0",
        "grouping-cocu-cluster-s0",
        "grouping-oracle-all-s0",
    ):
        assert f"| {stage} |" in throughput, stage
    assert "- `cocu-cluster` scores" in text
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == set(runs)
    for mode in ("caption", "cocu-cluster"):
        run = results["runs"][mode]
        assert run["seeds"] == [0, 1] and len(run["miou"]) == len(run["things"]) == len(run["stuff"]) == 2
        assert run["mean"]["miou"] == pytest.approx(sum(run["miou"]) / 2)
    assert run["miou"][0] != run["miou"][1]  # the seeds differ: initialisation and data order
    assert results["runs"]["oracle-all"]["seeds"] == [0]
    paired = results["paired"]["cocu-cluster - caption"]
    assert paired["images"] == 16 and paired["seeds"] == [2, 2] and paired["ci95"][0] <= paired["ci95"][1]
    assert paired["method"].startswith("hierarchical") and paired["things"]["ci95"][0] <= paired["things"]["ci95"][1]
    assert results["paired"]["oracle-all - caption"]["seeds"] == [1, 2]
    oracle_params = json.loads((out / "runs" / "oracle-all-s0" / "benchmark-params.json").read_text())["params"]
    assert oracle_params["num_prompts"] > 3  # K from the truth: the most concepts above the area threshold
    assert [p["step"] for p in results["curves"]["caption-s0"]] == [2, 4]
    assert 0.0 <= results["teacher"]["thing_recall"] <= 1.0 and results["teacher"]["curve"]
    assert {"synth", "teacher-eval", "train-caption-s1", "curve-caption-s0-4"} <= set(results["seconds"])
    assert results["teacher"]["source"] == f"shipped ({teacher})"
    assert set(results["grouping"]) == set(runs) and "## Grouping or naming" in text
    for g in results["grouping"].values():
        true, nearest = g["true_labels"]["miou"], g["nearest_text"]["miou"]
        assert g["naming_efficiency"] == (pytest.approx(nearest / true, abs=1e-4) if true else None)
        assert -1.0 <= g["group_cosine"] <= 1.0 and set(g["nearest_present_text"]) == {"miou", "things", "stuff"}
        assert set(g["nearest_text_bn"]) == {"miou", "things", "stuff"}
        assert all(-1.0 <= g["text_cosine"][k] <= 1.0 for k in ("things", "confusable", "stuff"))
    bound = json.loads((out / "runs" / "caption-s0" / "eval" / "grouping_bound.json").read_text())
    # a group's true majority class is right on at least as many pixels as any other label for it
    assert bound["grouping"]["pixel_accuracy"] >= bound["naming"]["pixel_accuracy"] and bound["images"] == 16
    pages = text.split("## Pages to look at")[1].split("##")[0]
    links = re.findall(r"\]\(([^)]+\.html)\)", pages)
    assert links == [
        "gallery/index.html",
        "gallery/summary.html",
        "runs/caption-s0/eval/index.html",
        "runs/caption-s1/eval/index.html",
        "runs/cocu-cluster-s0/eval/index.html",
        "runs/cocu-cluster-s1/eval/index.html",
        "runs/oracle-all-s0/eval/index.html",
        "predict/index.html",
    ]
    assert all((out / link).is_file() for link in links)
    predicted = json.loads((out / "predict" / "predictions.json").read_text())
    assert len(predicted["pictures"]) == 8 and "`cocu-eval predict`, 8 val pictures" in pages
    assert "| gallery | 400 |" in throughput
    capsys.readouterr()

    again = main([*args, "--in-process"])
    assert again == report
    printed = capsys.readouterr().out
    # synth, teacher-eval, 2 banks, 3 enrich, quality, gallery, 5 runs x (train, eval), 2 curve points, 3 groupings,
    # predict
    assert printed.count("done in an earlier run") == 25
    assert "report:" in printed


def test_runs_side_by_side_log_quietly_keep_their_order_and_fail_loudly(tmp_path, capfd):
    runner = Runner(tmp_path)
    started = []

    def job(mode: str) -> None:
        started.append(mode)
        for stage in ("train", "eval"):
            runner.run(
                f"{stage}-{mode}",
                [sys.executable, "-c", f"import time; time.sleep(0.2); print('{stage} {mode} ok')"],
                {"mode": mode},
                quiet=True,
            )

    runner.side_by_side(job, ["b-run", "a-run"], lanes=2)
    assert [s.name for s in runner.stages] == ["train-b-run", "eval-b-run", "train-a-run", "eval-a-run"]
    assert (tmp_path / "logs" / "eval-a-run.log").read_text() == "eval a-run ok\n"
    assert "eval a-run ok" not in capfd.readouterr().out.splitlines()  # quiet: the log has it, the terminal does not

    def failing(mode: str) -> None:
        runner.run(f"train-{mode}", [sys.executable, "-c", "raise SystemExit(3)"], {"mode": mode}, quiet=True)

    with pytest.raises(SystemExit, match="train-c-run failed with exit code 3"):
        runner.side_by_side(failing, ["c-run"], lanes=2)
    assert not (tmp_path / "stages" / "train-c-run.json").exists()


def test_a_run_folder_is_kept_for_its_own_settings_only(tmp_path):
    run = tmp_path / "runs" / "caption"
    claim_run_dir(run, {"steps": 500})
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"step 120 of the same run")
    claim_run_dir(run, {"steps": 500})  # a killed run with the same settings: its checkpoint stays, to resume from
    assert (run / "checkpoints" / "last.ckpt").exists()
    claim_run_dir(run, {"steps": 600})  # other settings: nothing of the old run may be picked up
    assert not (run / "checkpoints").exists() and (run / "benchmark-params.json").exists()


def test_the_shipped_teacher_is_used_only_for_its_own_world_recipe_and_bytes(tmp_path):
    from dataclasses import asdict

    from cocu.benchmarks.teacher.recipe import TeacherRecipe, shipped_teacher
    from cocu.curation.core.errors import CocuError
    from cocu.curation.core.shards import sha256_file
    from cocu.curation.inputs.synthetic import WorldConfig

    world, recipe = WorldConfig(train=10), TeacherRecipe(samples=64)
    with pytest.raises(CocuError, match="no shipped teacher here"):
        shipped_teacher(world, recipe, tmp_path)
    weights = tmp_path / "t.safetensors"
    weights.write_bytes(b"weights")
    (tmp_path / "teacher.json").write_text(
        json.dumps({"weights": "t.safetensors", "weights_sha256": sha256_file(weights)})
    )
    (tmp_path / "recipe.json").write_text(json.dumps({"world": asdict(world), "recipe": asdict(recipe)}))
    record, found = shipped_teacher(world, recipe, tmp_path)
    assert found == weights and record["weights"] == "t.safetensors"
    with pytest.raises(CocuError, match="another world than this preset's|another world"):
        shipped_teacher(WorldConfig(train=11), recipe, tmp_path)
    assert shipped_teacher(WorldConfig(train=10, val=1000), recipe, tmp_path)[1] == weights  # val: not the teacher's
    with pytest.raises(CocuError, match="another recipe"):
        shipped_teacher(world, TeacherRecipe(samples=65), tmp_path)
    weights.write_bytes(b"weightz")
    with pytest.raises(CocuError, match="sha256 differs"):
        shipped_teacher(world, recipe, tmp_path)


def test_the_gap_closed_is_measured_against_oracle_all_and_naming_efficiency_is_a_ratio():
    from cocu.benchmarks.results import gap_closed, naming_efficiency

    def run(miou: float) -> dict:
        return {"mean": {"miou": miou}}

    runs = {"caption": run(10.0), "cocu-cluster": run(12.0), "oracle-top3": run(13.0), "oracle-all": run(14.0)}
    assert gap_closed(runs) == {"cocu-cluster": 0.5, "oracle-top3": 0.75}
    assert gap_closed({**runs, "oracle-all": run(9.0)}) == {}  # no ceiling when the oracle is not ahead
    assert gap_closed({k: v for k, v in runs.items() if k != "oracle-all"}) == {}
    assert naming_efficiency(5.0, 20.0) == 0.25 and naming_efficiency(5.0, 0.0) is None


def test_the_report_reads_the_run_in_one_sentence_from_its_own_figures():
    from cocu.benchmarks.report.page import what_it_shows

    def run(miou: float, stuff: float, seeds: int) -> dict:
        return {"mean": {"miou": miou, "stuff": stuff}, "seeds": list(range(seeds))}

    def difference(mean: float, things: float, things_zero: bool) -> dict:
        return {"mean": mean, "includes_zero": False, "things": {"mean": things, "includes_zero": things_zero}}

    results = {
        "runs": {"caption": run(5.0, 4.0, 3), "cocu-cluster": run(10.0, 22.0, 3), "cocu-top": run(15.0, 34.0, 1)},
        "paired": {
            "cocu-cluster - caption": difference(5.0, -0.4, True),
            "cocu-top - caption": difference(10.0, 0.2, True),
        },
        "oracle_gap_closed": {"cocu-cluster": 1.6, "cocu-top": 2.8},
    }
    sentence = what_it_shows(results)
    assert sentence is not None
    assert "`cocu-cluster` gains +5.0" in sentence  # three seeds outrank one seed's higher score
    assert "+18.0 points on stuff" in sentence and "on things no gain is shown" in sentence
    assert "no ceiling here (`cocu-cluster`, `cocu-top` score above it)" in sentence
    results["paired"]["cocu-cluster - caption"] = difference(5.0, 2.0, False)
    results["oracle_gap_closed"] = {"cocu-cluster": 0.6}
    sentence = what_it_shows(results)
    assert sentence is not None and "on things +2.0, interval clear of zero" in sentence and "ceiling" not in sentence
    assert what_it_shows({"runs": {"caption": run(5.0, 4.0, 3)}, "paired": {}, "oracle_gap_closed": {}}) is None
