"""Generate the synthetic semantic-gap world: train/teacher shards, truth sidecars, a val split.

Layout written under ``out``::

    world.json                    classes, parameters, seed, counts, measured omission
    train/00000.parquet ...       key, jpg, caption, width, height  (web-style captions)
    teacher/00000.parquet ...     the same columns, a separate draw with full captions
    truth/train/00000.parquet     key, present, areas, named, salient  (never in the shards)
    truth/teacher/00000.parquet
    val/images/<key>.jpg          benchmark-style folders read by cocu.evaluation
    val/annotations/<key>.png     per-pixel class ids (palette PNG, no ignore label)
    val/classes.txt               one class name per line, line i = id i

Every shard is drawn from its own seeded generator, so shards are produced in parallel and the
same seed gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from cocu.curation.core.configs import option
from cocu.curation.core.shards import ShardWriter, atomic_path, atomic_write_json, remove_stale_temporaries
from cocu.curation.inputs.synthetic.captions import (
    COLOURS,
    GROUP_COLOURS,
    Seen,
    calibrate_naming,
    choose_named,
    write_caption,
)
from cocu.curation.inputs.synthetic.strokes import draw_thing
from cocu.curation.inputs.synthetic.stuff import STUFF, render_stuff
from cocu.curation.inputs.synthetic.things import THINGS, Thing

THING_NAMES = [t.name for t in THINGS]
STUFF_NAMES = list(STUFF)
CLASSES = THING_NAMES + STUFF_NAMES
SPLITS = {"train": 1, "teacher": 2, "val": 3}

SHARD_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("jpg", pa.binary()),
        ("caption", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
TRUTH_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("present", pa.list_(pa.string())),
        ("areas", pa.list_(pa.float32())),
        ("named", pa.list_(pa.string())),
        ("salient", pa.string()),
    ]
)


@dataclass(frozen=True)
class WorldConfig:
    seed: int = option(0, "Same seed, byte-identical shards.")
    train: int = option(20000, "Pairs in train/ (web-style captions that omit concepts).", minimum=0)
    teacher: int = option(20000, "Pairs in teacher/ (full captions, for the teacher CLIP).", minimum=0)
    val: int = option(300, "Images in val/ with per-pixel labels.", minimum=0)
    image_size: int = option(64, "Side of train/teacher images in pixels.")
    val_image_size: int = option(64, "Side of val images in pixels.")
    shard_size: int = option(2500, "Rows per Parquet shard.", minimum=1)
    things_min: int = option(2, "Fewest thing concepts drawn per image.", minimum=1)
    things_max: int = option(5, "Most thing concepts drawn per image.", minimum=1)
    repeat_prob: float = 0.2  # a thing concept shows 2-3 instances (plural wording)
    size_min: float = 0.3  # icon width as a share of the image side
    size_max: float = 0.6
    two_stuff_prob: float = 0.6
    omit: float = option(0.65, "Share of present concepts the train captions leave out.", minimum=0.0, maximum=1.0)
    stuff_mention: float = option(
        0.1, "Chance that a caption names a visible background stuff.", minimum=0.0, maximum=1.0
    )
    max_other_things: int = 2  # non-salient things a web caption names, at most
    min_visible: float = 0.015  # share of the image a concept must cover to count as present
    jpeg_quality: int = 92
    # chance a thing wears its group's usual colour (as bananas are mostly yellow), else any of the 12: colour tells
    # a thing's group, shape alone tells the members of a confusable group apart
    colour_prior: float = 0.8
    colour_words: float = 0.55  # chance a train caption names a thing's colour (web captions do)
    teacher_colour_words: float = 0.0  # the same in the teacher's full captions: none, so shape must tell things apart
    # things per teacher image (None: as train). The teacher split stands for CLIP's own pretraining data: with
    # few things each, a caption cannot be told from the batch by stuff and object count alone
    # chance a teacher caption names each visible stuff: below 1, a caption is told from the batch by its things
    teacher_stuff_mention: float = 1.0
    teacher_things_min: int | None = None
    teacher_things_max: int | None = None
    things_per_group: int = option(
        0,
        "Keep the first N things of each confusable group (0: all 44; the benchmark's world: 2): fewer classes, "
        "the same kind of confusion.",
        minimum=0,
    )

    def __post_init__(self) -> None:
        if self.things_max < self.things_min:
            raise ValueError("--things-max must be at least --things-min")
        most = max(self.things_range("train")[1], self.things_range("teacher")[1])
        if most > len(self.things()):
            raise ValueError(f"up to {most} things per image, but the world has {len(self.things())} things")

    def things(self) -> list[Thing]:
        if self.things_per_group <= 0:
            return list(THINGS)
        kept = {name for group in _groups().values() for name in group[: self.things_per_group]}
        return [t for t in THINGS if t.name in kept]

    def classes(self) -> list[str]:
        """Class names, line i = label id i: the things, then the stuff."""
        return [t.name for t in self.things()] + STUFF_NAMES

    def things_range(self, split: str) -> tuple[int, int]:
        if split == "teacher":
            return self.teacher_things_min or self.things_min, self.teacher_things_max or self.things_max
        return self.things_min, self.things_max


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 uint8
    labels: np.ndarray  # H x W uint8 class ids
    things: list[Seen] = field(default_factory=list)
    stuff: list[Seen] = field(default_factory=list)


def render_scene(cfg: WorldConfig, rng: np.random.Generator, size: int, split: str = "train") -> Scene:
    """Draw stuff regions, then icons on top; the label map follows exactly what was painted."""
    h = w = size
    things = cfg.things()
    n_stuff = 2 if rng.random() < cfg.two_stuff_prob else 1
    stuff_ids = rng.choice(len(STUFF_NAMES), size=n_stuff, replace=False)
    image = render_stuff(STUFF_NAMES[stuff_ids[0]], rng, h, w)
    labels = np.full((h, w), len(things) + stuff_ids[0], np.uint8)
    if n_stuff == 2:
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        if rng.random() < 0.7:  # a horizon
            region = y < rng.uniform(0.3, 0.7) * h + rng.uniform(-0.4, 0.4) * (x - w / 2)
        else:
            region = x < rng.uniform(0.3, 0.7) * w + rng.uniform(-0.4, 0.4) * (y - h / 2)
        image[region] = render_stuff(STUFF_NAMES[stuff_ids[1]], rng, h, w)[region]
        labels[region] = len(things) + stuff_ids[1]

    things_min, things_max = cfg.things_range(split)
    n_things = int(rng.integers(things_min, things_max + 1))
    thing_ids = rng.choice(len(things), size=n_things, replace=False)
    colour_names = list(COLOURS)
    colours = {
        int(t): GROUP_COLOURS[things[t].group]
        if rng.random() < cfg.colour_prior
        else colour_names[rng.integers(len(colour_names))]
        for t in thing_ids
    }
    instances = []
    for t in thing_ids:
        count = int(rng.integers(2, 4)) if rng.random() < cfg.repeat_prob else 1
        scale = 0.75 if count > 1 else 1.0
        for _ in range(count):
            s = rng.uniform(cfg.size_min, cfg.size_max) * size * scale
            instances.append((int(t), rng.uniform(0.3 * s, w - 0.3 * s), rng.uniform(0.3 * s, h - 0.3 * s), s))
    order = rng.permutation(len(instances))
    shade = 1.0 + rng.uniform(-0.08, 0.08, size=(h, w, 1)).astype(np.float32)
    for i in order:
        t, cx, cy, s = instances[i]
        mask_image = Image.new("L", (w, h), 0)
        draw_thing(ImageDraw.Draw(mask_image), things[t], cx, cy, s)
        mask = np.asarray(mask_image) > 127
        if not mask.any():
            continue
        image[mask] = (np.asarray(COLOURS[colours[t]], np.float32) * shade)[mask]
        labels[mask] = t

    areas = np.bincount(labels.ravel(), minlength=len(things) + len(STUFF_NAMES)) / labels.size
    scene = Scene(np.clip(image, 0, 255).astype(np.uint8), labels)
    for t in thing_ids:
        if areas[t] >= cfg.min_visible:
            visible = sum(1 for inst in instances if inst[0] == t)
            scene.things.append(
                Seen(things[t].name, things[t].plural, "thing", float(areas[t]), visible, colours[int(t)])
            )
    for s in stuff_ids:
        c = len(things) + s
        if areas[c] >= cfg.min_visible:
            scene.stuff.append(Seen(STUFF_NAMES[s], STUFF_NAMES[s], "stuff", float(areas[c])))
    return scene


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _rng(cfg: WorldConfig, split: str, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, SPLITS[split], index, stream])


def generate_pairs_shard(cfg: WorldConfig, split: str, shard: int, start: int, count: int, out: str) -> dict:
    """Render one shard of pairs plus its truth sidecar. Full captions for ``teacher``."""
    scene_rng, caption_rng = _rng(cfg, split, shard, 0), _rng(cfg, split, shard, 1)
    scenes = []
    for _ in range(count):
        scene = render_scene(cfg, scene_rng, cfg.image_size, split)
        scenes.append((encode_jpeg(scene.image, cfg.jpeg_quality), scene.things, scene.stuff))
    q, expected = calibrate_naming(
        [(len(t), len(s)) for _, t, s in scenes], cfg.omit, cfg.stuff_mention, cfg.max_other_things
    )
    rows: dict[str, list] = {name: [] for name in SHARD_SCHEMA.names}
    truth: dict[str, list] = {name: [] for name in TRUTH_SCHEMA.names}
    present_total = named_total = 0
    for i, (jpg, things, stuff) in enumerate(scenes):
        if split == "teacher":
            named_things = sorted(things, key=lambda t: -t.area)
            named_stuff = [s for s in stuff if caption_rng.random() < cfg.teacher_stuff_mention] if things else stuff
        else:
            named_things, named_stuff = choose_named(
                things, stuff, q, cfg.stuff_mention, cfg.max_other_things, caption_rng
            )
        key = f"{start + i:09d}"
        present = sorted(things + stuff, key=lambda s: -s.area)
        rows["key"].append(key)
        rows["jpg"].append(jpg)
        colour_words = cfg.teacher_colour_words if split == "teacher" else cfg.colour_words
        rows["caption"].append(write_caption(named_things, named_stuff, caption_rng, colour_words))
        rows["width"].append(cfg.image_size)
        rows["height"].append(cfg.image_size)
        truth["key"].append(key)
        truth["present"].append([s.name for s in present])
        truth["areas"].append([round(s.area, 5) for s in present])
        truth["named"].append([s.name for s in named_things + named_stuff])
        truth["salient"].append(named_things[0].name if named_things else named_stuff[0].name)
        present_total += len(present)
        named_total += len(named_things) + len(named_stuff)
    name = f"{shard:05d}.parquet"
    for path, schema, data in (
        (Path(out) / split / name, SHARD_SCHEMA, rows),
        (Path(out) / "truth" / split / name, TRUTH_SCHEMA, truth),
    ):
        with ShardWriter(path, schema, row_group_size=512) as writer:
            writer.write(pa.table(data, schema=schema))
    return {
        "split": split,
        "rows": count,
        "present": present_total,
        "named": named_total,
        "q": q,
        "expected_omit": expected,
    }


def generate_val_chunk(cfg: WorldConfig, chunk: int, start: int, count: int, out: str) -> dict:
    rng = _rng(cfg, "val", chunk)
    images, annotations = Path(out) / "val" / "images", Path(out) / "val" / "annotations"
    palette = _palette()
    for i in range(count):
        scene = render_scene(cfg, rng, cfg.val_image_size)
        key = f"{start + i:06d}"
        with atomic_path(images / f"{key}.jpg") as tmp:
            tmp.write_bytes(encode_jpeg(scene.image, 95))
        label = Image.fromarray(scene.labels, mode="P")
        label.putpalette(palette)
        with atomic_path(annotations / f"{key}.png") as tmp:
            label.save(tmp, format="PNG")
    return {"split": "val", "rows": count}


def _palette() -> list[int]:
    rng = np.random.default_rng(12345)
    colours = rng.integers(0, 256, size=(256, 3))
    colours[255] = 255
    return colours.astype(np.uint8).ravel().tolist()


def _chunks(total: int, size: int) -> list[tuple[int, int, int]]:
    return [(i, i * size, min(size, total - i * size)) for i in range(math.ceil(total / size))]


def generate_world(
    out: str | os.PathLike, cfg: WorldConfig = WorldConfig(), workers: int = 1, progress: bool = True
) -> dict:
    """Write the whole world under ``out``; a rerun with the same config finds it done."""
    out = Path(out)
    record_path = out / "world.json"
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())] if out.is_dir() else []:
        remove_stale_temporaries(folder)  # left by a killed run
    if record_path.exists():
        existing = json.loads(record_path.read_text())
        if existing.get("config") == asdict(cfg):
            return existing
    jobs: list[tuple[Callable[..., dict], tuple]] = [
        (generate_pairs_shard, (cfg, split, shard, start, count, str(out)))
        for split in ("train", "teacher")
        for shard, start, count in _chunks(getattr(cfg, split), cfg.shard_size)
    ]
    jobs += [
        (generate_val_chunk, (cfg, chunk, start, count, str(out))) for chunk, start, count in _chunks(cfg.val, 100)
    ]
    results = []
    total = cfg.train + cfg.teacher + cfg.val
    with tqdm(total=total, unit="img", unit_scale=True, desc="synth", disable=not progress, dynamic_ncols=True) as bar:
        if workers <= 1:
            for fn, args in jobs:
                results.append(fn(*args))
                bar.update(results[-1]["rows"])
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                for future in as_completed([pool.submit(fn, *args) for fn, args in jobs]):
                    results.append(future.result())
                    bar.update(results[-1]["rows"])
        seconds = bar.format_dict["elapsed"]
    (out / "val").mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "val" / "classes.txt") as tmp:
        tmp.write_text("\n".join(cfg.classes()) + "\n")
    train = [r for r in results if r["split"] == "train"]
    present, named = sum(r["present"] for r in train), sum(r["named"] for r in train)
    record = {
        "config": asdict(cfg),
        "classes": cfg.classes(),
        "things": [t.name for t in cfg.things()],
        "stuff": STUFF_NAMES,
        "confusable_groups": _groups(cfg.things()),
        "counts": {"train": cfg.train, "teacher": cfg.teacher, "val": cfg.val},
        "omission": {
            "target": cfg.omit,
            "measured_train": round(1 - named / max(present, 1), 4),
            # the share the naming rule aims at; short of the target when the target is out of reach
            # (the salient thing is always named, at most max_other_things others)
            "reachable_train": round(sum(r["expected_omit"] * r["present"] for r in train) / max(present, 1), 4),
            "present_per_image": round(present / max(cfg.train, 1), 3),
            "named_per_image": round(named / max(cfg.train, 1), 3),
        },
        "generation": {"seconds": round(seconds, 2), "pairs_per_second": round(total / max(seconds, 1e-9), 1)},
    }
    atomic_write_json(record_path, record)
    return record


def _groups(things: Sequence[Thing] = THINGS) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for thing in things:
        groups.setdefault(thing.group, []).append(thing.name)
    return groups
