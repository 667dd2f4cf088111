"""Curation building blocks on constructed data: ranking vs the per-image reference, clustering, index, CLIP loading."""

from __future__ import annotations

import io
import json
import math

import faiss
import numpy as np
import pyarrow as pa
import pytest
import torch
from test_curation import TINY, reference_rank

from cocu.curation.bank.clip import load_clip
from cocu.curation.bank.images import decode_image
from cocu.curation.bank.index import Searcher, SearchParams, build_index, choose_factory
from cocu.curation.bank.reader import Bank
from cocu.curation.enrich.clustering import ConceptGram, canonical_labels, cluster_archives, row_seeds
from cocu.curation.enrich.curator import EnrichConfig, curate
from cocu.curation.enrich.ranking import EPS, Ragged, exclude_self, rank


def normalized(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)


def memory_bank(embeddings: np.ndarray, concepts: list[list[int]], text: np.ndarray) -> Bank:
    """A bank held in memory (what Bank.open assembles from the directory), over a flat index."""
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings.astype(np.float32))
    lists = Ragged.from_lists(concepts)
    sims = np.einsum("ij,ij->i", text[lists.values], embeddings[lists.owners()], dtype=np.float64)
    keys = pa.array([f"k{i}" for i in range(len(embeddings))])
    names = pa.array([f"c{i:03d}" for i in range(len(text))])
    return Bank(
        None,
        {"bank_id": "memory"},
        None,
        names,
        text,
        Ragged(lists.offsets, lists.values.astype(np.int32)),
        sims,
        keys,
        embeddings.astype(np.float16),
        Searcher(index),
    )


def clip_like_world(seed: int, vocab: int, rows: int = 300, dim: int = 32):
    """Image and text vectors that share a strong common direction, so similarities are mostly positive, as CLIP's
    are, and captions of 0-4 concepts; returns an in-memory bank with its embeddings, concepts and text."""
    rng = np.random.default_rng(seed)
    common = np.zeros(dim)
    common[0] = 4.0
    text = normalized(common + rng.standard_normal((vocab, dim)))
    embeddings = normalized(common + rng.standard_normal((rows, dim)))
    concepts = [sorted(rng.choice(vocab, size=rng.integers(0, 5), replace=False).tolist()) for _ in range(rows)]
    return memory_bank(embeddings, concepts, text), embeddings, concepts, text


@pytest.fixture(scope="module")
def positive_world():
    return clip_like_world(seed=7, vocab=40)


def test_vectorized_ranking_equals_reference_with_clip_like_similarities(positive_world):
    bank, embeddings, concepts, text = positive_world
    rng = np.random.default_rng(3)
    queries = np.concatenate([embeddings[:60], normalized(np.eye(32)[0] * 4 + rng.standard_normal((40, 32)))])
    self_ids = np.concatenate([np.arange(60), np.full(40, -1)])
    own = [sorted(rng.choice(40, size=rng.integers(0, 4), replace=False).tolist()) for _ in range(100)]
    config = EnrichConfig(neighbors=6, top_k=5, clusters=False)
    got = curate(bank, queries, self_ids, Ragged.from_lists(own), np.arange(100), config)
    lists, scores = got.concepts.tolist(), np.split(got.scores, got.concepts.offsets[1:-1])
    for i in range(100):
        best, expected = reference_rank(
            queries[i],
            int(self_ids[i]),
            own[i],
            bank.searcher.search,
            concepts,
            embeddings,
            text,
            config.neighbors,
            config.top_k,
            bank.local_floor,
        )
        assert lists[i] == best
        np.testing.assert_allclose(scores[i], expected, rtol=1e-5, atol=1e-5)
    # this data exercises the formula itself, not its guards
    assert (text @ queries.T > EPS).mean() > 0.9


def test_self_match_is_dropped_once_and_missing_neighbours_are_ignored():
    ids = np.array([[4, 7, 9], [1, 2, 3], [5, -1, -1]])
    assert exclude_self(ids, np.array([7, -1, 5])).tolist() == [[4, 9], [1, 2], [-1, -1]]
    rng = np.random.default_rng(0)
    text = normalized(rng.standard_normal((6, 8)))
    bank = memory_bank(normalized(rng.standard_normal((3, 8))), [[0], [1, 2], []], text)
    got = curate(
        bank,
        np.asarray(bank.embeddings[:2], np.float32),
        np.array([0, 1]),
        Ragged.from_lists([[5], []]),
        np.arange(2),
        EnrichConfig(neighbors=8, top_k=16),
    )  # only 3 images for L = 8
    assert [sorted(c) for c in got.concepts.tolist()] == [[1, 2, 5], [0]]


