"""Training text modes, prompts and the Parquet data module (cocu.training.prompts, cocu.training.data)."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from cocu.curation.core.shards import ShardError
from cocu.training.data import (
    IMAGE_MEAN,
    IMAGE_STD,
    CachedTokenizer,
    CuratedShardsDataModule,
    ImageAugment,
    assign_units,
    cached_tokenizer,
    plan_units,
    scan_shards,
    text_mode,
)
from cocu.training.prompts import TEMPLATES, build_texts, draw_cluster_guided, draw_uniform, take_top

K = 3
CONTEXT = 32


def softmax(x) -> np.ndarray:
    e = np.exp(np.asarray(x, dtype=np.float64) - np.max(x))
    return e / e.sum()


# ---------------------------------------------------------------------------------------------- prompts (pure)


def test_draw_uniform_takes_distinct_concepts_of_the_row_only():
    rng = np.random.default_rng(0)
    rows = [["dog", "cat", "dog", "sofa", "lamp"], ["sky"], [], ["a", "b", "c"]]
    seen = Counter()
    for _ in range(300):
        drawn = draw_uniform(rows, K, rng)
        assert [len(d) for d in drawn] == [3, 1, 0, 3]
        for row, chosen in zip(rows, drawn):
            assert set(chosen) <= set(row) and len(set(chosen)) == len(chosen)
        seen.update(drawn[0])
    # every one of the 4 distinct concepts is drawn, each about 3/4 of the time
    assert set(seen) == {"dog", "cat", "sofa", "lamp"}
    assert all(abs(n / 300 - 0.75) < 0.1 for n in seen.values())


def test_take_top_is_the_first_k_in_order():
    assert take_top([["a", "b", "c", "d"], ["x"], []], K) == [["a", "b", "c"], ["x"], []]


def test_build_texts_fills_templates_and_pads_with_the_caption():
    rng = np.random.default_rng(1)
    texts = build_texts(["cap one", "cap two", "cap three"], [["dog", "cat", "sofa"], ["sky"], []], K, rng)
    assert [t[0] for t in texts] == ["cap one", "cap two", "cap three"]
    assert all(len(t) == 1 + K for t in texts)
    assert texts[1][2:] == ["cap two", "cap two"] and texts[2][1:] == ["cap three"] * 3
    fills = {template(c): c for template in TEMPLATES for c in ("dog", "cat", "sofa", "sky")}
    assert [fills[p] for p in texts[0][1:]] == ["dog", "cat", "sofa"] and fills[texts[1][1]] == "sky"
    # the template is drawn per prompt: over many draws all 80 appear
    many = build_texts(["c"] * 2000, [["dog"]] * 2000, 1, rng)
    assert len({t[1] for t in many}) == len(TEMPLATES) == 80


CLUSTER_ROW = dict(
    concepts=["dog", "puppy", "sofa", "couch", "lamp", "rug", "window"],
    scores=[2.0, 1.4, 1.6, 0.2, 0.5, -0.8, 1.0],
    clusters=[0, 0, 1, 1, 2, 3, 3],
)


def _repeat(n: int, **row):
    return [row["concepts"]] * n, [row["scores"]] * n, [row["clusters"]] * n


def test_cluster_guided_frequencies_follow_softmax_of_mean_scores():
    n = 40000
    concepts, scores, clusters = _repeat(n, **CLUSTER_ROW)
    drawn = draw_cluster_guided(concepts, scores, clusters, K, np.random.default_rng(2))
    cluster_of = dict(zip(CLUSTER_ROW["concepts"], CLUSTER_ROW["clusters"]))
    score_of = dict(zip(CLUSTER_ROW["concepts"], CLUSTER_ROW["scores"]))
    for chosen in drawn[:2000]:
        assert len(chosen) == K and len({cluster_of[c] for c in chosen}) == K  # k different clusters
    # first draw: cluster ~ softmax(mean score of each cluster)
    ids = sorted(set(CLUSTER_ROW["clusters"]))
    means = [np.mean([s for s, c in zip(CLUSTER_ROW["scores"], CLUSTER_ROW["clusters"]) if c == i]) for i in ids]
    first = Counter(cluster_of[d[0]] for d in drawn)
    np.testing.assert_allclose([first[i] / n for i in ids], softmax(means), atol=0.012)
    # inside a cluster: concept ~ softmax(score), whichever slot the cluster was drawn in
    for cid in ids:
        members = [c for c in CLUSTER_ROW["concepts"] if cluster_of[c] == cid]
        picks = Counter(c for d in drawn for c in d if cluster_of[c] == cid)
        total = sum(picks.values())
        np.testing.assert_allclose(
            [picks[m] / total for m in members], softmax([score_of[m] for m in members]), atol=0.015
        )
    # how often each cluster is among the k drawn equals sequential sampling without replacement, computed exactly
    weights = softmax(means)
    exact = Counter()
    for order in itertools.permutations(range(len(ids)), K):
        p, left = 1.0, 1.0
        for i in order:
            p *= weights[i] / left
            left -= weights[i]
        exact.update({ids[i]: p for i in order})
    included = Counter(cluster_of[c] for d in drawn for c in d)
    np.testing.assert_allclose([included[i] / n for i in ids], [exact[i] for i in ids], atol=0.012)


def test_cluster_guided_without_clusters_samples_by_score_and_fills_short_rows():
    n = 30000
    row = dict(concepts=CLUSTER_ROW["concepts"], scores=CLUSTER_ROW["scores"], clusters=[])
    drawn = draw_cluster_guided(*_repeat(n, **row), K, np.random.default_rng(3))
    first = Counter(d[0] for d in drawn)
    np.testing.assert_allclose([first[c] / n for c in row["concepts"]], softmax(row["scores"]), atol=0.012)
    assert all(len(set(d)) == K for d in drawn)
    # two clusters for k=3: both clusters' winners first, then one more concept; never padded while concepts remain
    two = draw_cluster_guided(
        [["a", "b", "c", "d"]] * 500, [[1.0, 0.5, 0.2, 0.1]] * 500, [[0, 0, 1, 1]] * 500, K, np.random.default_rng(4)
    )
    for d in two:
        assert len(set(d)) == K and {d[0] in "ab", d[1] in "ab"} == {True, False}
    short = draw_cluster_guided([["a"], []], [[0.3], []], [[5], []], K, np.random.default_rng(5))
    assert short == [["a"], []]
    with pytest.raises(ValueError, match="row 0: 2 concepts, 1 scores"):
        draw_cluster_guided([["a", "b"]], [[0.3]], [[]], K, np.random.default_rng(6))


def test_cached_tokenizer_equals_open_clip():
    texts = ["a photo of a dog.", "Close-up of TWO red mugs &amp; a lamp!", "word " * 60, ""]
    ours = CachedTokenizer(CONTEXT)
    expected = SimpleTokenizer()(texts, context_length=CONTEXT)
    assert torch.equal(ours(texts), expected) and torch.equal(ours(texts), expected)  # second call from the cache
    assert ours(texts)[2, -1].item() == ours._bpe.eot_token_id  # truncated texts end with EOT


def test_simple_augment_normalizes_with_imagenet_statistics_in_rgb_order():
    colour = (200, 120, 40)
    batch = ImageAugment("simple", 24)([Image.new("RGB", (64, 48), colour)] * 2)
    assert batch.shape == (2, 3, 24, 24) and batch.dtype == torch.float32
    expected = (torch.tensor(colour) / 255 - torch.tensor(IMAGE_MEAN)) / torch.tensor(IMAGE_STD)
    torch.testing.assert_close(batch.mean(dim=(0, 2, 3)), expected.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.std(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def test_deit_augment_survives_posterize_at_full_magnitude():
    augment = ImageAugment("deit", 32)
    posterize = [
        op for step in augment.sample.transforms for op in getattr(step, "ops", ()) if op.name == "PosterizeIncreasing"
    ]
    assert len(posterize) == 1
    picture = Image.new("RGB", (32, 32), (200, 120, 40))
    random.seed(0)
    for _ in range(1500):  # magnitude 9 +- 0.5 hits the cap of 10 on ~2% of draws: Pillow 13 refuses 0 bits
        posterize[0](picture)
    batch = augment([picture] * 4)
    assert batch.shape == (4, 3, 32, 32) and batch.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- data module


def _truth(world: Path, split: str = "train") -> dict[str, dict]:
    rows = {}
    for path in sorted((world / "truth" / split).glob("*.parquet")):
        rows.update({r["key"]: r for r in pq.read_table(path).to_pylist()})
    return rows


@pytest.fixture(scope="module")
def world(small_world) -> Path:
    return Path(small_world[0])


@pytest.fixture(scope="module")
def curated(world, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """Two train shards of the small world with the curated columns enrich writes, some rows bad on purpose."""
    out = tmp_path_factory.mktemp("curated")
    truth = _truth(world)
    classes = (world / "val" / "classes.txt").read_text().split()
    by_key: dict[str, dict] = {}
    i = 0
    for shard in sorted((world / "train").glob("*.parquet"))[:2]:
        rows = pq.read_table(shard).to_pylist()
        for row in rows:
            present = truth[row["key"]]["present"]
            concepts = present + [c for c in classes if c not in present][:2]
            if i % 7 == 0:
                concepts = concepts[:1]
            elif i % 11 == 0:
                concepts = []
            row.update(
                caption_concepts=truth[row["key"]]["named"],
                cocu_concepts=concepts,
                cocu_scores=[2.0 - 0.3 * j for j in range(len(concepts))],
                cocu_clusters=[] if i % 3 == 0 else [j // 2 for j in range(len(concepts))],
                cocu_error=None,
            )
            if i % 10 == 3:  # enrich keeps the row with empty lists and says why
                row.update(
                    caption_concepts=[],
                    cocu_concepts=[],
                    cocu_scores=[],
                    cocu_clusters=[],
                    cocu_error="image not embedded",
                )
            elif i % 50 == 7:
                row["jpg"] = b"\xff\xd8 not a jpeg"
            by_key[row["key"]] = row
            i += 1
        schema = pq.read_schema(shard)
        schema = schema.append(pa.field("caption_concepts", pa.list_(pa.string()))).append(
            pa.field("cocu_concepts", pa.list_(pa.string()))
        )
        schema = schema.append(pa.field("cocu_scores", pa.list_(pa.float32()))).append(
            pa.field("cocu_clusters", pa.list_(pa.int32()))
        )
        schema = schema.append(pa.field("cocu_error", pa.string()))
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / shard.name, row_group_size=250)
    return out, by_key


def _tokens(texts):
    return cached_tokenizer(CONTEXT)(texts)


def _prompt_lookup(concepts) -> dict[tuple[int, ...], str]:
    """Token ids of every template filled with every concept -> the concept, to read concepts back from batches."""
    concepts = set(concepts)
    pairs = [(template(c), c) for template in TEMPLATES for c in concepts]
    tokens = _tokens([p for p, _ in pairs])
    return {tuple(row.tolist()): c for row, (_, c) in zip(tokens, pairs)}


@pytest.fixture(scope="module")
def prompt_of(world) -> dict[tuple[int, ...], str]:
    return _prompt_lookup((world / "val" / "classes.txt").read_text().split())


def _module(shards, mode: str, world: Path | None = None, **kwargs) -> CuratedShardsDataModule:
    options = dict(
        batch_size=64,
        num_workers=0,
        image_size=32,
        text_mode=mode,
        num_prompts=K,
        context_length=CONTEXT,
        truth=str(world / "truth" / "train") if world and text_mode(mode).needs_truth else None,
        seed=0,
        shuffle_buffer=256,
    )
    options.update(kwargs)
    return CuratedShardsDataModule(str(shards), **options)


def _samples(batches, by_key, prompt_of):
    """(row, chosen concepts, number of caption pads) per sample, checking the caption row on the way."""
    for batch in batches:
        assert batch["image"].shape == (64, 3, 32, 32) and batch["image"].dtype == torch.float32
        assert batch["text"].shape == (64, 1 + K, CONTEXT) and batch["text"].dtype == torch.long
        for key, text in zip(batch["key"], batch["text"]):
            row = by_key[key]
            caption = _tokens([row["caption"]])[0]
            assert torch.equal(text[0], caption)
            pads = sum(torch.equal(t, caption) for t in text[1:])
            chosen = [prompt_of[tuple(t.tolist())] for t in text[1:] if not torch.equal(t, caption)]
            assert all(torch.equal(t, caption) for t in text[1 + len(chosen) :])  # pads come last
            yield row, chosen, pads


@pytest.mark.parametrize("mode", ["caption", "cocu-top", "cocu-cluster", "oracle"])
def test_each_text_mode_yields_its_concepts(mode, curated, world, prompt_of):
    shards, by_key = curated
    truth = _truth(world)
    stream = _module(shards, mode, world).stream()
    count = 0
    for row, chosen, pads in _samples(itertools.islice(iter(stream), 3), by_key, prompt_of):
        count += 1
        assert row["cocu_error"] is None
        assert len(set(chosen)) == len(chosen) and pads == K - len(chosen)
        if mode == "caption":
            source = row["caption_concepts"]
        elif mode == "oracle":
            source = truth[row["key"]]["present"]
        else:
            source = row["cocu_concepts"]
        if mode == "cocu-top":
            assert chosen == source[:K]
        else:
            assert set(chosen) <= set(source) and len(chosen) == min(K, len(set(source)))
    assert count == 3 * 64


def _decoded(batch, by_key, prompt_of):
    """(key, caption tokens, the concept of every prompt slot or None for a caption pad, prompt tokens) per sample."""
    for key, text in zip(batch["key"], batch["text"]):
        caption = _tokens([by_key[key]["caption"]])[0]
        assert torch.equal(text[0], caption)
        slots = [None if torch.equal(t, caption) else prompt_of[tuple(t.tolist())] for t in text[1:]]
        yield key, slots, [tuple(t.tolist()) for t in text[1:]]


def test_oracle_all_prompts_hold_every_true_concept_above_the_area_threshold_and_nothing_else(
    curated, world, prompt_of
):
    from cocu.training.data.text_modes import ORACLE_MIN_AREA

    shards, by_key = curated
    truth = _truth(world)
    above = {
        key: {c for c, a in zip(row["present"], row["areas"]) if a >= ORACLE_MIN_AREA} for key, row in truth.items()
    }
    below = {key: set(row["present"]) - above[key] for key, row in truth.items()}
    needed = max(len(concepts) for concepts in above.values())
    assert needed > K and any(below.values())  # the world has images with more than K, and with small concepts
    with pytest.raises(ValueError, match=f"needs num_prompts >= {needed}.*got {K}"):
        _module(shards, "oracle-all", world).stream()
    stream = _module(shards, "oracle-all", world, num_prompts=needed).stream()
    repeated = 0
    for batch in itertools.islice(iter(stream), 3):
        assert batch["text"].shape == (64, 1 + needed, CONTEXT)
        for key, slots, tokens in _decoded(batch, by_key, prompt_of):
            assert None not in slots  # never padded with the caption
            assert set(slots) == above[key]  # every concept above the threshold, nothing else
            first = slots[: len(above[key])]
            assert len(set(first)) == len(first) and slots == [first[i % len(first)] for i in range(needed)]
            repeated += len(set(tokens)) > len(first)  # a repeated concept gets a template draw of its own
    assert repeated > 0


def test_oracle_top3_prompts_are_the_three_largest_true_concepts(curated, world, prompt_of):
    shards, by_key = curated
    truth = _truth(world)
    stream = _module(shards, "oracle-top3", world).stream()
    for batch in itertools.islice(iter(stream), 2):
        for key, slots, _ in _decoded(batch, by_key, prompt_of):
            row = truth[key]
            largest = [c for c, _ in sorted(zip(row["present"], row["areas"]), key=lambda pair: -pair[1])][:K]
            assert slots == largest + [None] * (K - len(largest))  # caption pads only when fewer than K exist


def test_a_whole_epoch_skips_error_rows_and_undecodable_images_and_stays_full(curated, world, prompt_of):
    shards, by_key = curated
    stream = _module(sorted(shards.glob("*.parquet"))[0], "cocu-cluster", world).stream()
    batches = list(stream)
    assert len(batches) == len(stream) == 500 // 64  # full batches only; the stream wraps past the skipped rows
    keys = [k for b in batches for k in b["key"]]
    assert not {k for k in keys if by_key[k]["cocu_error"] is not None or by_key[k]["jpg"].startswith(b"\xff\xd8 not")}
    assert stream.counts["skipped_cocu_error"] >= 50 and stream.counts["skipped_undecodable_image"] >= 10
    assert stream.counts["read"] >= 500
    drawn = Counter()
    for row, chosen, _ in _samples(batches, by_key, prompt_of):
        assert set(chosen) <= set(row["cocu_concepts"])
        drawn[row["cocu_concepts"].index(chosen[0]) if chosen else -1] += 1
    assert drawn[0] > drawn[1] > drawn[3] > 0  # sampled by score, not always the top one


def test_caption_mode_without_curated_columns_uses_caption_nouns(world):
    from cocu.curation.concepts.mining import caption_nouns

    shard = sorted((world / "train").glob("*.parquet"))[0]
    by_key = {r["key"]: r for r in pq.read_table(shard).to_pylist()}
    batch = next(iter(_module(shard, "caption").stream()))
    nouns = dict(zip(batch["key"], caption_nouns([by_key[k]["caption"] for k in batch["key"]])))
    rows = list(_samples([batch], by_key, _prompt_lookup(n for own in nouns.values() for n in own)))
    for row, chosen, _ in rows:
        own = nouns[row["key"]]
        assert set(chosen) <= set(own) and len(chosen) == min(K, len(own))
    assert sum(len(chosen) for _, chosen, _ in rows) > 64


def _keys_of(loader) -> list[list[str]]:
    return [list(batch["key"]) for batch in loader]


def test_two_ranks_two_workers_read_every_row_once(world):
    """Four equal shards, 2 ranks x 2 loader workers: every row exactly once per epoch, same step count per rank."""
    dm = _module(world / "train", "oracle", world, batch_size=50, num_workers=2)
    all_keys = set(_truth(world))
    seen = []
    for rank in range(2):
        loader = dm.loader(dm.stream(rank=rank, world_size=2))
        batches = _keys_of(loader)
        assert len(batches) == len(loader) == 20 and all(len(b) == 50 for b in batches)
        seen += [k for b in batches for k in b]
    assert len(seen) == len(all_keys) == 2000 and set(seen) == all_keys


def test_uneven_shards_still_give_every_rank_the_same_full_batches(world, tmp_path):
    """Shards of 150/250/100 rows (fewer than the 4 slots: row groups are split); some images broken."""
    rows = pq.read_table(world / "train").slice(0, 500).to_pylist()
    for i in range(0, 500, 37):
        rows[i]["jpg"] = b"broken"
    table = pa.Table.from_pylist(rows)
    for name, (start, stop) in {"a": (0, 150), "b": (150, 400), "c": (400, 500)}.items():
        pq.write_table(table.slice(start, stop - start), tmp_path / f"{name}.parquet", row_group_size=50)
    dm = _module(tmp_path, "oracle", world, batch_size=25, num_workers=2)
    dm.setup("fit")
    assert dm.num_samples == 500 and dm.batches_per_epoch(2) == 10
    seen = []
    for rank in range(2):  # slots hold 150 or 100 rows but each worker yields 5 batches of 25
        batches = _keys_of(dm.loader(dm.stream(rank=rank, world_size=2)))
        assert len(batches) == 10 and all(len(b) == 25 for b in batches)
        seen += [k for b in batches for k in b]
    assert not {rows[i]["key"] for i in range(0, 500, 37)} & set(seen)


@pytest.mark.parametrize(
    "shape, unit_kind", [((4, 1), "shard"), ((2, 3), "row group"), ((1, 1), "stride"), ((3, 1), "stride")]
)
def test_read_units_partition_the_rows_for_any_layout(shape, unit_kind, world, tmp_path):
    """Whole shards, row groups, or every slots-th row: the 4 slots read disjoint rows that cover everything."""
    shards, groups = shape
    rows = pq.read_table(world / "train", columns=["key", "jpg", "caption"]).slice(0, 240)
    per = 240 // shards
    for s in range(shards):
        pq.write_table(rows.slice(s * per, per), tmp_path / f"{s}.parquet", row_group_size=math.ceil(per / groups))
    infos = scan_shards(str(tmp_path), text_mode("oracle"))
    units = plan_units(infos, 4)
    assert {
        "shard": len(units) == shards,
        "row group": len(units) == shards * groups,
        "stride": len(units) == shards * 4,
    }[unit_kind]
    stream = _module(tmp_path, "oracle", world, batch_size=10).stream()
    for epoch in range(2):
        per_slot = [
            [row[0] for unit in slot for row in stream._read(unit)] for slot in assign_units(units, 4, 0, epoch)
        ]
        keys = [k for slot in per_slot for k in slot]
        assert sorted(keys) == sorted(rows.column("key").to_pylist())
        assert max(map(len, per_slot)) - min(map(len, per_slot)) <= per // groups
    assert assign_units(units, 4, 0, 0) != assign_units(units, 4, 0, 1)  # each epoch reshuffles who reads what


def test_the_epoch_comes_from_the_lightning_trainer(curated, world):
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.keys: dict[int, list[str]] = {}

        def training_step(self, batch, batch_idx):
            assert batch["text"].shape[1:] == (1 + K, CONTEXT)
            self.keys.setdefault(self.current_epoch, []).extend(batch["key"])
            return (self.weight * batch["image"].mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    shards, _ = curated
    dm = _module(sorted(shards.glob("*.parquet"))[0], "cocu-top", world, batch_size=100)
    model = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert sorted(model.keys) == [0, 1] and all(len(keys) == 500 for keys in model.keys.values())
    assert model.keys[0] != model.keys[1] and trainer.train_dataloader.dataset.epoch == 1


def test_bad_configurations_fail_with_one_line_messages(world, curated, tmp_path):
    train = world / "train"
    with pytest.raises(ShardError, match=r"00000\.parquet: missing required column 'cocu_concepts'"):
        _module(train, "cocu-top").setup("fit")
    with pytest.raises(ValueError, match="needs truth"):
        _module(train, "oracle", truth=None)
    with pytest.raises(ValueError, match="text_mode must be one of"):
        _module(train, "nouns")
    with pytest.raises(ValueError, match="no full batch of 5000"):
        _module(train, "oracle", world, batch_size=5000).setup("fit")
    wrong_truth = _module(train, "oracle", truth=str(world / "truth" / "teacher")).stream()
    with pytest.raises(ShardError, match=r"row \d+: key '\d+' has no row in the truth sidecar"):
        next(iter(wrong_truth))
    broken = pq.read_table(sorted(train.glob("*.parquet"))[0]).slice(0, 120).to_pylist()
    for row in broken:
        row["jpg"] = b"garbage"
    pq.write_table(pa.Table.from_pylist(broken), tmp_path / "bad.parquet")
    with pytest.raises(ShardError, match="no image decodes in a full pass"):
        next(iter(_module(tmp_path, "oracle", world, batch_size=50).stream()))
