"""`--formula release` against a plain port of the authors' per-image function (``rewrite/curation.py``, ``cocu()``).

The port below is written from the release, line for line in spirit, and imports nothing of cocu's ranking: it reads
the bank's files as the release reads its own (image embeddings, FAISS index, caption concepts, concept embeddings)
and keeps only the crash-class fixes that ``release`` is allowed: caption concepts compared as a list (no substring
match), a zero maximum or mean leaves the score finite, ties broken alphabetically instead of by set order.
"""

from __future__ import annotations

import json
import math
import shutil

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from test_curation import MODEL, save_tiny_clip
from typer.testing import CliRunner

from cocu.cli.curate import app

IMAGES, SHARD = 400, 200


def release_cocu(
    image_idx, num_neighbours, index, data_img_emb, index_img_emb, index_semantics, data_concept2idx, data_concept2emb
):
    """The release's per-image function (enable_kmeans=False), its crash bugs fixed and nothing else."""
    img_emb = data_img_emb[[image_idx]]
    _, local_img_idxs = index.search(img_emb.astype(np.float32), num_neighbours)
    hits = [i for i in local_img_idxs[0] if i >= 0]
    l_semantics = [index_semantics[i] for i in hits]
    l_img_emb = index_img_emb[hits, :]
    archive = sorted({c for semantics in l_semantics for c in semantics})  # fix: no hash order
    if not archive:
        return {}
    local_probs, global_probs, max_prob = np.zeros(len(archive)), np.zeros(len(archive)), 0.0
    for concept_index, concept in enumerate(archive):
        concept_emb = data_concept2emb[data_concept2idx[concept], :]
        r_img_idx = [i for i, semantics in enumerate(l_semantics) if concept in semantics]  # fix: list, not substring
        r_img_emb = np.concatenate([l_img_emb[r_img_idx, :], img_emb])
        sim = concept_emb @ r_img_emb.T
        global_probs[concept_index] = sim[-1]
        average = np.average(sim)
        local_probs[concept_index] = sim[-1] / average if average != 0 else 0.0  # fix: no division by zero
        max_prob = max(sim.max(), max_prob)
    probs = global_probs / (max_prob if max_prob > 0 else 1.0) + local_probs  # fix: no division by zero
    scored = dict(zip(archive, probs))
    return dict(sorted(scored.items(), key=lambda item: (-item[1], item[0])))  # fix: ties alphabetical


@pytest.fixture(scope="module")
def release_run(tmp_path_factory):
    from cocu.curation.inputs.synthetic import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("release")
    generate_world(root / "world", WorldConfig(train=IMAGES, teacher=0, val=0, shard_size=SHARD), progress=False)
    checkpoint = save_tiny_clip(root / "ckpt", seed=2)
    runner = CliRunner()
    built = runner.invoke(
        app,
        [
            "build-bank",
            "--shards",
            str(root / "world" / "train"),
            "--model",
            MODEL,
            "--pretrained",
            str(checkpoint),
            "--out",
            str(root / "bank"),
            "--template",
            "release",
            "--min-count",
            "2",
            "--decode-workers",
            "1",
        ],
    )
    assert built.exit_code == 0, built.output
    curated = runner.invoke(
        app,
        [
            "enrich",
            "--bank",
            str(root / "bank"),
            "--shards",
            str(root / "world" / "train"),
            "--out",
            str(root / "out"),
            "--formula",
            "release",
            "--no-clusters",
            "--batch-size",
            "64",
        ],
    )
    assert curated.exit_code == 0, curated.output
    return root


def read_bank(bank):
    """The bank's files as the release holds its inputs."""
    embeddings = np.load(bank / "embeddings.npy").astype(np.float64)
    images = pq.read_table(bank / "images.parquet", columns=["key", "caption_concepts"]).to_pylist()
    concepts = pq.read_table(bank / "concepts.parquet", columns=["concept", "prompt", "embedding"]).to_pylist()
    concept2idx = {row["concept"]: i for i, row in enumerate(concepts)}
    concept2emb = np.array([row["embedding"] for row in concepts], dtype=np.float64)
    return embeddings, images, concepts, concept2idx, concept2emb, faiss.read_index(str(bank / "index.faiss"))


