"""Training throughput on this machine, in one run: the model step, the data loader, and both together.

    python benchmarks/train_throughput.py                       # draws a small synthetic world in a temp folder
    python benchmarks/train_throughput.py --world WORLD --arch groupvit-cpu --batch-size 128 --num-workers 2

Reports samples/s of (1) a training step of the small config (forward + backward + grad clipping + AdamW, 1 caption +
K prompts per image, on a real batch from the loader, so text lengths are the world's), (2) the data loader alone
(`CuratedShardsDataModule`, worker start excluded), (3) the two together as `cocu-train fit` runs them (the loader's
workers share the CPU with the step), and (4) GroupViT-S at 224 px, batch 8, on random tensors. The loader should be at
least 2x faster than the step so it never starves the model.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from cocu.training.data import CuratedShardsDataModule
from cocu.training.loss import groupvit_loss
from cocu.training.model import GroupViT, get_config
from cocu.training.text import tokenize


def _train_step(model: GroupViT, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> None:
    out = groupvit_loss(
        *model(batch["image"], batch["text"]), model.logit_scale_value(), model.multi_label_logit_scale_value()
    )
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()


def step_rate(model: GroupViT, batch: dict[str, torch.Tensor], steps: int, warmup: int = 2) -> float:
    """Samples/s of training steps on one fixed batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()
    for _ in range(warmup):
        _train_step(model, optimizer, batch)
    start = time.perf_counter()
    for _ in range(steps):
        _train_step(model, optimizer, batch)
    return steps * batch["image"].shape[0] / (time.perf_counter() - start)


def loader_rate(data: CuratedShardsDataModule, batches: int, model: GroupViT | None = None) -> tuple[float, float]:
    """(samples/s, seconds to the first batch) of the loader; with `model`, a training step on every batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True) if model is not None else None
    start = time.perf_counter()
    it = iter(data.loader(data.stream()))
    next(it)
    first = time.perf_counter() - start
    start, samples = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(it)
        if model is not None and optimizer is not None:
            _train_step(model, optimizer, batch)
        samples += batch["image"].shape[0]
    return samples / (time.perf_counter() - start), first


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, help="A synthetic world (cocu-data synth); default: draw one")
    parser.add_argument("--rows", type=int, default=6000, help="Train rows of the drawn world")
    parser.add_argument("--arch", default="groupvit-cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--num-prompts", type=int, default=3)
    parser.add_argument("--text-mode", default="oracle", help="oracle reads the world's truth: no curation needed")
    parser.add_argument("--steps", type=int, default=8, help="Timed training steps")
    parser.add_argument("--batches", type=int, default=20, help="Timed loader batches")
    parser.add_argument("--large-steps", type=int, default=3, help="Timed GroupViT-S steps (0 skips it)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        world = args.world
        if world is None:
            from cocu.curation.inputs.synthetic import WorldConfig, generate_world

            world = Path(tmp) / "world"
            generate_world(
                world, WorldConfig(train=args.rows, teacher=10, val=10, shard_size=2500), workers=2, progress=False
            )
        config = get_config(args.arch)
        data = CuratedShardsDataModule(
            str(world / "train"),
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            image_size=config.vision.image_size,
            text_mode=args.text_mode,
            num_prompts=args.num_prompts,
            context_length=config.text.context_length,
            truth=str(world / "truth" / "train"),
            seed=0,
        )
        batch = next(iter(data.loader(data.stream())))
        batch = {"image": batch["image"], "text": batch["text"]}
        torch.manual_seed(0)
        results = {"step": step_rate(GroupViT(config), batch, args.steps)}
        results["loader"], results["loader_start_s"] = loader_rate(data, args.batches)
        results["fit"], _ = loader_rate(data, args.steps, GroupViT(config))
    if args.large_steps:
        large = get_config("groupvit-s")
        size = large.vision.image_size
        big = {
            "image": torch.randn(8, 3, size, size),
            "text": tokenize([f"a photo of a thing number {i}." for i in range(32)], large.text.context_length).view(
                8, 4, -1
            ),
        }
        results["groupvit_s"] = step_rate(GroupViT(large), big, args.large_steps, warmup=1)

    k = args.num_prompts
    print(
        f"\ntorch {torch.__version__}, {os.cpu_count()} cores, {torch.get_num_threads()} intra-op thread(s), loader "
        f"workers {args.num_workers}; 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"(other jobs on the machine slow every figure)\n"
    )
    print("| measurement | samples/s |")
    print("|---|---|")
    print(
        f"| {args.arch} train step (fwd+bwd+AdamW), {config.vision.image_size} px, batch {args.batch_size}, "
        f"1+{k} texts/image | {results['step']:.1f} |"
    )
    print(
        f"| data loader alone ({args.text_mode}, {args.num_workers} workers; first batch after "
        f"{results['loader_start_s']:.1f} s) | {results['loader']:.1f} |"
    )
    print(f"| loader / step ratio (target >= 2) | {results['loader'] / results['step']:.2f}x |")
    print(f"| step fed by the loader (as `cocu-train fit`) | {results['fit']:.1f} |")
    if "groupvit_s" in results:
        print(f"| groupvit-s train step, 224 px, batch 8, 1+{k} texts/image | {results['groupvit_s']:.2f} |")
    return results


if __name__ == "__main__":
    main()
