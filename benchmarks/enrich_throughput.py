"""Throughput of the curation hot paths, each against its floor, measured in one run.

(a) enrich (search + vectorized ranking [+ batched k-means]) against batched FAISS search alone on the
    same flat index and queries: search is the floor of this stage. The hybrid archive (``--archive both``:
    the top-M concepts of the whole vocabulary join the neighbours' archive) is measured at the 2,000-concept
    vocabulary and at a web-sized one (``--big-vocab``, 50,000), against the same search.
(k) the k-means of (a) against scikit-learn ``KMeans(n_init=10)`` on the same archives: mean inertia ratio.
(b) the same against the released design: one search and one Python ranking loop per image.
(c) the embedding stage (decode in DataLoader workers overlapping the model) against the slower of
    decode-only and model-only throughput.

The bank for (a)/(b) is random: L2-normalized 512-d float16 vectors, a vocabulary of ~2,000 concepts
with Zipf-like frequencies and ~3 concepts per caption. Each rate is the best of ``--repeats``
interleaved runs, by wall clock and by this process's CPU time; on a shared machine the CPU-time
ratios (with ``--threads 1``, where no thread waits on another) are the ones other jobs do not move.

    .venv/bin/python benchmarks/enrich_throughput.py                  # the issue's sizes
    .venv/bin/python benchmarks/enrich_throughput.py --index-size 20000 --queries 2000 --embed-images 256
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as cocu-curate runs (see cli/curate.py)

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from cocu.curation.bank.clip import load_clip  # noqa: E402
from cocu.curation.bank.embed import set_worker_threads  # noqa: E402
from cocu.curation.bank.images import ShardImages  # noqa: E402
from cocu.curation.bank.index import Searcher  # noqa: E402
from cocu.curation.bank.reader import Bank  # noqa: E402
from cocu.curation.enrich.curator import EnrichConfig, curate  # noqa: E402
from cocu.curation.enrich.ranking import Ragged, pair_similarities  # noqa: E402


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def caption_concepts(rng: np.random.Generator, rows: int, vocab: int, per_caption: float) -> Ragged:
    """Concept ids per caption: 1 + Poisson(per_caption - 1) distinct concepts, Zipf-like popularity."""
    popularity = 1.0 / (np.arange(vocab) + 10.0)
    popularity /= popularity.sum()
    sizes = np.clip(1 + rng.poisson(per_caption - 1, rows), 1, 12)
    draws = rng.choice(vocab, size=(rows, 16), p=popularity)
    lists = [sorted(set(row[:n].tolist())) for row, n in zip(draws, sizes)]
    return Ragged.from_lists(lists)


def synthetic_bank(
    args: argparse.Namespace,
    rng: np.random.Generator,
    vocab: int,
    searcher: Searcher | None = None,
    embeddings: np.ndarray | None = None,
) -> tuple[Bank, np.ndarray]:
    """A bank in memory; a second vocabulary size reuses the first bank's images and index."""
    if embeddings is None:
        embeddings = unit_rows(rng, args.index_size, args.dim)
    if searcher is None:
        index = faiss.IndexFlatIP(args.dim)
        index.add(embeddings.astype(np.float32))
        searcher = Searcher(index)
    text = unit_rows(rng, vocab, args.dim).astype(np.float32)
    concepts = caption_concepts(rng, args.index_size, vocab, args.concepts_per_caption)
    sims = pair_similarities(concepts, embeddings, text)
    keys = pa.array([str(i) for i in range(args.index_size)])
    names = pa.array([f"concept{i:05d}" for i in range(vocab)])
    bank = Bank(
        Path("memory"),
        {"bank_id": "benchmark"},
        None,
        names,
        text,
        Ragged(concepts.offsets, concepts.values.astype(np.int32)),
        sims,
        keys,
        embeddings,
        searcher,
    )
    return bank, embeddings


