"""Throughput of `cocu-data download` (img2dataset) from a loopback HTTP server, and the shard columns it writes.

Two URL lists of generated photos: 800x600 (every image is shrunk to smaller side 512, the GroupViT
recipe) and 640x480 (none needs it). The server runs in this process on 127.0.0.1 and shares the CPU
with the download, so the rates are a floor for the resizing work, with no network in the way.

    .venv/bin/python benchmarks/download_throughput.py --images 1000
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def photo(size: tuple[int, int], seed: int) -> bytes:
    """A smooth colour field with grain: JPEG sizes like a photo's, not like a flat test card."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(field + grain, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def serve(images: dict[str, bytes]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = images.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def run(name: str, size: tuple[int, int], count: int, distinct: int, args: argparse.Namespace, root: Path) -> dict:
    photos = [photo(size, i) for i in range(distinct)]
    httpd = serve({f"/{name}/{i}.jpg": photos[i % distinct] for i in range(count)})
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    urls = root / f"{name}.tsv"
    urls.write_text("".join(f"photo number {i}\t{base}/{name}/{i}.jpg\n" for i in range(count)))
    out = root / name
    command = [
        str(Path(sys.executable).parent / "cocu-data"),
        "download",
        str(urls),
        str(out),
        "--preset",
        "cc3m",
        "--processes-count",
        str(args.processes),
        "--thread-count",
        str(args.threads),
        "--shard-size",
        str(args.shard_size),
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    httpd.shutdown()
    if result.returncode != 0:
        raise SystemExit(f"{name}: cocu-data download failed:\n{result.stderr[-2000:]}")
    shards = sorted(out.glob("*.parquet"))
    table = pq.read_table(shards[0])
    ok = sum(pq.read_table(s, columns=["status"]).column("status").to_pylist().count("success") for s in shards)
    first = table.slice(0, 1).to_pylist()[0]
    return {
        "name": name,
        "source": f"{size[0]}x{size[1]}",
        "stored": f"{first['width']}x{first['height']}",
        "images": ok,
        "seconds": seconds,
        "rate": ok / seconds,
        "columns": table.column_names,
        "kb_per_image": np.mean([len(r) for r in table.column("jpg").to_pylist() if r]) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="URLs per list")
    parser.add_argument("--distinct", type=int, default=50, help="distinct photos served (encoding them is not timed)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=250)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            run("resize", (800, 600), args.images, args.distinct, args, Path(tmp)),
            run("no-resize", (640, 480), args.images, args.distinct, args, Path(tmp)),
        ]
    print(
        f"load average before the last run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; "
        f"--processes-count {args.processes} --thread-count {args.threads} --shard-size {args.shard_size}"
    )
    print(f"{'list':<10} {'served':>8} {'stored':>8} {'images':>7} {'seconds':>8} {'images/s':>9} {'KB/image':>9}")
    for r in rows:
        print(
            f"{r['name']:<10} {r['source']:>8} {r['stored']:>8} {r['images']:>7} {r['seconds']:>8.1f} "
            f"{r['rate']:>9.1f} "
            f"{r['kb_per_image']:>9.1f}"
        )
    print(f"ratio no-resize / resize: {rows[1]['rate'] / rows[0]['rate']:.2f}x")
    print("shard columns: " + ", ".join(rows[0]["columns"]))


if __name__ == "__main__":
    main()
