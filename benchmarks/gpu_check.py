"""What one GPU does for cocu, row by row: CLIP embedding, FAISS search and k-means, a GroupViT-S step, evaluation.

Rows (``--list``): ``clip`` (CLIP ViT-B-16, random init, bf16, 224 px: decoding alone, the model alone, the two
overlapped as the embed stage runs them, and the overlap's ratio to the slower alone); ``faiss-flat`` and
``faiss-ivf`` (search queries/s over 1 M 512-d vectors, Flat and the IVF-HNSW kind of index build-bank picks past
1 M, through cocu's ``Searcher``: on the GPU with faiss-gpu, and the row says where it ran); ``kmeans`` (FAISS
k-means, GPU when faiss-gpu has one); ``train`` (a GroupViT-S bf16 step on tensors already on the GPU, and with
cocu's data loader over a synthetic world: samples/s, peak memory); ``eval`` (``cocu-eval seg`` on cuda as the CLI
runs it, on a checkpoint ``cocu-train fit`` wrote); ``ddp`` (a 2-process DDP step on one GPU: NCCL, else gloo).

``--row NAME`` prints that row's lines as soon as each is measured; ``gpu_check.sh`` runs every row in its own
process with its own time limit, so a crash or a hang in one loses no other, and prints the table at the end.
Without a GPU each row runs a small CPU smoke of the same code (marked "CPU smoke", not a GPU figure).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

Row = tuple[str, str, str]


def say(row: Row) -> None:
    """One table line, printed at once (the shell script collects them)."""
    print(f"| {row[0]} | {row[1]} | {row[2]} |", flush=True)


def synthetic_shard(path: Path, images: int, side: int, seed: int = 0) -> Path:
    """JPEGs of random rectangles on random backgrounds (photo-like decode cost), as an input shard."""
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(images):
        image = Image.new("RGB", (side, side), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(8):
            x, y = rng.integers(0, side, 2)
            draw.rectangle(
                [int(x), int(y), int(x) + side // 4, int(y) + side // 4],
                fill=tuple(int(c) for c in rng.integers(0, 256, 3)),
            )
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
    pq.write_table(
        pa.table(
            {
                "key": [f"{i:08d}" for i in range(images)],
                "jpg": pa.array(blobs, pa.binary()),
                "caption": ["a photo"] * images,
            }
        ),
        path,
    )
    return path


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_rate(items: int, fn: Callable[[], object]) -> float:
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return items / (time.perf_counter() - started)


class Check:
    """What every row knows: the device, the scale (GPU figures or a CPU smoke), a scratch folder."""

    def __init__(self, root: Path, images: int, workers: int):
        self.gpu = torch.cuda.is_available()
        self.device = "cuda" if self.gpu else "cpu"
        self.tag = "" if self.gpu else "CPU smoke: "
        self.root, self.images, self.workers = root, images if self.gpu else 64, workers if self.gpu else 1

    def faiss_gpu(self) -> bool:
        from cocu.curation.bank.index import gpu_available

        return gpu_available()


def clip_row(check: Check) -> None:
    from torch.utils.data import DataLoader

    from cocu.curation.bank.clip import load_clip
    from cocu.curation.bank.images import ShardImages

    images, batch, workers = check.images, 256 if check.gpu else 16, check.workers
    shard = synthetic_shard(check.root / "images.parquet", images, 256)
    clip = load_clip("ViT-B-16", device=check.device)
    loader = DataLoader(
        ShardImages(str(shard), clip.preprocess, batch),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
    )
    note = f"{images} images, batch {batch}, {workers} decode workers"
    decode = timed_rate(images, lambda: sum(len(c.rows) for c in loader))
    say((f"{check.tag}CLIP ViT-B-16 224 px decode only", f"{decode:,.0f} img/s", note))
    pixels = torch.randn(batch, 3, 224, 224, device=check.device)
    clip.embed_pixels(pixels)  # warm-up: kernels chosen, memory allocated
    steps = max(1, images // batch)
    model = timed_rate(steps * batch, lambda: [clip.embed_pixels(pixels) for _ in range(steps)])
    say((f"{check.tag}CLIP ViT-B-16 224 px model only", f"{model:,.0f} img/s", note + ", bf16" * check.gpu))
    both = timed_rate(images, lambda: clip.embed_shard(shard, batch_size=batch, num_workers=workers))
    ratio = f"{both / min(decode, model):.2f} of the slower alone ({'decode' if decode < model else 'model'})"
    say((f"{check.tag}CLIP ViT-B-16 224 px decode + model overlapped", f"{both:,.0f} img/s", ratio))


def _vectors(rows: int, seed: int = 0) -> np.ndarray:
    base = np.random.default_rng(seed).standard_normal((rows, 512), dtype=np.float32)
    return base / np.linalg.norm(base, axis=1, keepdims=True)


def _search_row(check: Check, factory: str, rows: int) -> None:
    from cocu.curation.bank.index import Searcher, SearchParams, build_index, default_nprobe

    base = _vectors(rows)
    index = build_index(base, factory, seed=0, use_gpu=check.faiss_gpu())
    searcher = Searcher(index, SearchParams(nprobe=default_nprobe(factory)))
    queries = base[: 100_000 if check.gpu else 1000]
    searcher.search(queries[:64], 9)
    rate = timed_rate(len(queries), lambda: searcher.search(queries, 9))
    where = "faiss-gpu (fp16)" if searcher.on_gpu else "faiss CPU"
    say(
        (
            f"{check.tag}{where} search, {factory}, {rows:,} x 512, k 9",
            f"{rate:,.0f} queries/s",
            f"{len(queries)} queries",
        )
    )


def faiss_flat_row(check: Check) -> None:
    _search_row(check, "Flat", 1_000_000 if check.gpu else 20_000)


def faiss_ivf_row(check: Check) -> None:
    # the kind of index build-bank picks past 1 M images (choose_factory), sized for 1 M vectors
    _search_row(check, "IVF4096_HNSW32,SQ8" if check.gpu else "IVF64_HNSW32,SQ8", 1_000_000 if check.gpu else 20_000)


def kmeans_row(check: Check) -> None:
    import faiss

    rows, k = (1_000_000, 16_384) if check.gpu else (20_000, 64)
    data = _vectors(rows)
    kmeans = faiss.Kmeans(512, k, niter=10, seed=0, gpu=check.faiss_gpu(), verbose=False)
    rate = timed_rate(rows * 10, lambda: kmeans.train(data))
    where = "faiss-gpu" if check.faiss_gpu() else "faiss CPU"
    say((f"{check.tag}{where} k-means, {k:,} centroids", f"{rate / 1e6:,.1f} M vector-iterations/s", f"{rows:,} x 512"))


def _groupvit(arch: str, device: str):
    from cocu.training.model import build_model, get_config

    config = get_config(arch)
    return config, build_model(config).to(device).train()


def _train_step(model, optimizer, device: str, images: torch.Tensor, text: torch.Tensor, forward=None) -> None:
    """One bf16 step; ``forward`` is the model's DDP wrapper when there is one (the temperatures are the model's)."""
    from cocu.training.loss import groupvit_loss

    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        embeddings = (forward or model)(images, text)
        out = groupvit_loss(*embeddings, model.logit_scale_value(), model.multi_label_logit_scale_value())
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()


def train_row(check: Check) -> None:
    from cocu.curation.inputs.synthetic import WorldConfig, generate_world
    from cocu.training.data import CuratedShardsDataModule

    arch, batch, steps = ("groupvit-s", 128, 10) if check.gpu else ("groupvit-test", 8, 2)
    config, model = _groupvit(arch, check.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=check.gpu)
    side, context = config.vision.image_size, config.text.context_length
    images = torch.randn(batch, 3, side, side, device=check.device)
    text = torch.randint(1, 49000, (batch, 4, context), device=check.device)
    _train_step(model, optimizer, check.device, images, text)
    if check.gpu:
        torch.cuda.reset_peak_memory_stats()

    def tensor_steps() -> None:
        for _ in range(steps):
            _train_step(model, optimizer, check.device, images, text)

    rate = timed_rate(steps * batch, tensor_steps)
    memory = f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if check.gpu else "CPU"
    say(
        (
            f"{check.tag}{arch} train step, tensors on the device",
            f"{rate:,.1f} samples/s",
            f"batch {batch}, {side} px, {memory}",
        )
    )
    world = check.root / "world"
    generate_world(
        world, WorldConfig(train=batch * (steps + 2), teacher=0, val=0, shard_size=batch * 4), progress=False
    )
    data = CuratedShardsDataModule(
        str(world / "train"),
        batch_size=batch,
        num_workers=check.workers,
        image_size=side,
        text_mode="oracle",
        num_prompts=3,
        context_length=context,
        truth=str(world / "truth" / "train"),
    )
    loader = data.loader(data.stream())
    batches = iter(loader)

    def loaded_steps() -> None:
        for _ in range(steps):
            sample = next(batches)
            _train_step(
                model,
                optimizer,
                check.device,
                sample["image"].to(check.device, non_blocking=True),
                sample["text"].to(check.device, non_blocking=True),
            )

    next(batches)
    rate = timed_rate(steps * batch, loaded_steps)
    say(
        (
            f"{check.tag}{arch} train step with cocu's loader",
            f"{rate:,.1f} samples/s",
            f"{check.workers} loader workers",
        )
    )


def eval_row(check: Check) -> None:
    from cocu.curation.inputs.synthetic import WorldConfig, generate_world

    arch = "groupvit-s" if check.gpu else "groupvit-test"
    world = check.root / "eval-world"
    generate_world(world, WorldConfig(train=256, teacher=0, val=64 if check.gpu else 8, shard_size=128), progress=False)
    cli = [sys.executable, "-m"]
    fit = [
        *cli,
        "cocu.cli.train",
        "fit",
        "--config",
        "tiny-test",
        "--model.arch",
        arch,
        "--data.shards",
        str(world / "train"),
        "--data.text_mode",
        "oracle",
        "--data.truth",
        str(world / "truth" / "train"),
        "--trainer.max_steps",
        "1",
        "--trainer.default_root_dir",
        str(check.root / "run"),
        "--trainer.accelerator",
        "auto",
        "--data.batch_size",
        "8",
    ]
    subprocess.run(fit, check=True, capture_output=True)
    checkpoint = check.root / "run" / "checkpoints" / "last.ckpt"
    seg = [
        *cli,
        "cocu.cli.eval",
        "seg",
        "--checkpoint",
        str(checkpoint),
        "--dataset",
        "synthetic",
        "--root",
        str(world / "val"),
        "--out",
        str(check.root / "eval"),
        "--device",
        check.device,
    ]
    started = time.perf_counter()
    done = subprocess.run(seg, check=True, capture_output=True, text=True)
    line = done.stdout.strip().splitlines()[-1]
    rate = line.split(" images/s")[0].rsplit(", ", 1)[-1] if " images/s" in line else "?"
    say(
        (
            f"{check.tag}cocu-eval seg ({arch}, synthetic val)",
            f"{rate} img/s",
            f"the CLI, {time.perf_counter() - started:.0f} s in all",
        )
    )


def _ddp_step(rank: int, world: int, port: int, backend: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        config, model = _groupvit("groupvit-test", device)
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        images = torch.randn(8, 3, config.vision.image_size, config.vision.image_size, device=device)
        text = torch.randint(1, 400, (8, 4, config.text.context_length), device=device)
        for _ in range(2):
            _train_step(model, optimizer, device, images, text, forward=ddp)
        Path(out, f"{rank}.done").write_text(backend)
    finally:
        dist.destroy_process_group()


def ddp_row(check: Check) -> None:
    import socket

    import torch.multiprocessing as mp

    for backend in ["nccl", "gloo"] if check.gpu else ["gloo"]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            mp.start_processes(_ddp_step, args=(2, port, backend, str(check.root)), nprocs=2, start_method="spawn")
        except Exception as err:  # noqa: BLE001 - NCCL may refuse two ranks on one GPU: try gloo
            say((f"{check.tag}DDP 2 processes, {backend}", "failed", str(err).strip().splitlines()[-1][:100]))
            continue
        say(
            (
                f"{check.tag}DDP 2 processes on one device, {backend}",
                "2 steps",
                "the gather's gradient and DDP's reduction",
            )
        )
        return


ROWS: dict[str, Callable[[Check], None]] = {
    "clip": clip_row,
    "faiss-flat": faiss_flat_row,
    "faiss-ivf": faiss_ivf_row,
    "kmeans": kmeans_row,
    "train": train_row,
    "eval": eval_row,
    "ddp": ddp_row,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--row", choices=list(ROWS), help="run one row (default: list the rows)")
    parser.add_argument("--images", type=int, default=4096, help="images the clip row embeds on a GPU")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="decode/loader workers")
    args = parser.parse_args()
    if args.row is None:
        print(" ".join(ROWS))
        return
    with tempfile.TemporaryDirectory() as root:
        ROWS[args.row](Check(Path(root), args.images, args.workers))


if __name__ == "__main__":
    main()
