"""Speed of ``cocu-curate show`` on curated shards, against reading the same shards, and of the page in Chromium.

(a) the gallery (cards, thumbnails, summary, plots) in rows/s, beside its floor: reading every column of
    the shards into Python rows, which the gallery must do anyway; also with thumbnails re-encoded
    (``--thumb-size`` below the images' size) instead of kept as they are;
(b) where Playwright and a Chromium exist: opening the gallery from disk until the first page of cards
    shows, and applying a concept filter, over all the gallery's rows.

    .venv/bin/python benchmarks/gallery_throughput.py --curated benchmark/curated --truth benchmark/world/truth/train
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from cocu.curation.core.shards import count_rows, expand_shards, iter_batches
from cocu.curation.show.gallery import CURATED_COLUMNS, GalleryConfig, write_gallery

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def read_only(curated: Path, batch_size: int) -> tuple[int, float]:
    """The floor: every row of every shard as Python values, nothing done with them."""
    started, rows = time.perf_counter(), 0
    for path in expand_shards(curated):
        for batch in iter_batches(path, batch_size, columns=list(CURATED_COLUMNS)):
            rows += len(batch.to_pylist())
    return rows, time.perf_counter() - started


def create_files(folder: Path, count: int, size: int) -> tuple[int, float]:
    """What creating as many small files as a gallery's thumbnails costs on this file system right now."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    payload = os.urandom(size)
    started = time.perf_counter()
    for number in range(count):
        (folder / f"{number:06d}.jpg").write_bytes(payload)
    return count, time.perf_counter() - started


def gallery(curated: Path, truth: Path | None, out: Path, config: GalleryConfig) -> tuple[int, float]:
    """A fresh gallery: replacing one also deletes the old thumbnails, a cost of the file system, not measured here."""
    shutil.rmtree(out, ignore_errors=True)
    summary = write_gallery(curated, out, truth, config)
    return summary.rows, summary.seconds


def browser_times(index: Path, concept: str, executable: str) -> dict[str, float | str]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        started = time.perf_counter()
        page.goto(index.as_uri())
        page.wait_for_selector("#grid .card")
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        page.fill("#concept", concept)
        page.press("#concept", "Tab")
        page.wait_for_function("document.querySelector('#count').textContent.startsWith('0') === false")
        filtered = time.perf_counter() - started
        shown = page.inner_text("#count")
        started = time.perf_counter()
        page.select_option("#sort", "desc")
        page.wait_for_selector("#grid .card")
        sorted_ = time.perf_counter() - started
        browser.close()
    return {
        "open to first cards (s)": loaded,
        f"filter '{concept}' (s)": filtered,
        "sort by score (s)": sorted_,
        "shown": shown,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curated", type=Path, required=True)
    parser.add_argument("--truth", type=Path)
    parser.add_argument("--limit", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per measurement")
    parser.add_argument("--threads", type=int, default=GalleryConfig.threads, help="thumbnail writers")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} at the start")
    work = Path(tempfile.mkdtemp(prefix="cocu-gallery-bench-"))
    try:
        results: dict[str, tuple[int, float]] = {}
        total = sum(count_rows(path) for path in expand_shards(args.curated))
        plans = {
            "read the shards (floor)": lambda: read_only(args.curated, 1024),
            "create one 2.5 kB file per row (floor)": lambda: create_files(work / "files", total, 2500),
            "cocu-curate show, 1 thumbnail thread": lambda: gallery(
                args.curated, args.truth, work / "g1", GalleryConfig(limit=args.limit, threads=1)
            ),
            f"cocu-curate show, {args.threads} thumbnail threads": lambda: gallery(
                args.curated, args.truth, work / "g", GalleryConfig(limit=args.limit, threads=args.threads)
            ),
            f"... thumbnails re-encoded (32 px), {args.threads} threads": lambda: gallery(
                args.curated,
                args.truth,
                work / "g32",
                GalleryConfig(limit=args.limit, thumb_size=32, threads=args.threads),
            ),
        }
        for _ in range(args.repeats):  # interleaved, best of each: the machine is shared
            for name, run in plans.items():
                rows, seconds = run()
                if name not in results or seconds < results[name][1]:
                    results[name] = (rows, seconds)
        floor = results["read the shards (floor)"][1]
        print(f"{'measurement':48s} {'rows':>7s} {'s':>7s} {'rows/s':>8s} {'x read time':>11s}")
        for name, (rows, seconds) in results.items():
            print(f"{name:48s} {rows:7d} {seconds:7.2f} {rows / seconds:8.0f} {seconds / floor:11.1f}")
        size = sum(p.stat().st_size for p in (work / "g").rglob("*") if p.is_file())
        data = (work / "g" / "data.js").stat().st_size
        print(f"gallery folder: {size / 2**20:.1f} MiB, data.js {data / 2**20:.1f} MiB")
        executable = os.environ.get("COCU_CHROMIUM") or shutil.which("chromium")
        try:
            import playwright  # noqa: F401
        except ImportError:
            executable = None
        if executable:
            from collections import Counter

            import pyarrow.parquet as pq

            counts = Counter(
                c
                for p in expand_shards(args.curated)
                for row in pq.read_table(p, columns=["cocu_concepts"]).column(0).to_pylist()
                for c in row
            )
            concept = counts.most_common(len(counts))[len(counts) // 2][0]  # a concept of middling frequency
            for name, value in browser_times(work / "g" / "index.html", concept, executable).items():
                print(f"chromium: {name}: {value if isinstance(value, str) else f'{value:.2f}'}")
        else:
            print("chromium: not measured (no Playwright or no Chromium)")
        print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} at the end")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
