"""The bank's index at millions of images: build time per step, peak memory, size, recall, enrich against search.

For each corpus size N: random L2-normalized 512-d vectors written as float16 ``embeddings.npy`` (as a
bank stores them), then the default IVF factory for N (``choose_factory`` above the Flat limit) built the
way ``build-bank`` builds it (``bank.index_parts``: trained once on a sample, filled part by part, merged), then:
recall@8 of that index (the bank's default nprobe) against exact search on 1,000 fresh queries, and
enrich's hot path (search + ranking + clustering) in images/s against IVF search alone, on corpus rows
as anchors, in the same process (the target ratio is 0.8). Every phase runs in its own process, so its
peak RSS is its own; memory-mapped file pages it touched count in it.

Random vectors on the sphere have no cluster structure: every neighbour is almost as far as any other,
the hardest case for an IVF index, so recall here is a floor for CLIP embeddings, not an estimate.

    flock /tmp/cocu-heavy.lock .venv/bin/python benchmarks/bank_scale.py --sizes 1000000 4000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as cocu-curate runs (see cli/curate.py)

import numpy as np  # noqa: E402

CHUNK = 65536


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def default_ivf_factory(rows: int, dim: int) -> str:
    from cocu.curation.bank.index import FLAT_LIMIT, choose_factory

    return choose_factory(max(rows, FLAT_LIMIT + 1), dim)


def generate(folder: Path, rows: int, dim: int, seed: int) -> dict:
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    matrix = np.lib.format.open_memmap(folder / "embeddings.npy", mode="w+", dtype=np.float16, shape=(rows, dim))
    for start in range(0, rows, CHUNK):
        x = rng.standard_normal((min(CHUNK, rows - start), dim), dtype=np.float32)
        matrix[start : start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    matrix.flush()
    return {"generate_s": time.perf_counter() - started}


def build(folder: Path, factory: str, seed: int, part_rows: int, max_train_rows: int) -> dict:
    """``bank.index_parts`` as build-bank runs it; train time is until the first rows are added (one chunk of 65k late).

    The k-means sample is the bank's (64 per list) capped at ``max_train_rows``: on 2 CPU cores k-means is
    the one step whose cost grows with lists x sample; the cap (2^18 by default) keeps a 4 M run within half an hour.
    """
    from cocu.curation.bank.index import training_size, write_index
    from cocu.curation.bank.index_parts import build_index_in_parts

    vectors = np.load(folder / "embeddings.npy", mmap_mode="r")
    train_rows = min(training_size(factory, len(vectors)), max_train_rows)
    marks: list[float] = []
    started = time.perf_counter()
    index = build_index_in_parts(
        vectors,
        factory,
        folder / "index_parts",
        "bench",
        seed,
        part_rows,
        train_rows=train_rows,
        progress=lambda n: marks.append(time.perf_counter()),
    )
    merged = time.perf_counter()
    write_index(index, folder / "index.faiss")
    return {
        "factory": factory,
        "train_rows": train_rows,
        "train_s": marks[0] - started,
        "add_parts_s": marks[-1] - marks[0],
        "merge_s": merged - marks[-1],
        "write_s": time.perf_counter() - merged,
        "index_gib": (folder / "index.faiss").stat().st_size / 2**30,
    }


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k ids, a chunk of the memory-mapped corpus at a time."""
    best_ids = np.zeros((len(queries), 0), np.int64)
    best_scores = np.zeros((len(queries), 0), np.float32)
    for start in range(0, len(vectors), CHUNK):
        scores = queries @ np.asarray(vectors[start : start + CHUNK], np.float32).T
        ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        scores, ids = np.hstack([best_scores, scores]), np.hstack([best_ids, ids])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
    return best_ids