def test_guards_keep_scores_finite_and_empty_archives_empty():
    rng = np.random.default_rng(1)
    common = np.zeros(8)
    common[0] = 5.0
    image = normalized(common + rng.standard_normal((4, 8)))
    text = -normalized(common + rng.standard_normal((4, 8)))
    assert (text @ image.T < 0).all()  # M <= 0 and every mean <= 0: the release divides by zero or flips signs here
    lists = Ragged.from_lists([[0, 1], [], [3], []])
    sims = np.einsum("ij,ij->i", text[lists.values], image[lists.owners()], dtype=np.float64)
    hits, own = np.array([[1, 2], [3, -1]]), Ragged.from_lists([[0], []])
    ranking = rank(image[:2], hits, own, lists, sims, text, top_k=4, floor=0.1)
    assert ranking.archive.lengths.tolist() == [
        2,
        0,
    ]  # anchor 1's only neighbour (3) names nothing, nor does its caption
    g = np.sort(text[[0, 3]] @ image[0])[::-1]
    np.testing.assert_allclose(ranking.scores, g + g / 0.1, rtol=1e-6)  # M <= 0: g unscaled; means < 0: floor
    release = rank(image[:2], hits, own, lists, sims, text, top_k=4)
    assert np.isfinite(release.scores).all()
    assert (release.scores > g.max()).all()  # the raw mean flips the sign: a negative g ranks up
    bank = memory_bank(image, [[], [], [], []], text)
    empty = curate(bank, image, np.arange(4), Ragged.from_lists([[], [], [], []]), np.arange(4), EnrichConfig())
    assert empty.concepts.lengths.tolist() == [0, 0, 0, 0] and len(empty.clusters) == 0


def test_clusters_do_not_change_the_ranking(positive_world):
    bank, embeddings, _, _ = positive_world
    own = Ragged.from_lists([[1, 2]] * 50)
    on = curate(bank, embeddings[:50], np.arange(50), own, np.arange(50), EnrichConfig(clusters=True))
    off = curate(bank, embeddings[:50], np.arange(50), own, np.arange(50), EnrichConfig(clusters=False))
    assert off.clusters is None and len(on.clusters) == len(on.concepts.values)
    assert np.array_equal(on.concepts.values, off.concepts.values) and np.array_equal(on.scores, off.scores)


# ------------------------------------------------------------------------------------------- clustering


def test_kmeans_recovers_separated_groups():
    rng = np.random.default_rng(0)
    centres = normalized(rng.standard_normal((3, 16)))
    text = normalized(
        np.repeat(centres, 2, axis=0) + 0.01 * rng.standard_normal((6, 16))
    )  # concepts 2g, 2g+1 belong together
    archive = Ragged.from_lists([[0, 1, 2, 3, 4, 5]] * 20)
    labels = cluster_archives(archive, ConceptGram(text), row_seeds(0, np.arange(20)))
    for row in np.split(labels, 20):
        assert row[0] == row[1] and row[2] == row[3] and row[4] == row[5] and len(set(row.tolist())) == 3


def test_kmeans_converges_counts_and_does_not_depend_on_batching():
    rng = np.random.default_rng(5)
    text = normalized(rng.standard_normal((50, 16)))
    lists = [sorted(rng.choice(50, size=rng.integers(1, 14), replace=False).tolist()) for _ in range(64)]
    archive = Ragged.from_lists(lists)
    gram = ConceptGram(text)
    seeds = row_seeds(3, np.arange(64))
    labels = cluster_archives(archive, gram, seeds)
    halves = np.concatenate(
        [
            cluster_archives(Ragged.from_lists(lists[:23]), gram, seeds[:23]),
            cluster_archives(Ragged.from_lists(lists[23:]), gram, seeds[23:]),
        ]
    )
    assert np.array_equal(labels, halves)
    assert np.array_equal(labels, cluster_archives(archive, ConceptGram(text, table_limit=0), seeds))
    for concepts, row in zip(lists, np.split(labels, archive.offsets[1:-1])):
        n = len(concepts)
        if n <= 2:
            assert row.tolist() == list(range(n))
            continue
        assert len(set(row.tolist())) <= math.ceil(n / 2)
        points = text[concepts].astype(np.float64)
        centroids = {c: points[row == c].mean(0) for c in set(row.tolist())}
        for point, label in zip(
            points, row
        ):  # a fixed point of Lloyd's step: every point sits with its nearest centroid
            distances = {c: ((point - m) ** 2).sum() for c, m in centroids.items()}
            assert distances[label] <= min(distances.values()) + 1e-9


