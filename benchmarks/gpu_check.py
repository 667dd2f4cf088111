"""What one GPU does for cocu, in one table: CLIP embedding, faiss-gpu search, a GroupViT-S step, evaluation.

Rows: CLIP ViT-B-16 (random init, bf16 autocast, 224 px) images/s decoding alone (DataLoader workers),
the model alone (random pixels already on the GPU) and the two overlapped as the embed stage runs them
(``ClipModel.embed_shard``); faiss-gpu flat search queries/s over 1 M 512-d vectors when faiss-gpu is
installed; a GroupViT-S training step in bf16 (samples/s, peak memory); zero-shot segmentation on cuda
(GroupViT-S, VOC preset, 448 px sliding windows) images/s. Without a GPU it says so, measures what is
CPU-safe (decoding, CPU FAISS search) and runs the GPU rows once with tiny configs on the CPU, so the
script itself is known to work; those rows are marked "CPU smoke" and are not GPU figures.

    bash benchmarks/gpu_check.sh          # under 8 minutes on one H100/H200
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

Row = tuple[str, str, str]


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


def timed_rate(items: int, fn) -> float:
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return items / (time.perf_counter() - started)


def clip_rows(
    shard: Path,
    images: int,
    batch: int,
    workers: int,
    device: str,
    model_name: str,
    label: str,
    decode_only: bool = False,
) -> list[Row]:
    from torch.utils.data import DataLoader

    from cocu.curation.bank.clip import ShardImages, load_clip

    clip = load_clip(model_name, device=device)
    loader = DataLoader(
        ShardImages(str(shard), clip.preprocess, batch),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
    )
    decode = timed_rate(images, lambda: sum(len(c.rows) for c in loader))
    note = f"{images} images, batch {batch}, {workers} decode workers"
    if decode_only:
        return [(f"{label} decode only", f"{decode:,.0f} img/s", note)]
    side = clip.preprocess.transforms[0].size
    side = side[0] if isinstance(side, (tuple, list)) else side
    pixels = torch.randn(batch, 3, side, side, device=device)
    clip.embed_pixels(pixels)  # warm-up: kernels chosen, memory allocated
    steps = max(1, images // batch)
    model = timed_rate(steps * batch, lambda: [clip.embed_pixels(pixels) for _ in range(steps)])
    overlapped = timed_rate(images, lambda: clip.embed_shard(shard, batch_size=batch, num_workers=workers))
    return [
        (f"{label} decode only", f"{decode:,.0f} img/s", note),
        (f"{label} model only (bf16)" if device == "cuda" else f"{label} model only", f"{model:,.0f} img/s", note),
        (
            f"{label} decode + model overlapped",
            f"{overlapped:,.0f} img/s",
            f"{overlapped / min(decode, model):.2f} of the slower alone",
        ),
    ]


def faiss_row(rows: int, queries: int, gpu: bool) -> Row:
    import faiss

    rng = np.random.default_rng(0)
    base = rng.standard_normal((rows, 512), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    index: faiss.Index = faiss.IndexFlatIP(512)
    index.add(base)
    if gpu:
        options = faiss.GpuClonerOptions()
        options.useFloat16 = True
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index, options)
    q = base[:queries] + 0.01 * rng.standard_normal((queries, 512), dtype=np.float32)
    index.search(q[:64], 9)
    rate = timed_rate(queries, lambda: index.search(q, 9))
    where = "faiss-gpu (fp16)" if gpu else "faiss CPU"
    return (f"{where} flat search, {rows:,} x 512, k 9", f"{rate:,.0f} queries/s", f"{queries} queries")


def train_row(arch: str, batch: int, side: int, steps: int, device: str, label: str) -> Row:
    from cocu.training.loss import groupvit_loss
    from cocu.training.model import build_model, get_config

    config = get_config(arch)
    model = build_model(config).to(device).train()
    side = side or config.vision.image_size
    images = torch.randn(batch, 3, side, side, device=device)
    text = torch.randint(1, 49000, (batch, 4, config.text.context_length), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            out = groupvit_loss(*model(images, text), model.logit_scale_value(), model.multi_label_logit_scale_value())
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def run_steps() -> None:
        for _ in range(steps):
            step()

    rate = timed_rate(steps * batch, run_steps)
    memory = f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else "CPU"
    return (f"{label} train step", f"{rate:,.1f} samples/s", f"batch {batch}, {side} px, {memory}")


def eval_row(arch: str, images: int, side: int, device: str, label: str) -> Row:
    from cocu.evaluation.inference import ZeroShotSegmenter
    from cocu.evaluation.presets import get_preset
    from cocu.training.model import build_model, get_config

    config = get_config(arch)
    model = build_model(config).to(device).eval()
    preset = get_preset("groupvit", "voc" if side >= 448 else "synthetic")
    classes = 20 if side >= 448 else 8
    text = torch.nn.functional.normalize(torch.randn(classes, config.embed_dim), dim=-1)
    segmenter = ZeroShotSegmenter(model, text, preset, has_background=preset.bg_thresh is not None)
    rng = np.random.default_rng(0)
    batch = [rng.integers(0, 256, (side, side * 4 // 3, 3), dtype=np.uint8) for _ in range(images)]
    segmenter.predict(batch[:1])
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        rate = timed_rate(images, lambda: segmenter.predict(batch))
    return (f"{label} zero-shot segmentation", f"{rate:,.2f} img/s", f"{preset.name}, {side} x {side * 4 // 3} images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4096, help="images embedded on a GPU")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="decode workers")
    args = parser.parse_args()
    import faiss

    gpu = torch.cuda.is_available()
    faiss_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        if gpu:
            print(f"GPU: {torch.cuda.get_device_name(0)}; {os.cpu_count()} CPU cores", flush=True)
            shard = synthetic_shard(Path(root) / "images.parquet", args.images, 256)
            rows += clip_rows(shard, args.images, 256, args.workers, "cuda", "ViT-B-16", "CLIP ViT-B-16 224 px")
            rows.append(
                faiss_row(1_000_000, 100_000, gpu=True)
                if faiss_gpu
                else ("faiss-gpu search", "not installed", "pip install 'cocu[gpu]' for faiss-gpu")
            )
            rows.append(train_row("groupvit-s", 128, 0, 10, "cuda", "GroupViT-S bf16"))
            rows.append(eval_row("groupvit-s", 32, 448, "cuda", "GroupViT-S on cuda"))
        else:
            print(
                f"no GPU was seen (torch.cuda.is_available() is False); {os.cpu_count()} CPU cores: "
                "measuring the CPU-safe parts, and the GPU rows once with tiny configs as a CPU smoke",
                flush=True,
            )
            shard = synthetic_shard(Path(root) / "images.parquet", 128, 256)
            rows += clip_rows(
                shard, 128, 32, min(2, args.workers), "cpu", "ViT-B-16", "CPU: CLIP ViT-B-16 224 px", decode_only=True
            )
            smoke = synthetic_shard(Path(root) / "smoke.parquet", 16, 256)
            rows += clip_rows(smoke, 16, 8, 1, "cpu", "ViT-B-16", "CPU smoke: CLIP ViT-B-16")[1:]
            rows.append(faiss_row(100_000, 1000, gpu=False))
            rows.append(train_row("groupvit-test", 8, 0, 2, "cpu", "CPU smoke: GroupViT tiny"))
            rows.append(eval_row("groupvit-test", 4, 64, "cpu", "CPU smoke: GroupViT tiny"))
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'what'.ljust(width)} | rate | conditions |\n|{'-' * (width + 2)}|---|---|")
    for what, rate, note in rows:
        print(f"| {what.ljust(width)} | {rate} | {note} |")
    print(f"\n{time.perf_counter() - started:.0f} s; GPU seen: {gpu}; faiss-gpu: {faiss_gpu}")


if __name__ == "__main__":
    main()
