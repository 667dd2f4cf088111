"""The teacher CLIP: trains on teacher shards, saves a standard open_clip checkpoint, loads back identically."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from testkit import tiny_clip_config

from cocu.cli.clip import main
from cocu.curation.bank.clip import load_clip, register_config_file
from cocu.curation.core.shards import ShardError, write_table
from cocu.evaluation.metrics import ranking_metrics
from cocu.training.clip import TeacherConfig, TeacherDeadline, fit_teacher, save_teacher, train_teacher
from cocu.training.clip.zero_shot import evaluate_teacher

TINY = tiny_clip_config(width=32, layers=1, context_length=40)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "cocu-teacher-tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def trained(small_world, tiny_config, tmp_path_factory) -> Path:
    """`cocu-train clip WORLD` end to end: a few steps on the teacher split, evaluation on train truth."""
    world, _ = small_world
    out = tmp_path_factory.mktemp("teacher")
    with pytest.raises(SystemExit) as done:
        main(
            [
                str(world),
                "--out",
                str(out),
                "--model-config",
                str(tiny_config),
                "--samples",
                "96",
                "--batch-size",
                "32",
                "--workers",
                "1",
                "--eval-images",
                "120",
            ]
        )
    assert done.value.code == 0
    return out


@pytest.mark.slow
def test_cli_writes_a_standard_open_clip_checkpoint(trained, small_world):
    names = {p.name for p in trained.iterdir()}
    assert {
        "cocu-teacher-tiny.json",
        "cocu-teacher-tiny.safetensors",
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "teacher.json",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    record = json.loads((trained / "teacher.json").read_text())
    assert record["model"] == "cocu-teacher-tiny"
    assert record["training"]["steps"] == 3 and record["training"]["samples"] == 96
    assert record["data"]["rows"] == 400  # the teacher split of the world, not its train split
    assert record["model_config"] == TINY == json.loads((trained / "cocu-teacher-tiny.json").read_text())


@pytest.mark.slow
def test_fit_then_load_through_open_clip_gives_identical_embeddings(small_world, tiny_config, tmp_path):
    world, _ = small_world
    cfg = TeacherConfig(model_config=tiny_config, samples=64, batch_size=32, workers=0, progress=False)
    teacher = fit_teacher(world / "teacher", cfg)
    model = teacher.model
    assert teacher.stats["training"]["steps"] == 2
    weights = save_teacher(model, "cocu-teacher-tiny", TINY, tmp_path)

    open_clip.add_model_config(tmp_path / "cocu-teacher-tiny.json")
    loaded, _, preprocess = open_clip.create_model_and_transforms("cocu-teacher-tiny", pretrained=str(weights))
    from_dir, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")
    tokenizer = open_clip.get_tokenizer("cocu-teacher-tiny")
    jpgs = pq.read_table(next((world / "train").glob("*.parquet")), columns=["jpg"]).column("jpg").to_pylist()[:8]
    from PIL import Image

    images = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in jpgs])
    tokens = tokenizer(["a photo of a cup.", "two buses on the grass", "sky"])
    with torch.no_grad():
        expected = model.encode_image(images), model.encode_text(tokens)
        for other in (loaded.eval(), from_dir.eval()):
            assert torch.equal(other.encode_image(images), expected[0])
            assert torch.equal(other.encode_text(tokens), expected[1])
    assert not torch.allclose(expected[0][0], expected[0][1])  # a real image embedding, not a constant


@pytest.mark.slow
def test_saved_teacher_reproduces_its_recorded_zero_shot_scores(trained, small_world):
    world, record_world = small_world
    recorded = json.loads((trained / "teacher.json").read_text())["zero_shot"]
    again = evaluate_teacher(trained, world, max_images=120, device="cpu", progress=False)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in recorded.items() if k != "seconds"}
    assert again["images"] == 120 and again["classes"] == len(record_world["classes"]) == 52
    for key in (
        "recall_at_present",
        "thing_recall",
        "stuff_recall",
        "salient_top1",
        "salient_top1_among_things",
        "mean_ap",
        "chance_recall",
    ):
        assert 0.0 <= again[key] <= 1.0
    assert 3.0 <= again["present_per_image"] <= 8.0
    assert again["chance_recall"] == pytest.approx(again["present_per_image"] / 52, abs=0.02)
    assert set(again["per_class_recall"]) <= set(record_world["classes"])


@pytest.mark.slow
def test_curation_loads_it_by_name_and_checkpoint_like_a_builtin(trained, tmp_path):
    """What `cocu-curate build-bank --model NAME --pretrained DIR/NAME.safetensors` does: NAME.json found beside it."""
    shutil.copy(trained / "cocu-teacher-tiny.json", tmp_path / "cocu-teacher-copy.json")
    shutil.copy(trained / "cocu-teacher-tiny.safetensors", tmp_path / "cocu-teacher-copy.safetensors")
    assert open_clip.get_model_config("cocu-teacher-copy") is None
    copy = load_clip("cocu-teacher-copy", str(tmp_path / "cocu-teacher-copy.safetensors"), device="cpu")
    original = load_clip("cocu-teacher-tiny", str(trained / "cocu-teacher-tiny.safetensors"), device="cpu")
    assert copy.embed_dim == 32 and copy.spec.checkpoint_sha256 == original.spec.checkpoint_sha256
    prompts = ["a photo of a ring.", "a photo of a sky."]
    assert copy.tokenizer(prompts).shape == (2, 40)
    assert np.array_equal(copy.embed_texts(prompts), original.embed_texts(prompts))


def test_a_config_cannot_shadow_a_builtin_architecture(tmp_path):
    path = tmp_path / "ViT-B-32.json"
    path.write_text(json.dumps(TINY))
    with pytest.raises(ValueError, match="already registered with a different config"):
        register_config_file(path)
    weights = tmp_path / "ViT-B-32.safetensors"  # the same config found beside a checkpoint, as curation loads it
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="already registered with a different config"):
        load_clip("ViT-B-32", str(weights), device="cpu")
    assert open_clip.get_model_config("ViT-B-32")["embed_dim"] == 512


def test_ranking_metrics_on_known_rankings():
    classes = ["cup", "mug", "ring", "sky"]
    stuff = np.array([False, False, False, True])
    targets = np.array([[1, 0, 0, 1], [0, 1, 1, 0]], bool)
    salient = np.array([0, 2])
    perfect = np.where(targets, 1.0, 0.0) + np.array([[0.5, 0, 0, 0], [0, 0, 0.5, 0]])
    good = ranking_metrics(perfect, targets, salient, stuff, classes)
    assert good["recall_at_present"] == good["salient_top1"] == good["mean_ap"] == 1.0
    assert good["thing_recall"] == good["stuff_recall"] == 1.0 and good["chance_recall"] == 0.5
    bad = ranking_metrics(-perfect, targets, salient, stuff, classes)
    assert bad["recall_at_present"] == bad["salient_top1"] == bad["stuff_recall"] == 0.0
    half = ranking_metrics(np.array([[4, 3, 2, 1], [4, 3, 2, 1]], float), targets, salient, stuff, classes)
    assert half["recall_at_present"] == 0.5 and half["per_class_recall"] == {
        "cup": 1.0,
        "mug": 1.0,
        "ring": 0.0,
        "sky": 0.0,
    }
    stuff_first = ranking_metrics(np.array([[2, 1, 0, 9], [0, 1, 2, 9]], float), targets, salient, stuff, classes)
    assert stuff_first["salient_top1"] == 0.0 and stuff_first["salient_top1_among_things"] == 1.0


@pytest.mark.parametrize(
    "column, value, problem", [("jpg", b"not a jpeg", "undecodable image"), ("caption", "  ", "empty caption")]
)
def test_bad_row_is_named_and_nothing_is_written(small_world, tiny_config, tmp_path, column, value, problem):
    world, _ = small_world
    table = pq.read_table(next((world / "teacher").glob("*.parquet"))).slice(0, 40)
    rows = table.to_pylist()
    rows[37][column] = value
    bad = tmp_path / "bad.parquet"
    write_table(bad, table.from_pylist(rows, schema=table.schema))
    out = tmp_path / "out"
    cfg = TeacherConfig(model_config=tiny_config, samples=64, batch_size=16, workers=1, progress=False)
    with pytest.raises(ShardError) as err:
        train_teacher(bad, out, cfg)
    assert str(err.value) == f"{bad}: row 37: {problem}" or str(err.value).startswith(f"{bad}: row 37: {problem} (")
    assert not out.exists() or not any(out.iterdir())


def test_help_through_main(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "cocu-train clip" in text and "--deadline-minutes" in text and "--samples" in text and "--out" in text


class SlowClock:
    """A clock on which every reading is an hour after the last: what a very busy machine looks like to a loop."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 3600.0
        return self.now