def synthetic_concepts(rng: np.random.Generator, rows: int, vocab: int, per_caption: float):
    """Caption concept ids per row (1 + Poisson, Zipf-like popularity, distinct), vectorized for millions of rows."""
    from cocu.curation.enrich.ranking import Ragged, offsets_from_lengths

    popularity = 1.0 / (np.arange(vocab) + 10.0)
    draws = np.sort(rng.choice(vocab, size=(rows, 12), p=popularity / popularity.sum()).astype(np.int32), axis=1)
    sizes = np.clip(1 + rng.poisson(per_caption - 1, rows), 1, 12)
    keep = (np.arange(12) < sizes[:, None]) & np.hstack([np.ones((rows, 1), bool), draws[:, 1:] != draws[:, :-1]])
    return Ragged(offsets_from_lengths(keep.sum(1)), draws[keep])


def query(folder: Path, args: argparse.Namespace) -> dict:
    """Recall@k against exact search, then enrich's hot path against IVF search alone on the same anchors."""
    import pyarrow as pa

    from cocu.curation.bank.index import Searcher, SearchParams, default_nprobe, read_index
    from cocu.curation.bank.reader import Bank
    from cocu.curation.enrich.curator import EnrichConfig, curate
    from cocu.curation.enrich.ranking import pair_similarities

    vectors = np.load(folder / "embeddings.npy", mmap_mode="r")
    rng = np.random.default_rng(args.seed + 1)
    index = read_index(folder / "index.faiss")
    searcher = Searcher(index, SearchParams(nprobe=default_nprobe(args.factory)))
    fresh = rng.standard_normal((args.queries, vectors.shape[1]), dtype=np.float32)
    fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
    started = time.perf_counter()
    exact = exact_top(vectors, fresh, args.k)
    exact_s = time.perf_counter() - started
    _, found = searcher.search(fresh, args.k)
    recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found.tolist(), exact.tolist())]))
    sweep = {}
    for nprobe in (256, 1024):  # what more probing buys, and costs, on this index
        wider = Searcher(read_index(folder / "index.faiss"), SearchParams(nprobe=nprobe))
        t = time.perf_counter()
        _, found = wider.search(fresh, args.k)
        sweep[f"recall_at_k_nprobe{nprobe}"] = float(
            np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found.tolist(), exact.tolist())])
        )
        sweep[f"queries_s_nprobe{nprobe}"] = args.queries / (time.perf_counter() - t)
        del wider

    started = time.perf_counter()
    text = rng.standard_normal((args.vocab, vectors.shape[1]), dtype=np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    concepts = synthetic_concepts(rng, len(vectors), args.vocab, 3.0)
    chunks = [np.arange(s, min(s + CHUNK, len(vectors))) for s in range(0, len(vectors), CHUNK)]
    sims = np.concatenate(
        [pair_similarities(concepts.take(c), np.asarray(vectors[c[0] : c[-1] + 1]), text) for c in chunks]
    )
    names = pa.array([f"concept{i:05d}" for i in range(args.vocab)])
    bank = Bank(
        folder, {"bank_id": "bench"}, None, names, text, concepts, sims, pa.array([], pa.string()), vectors, searcher
    )
    bank.gram  # noqa: B018  built once per bank and process
    tables_s = time.perf_counter() - started

    anchors_ids = np.sort(rng.choice(len(vectors), args.anchors, replace=False))
    anchors = np.asarray(vectors[anchors_ids], np.float32)
    own = concepts.take(anchors_ids)
    config = EnrichConfig()
    batches = [slice(s, min(s + config.batch_size, args.anchors)) for s in range(0, args.anchors, config.batch_size)]

    def run_search() -> None:
        for b in batches:
            searcher.search(anchors[b], config.neighbors + 1)

    def run_enrich() -> None:
        for b in batches:
            rows = np.arange(b.start, b.stop)
            curate(bank, anchors[b], anchors_ids[b], own.take(rows), rows, config)

    run_enrich()  # warm-up: the index's lists and the ranking's tables in memory
    search_rate = enrich_rate = 0.0
    for _ in range(args.repeats):  # interleaved, best of each: the machine's load changes under us
        for name, fn in (("search", run_search), ("enrich", run_enrich)):
            t = time.perf_counter()
            fn()
            rate = args.anchors / (time.perf_counter() - t)
            if name == "search":
                search_rate = max(search_rate, rate)
            else:
                enrich_rate = max(enrich_rate, rate)
    return {
        "recall_at_k": recall,
        **sweep,
        "exact_s": exact_s,
        "bank_tables_s": tables_s,
        "search_img_s": search_rate,
        "enrich_img_s": enrich_rate,
        "enrich_over_search": enrich_rate / search_rate,
        "nprobe": default_nprobe(args.factory),
    }


def phase(args: argparse.Namespace) -> None:
    folder = Path(args.folder)
    if args.phase == "generate":
        record = generate(folder, args.rows, args.dim, args.seed)
    elif args.phase == "build":
        record = build(folder, args.factory, args.seed, args.part_rows, args.max_train_rows)
    else:
        record = query(folder, args)
    record[f"{args.phase}_peak_rss_gib"] = peak_rss_gib()
    print(json.dumps(record))


def run_size(rows: int, args: argparse.Namespace, root: Path) -> dict:
    folder = root / f"n{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    factory = default_ivf_factory(rows, args.dim)
    record = {"rows": rows}
    for name in ("generate", "build", "query"):
        command = [
            sys.executable,
            __file__,
            "--phase",
            name,
            "--folder",
            str(folder),
            "--rows",
            str(rows),
            "--factory",
            factory,
            *forwarded(args),
        ]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        record.update(json.loads(out))
        print(f"  {rows:,} {name}: {out}", flush=True)
    return record


def forwarded(args: argparse.Namespace) -> list[str]:
    return [
        "--dim",
        str(args.dim),
        "--seed",
        str(args.seed),
        "--part-rows",
        str(args.part_rows),
        "--max-train-rows",
        str(args.max_train_rows),
        "--queries",
        str(args.queries),
        "--k",
        str(args.k),
        "--anchors",
        str(args.anchors),
        "--vocab",
        str(args.vocab),
        "--repeats",
        str(args.repeats),
    ]


def table(records: list[dict]) -> str:
    lines = [
        "| images | factory | k-means sample | train s | add (parts) s | merge s | write s | build peak RSS GiB | "
        "index GiB | "
        f"recall@{records[0].get('k', 8)} | exact search s | enrich img/s | IVF search img/s | enrich / search | "
        "query peak RSS GiB |",
        "|" + "---|" * 15,
    ]
    for r in records:
        lines.append(
            f"| {r['rows']:,} | `{r['factory']}` | {r.get('train_rows', 0):,} | {r['train_s']:.0f} | "
            f"{r['add_parts_s']:.0f} | "
            f"{r['merge_s']:.1f} | {r['write_s']:.1f} | {r['build_peak_rss_gib']:.2f} | {r['index_gib']:.2f} | "
            f"{r['recall_at_k']:.3f} | "
            f"{r['exact_s']:.0f} | {r['enrich_img_s']:.0f} | {r['search_img_s']:.0f} | "
            f"{r['enrich_over_search']:.2f} | {r['query_peak_rss_gib']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--part-rows", type=int, default=1 << 20)
    parser.add_argument("--max-train-rows", type=int, default=1 << 18, help="cap on the k-means sample")
    parser.add_argument("--queries", type=int, default=1000, help="fresh queries for recall against exact search")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--anchors", type=int, default=4096, help="corpus rows curated for the enrich/search ratio")
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="where vectors and indexes go (default: a temp dir)")
    parser.add_argument("--phase", choices=["generate", "build", "query"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--factory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase(args)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as root:
        print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} cores", flush=True)
        records = [run_size(rows, args, Path(root)) for rows in args.sizes]
        print(f"load average at end: {os.getloadavg()}")
        print(table([{**r, "k": args.k} for r in records]))


if __name__ == "__main__":
    main()
