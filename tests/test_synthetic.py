import json
import re
from dataclasses import asdict

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cocu.curation.inputs.synthetic import CLASSES, STUFF_NAMES, THING_NAMES, WorldConfig, generate_world
from cocu.curation.inputs.synthetic.captions import COLOURS
from cocu.curation.inputs.synthetic.things import THINGS
from cocu.curation.inputs.synthetic.world import render_scene


def read_split(root, name):
    return pq.read_table(root / name).to_pylist()


def test_layout_and_world_record(small_world):
    root, record = small_world
    assert len(THING_NAMES) >= 30 and len(STUFF_NAMES) >= 6
    assert record["classes"] == CLASSES
    assert sorted(p.name for p in (root / "train").iterdir()) == [
        "00000.parquet",
        "00001.parquet",
        "00002.parquet",
        "00003.parquet",
    ]
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in (root / "teacher").glob("*.parquet")) == 400
    assert (root / "val" / "classes.txt").read_text().split("\n")[:-1] == CLASSES
    assert (
        len(list((root / "val" / "images").glob("*.jpg")))
        == len(list((root / "val" / "annotations").glob("*.png")))
        == 40
    )
    assert set(pq.read_schema(root / "train" / "00000.parquet").names) == {"key", "jpg", "caption", "width", "height"}
    groups = record["confusable_groups"]
    assert all(len(members) >= 2 for members in groups.values()) and {"cup", "mug"} <= set(groups["container"])


def test_gap_matches_the_flag(small_world):
    root, record = small_world
    truth = pq.read_table(root / "truth" / "train").to_pylist()
    present = sum(len(row["present"]) for row in truth)
    named = sum(len(row["named"]) for row in truth)
    assert abs((1 - named / present) - 0.65) < 0.02
    assert record["omission"]["measured_train"] == pytest.approx(1 - named / present, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("omit", [0.4, 0.55])
def test_gap_follows_other_flag_values(tmp_path, omit):
    record = generate_world(
        tmp_path, WorldConfig(train=2000, teacher=0, val=0, omit=omit, shard_size=1000), progress=False
    )
    assert abs(record["omission"]["measured_train"] - omit) < 0.02


def test_unreachable_gap_is_reported(tmp_path):
    # a caption always names the salient thing, so with ~5 present concepts per image 0.95 cannot be met
    record = generate_world(tmp_path, WorldConfig(train=500, teacher=0, val=0, omit=0.95), progress=False)
    assert record["omission"]["reachable_train"] < 0.9
    assert abs(record["omission"]["measured_train"] - record["omission"]["reachable_train"]) < 0.03


def test_captions_name_what_truth_says_and_nothing_absent(small_world):
    root, _ = small_world
    pairs = read_split(root, "train")
    truth = {row["key"]: row for row in pq.read_table(root / "truth" / "train").to_pylist()}
    assert len(truth) == len(pairs)
    forms = {t.name: {t.name, t.plural} for t in THINGS} | {s: {s} for s in STUFF_NAMES}
    named_counts = dict.fromkeys(CLASSES, 0)
    for row in pairs:
        words = set(re.findall(r"[a-z]+", row["caption"]))
        gt = truth[row["key"]]
        assert set(gt["named"]) <= set(gt["present"]) and gt["salient"] in gt["named"]
        for concept in CLASSES:
            mentioned = bool(words & forms[concept])
            assert mentioned == (concept in gt["named"]), (row["caption"], gt)
        for concept in gt["named"]:
            named_counts[concept] += 1
        assert all(colour not in gt["present"] for colour in COLOURS)
    assert min(named_counts.values()) > 0  # every concept is named somewhere, so a caption-mined vocabulary knows it
    stuff_named = sum(named_counts[s] for s in STUFF_NAMES)
    stuff_present = sum(sum(s in row["present"] for s in STUFF_NAMES) for row in truth.values())
    assert stuff_named / stuff_present < 0.2  # stuff is named rarely


def test_teacher_captions_name_everything(small_world):
    root, _ = small_world
    for row in pq.read_table(root / "truth" / "teacher").to_pylist():
        assert sorted(row["named"]) == sorted(row["present"])


@pytest.mark.parametrize("things_per_group", [0, 2])
def test_masks_agree_with_what_was_drawn(things_per_group):
    cfg = WorldConfig(things_min=3, things_max=5, things_per_group=things_per_group)
    classes = cfg.classes()
    rng = np.random.default_rng(7)
    for _ in range(30):
        scene = render_scene(cfg, rng, 64)
        for seen in scene.things:
            cls = classes.index(seen.name)
            pixels = scene.image[scene.labels == cls].astype(np.float32)
            colour = np.asarray(COLOURS[seen.colour], np.float32)
            # thing pixels carry the thing's colour (within the +-8% shading), and the area is what truth reports
            assert np.all(np.abs(pixels - colour) <= 0.08 * colour + 1.0)
            assert (scene.labels == cls).mean() == pytest.approx(seen.area)
        for seen in scene.stuff:
            assert (scene.labels == classes.index(seen.name)).mean() == pytest.approx(seen.area)
        visible = {classes[c] for c in np.unique(scene.labels)}
        assert {s.name for s in scene.things + scene.stuff} <= visible


def test_fewer_things_per_group_keep_every_group_confusable(tmp_path):
    cfg = WorldConfig(train=200, teacher=100, val=20, shard_size=100, things_per_group=2)
    record = generate_world(tmp_path, cfg, progress=False)
    groups = record["confusable_groups"]
    assert set(groups) == {t.group for t in THINGS} and all(len(members) == 2 for members in groups.values())
    assert groups["container"] == ["cup", "mug"]
    classes = (tmp_path / "val" / "classes.txt").read_text().split("\n")[:-1]
    assert classes == record["classes"] == cfg.classes() == record["things"] + STUFF_NAMES
    assert len(classes) == 2 * len(groups) + len(STUFF_NAMES)
    for path in (tmp_path / "val" / "annotations").glob("*.png"):
        assert np.asarray(Image.open(path)).max() < len(classes)
    for row in read_split(tmp_path, "truth/train/00000.parquet"):
        assert set(row["present"]) <= set(classes)
    assert abs(record["omission"]["measured_train"] - cfg.omit) < 0.05
    with pytest.raises(ValueError, match="up to 9 things per image, but the world has 8 things"):
        WorldConfig(things_per_group=1, things_max=9)


def test_val_annotations_are_class_ids(small_world):
    root, _ = small_world
    for path in sorted((root / "val" / "annotations").glob("*.png"))[:10]:
        label = Image.open(path)
        assert label.mode == "P"
        ids = np.asarray(label)
        assert ids.shape == (64, 64) and ids.max() < len(CLASSES)
        image = Image.open(root / "val" / "images" / path.with_suffix(".jpg").name)
        assert image.size == (64, 64)


@pytest.mark.slow
def test_same_seed_gives_identical_bytes(tmp_path):
    cfg = WorldConfig(train=300, teacher=100, val=10, shard_size=150)
    generate_world(tmp_path / "a", cfg, progress=False)
    generate_world(tmp_path / "b", cfg, workers=2, progress=False)
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file() and p.name != "world.json"
    )
    assert len(files) > 10
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    other = generate_world(
        tmp_path / "c", WorldConfig(seed=1, train=300, teacher=0, val=0, shard_size=150), progress=False
    )
    assert other["config"]["seed"] == 1
    assert (tmp_path / "c" / "train" / "00000.parquet").read_bytes() != (
        tmp_path / "a" / "train" / "00000.parquet"
    ).read_bytes()