def test_canonical_labels_number_clusters_by_first_appearance():
    owners = np.array([0, 0, 0, 1, 1, 1])
    assert canonical_labels(owners, np.array([2, 0, 2, 1, 1, 3])).tolist() == [0, 1, 0, 0, 0, 1]


# ------------------------------------------------------------------------------------------- index


def test_factory_choice_by_corpus_size():
    assert choose_factory(100_000, 512) == "Flat" and choose_factory(1_000_000, 512) == "Flat"
    mid, large = choose_factory(3_000_000, 512), choose_factory(50_000_000, 512)
    assert mid.startswith("IVF") and "_HNSW32" in mid and mid.endswith("SQ8")
    assert large.startswith("OPQ64_256,IVF") and large.endswith("PQ64")
    for factory in (mid, large, choose_factory(20_000_000, 64)):
        faiss.index_factory(
            512 if factory != choose_factory(20_000_000, 64) else 64, factory, faiss.METRIC_INNER_PRODUCT
        )


def test_ivf_index_with_all_lists_probed_is_exact():
    rng = np.random.default_rng(0)
    vectors = normalized(rng.standard_normal((2000, 16))).astype(np.float16)
    ivf = build_index(vectors, "IVF8,Flat", seed=0)
    flat = build_index(vectors, "Flat")
    assert SearchParams(nprobe=8).string(ivf) == "nprobe=8" and SearchParams(nprobe=8, ef_search=64).string(flat) == ""
    queries = np.asarray(vectors[:50], np.float32)
    _, exact = Searcher(flat).search(queries, 5)
    _, probed = Searcher(ivf, SearchParams(nprobe=8)).search(queries, 5)
    assert np.array_equal(exact, probed) and exact[:, 0].tolist() == list(range(50))


# ------------------------------------------------------------------------------------------- CLIP loading


def _probe() -> torch.Tensor:
    return torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory) -> str:
    import open_clip

    name = "cocu-test-beside"
    folder = tmp_path_factory.mktemp("configs")
    (folder / f"{name}.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(folder / f"{name}.json")
    return name


def test_checkpoint_with_config_beside_it_and_local_dir_load_alike(tmp_path, tiny_name):
    import open_clip

    name = tiny_name
    torch.manual_seed(11)
    state = open_clip.create_model(name).state_dict()
    (tmp_path / "weights").mkdir()
    torch.save(state, tmp_path / "weights" / "model.pt")
    (tmp_path / "weights" / f"{name}.json").write_text(json.dumps(TINY))
    beside = load_clip(name, str(tmp_path / "weights" / "model.pt"), device="cpu")
    assert beside.config_path == tmp_path / "weights" / f"{name}.json" and beside.embed_dim == 64
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    torch.save(state, tmp_path / "dir" / "open_clip_pytorch_model.bin")
    local = load_clip(f"local-dir:{tmp_path / 'dir'}", device="cpu")
    assert local.spec.checkpoint_sha256 and np.array_equal(beside.embed_pixels(_probe()), local.embed_pixels(_probe()))
    assert np.array_equal(beside.embed_texts(["a photo of a mug."]), local.embed_texts(["a photo of a mug."]))


def test_random_init_is_reproducible_and_bad_weights_say_so(tmp_path, tiny_name):
    first, second = load_clip(tiny_name, device="cpu"), load_clip(tiny_name, device="cpu")
    assert np.array_equal(first.embed_pixels(_probe()), second.embed_pixels(_probe()))
    assert "random init" in first.spec.describe()
    with pytest.raises(ValueError, match="cannot load CLIP cocu-test-beside / no-such-tag"):
        load_clip("cocu-test-beside", "no-such-tag", device="cpu")
    (tmp_path / "other.json").write_text(json.dumps(TINY))
    with pytest.raises(ValueError, match="must be named cocu-test-beside.json"):
        load_clip("cocu-test-beside", model_config=tmp_path / "other.json", device="cpu")


def test_decode_errors_are_one_line():
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="JPEG")
    good = buffer.getvalue()
    assert decode_image(good).size == (32, 32)
    with pytest.raises(ValueError, match=r"^no image \(null jpg\)$"):
        decode_image(None)
    for bad in (b"garbage", good[: len(good) // 2]):
        with pytest.raises(ValueError, match=r"^undecodable image \(") as err:
            decode_image(bad)
        assert "\n" not in str(err.value)
