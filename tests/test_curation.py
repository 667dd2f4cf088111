"""End-to-end curation on a small synthetic world with a tiny random-init open_clip: build-bank, then enrich."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import testkit

from cocu.curation.bank.build import build_bank
from cocu.curation.bank.config import BankConfig
from cocu.curation.bank.layout import BankError
from cocu.curation.bank.reader import Bank
from cocu.curation.concepts.vocabulary import Vocabulary
from cocu.curation.core.shards import sha256_file
from cocu.curation.enrich.curator import EnrichConfig
from cocu.curation.enrich.run import enrich

MODEL = "cocu-test-tiny"
TINY = testkit.tiny_clip_config(width=64, layers=2)
SHARD_ROWS = 100


def save_tiny_clip(folder: Path, seed: int, name: str = MODEL) -> Path:
    return testkit.save_tiny_clip(folder, name, TINY, seed)


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """World (6 shards of 100), a bank built from it, and one enrich run (batches of 40 rows)."""
    from cocu.curation.inputs.synthetic import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("curation")
    generate_world(
        root / "world", WorldConfig(train=6 * SHARD_ROWS, teacher=0, val=0, shard_size=SHARD_ROWS), progress=False
    )
    checkpoint = save_tiny_clip(root / "ckpt", seed=1)
    summary = build_bank(
        root / "world" / "train",
        root / "bank",
        BankConfig(model=MODEL, pretrained=str(checkpoint), batch_size=64, decode_workers=1),
        progress=False,
    )
    assert summary.ok, summary.embed.failures
    config = EnrichConfig(batch_size=40)
    stage = enrich(root / "bank", root / "world" / "train", root / "out", config, progress=False)
    assert stage.ok, stage.failures
    return {
        "root": root,
        "world": root / "world",
        "bank": root / "bank",
        "out": root / "out",
        "checkpoint": checkpoint,
        "summary": summary,
        "stage": stage,
        "config": config,
    }


# ------------------------------------------------------------------------------------------- bank


def test_bank_manifest_and_layout(curated):
    bank_dir, world = curated["bank"], curated["world"]
    manifest = json.loads((bank_dir / "manifest.json").read_text())
    sources = sorted((world / "train").glob("*.parquet"))
    assert manifest["model"]["name"] == MODEL
    assert manifest["model"]["checkpoint_sha256"] == sha256_file(curated["checkpoint"])
    assert manifest["embedding_dim"] == 64 and manifest["rows"] == 6 * SHARD_ROWS and manifest["undecodable"] == 0
    assert manifest["index"]["factory"] == "Flat"
    assert manifest["prompt_template"] == "a photo of a {}."
    assert [s["sha256"] for s in manifest["sources"]] == [sha256_file(p) for p in sources]
    assert manifest["cocu_version"]
    vocabulary = Vocabulary.load(bank_dir / "vocabulary.json")
    assert manifest["vocabulary"]["digest"] == vocabulary.digest()
    assert {"mug", "cup", "grass", "sky"} <= set(vocabulary.concepts)

    embeddings = np.load(bank_dir / "embeddings.npy", mmap_mode="r")
    assert isinstance(embeddings, np.memmap) and embeddings.dtype == np.float16 and embeddings.shape == (600, 64)
    assert np.allclose(np.linalg.norm(embeddings.astype(np.float32), axis=1), 1, atol=2e-3)
    images = pq.read_table(bank_dir / "images.parquet")
    keys = [k for p in sources for k in pq.read_table(p, columns=["key"]).column("key").to_pylist()]
    assert images.column("id").to_pylist() == list(range(600)) and images.column("key").to_pylist() == keys
    captions = [c for p in sources for c in pq.read_table(p, columns=["caption"]).column("caption").to_pylist()]
    assert images.column("caption_concepts").to_pylist() == vocabulary.match_many(captions)
    concepts = pq.read_table(bank_dir / "concepts.parquet")
    assert concepts.column("concept").to_pylist() == list(vocabulary.concepts)
    assert concepts.column("count").to_pylist() == list(vocabulary.counts)
    assert concepts.column("prompt").to_pylist()[vocabulary.index("umbrella")] == "a photo of an umbrella."
    assert faiss.read_index(str(bank_dir / "index.faiss")).ntotal == 600


def test_bank_embeddings_are_what_open_clip_gives_a_user(curated):
    """The user's own call (config registered, pretrained=PATH) reproduces the stored image and text embeddings."""
    import io

    import open_clip
    import torch
    from PIL import Image

    open_clip.add_model_config(curated["checkpoint"].parent / f"{MODEL}.json")
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=str(curated["checkpoint"]))
    model.eval()
    shard = pq.read_table(sorted((curated["world"] / "train").glob("*.parquet"))[0]).slice(0, 8)
    pixels = torch.stack(
        [preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in shard.column("jpg").to_pylist()]
    )
    with torch.no_grad():
        expected = model.encode_image(pixels, normalize=True).numpy()
        text = model.encode_text(open_clip.get_tokenizer(MODEL)(["a photo of a mug."]), normalize=True).numpy()[0]
    stored = np.load(curated["bank"] / "embeddings.npy", mmap_mode="r")[:8].astype(np.float32)
    np.testing.assert_allclose(stored, expected, atol=2e-3)
    table = pq.read_table(curated["bank"] / "concepts.parquet")
    row = table.column("concept").to_pylist().index("mug")
    np.testing.assert_allclose(np.asarray(table.column("embedding")[row].as_py(), np.float32), text, atol=2e-3)