class Rate:
    """Best images/s over repeats, by wall clock and by this process's CPU time (robust to other jobs' load)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def measure(self, images: int, fn) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.wall = max(self.wall, images / (time.perf_counter() - wall))
        self.cpu = max(self.cpu, images / max(time.process_time() - cpu, 1e-9))

    def ratio(self, other: Rate) -> str:
        return f"{self.wall / other.wall:.2f} (wall) / {self.cpu / other.cpu:.2f} (cpu)"


def batches(n: int, size: int):
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def per_image_loop(
    bank: Bank, queries: np.ndarray, self_ids: np.ndarray, own: list[list[int]], neighbors: int, top_k: int
) -> None:
    """The released design: one search per image, then a Python loop over the archive's concepts (cocu's formula)."""
    image_concepts = bank.image_concepts.tolist()
    embeddings, text, floor = bank.embeddings, bank.text, bank.local_floor
    for i, anchor in enumerate(queries):
        _, found = bank.searcher.search(anchor[None], neighbors + 1)
        ids = [int(j) for j in found[0] if j >= 0 and j != self_ids[i]][:neighbors]
        archive = list(dict.fromkeys(own[i] + [c for j in ids for c in image_concepts[j]]))
        stats, peak = {}, -np.inf
        for c in archive:
            refs = [j for j in ids if c in image_concepts[j]]
            sims = text[c] @ np.vstack([embeddings[refs].astype(np.float32), anchor[None]]).T
            peak = max(peak, float(sims.max()))
            stats[c] = (float(sims[-1]), float(sims.mean()))
        scale = peak if peak > 0 else 1.0
        scores = {c: g / scale + g / max(m, floor) for c, (g, m) in stats.items()}
        sorted(scores, key=lambda c: (-scores[c], c))[: top_k or None]


def enrich_table(args: argparse.Namespace) -> list[tuple[str, Rate, str]]:
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    bank, embeddings = synthetic_bank(args, rng, args.vocab)
    big, _ = synthetic_bank(args, rng, args.big_vocab, bank.searcher, embeddings)
    print(
        f"bank: {args.index_size} x {args.dim} flat, {args.vocab} concepts (and {args.big_vocab}), "
        f"{bank.image_concepts.lengths.mean():.2f} concepts/caption; built in {time.perf_counter() - started:.1f}s"
    )
    queries = np.asarray(embeddings[: args.queries], np.float32)  # the corpus curates itself: anchors are in the bank
    self_ids = np.arange(args.queries)
    own = bank.image_concepts.take(self_ids)
    rows = batches(args.queries, args.batch_size)
    k = args.neighbors + 1
    bank.gram  # noqa: B018  the per-process concept Gram table, built once per bank
    curate(bank, queries[:64], self_ids[:64], own.take(np.arange(64)), np.arange(64), EnrichConfig())  # warm-up

    def run_search() -> None:
        for r in rows:
            bank.searcher.search(queries[r], k)

    def run_enrich(clusters: bool, archive: str = "neighbours", on_bank: Bank = bank) -> None:
        config = EnrichConfig(
            neighbors=args.neighbors,
            top_k=args.top_k,
            clusters=clusters,
            archive=archive,
            vocabulary_top=args.vocabulary_top,
        )
        for r in rows:
            index = np.arange(r.start, r.stop)
            curate(on_bank, queries[r], self_ids[r], own.take(index), index, config)

    big.gram  # noqa: B018
    curate(big, queries[:64], self_ids[:64], own.take(np.arange(64)), np.arange(64), EnrichConfig(archive="both"))
    search, off, on, loop, hybrid, hybrid_big = Rate(), Rate(), Rate(), Rate(), Rate(), Rate()
    n_loop = min(args.loop_queries, args.queries)
    own_lists = own.take(np.arange(n_loop)).tolist()
    for _ in range(args.repeats):  # interleaved, best of each: the machine's load changes under us
        search.measure(args.queries, run_search)
        off.measure(args.queries, lambda: run_enrich(False))
        on.measure(args.queries, lambda: run_enrich(True))
        hybrid.measure(args.queries, lambda: run_enrich(True, "both"))
        hybrid_big.measure(args.queries, lambda: run_enrich(True, "both", big))
    loop.measure(
        n_loop, lambda: per_image_loop(bank, queries[:n_loop], self_ids[:n_loop], own_lists, args.neighbors, args.top_k)
    )
    ratio, archives = inertia_ratio(bank, queries, self_ids, own, args)
    m = args.vocabulary_top
    return [
        (
            "(a) batched FAISS search only (floor)",
            search,
            f"{args.queries} queries, batch {args.batch_size}, k={k}, best of {args.repeats}",
        ),
        ("(a) enrich, clusters off", off, f"{off.ratio(search)} x search (target >= 0.8)"),
        (
            "(a) enrich, clusters on",
            on,
            f"{on.ratio(search)} x search (target >= 0.5); clusters off/on "
            f"{off.wall / on.wall:.2f} (wall) / {off.cpu / on.cpu:.2f} (cpu)",
        ),
        (
            f"(a) hybrid archive, {args.vocab} concepts",
            hybrid,
            f"{hybrid.ratio(search)} x search (--archive both, M={m}, clusters on)",
        ),
        (
            f"(a) hybrid archive, {args.big_vocab} concepts",
            hybrid_big,
            f"{hybrid_big.ratio(search)} x search (--archive both, M={m}, clusters on)",
        ),
        (
            "(k) k-means inertia vs scikit-learn",
            Rate(),
            f"mean inertia {ratio:.4f} x KMeans(n_init=10) over {archives} archives of (a) (target <= 1.02)",
        ),
        (
            "(b) per-image loop (released design)",
            loop,
            f"{n_loop} queries, once; enrich (clusters off) is "
            f"{off.wall / loop.wall:.0f}x (wall) / {off.cpu / loop.cpu:.0f}x (cpu) faster, "
            f"clusters on {on.wall / loop.wall:.0f}x / {on.cpu / loop.cpu:.0f}x",
        ),
    ]


def inertia_ratio(
    bank: Bank, queries: np.ndarray, self_ids: np.ndarray, own: Ragged, args: argparse.Namespace
) -> tuple[float, int]:
    """Mean k-means inertia of enrich's clusters over scikit-learn's ``KMeans(n_init=10)`` on the same archives."""
    import math

    from sklearn.cluster import KMeans

    n = min(args.kmeans_archives, len(queries))
    config = EnrichConfig(neighbors=args.neighbors, top_k=0, clusters=True)
    curated = curate(bank, queries[:n], self_ids[:n], own.take(np.arange(n)), np.arange(n), config)
    ours, theirs = [], []
    for i in range(n):
        span = slice(curated.concepts.offsets[i], curated.concepts.offsets[i + 1])
        concepts, labels = curated.concepts.values[span], curated.clusters[span]
        if len(concepts) <= 2:
            continue
        points = bank.text[concepts].astype(np.float64)
        ours.append(sum(((points[labels == c] - points[labels == c].mean(0)) ** 2).sum() for c in np.unique(labels)))
        theirs.append(KMeans(n_clusters=math.ceil(len(concepts) / 2), n_init=10, random_state=0).fit(points).inertia_)
    return float(np.mean(ours) / np.mean(theirs)), len(ours)


def image_shard(path: Path, count: int, size: int, rng: np.random.Generator) -> None:
    """JPEGs of smooth random colour fields (decode cost like a photo's at this size)."""
    images = []
    for _ in range(count):
        small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        picture = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    pq.write_table(
        pa.table(
            {
                "key": [str(i) for i in range(count)],
                "jpg": pa.array(images, pa.binary()),
                "caption": ["a photo"] * count,
            }
        ),
        path,
    )


def embedding_table(args: argparse.Namespace) -> list[tuple[str, Rate, str]]:
    # the embed stage's split: decoders, and torch on the rest
    workers = set_worker_threads(os.cpu_count() or 1, args.decode_workers)
    clip = load_clip(args.embed_model, args.embed_pretrained, args.embed_model_config)
    with tempfile.TemporaryDirectory() as folder:
        shard = Path(folder) / "images.parquet"
        image_shard(shard, args.embed_images, args.embed_image_size, np.random.default_rng(args.seed))
        clip.embed_shard(
            shard, rows=np.arange(min(64, args.embed_images)), batch_size=args.embed_batch_size, num_workers=0
        )  # warm-up
        decoded: list[torch.Tensor] = []

        def decode_only() -> None:
            loader = DataLoader(
                ShardImages(str(shard), clip.preprocess, args.embed_batch_size),
                batch_size=None,
                num_workers=workers,
                prefetch_factor=4 if workers else None,
            )
            decoded.extend(chunk.pixels for chunk in loader)

        def model_only() -> None:
            for pixels in decoded:
                clip.embed_pixels(pixels)

        n = args.embed_images
        decode, model, pipeline = Rate(), Rate(), Rate()
        for _ in range(args.repeats):
            decoded.clear()
            decode.measure(n, decode_only)
            model.measure(n, model_only)
            pipeline.measure(n, lambda: clip.embed_shard(shard, batch_size=args.embed_batch_size, num_workers=workers))
    floor = min(decode.wall, model.wall)
    weights = args.embed_pretrained or "random init"
    where = f"{args.embed_model} ({weights}) on {clip.device}, {torch.get_num_threads()} torch threads"
    return [  # decoding runs in worker processes, so only wall-clock rates compare here
        ("(c) decode only", decode, f"{n} JPEGs {args.embed_image_size}px, {workers} DataLoader worker(s)"),
        ("(c) model only", model, where),
        (
            "(c) embedding stage (overlapped)",
            pipeline,
            f"{pipeline.wall / floor:.2f} x the slower of the two, wall (target >= 0.8)",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index-size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--concepts-per-caption", type=float, default=3.0)
    parser.add_argument("--neighbors", type=int, default=8)
    parser.add_argument("--big-vocab", type=int, default=50_000, help="the web-sized vocabulary of the hybrid archive")
    parser.add_argument("--vocabulary-top", type=int, default=16, help="M of the hybrid archive")
    parser.add_argument("--kmeans-archives", type=int, default=500, help="archives compared with scikit-learn's")
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--loop-queries", type=int, default=2000, help="queries for the slow per-image loop (b)")
    parser.add_argument(
        "--threads", type=int, default=None, help="FAISS/torch threads for (a)/(b) (default: all cores)"
    )
    parser.add_argument("--embed-model", default="ViT-S-32")
    parser.add_argument("--embed-pretrained", default=None, help="tag or checkpoint (default: random init)")
    parser.add_argument("--embed-model-config", default=None, help="custom open_clip config <model>.json")
    parser.add_argument("--embed-images", type=int, default=1024)
    parser.add_argument("--embed-image-size", type=int, default=256)
    parser.add_argument("--embed-batch-size", type=int, default=128)
    parser.add_argument("--decode-workers", type=int, default=None, help="default: as the embed stage chooses")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; the best of each is reported")
    parser.add_argument("--skip-embedding", action="store_true", help="measure (a) and (b) only")
    parser.add_argument("--skip-enrich", action="store_true", help="measure (c) only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    print(f"threads: faiss {faiss.omp_get_max_threads()}, torch {torch.get_num_threads()}; cores {os.cpu_count()}")
    results = [] if args.skip_enrich else enrich_table(args)
    if not args.skip_embedding:
        results += embedding_table(args)
    width = max(len(name) for name, _, _ in results)
    print(f"\n{'measure':<{width}}  {'images/s':>9}  {'img/cpu-s':>9}  note")
    for name, rate, note in results:
        print(f"{name:<{width}}  {rate.wall:>9.0f}  {rate.cpu:>9.0f}  {note}")


if __name__ == "__main__":
    main()
