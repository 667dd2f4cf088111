"""The CUDA paths' defects that show on a CPU too: precision under autocast, the gradient of the gather, FAISS's GPU
clone options, one index copy per process. Each test fails on the code before its fix."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cocu.training.grouping import gumbel_softmax
from cocu.training.loss import gather_with_grad, groupvit_loss


def _embeddings(seed: int, b: int = 16, k: int = 3, d: int = 64):
    g = torch.Generator().manual_seed(seed)
    unit = lambda *shape: F.normalize(torch.randn(*shape, d, generator=g), dim=-1)  # noqa: E731
    return unit(b), unit(b), unit(b, k)


def test_the_loss_is_scored_in_float32_under_bf16_autocast():
    image, text, prompts = _embeddings(0)
    scale = torch.tensor(100.0)
    reference = groupvit_loss(image, text, prompts, scale).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = groupvit_loss(image, text, prompts, scale).loss
    assert under_autocast.dtype == torch.float32
    # bf16 scoring differs by ~1e-2 here; float32 scoring by rounding only
    assert abs(under_autocast.item() - reference.item()) < 1e-5


def test_gumbel_noise_is_drawn_in_float32_under_bf16():
    logits = torch.zeros(64, 8, 4, dtype=torch.bfloat16)
    torch.manual_seed(0)
    sample = gumbel_softmax(logits, dim=-2, hard=False)
    torch.manual_seed(0)
    reference = gumbel_softmax(logits.float(), dim=-2, hard=False)
    assert sample.dtype == torch.bfloat16
    # the same float32 draw, rounded once at the end: bf16 noise would differ by far more than one rounding
    assert torch.allclose(sample.float(), reference, atol=2**-8, rtol=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x = torch.full((2, 3), float(rank + 1), requires_grad=True)
        gathered = gather_with_grad(x)
        weights = torch.arange(gathered.numel(), dtype=torch.float32).view_as(gathered)
        (gathered * weights).sum().backward()
        torch.save({"gathered": gathered.detach(), "grad": x.grad}, os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_the_gather_keeps_every_ranks_gradient_on_gloo(tmp_path):
    world = 2
    mp.start_processes(_gather_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, start_method="spawn")
    weights = torch.arange(12, dtype=torch.float32).view(4, 3)
    for rank in range(world):
        record = torch.load(tmp_path / f"{rank}.pt")
        assert torch.equal(record["gathered"], torch.tensor([[1.0] * 3] * 2 + [[2.0] * 3] * 2))
        # each rank's loss uses this rank's rows with the same weights: the gradient is their sum over ranks
        assert torch.equal(record["grad"], world * weights[2 * rank : 2 * rank + 2])


class _FakeOptions:
    useFloat16 = False
    allowCpuCoarseQuantizer = False


def test_the_gpu_clone_keeps_an_hnsw_quantizer_on_the_cpu_and_sets_only_gpu_parameters(monkeypatch):
    import faiss

    from cocu.curation.bank import index as index_module

    seen: dict = {}

    class FakeParameterSpace:
        def set_index_parameters(self, index, params):
            seen["gpu_params"] = params

    def clone(index, co):
        seen["options"] = co
        return "gpu index"

    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", _FakeOptions, raising=False)
    monkeypatch.setattr(faiss, "GpuParameterSpace", FakeParameterSpace, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", clone)
    cpu = faiss.index_factory(16, "IVF4_HNSW8,Flat", faiss.METRIC_INNER_PRODUCT)
    assert index_module._to_gpu(cpu, "nprobe=3,quantizer_efSearch=40") == "gpu index"
    assert seen["options"].useFloat16 and seen["options"].allowCpuCoarseQuantizer
    assert seen["gpu_params"] == "nprobe=3"  # the quantizer's efSearch is the CPU copy's, set before the clone


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory):
    from test_curation import MODEL, save_tiny_clip

    from cocu.curation.bank.build import build_bank
    from cocu.curation.bank.config import BankConfig
    from cocu.curation.inputs.synthetic import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("gpu-paths")
    generate_world(root / "world", WorldConfig(train=64, teacher=0, val=0, shard_size=32), progress=False)
    config = BankConfig(
        model=MODEL, pretrained=str(save_tiny_clip(root / "ckpt", seed=2)), batch_size=32, decode_workers=0, min_count=2
    )
    assert build_bank(root / "world" / "train", root / "bank", config, progress=False).ok
    return root


class _Elsewhere:
    """An executor that runs nothing here, as a pool or Ray does: what the driver placed on a GPU stays unused."""

    def run(self, stage, pending, progress, finish):
        for task in pending:
            finish(task, RuntimeError("not run"))


@pytest.mark.parametrize("executor", ["in-process", "elsewhere"])
def test_the_driver_puts_no_copy_of_the_index_on_a_gpu(tiny_bank, tmp_path, monkeypatch, executor):
    from cocu.curation.bank import index as index_module
    from cocu.curation.enrich.curator import EnrichConfig
    from cocu.curation.enrich.run import enrich
    from cocu.curation.executors.local import LocalExecutor

    clones = []
    monkeypatch.setattr(index_module, "gpu_available", lambda: True)
    monkeypatch.setattr(index_module, "_to_gpu", lambda index, params: clones.append(index) or index)
    run_on = LocalExecutor(workers=1) if executor == "in-process" else _Elsewhere()
    summary = enrich(
        tiny_bank / "bank",
        tiny_bank / "world" / "train",
        tmp_path / "out",
        EnrichConfig(batch_size=16),
        progress=False,
        executor=run_on,
    )
    # one copy in the process that searches, none in the driver
    assert len(clones) == (1 if executor == "in-process" else 0)
    assert summary.ok == (executor == "in-process")


def test_a_faiss_that_would_quietly_search_on_the_cpu_is_said():
    from pathlib import Path

    import tomllib

    from cocu.curation.bank.index import faiss_build_problem

    both = faiss_build_problem(["faiss-cpu", "faiss-gpu-cu12", "numpy"], cuda_visible=True, faiss_has_gpu=False)
    assert both is not None and "overwrite each other" in both and "faiss-gpu-cu12" in both
    cpu_build = faiss_build_problem(["faiss-cpu"], cuda_visible=True, faiss_has_gpu=False)
    assert cpu_build is not None and "pip uninstall -y faiss-cpu" in cpu_build
    assert faiss_build_problem(["faiss-cpu"], cuda_visible=False, faiss_has_gpu=False) is None  # a CPU machine
    assert faiss_build_problem(["faiss-gpu-cu12"], cuda_visible=True, faiss_has_gpu=True) is None
    # no extra may add a second faiss beside the dependency: whichever installed last would own faiss/
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = [req for reqs in project["optional-dependencies"].values() for req in reqs]
    assert not [req for req in extras if req.startswith("faiss")]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from cocu.training.model import GroupViT, get_config

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = GroupViT(get_config("groupvit-test", {"proj_num_layers": 1}))
        ddp = DistributedDataParallel(model)  # find_unused_parameters off, as Lightning's default DDP
        images = torch.randn(2, 3, 32, 32)
        text = torch.randint(1, 400, (2, 1, model.context_length))  # the caption only: zero prompts
        for _ in range(2):  # an unused parameter fails the second step's reduction
            image_x, text_x, prompt_x = ddp(images, text)
            scales = model.logit_scale_value(), model.multi_label_logit_scale_value()
            groupvit_loss(image_x, text_x, prompt_x, *scales).loss.backward()
        torch.save({"steps": 2}, os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_trains_with_zero_prompts_per_image(tmp_path):
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.pt", "1.pt"]


def test_decoders_send_uint8_and_the_embeddings_are_the_float_transforms_bit_for_bit():
    from PIL import Image

    from cocu.curation.bank.clip import load_clip

    clip = load_clip("ViT-B-16", device="cpu")
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((300, 200), (90, 500))]
    sent = torch.stack([clip.decode_transform(p) for p in pictures])
    assert sent.dtype == torch.uint8  # a quarter of float32's bytes through shared memory
    reference = clip.embed_pixels(torch.stack([clip.preprocess(p) for p in pictures]))
    assert np.array_equal(clip.embed_pixels(sent), reference)


def test_the_gpu_check_lists_its_rows_and_runs_one_as_a_cpu_smoke():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    rows = subprocess.run([sys.executable, str(script)], check=True, capture_output=True, text=True).stdout.split()
    assert rows == ["clip", "faiss-flat", "faiss-ivf", "kmeans", "train", "eval", "ddp"]
    done = subprocess.run([sys.executable, str(script), "--row", "faiss-flat"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    (line,) = done.stdout.strip().splitlines()  # printed at once, one table line per measurement
    assert line.startswith("| CPU smoke: faiss CPU search, Flat,") and "queries/s" in line


def test_uint8_training_images_normalized_after_the_transfer_equal_the_workers_floats(small_world):
    from cocu.training.data import CuratedShardsDataModule

    world, _ = small_world
    data = CuratedShardsDataModule(
        str(world / "train"),
        batch_size=8,
        num_workers=0,
        image_size=32,
        text_mode="oracle",
        num_prompts=2,
        context_length=32,
        truth=str(world / "truth" / "train"),
    )
    torch.manual_seed(0)  # the crops draw from torch's generator
    floats = next(iter(data.stream()))
    torch.manual_seed(0)
    sent = next(iter(data.stream(uint8_images=True)))
    assert sent["image"].dtype == torch.uint8 and floats["image"].dtype == torch.float32
    assert torch.equal(data.on_after_batch_transfer(sent, 0)["image"], floats["image"])
    assert torch.equal(sent["text"], floats["text"])