def test_build_bank_rerun_resumes_and_skips(curated, tmp_path):
    bank_dir = curated["bank"]
    config = BankConfig(model=MODEL, pretrained=str(curated["checkpoint"]), batch_size=64, decode_workers=1)
    manifest = (bank_dir / "manifest.json").read_bytes()
    again = build_bank(curated["world"] / "train", bank_dir, config, progress=False)
    assert again.embed.skipped == 6 and again.embed.done == 0 and again.steps_run == []
    # lose one finished part (a crash before its manifest): only that shard is embedded again, to the same bytes
    part_manifest = sorted((bank_dir / "parts").glob("*.manifest.json"))[2]
    part_manifest.unlink()
    resumed = build_bank(curated["world"] / "train", bank_dir, config, progress=False)
    assert resumed.embed.done == 1 and resumed.embed.skipped == 5 and resumed.steps_run == []
    assert (bank_dir / "manifest.json").read_bytes() == manifest


def test_index_factory_override_rebuilds_only_the_index(curated, tmp_path):
    bank_dir = tmp_path / "bank"
    shutil.copytree(curated["bank"], bank_dir)
    shards = curated["world"] / "train"
    base = {"model": MODEL, "pretrained": str(curated["checkpoint"]), "decode_workers": 1}
    with pytest.raises(BankError, match="index factory 'IVFx,Flat' failed for 600 x 64 vectors: could not parse"):
        build_bank(shards, bank_dir, BankConfig(**base, factory="IVFx,Flat"), progress=False)
    assert not (bank_dir / "manifest.json").exists()  # incomplete, and enrich says so
    with pytest.raises(BankError, match="not a complete bank"):
        enrich(bank_dir, shards, tmp_path / "never", progress=False)
    summary = build_bank(shards, bank_dir, BankConfig(**base, factory="IVF4,Flat", nprobe=4), progress=False)
    assert summary.steps_run == ["index", "manifest"] and summary.factory == "IVF4,Flat"
    assert Bank.open(bank_dir).searcher.params == "nprobe=4"
    first = sorted(shards.glob("*.parquet"))[0]
    enrich(bank_dir, first, tmp_path / "out", curated["config"], progress=False)
    # every list probed is exhaustive search: the same neighbours, the same curation
    assert pq.read_table(tmp_path / "out" / first.name).equals(pq.read_table(curated["out"] / first.name))