def test_training_does_not_depend_on_the_wall_clock(small_world, tiny_config, monkeypatch):
    """The same samples, the same schedule and the same weights under a clock that runs an hour per reading."""
    world, _ = small_world
    cfg = TeacherConfig(model_config=tiny_config, samples=96, batch_size=16, workers=0, log_every=1, progress=False)
    quiet = fit_teacher(world / "teacher", cfg)
    monkeypatch.setattr("cocu.training.clip.loop.time.perf_counter", SlowClock())
    busy = fit_teacher(world / "teacher", cfg)
    for run in (quiet, busy):
        assert run.stats["training"]["samples"] == 96 and run.stats["training"]["steps"] == 6
    assert busy.stats["training"]["curve"] == quiet.stats["training"]["curve"]  # samples, loss and lr per step
    assert busy.stats["training"]["curve"][-1][2] > 0.0  # the cosine did not jump to its end
    quiet_state, busy_state = quiet.model.state_dict(), busy.model.state_dict()
    assert all(torch.equal(quiet_state[k], busy_state[k]) for k in quiet_state)


def test_a_deadline_stops_training_with_an_error_instead_of_a_shorter_teacher(small_world, tiny_config, monkeypatch):
    world, _ = small_world
    cfg = TeacherConfig(
        model_config=tiny_config, samples=96, batch_size=16, workers=0, deadline_minutes=30, progress=False
    )
    monkeypatch.setattr("cocu.training.clip.loop.time.perf_counter", SlowClock())
    with pytest.raises(TeacherDeadline, match=r"0 of 96 samples after 60.0 min, past the deadline of 30 min"):
        fit_teacher(world / "teacher", cfg)


def test_the_learning_curve_probes_at_its_sample_marks(small_world, tiny_config):
    world, _ = small_world
    cfg = TeacherConfig(model_config=tiny_config, samples=96, batch_size=16, workers=0, progress=False)
    seen = []
    teacher = fit_teacher(world / "teacher", cfg, probe=None)
    assert "learning_curve" not in teacher.stats
    cfg = TeacherConfig(
        model_config=tiny_config,
        samples=96,
        batch_size=16,
        workers=0,
        curve_every=32,
        eval_world=world,
        progress=False,
    )
    teacher = fit_teacher(world / "teacher", cfg, probe=lambda model, pre, tok: seen.append(model.training) or {"x": 1})
    assert [p["samples"] for p in teacher.stats["learning_curve"]] == [32, 64, 96]
    assert seen == [False, False, False]  # probed in eval mode
