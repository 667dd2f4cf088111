"""`cocu-eval seg`: bad input is one line and no output; a real checkpoint gives metrics.json, table and overlays."""

import json

import numpy as np
import pytest
from PIL import Image
from testkit import seg_args
from typer.testing import CliRunner

from cocu.cli.eval import app

runner = CliRunner()


@pytest.mark.slow
def test_seg_refuses_a_missing_root_and_an_unknown_preset_pair_in_one_line(tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"unused: the layout is checked first")
    out = tmp_path / "out"
    result = runner.invoke(app, seg_args(checkpoint, "ade20k", tmp_path / "data", out))
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and str(tmp_path / "data") in result.output
    (tmp_path / "data" / "ImageNetS" / "ImageNetS50" / "validation" / "n01443537").mkdir(parents=True)
    (tmp_path / "data" / "ImageNetS" / "ImageNetS50" / "validation-segmentation").mkdir(parents=True)
    result = runner.invoke(app, seg_args(checkpoint, "imagenet_s50", tmp_path / "data", out, "--preset", "tcl"))
    assert result.exit_code == 2 and "preset 'tcl' has no setting for dataset 'imagenet_s50'" in result.output
    assert result.output.strip().count("\n") == 0
    assert not out.exists()


def test_seg_refuses_a_file_that_is_not_a_checkpoint(tmp_path, small_world):
    world, _ = small_world
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not a checkpoint")
    result = runner.invoke(app, seg_args(checkpoint, "synthetic", world, tmp_path / "out"))
    assert result.exit_code == 1 and "model.ckpt: not a loadable checkpoint" in result.output
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def fitted_checkpoint(small_world, tmp_path_factory):
    """A checkpoint written by `cocu-train fit` (the tiny test config, one step)."""
    from cocu.cli.train import main as train

    world, _ = small_world
    run = tmp_path_factory.mktemp("fit")
    train(
        [
            "fit",
            "--config",
            "tiny-test",
            "--data.shards",
            str(world / "train"),
            "--trainer.default_root_dir",
            str(run),
            "--trainer.max_steps",
            "1",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_seg_on_the_synthetic_val_split_writes_metrics_table_and_overlays(tmp_path, small_world, fitted_checkpoint):
    from cocu.benchmarks.paired import miou
    from cocu.curation.core.shards import sha256_file

    world, record = small_world
    out = tmp_path / "eval"
    extra = ["--save-images", "2", "--batch-size", "8", "--limit", "24", "--per-image"]
    result = runner.invoke(app, seg_args(fitted_checkpoint, "synthetic", world, out, *extra))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    with np.load(out / "per_image.npz") as per_image:  # what the benchmark's paired bootstrap reads
        assert list(per_image["names"]) == [f"{i:06d}" for i in range(24)]
        assert per_image["intersect"].shape == per_image["union"].shape == (24, 52)
        summed = miou(per_image["intersect"].sum(0), per_image["union"].sum(0))
    assert summed == pytest.approx(metrics["miou"], abs=1e-4)
    assert metrics["dataset"] == "synthetic" and metrics["split_size"] == 40 and metrics["images"] == 24
    assert metrics["preset"]["name"] == "groupvit/synthetic"
    assert (metrics["preset"]["short_side"], metrics["preset"]["crop"], metrics["preset"]["stride"]) == (64, 64, 32)
    assert metrics["checkpoint"]["sha256"] == sha256_file(fitted_checkpoint)
    assert metrics["checkpoint"]["path"] == str(fitted_checkpoint.resolve())
    assert list(metrics["per_class_iou"]) == record["classes"]
    assert 0 <= metrics["miou"] <= 100 and 0 <= metrics["pixel_accuracy"] <= 100 and metrics["images_per_second"] > 0
    assert metrics["pixels"] == 24 * 64 * 64 and metrics["limit"] == 24  # no ignore label in the world
    table = (out / "results.md").read_text()
    assert "| synthetic | groupvit/synthetic | 24 / 40 |" in table and table.count("\n| ") >= 52 + 1
    overlays = sorted((out / "overlays").glob("*.png"))
    assert [p.name for p in overlays] == ["0000_000000.png", "0001_000001.png"]
    with Image.open(overlays[0]) as image:
        assert image.format == "PNG" and image.width > 2 * image.height
    assert "images/s" in result.output and str(out / "metrics.json") in result.output


def test_seg_with_the_training_templates_records_them(tmp_path, small_world, fitted_checkpoint):
    from cocu.training.prompts import TEMPLATES

    world, _ = small_world
    out = tmp_path / "eval"
    args = seg_args(fitted_checkpoint, "synthetic", world, out, "--limit", "4", "--templates", "clip80")
    result = runner.invoke(app, [*args, "--template-average", "release"])
    assert result.exit_code == 0, result.output
    preset = json.loads((out / "metrics.json").read_text())["preset"]
    assert preset["templates"] == [template("{}") for template in TEMPLATES]  # the 80 the prompts train with
    assert preset["template_average"] == "release"