# ------------------------------------------------------------------------------------------- enrich output


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def test_enrich_output_schema_rows_and_readers(curated):
    import datasets
    import duckdb
    import pandas as pd

    vocabulary = Vocabulary.load(curated["bank"] / "vocabulary.json")
    inputs, outputs = _shards(curated["world"] / "train"), _shards(curated["out"])
    assert [p.name for p in outputs] == [p.name for p in inputs]
    for source, target in zip(inputs, outputs):
        before, after = pq.read_table(source), pq.read_table(target)
        assert after.num_rows == before.num_rows == SHARD_ROWS
        assert after.select(before.column_names).equals(before)  # every input column, unchanged
        assert after.schema.names == before.column_names + [
            "caption_concepts",
            "cocu_concepts",
            "cocu_scores",
            "cocu_clusters",
            "cocu_error",
        ]
        assert after.schema.field("cocu_scores").type == pa.list_(pa.float32())
        assert after.schema.field("cocu_clusters").type == pa.list_(pa.int32())
        rows = after.drop_columns(["jpg"]).to_pylist()
        for row in rows:
            assert row["caption_concepts"] == vocabulary.match(row["caption"])
            assert row["cocu_error"] is None
            assert len(row["cocu_concepts"]) >= 1  # the whole archive
            assert len(set(row["cocu_concepts"])) == len(row["cocu_concepts"])
            assert len(row["cocu_scores"]) == len(row["cocu_concepts"]) == len(row["cocu_clusters"])
            assert row["cocu_scores"] == sorted(row["cocu_scores"], reverse=True)
            assert all(math.isfinite(s) for s in row["cocu_scores"])
            first_seen = list(dict.fromkeys(row["cocu_clusters"]))
            assert first_seen == list(range(len(first_seen)))  # canonical: the best concept is in cluster 0
    counts = curated["stage"].counts
    assert (
        counts["images"] == counts["curated"] == counts["reused"] == 600 and counts["embedded"] == counts["errors"] == 0
    )

    files = [str(p) for p in outputs]
    loaded = datasets.load_dataset("parquet", data_files=files, split="train")
    assert loaded.num_rows == 600 and loaded.features["cocu_concepts"].feature.dtype == "string"
    assert pd.read_parquet(files[0]).shape[0] == SHARD_ROWS
    got = duckdb.sql(f"SELECT count(*), sum(len(cocu_concepts)) FROM read_parquet({files!r})").fetchall()[0]
    assert got == (600, counts["concepts"])


def reference_rank(anchor, self_id, own, search, image_concepts, embeddings, text, neighbors, top_k, floor):
    """The ``cocu`` formula as a plain per-image loop (the specification of ``rank``): L others, the anchor once,
    its own concepts in the archive, the local term's denominator at least ``floor``."""
    _, found = search(anchor[None].astype(np.float32), neighbors + 1)
    ids = [int(i) for i in found[0] if i >= 0]
    ids = [i for i in ids if i != self_id] if self_id in ids else ids[:neighbors]
    archive = set(own)
    for i in ids:
        archive |= set(image_concepts[i])
    stats, peak = {}, -math.inf
    for c in archive:
        g = float(np.dot(text[c].astype(np.float64), anchor.astype(np.float64)))
        sims = [g] + [
            float(np.dot(text[c].astype(np.float64), embeddings[i].astype(np.float64)))
            for i in ids
            if c in image_concepts[i]
        ]
        peak = max(peak, max(sims))
        stats[c] = (g, sum(sims) / len(sims))
    scale = peak if peak > 0 else 1.0
    scores = {c: g / scale + g / max(mean, floor) for c, (g, mean) in stats.items()}
    best = sorted(scores, key=lambda c: (-scores[c], c))[: top_k or None]
    return best, [scores[c] for c in best]


def test_ranking_equals_per_image_reference(curated):
    bank = Bank.open(curated["bank"])
    embeddings = np.asarray(bank.embeddings)
    image_concepts = bank.image_concepts.tolist()
    names = bank.concept_names.to_pylist()
    config = curated["config"]
    compared = 0
    for target in _shards(curated["out"]):
        table = pq.read_table(target, columns=["key", "caption_concepts", "cocu_concepts", "cocu_scores"])
        ids = bank.lookup(table.column("key").combine_chunks())
        for row, bank_id in zip(table.to_pylist(), ids):
            own = [names.index(c) for c in row["caption_concepts"]]
            best, scores = reference_rank(
                embeddings[bank_id],
                int(bank_id),
                own,
                bank.searcher.search,
                image_concepts,
                embeddings,
                bank.text,
                config.neighbors,
                config.top_k,
                bank.local_floor,
            )
            assert row["cocu_concepts"] == [names[c] for c in best], row["key"]
            np.testing.assert_allclose(row["cocu_scores"], scores, rtol=1e-5, atol=1e-5)
            compared += 1
    assert compared == 600


def enrich_args(curated: dict, out: Path, *extra: str) -> list[str]:
    """`cocu-curate enrich` of the fixture's world with its bank into ``out``."""
    shards = str(curated["world"] / "train")
    return ["enrich", "--bank", str(curated["bank"]), "--shards", shards, "--out", str(out), *extra]