@pytest.mark.slow
def test_release_formula_equals_the_ported_release_on_every_bank_image(release_run):
    embeddings, images, concepts, concept2idx, concept2emb, index = read_bank(release_run / "bank")
    assert json.loads((release_run / "bank" / "manifest.json").read_text())["prompt_template"] == "a photo of a {}"
    assert all(row["prompt"] == f"a photo of a {row['concept']}" for row in concepts)  # always "a", no period
    semantics = [row["caption_concepts"] for row in images]
    row_of = {row["key"]: i for i, row in enumerate(images)}
    curated = [
        row
        for path in sorted((release_run / "out").glob("*.parquet"))
        for row in pq.read_table(path, columns=["key", "cocu_concepts", "cocu_scores"]).to_pylist()
    ]
    assert len(curated) == len(images) == IMAGES
    compared = large = 0
    for row in curated:
        i = row_of[row["key"]]
        expected = release_cocu(i, 8, index, embeddings, embeddings, semantics, concept2idx, concept2emb)
        assert row["cocu_concepts"] == list(expected), row["key"]  # the whole archive, in the same order
        for got, want in zip(row["cocu_scores"], expected.values()):
            if math.isfinite(want):
                assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (row["key"], got, want)  # float32 storage
        compared += 1
        large += any(abs(v) > 10 for v in expected.values())
    assert compared == IMAGES
    assert large > 0  # the near-zero means the release divides by are exercised, not avoided


@pytest.mark.slow
def test_enrich_says_in_one_line_when_the_bank_prompts_are_not_the_release(release_run, tmp_path):
    bank = tmp_path / "bank"
    shutil.copytree(release_run / "bank", bank)
    manifest = json.loads((bank / "manifest.json").read_text())
    manifest.update(prompt_template="a photo of a {}.", prompt_articles=True)
    (bank / "manifest.json").write_text(json.dumps(manifest))
    shard = sorted((release_run / "world" / "train").glob("*.parquet"))[0]
    runner = CliRunner()
    for formula, expected in (("release", 1), ("cocu", 0)):
        result = runner.invoke(
            app,
            [
                "enrich",
                "--bank",
                str(bank),
                "--shards",
                str(shard),
                "--out",
                str(tmp_path / formula),
                "--formula",
                formula,
                "--no-clusters",
            ],
        )
        assert result.exit_code == 0, result.output
        notes = [line for line in result.output.splitlines() if line.startswith("note: ")]
        assert len(notes) == expected and all("--template release" in line for line in notes)
    same = runner.invoke(
        app,
        [
            "enrich",
            "--bank",
            str(release_run / "bank"),
            "--shards",
            str(shard),
            "--out",
            str(tmp_path / "same"),
            "--formula",
            "release",
            "--no-clusters",
        ],
    )
    assert same.exit_code == 0 and "note: " not in same.output


def test_release_formula_equals_the_port_for_images_outside_the_bank_too():
    """Fresh anchors (self id -1) rank with their L hits, none excluded, and not their own caption's concepts."""
    from test_curation_units import memory_bank, normalized

    from cocu.curation.enrich.curator import EnrichConfig, curate
    from cocu.curation.enrich.ranking import Ragged

    rng = np.random.default_rng(9)
    common = np.eye(24)[0] * 3.0
    text = normalized(common + rng.standard_normal((30, 24)))
    embeddings = normalized(common + rng.standard_normal((150, 24)))
    concepts = [sorted(rng.choice(30, size=rng.integers(0, 4), replace=False).tolist()) for _ in range(150)]
    bank = memory_bank(embeddings, concepts, text)
    queries = np.concatenate([embeddings[:20], normalized(common + rng.standard_normal((20, 24)))])
    self_ids = np.concatenate([np.arange(20), np.full(20, -1)])
    own = Ragged.from_lists([concepts[i] for i in range(20)] + [[0, 1]] * 20)
    got = curate(bank, queries, self_ids, own, np.arange(40), EnrichConfig(formula="release", clusters=False))
    names = bank.concept_names.to_pylist()
    semantics = [[names[c] for c in row] for row in concepts]
    index = faiss.IndexFlatIP(24)
    index.add(embeddings)
    for i, row in enumerate(got.concepts.tolist()):
        expected = release_cocu(
            i,
            8,
            index,
            queries.astype(np.float64),
            embeddings.astype(np.float64),
            semantics,
            {n: j for j, n in enumerate(names)},
            text.astype(np.float64),
        )
        assert [names[c] for c in row] == list(expected)
        scores = got.scores[got.concepts.offsets[i] : got.concepts.offsets[i + 1]]
        np.testing.assert_allclose(scores, list(expected.values()), rtol=1e-5, atol=1e-5)