def test_shards_load_with_datasets_pandas_and_duckdb(small_world):
    import datasets
    import duckdb
    import pandas as pd

    root, _ = small_world
    files = sorted(str(p) for p in (root / "train").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.num_rows == 2000 and {"key", "jpg", "caption"} <= set(ds.column_names)
    frame = pd.concat(pd.read_parquet(f) for f in files)
    assert frame["key"].is_unique and len(frame) == 2000
    assert duckdb.sql(f"select count(*) from read_parquet({files!r})").fetchall()[0][0] == 2000


def test_synth_takes_every_setting_from_a_config_file(tmp_path):
    """What the benchmark passes: a JSON of WorldConfig fields, the teacher split's own settings included."""
    from typer.testing import CliRunner

    from cocu.cli.data import app

    cfg = WorldConfig(
        train=40,
        teacher=40,
        val=4,
        shard_size=40,
        teacher_things_min=1,
        teacher_things_max=1,
        teacher_stuff_mention=0.0,
        colour_words=1.0,
    )
    config = tmp_path / "world.json"
    config.write_text(json.dumps(asdict(cfg)))
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "w"), "--config", str(config), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "w" / "world.json").read_text())["config"] == asdict(cfg)
    teacher = pq.read_table(tmp_path / "w" / "truth" / "teacher").to_pylist()
    assert all(len([c for c in row["present"] if c in THING_NAMES]) <= 1 for row in teacher)
    assert all(
        row["named"] == [c for c in row["present"] if c in THING_NAMES]
        for row in teacher
        if row["named"][0] in THING_NAMES
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": 10, "trian": 3}))
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "x"), "--config", str(bad)])
    assert result.exit_code == 2 and "trian" in result.output