@pytest.mark.slow
def test_kill_during_enrich_then_rerun_equals_clean_run(curated, tmp_path):
    """kill -9 mid-run, rerun: the output equals the uninterrupted run's, byte for byte, with no temporaries left."""
    killed = tmp_path / "killed"
    batch = str(curated["config"].batch_size)
    command = [sys.executable, "-m", "cocu.cli.curate", *enrich_args(curated, killed, "--batch-size", batch)]
    process = subprocess.Popen(
        command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not list(killed.glob("*.manifest.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(list(killed.glob("*.manifest.json")))
    assert 1 <= done_before < 6, "the kill should land mid-run"

    rerun = enrich(curated["bank"], curated["world"] / "train", killed, curated["config"], progress=False)
    assert rerun.ok and rerun.skipped == done_before and rerun.done == 6 - done_before
    for a, b in zip(_shards(killed), _shards(curated["out"]), strict=True):
        assert a.name == b.name and a.read_bytes() == b.read_bytes()
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_parallel_workers_give_the_same_output(curated, tmp_path):
    summary = enrich(
        curated["bank"], curated["world"] / "train", tmp_path / "parallel", curated["config"], workers=2, progress=False
    )
    assert summary.ok and summary.done == 6 and summary.counts == curated["stage"].counts
    for a, b in zip(_shards(tmp_path / "parallel"), _shards(curated["out"]), strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_enrich_refuses_another_model(curated, tmp_path):
    from typer.testing import CliRunner

    from cocu.cli.curate import app

    with pytest.raises(BankError, match=f"built with {MODEL} / tiny.pt.*names ViT-B-32"):
        enrich(
            curated["bank"], curated["world"] / "train", tmp_path / "a", EnrichConfig(model="ViT-B-32"), progress=False
        )
    other = save_tiny_clip(tmp_path / "other", seed=2)  # same architecture, other weights
    with pytest.raises(BankError, match="built with .* but this run names"):
        enrich(
            curated["bank"],
            curated["world"] / "train",
            tmp_path / "b",
            EnrichConfig(pretrained=str(other)),
            progress=False,
        )
    other_model = ["--model", "ViT-B-16", "--pretrained", "openai"]
    result = CliRunner().invoke(app, enrich_args(curated, tmp_path / "c", *other_model))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and MODEL in lines[0] and "ViT-B-16 / openai" in lines[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    # the same weights under another path are the same model
    moved = tmp_path / "moved.pt"
    moved.write_bytes(curated["checkpoint"].read_bytes())
    Bank.open(curated["bank"]).check_model(MODEL, str(moved))


def test_undecodable_and_missing_images_keep_their_rows(curated, tmp_path):
    """New keys are embedded with the bank's model; a corrupt and a null image are flagged, not dropped."""
    source = pq.read_table(_shards(curated["world"] / "train")[0]).slice(0, 12)
    keys = [f"new-{k}" for k in source.column("key").to_pylist()]
    images = source.column("jpg").to_pylist()
    images[3] = b"\xff\xd8\xff\xe0 this is not a jpeg"
    images[7] = None
    captions = source.column("caption").to_pylist()
    captions[5], captions[6] = None, ""  # no caption is no error: the neighbours still bring concepts
    shard = (
        source.set_column(0, "key", pa.array(keys))
        .set_column(1, "jpg", pa.array(images, pa.binary()))
        .set_column(2, "caption", pa.array(captions, pa.string()))
    )
    (tmp_path / "in").mkdir()
    pq.write_table(shard, tmp_path / "in" / "odd.parquet")
    summary = enrich(curated["bank"], tmp_path / "in", tmp_path / "out", EnrichConfig(batch_size=5), progress=False)
    assert (
        summary.ok
        and summary.counts["errors"] == 2
        and summary.counts["embedded"] == 10
        and summary.counts["reused"] == 0
    )
    out = pq.read_table(tmp_path / "out" / "odd.parquet")
    assert out.num_rows == 12 and out.column("key").to_pylist() == keys
    rows = out.drop_columns(["jpg"]).to_pylist()
    assert rows[3]["cocu_error"].startswith("undecodable image") and rows[7]["cocu_error"] == "no image (null jpg)"
    for i, row in enumerate(rows):
        if i in (3, 7):
            assert row["cocu_concepts"] == row["cocu_scores"] == row["cocu_clusters"] == []
        else:
            assert row["cocu_error"] is None and row["cocu_concepts"]
    assert rows[5]["caption_concepts"] == rows[6]["caption_concepts"] == []
    # fresh embeddings come from the bank's model: they match the stored ones of the same images
    bank = Bank.open(curated["bank"])
    fresh = bank.load_model().embed_shard(tmp_path / "in" / "odd.parquet", batch_size=4, num_workers=0)
    ok = fresh.ok
    assert ok.sum() == 10
    stored = np.asarray(bank.embeddings[bank.lookup(source.column("key").combine_chunks())], np.float32)
    np.testing.assert_allclose(fresh.vectors[ok].astype(np.float32), stored[ok], atol=2e-3)
    # build-bank leaves the two bad images out of the index and says so
    built = build_bank(
        tmp_path / "in",
        tmp_path / "bank",
        BankConfig(
            model=MODEL,
            pretrained=str(curated["checkpoint"]),
            vocabulary=str(curated["bank"] / "vocabulary.json"),
            decode_workers=0,
        ),
        progress=False,
    )
    assert built.ok and built.rows == 10 and built.undecodable == 2


def test_a_bad_shard_fails_alone_in_one_line(curated, tmp_path):
    (tmp_path / "in").mkdir()
    good = _shards(curated["world"] / "train")[0]
    shutil.copy(good, tmp_path / "in" / good.name)
    pq.write_table(pq.read_table(good).drop_columns(["caption"]), tmp_path / "in" / "zz-no-caption.parquet")
    (tmp_path / "in" / "zz-not-parquet.parquet").write_bytes(b"PAR1 truncated")
    summary = enrich(curated["bank"], tmp_path / "in", tmp_path / "out", curated["config"], progress=False)
    assert summary.done == 1 and len(summary.failures) == 2
    assert all("\n" not in f for f in summary.failures)
    assert "zz-no-caption.parquet: missing required column 'caption'" in summary.failures[0]
    assert "zz-not-parquet.parquet: not a readable Parquet file" in summary.failures[1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [good.name, good.name.replace(".parquet", ".manifest.json")]
    )


@pytest.mark.slow
def test_cli_help_and_status(curated):
    from typer.testing import CliRunner

    from cocu.cli.curate import app

    runner = CliRunner()
    for command in (["--help"], ["build-bank", "--help"], ["enrich", "--help"], ["status", "--help"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    assert "--neighbors" in runner.invoke(app, ["enrich", "--help"]).output
    status = runner.invoke(app, ["status", "--out", str(curated["out"])])
    assert status.exit_code == 0 and "enrich" in status.output and "6 shard(s) done" in status.output
    bank_status = runner.invoke(app, ["status", "--out", str(curated["bank"])])
    assert "complete; 600 images" in bank_status.output
    shards, root = str(curated["world"] / "train"), curated["root"]
    missing = runner.invoke(app, ["enrich", "--bank", str(root / "nope"), "--shards", shards, "--out", str(root / "x")])
    assert missing.exit_code == 1 and "no such bank directory" in missing.stderr
    unknown_tag = ["build-bank", "--shards", shards, "--model", MODEL, "--pretrained", "no-such-tag"]
    bad_tag = runner.invoke(app, [*unknown_tag, "--out", str(root / "never")])
    assert bad_tag.exit_code == 1 and not (curated["root"] / "never").exists()
    assert bad_tag.stderr.strip().splitlines() == [
        f"error: cannot load CLIP {MODEL} / no-such-tag: Pretrained value 'no-such-tag' "
        "is not a known tag or valid file path"
    ]


def test_stages_give_back_the_callers_thread_counts(curated, tmp_path):
    """build_bank and enrich set their workers' thread shares in this process too, and restore the caller's after."""
    import torch

    saved = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(3)
    faiss.omp_set_num_threads(3)
    try:
        config = BankConfig(model=MODEL, pretrained=str(curated["checkpoint"]), batch_size=64, decode_workers=1)
        shutil.copytree(curated["bank"], tmp_path / "bank")
        next(iter(sorted((tmp_path / "bank" / "parts").glob("*.manifest.json")))).unlink()  # one shard to embed again
        assert build_bank(curated["world"] / "train", tmp_path / "bank", config, progress=False).embed.done == 1
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (3, 3)
        shard = sorted((curated["world"] / "train").glob("*.parquet"))[0]
        enrich(tmp_path / "bank", shard, tmp_path / "out", EnrichConfig(batch_size=40), workers=1, progress=False)
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (3, 3)
    finally:
        torch.set_num_threads(saved[0])
        faiss.omp_set_num_threads(saved[1])
