"""Curation at scale without a cluster: GPU placement with a faked device count, array-task slices plus
--finalize, and a local 2-CPU Ray cluster whose outputs must be the local executor's bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from stage_functions import record_device
from test_curation import MODEL, save_tiny_clip

from cocu.curation.bank.build import build_bank
from cocu.curation.bank.config import BankConfig
from cocu.curation.bank.layout import BankError
from cocu.curation.core.placement import ShardSlice, shard_slice, worker_devices
from cocu.curation.core.stage import Resources, ShardTask, Stage, run_stage
from cocu.curation.enrich.curator import EnrichConfig
from cocu.curation.enrich.run import enrich
from cocu.curation.executors.local import LocalExecutor

SHARDS, ROWS = 6, 40
# build.json is the build's own bookkeeping (it records each file's mtime to skip re-hashing): compared without those
BANK_FILES = ["vocabulary.json", "concepts.parquet", "images.parquet", "embeddings.npy", "index.faiss", "manifest.json"]


def fake_gpus(monkeypatch, count: int) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_workers_default_to_one_per_gpu_each_pinned_to_its_own(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def workers(device: str | None) -> int:
        return LocalExecutor().workers_for(Stage("s", record_device, {}, resources=Resources.for_device(device)), 99)

    fake_gpus(monkeypatch, 0)
    assert workers(None) == 1 and worker_devices(1, None) is None
    fake_gpus(monkeypatch, 4)
    assert workers(None) == workers("cuda") == 4
    assert LocalExecutor().workers_for(Stage("s", record_device, {}, resources=Resources.for_device(None)), 3) == 3
    assert workers("cpu") == 1 and worker_devices(4, "cpu") is None
    assert worker_devices(4, None) == ["0", "1", "2", "3"]
    assert worker_devices(6, "cuda") == ["0", "1", "2", "3", "0", "1"]  # more workers than GPUs: dealt round-robin
    assert worker_devices(2, "cuda:3") is None  # the user pinned the device himself
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")  # the scheduler gave this job GPUs 2 and 5
    fake_gpus(monkeypatch, 2)
    assert worker_devices(2, None) == ["2", "5"]


@pytest.mark.slow
def test_each_parallel_worker_sees_only_its_own_gpu(tmp_path, monkeypatch):
    sources = []
    for i in range(6):
        sources.append(tmp_path / f"{i}.src")
        sources[-1].write_text(str(i))
    tasks = [ShardTask(src, tmp_path / "out" / f"{i}.txt") for i, src in enumerate(sources)]
    (tmp_path / "out").mkdir()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,7")  # the scheduler gave this job GPUs 3 and 7
    fake_gpus(monkeypatch, 2)  # the driver sees them; each spawned worker must see only its own
    stage = Stage("pin", record_device, {}, resources=Resources.for_device(None))
    summary = run_stage(stage, tasks, LocalExecutor(), progress=False)
    assert summary.ok and summary.done == 6
    seen = {}
    for task in tasks:
        pid, device = task.target.read_text().split()
        seen.setdefault(pid, set()).add(device)
    assert all(len(devices) == 1 for devices in seen.values())  # a worker never changes GPU
    assert set().union(*seen.values()) <= {"3", "7"}
    if len(seen) == 2:  # both workers took shards: they sit on different GPUs
        assert len(set().union(*seen.values())) == 2


def test_array_slice_from_flags_or_slurm():
    assert shard_slice(None, None, {}) == ShardSlice(0, 1)
    assert shard_slice(1, 3, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "9"}) == ShardSlice(1, 3)
    assert shard_slice(
        None, None, {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}
    ) == ShardSlice(3, 4)
    assert ShardSlice(1, 3).take(list("abcdefg")) == ["b", "e"]
    with pytest.raises(ValueError, match="--shard-index must be in"):
        shard_slice(2, 2, {})
    with pytest.raises(ValueError, match="together"):
        shard_slice(0, None, {})


# ------------------------------------------------------------------------------------------- one world, three engines


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A small world, its bank and its enrich output from one plain local run."""
    from cocu.curation.inputs.synthetic import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("scale")
    generate_world(root / "world", WorldConfig(train=SHARDS * ROWS, teacher=0, val=0, shard_size=ROWS), progress=False)
    checkpoint = save_tiny_clip(root / "ckpt", seed=2)
    config = BankConfig(model=MODEL, pretrained=str(checkpoint), batch_size=32, decode_workers=0, min_count=3)
    assert build_bank(root / "world" / "train", root / "bank", config, progress=False).ok
    assert enrich(root / "bank", root / "world" / "train", root / "out", EnrichConfig(batch_size=16), progress=False).ok
    return {"shards": root / "world" / "train", "config": config, "bank": root / "bank", "out": root / "out"}


def same_files(a: Path, b: Path, names) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    if "manifest.json" in names:
        assert _build_record(a) == _build_record(b)


def _build_record(bank: Path) -> dict:
    record = json.loads((bank / "build.json").read_text())
    for step in record.values():
        for entry in step["files"].values():
            entry.pop("mtime_ns")
    return record


def data_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.parquet"))


@pytest.mark.slow
def test_array_tasks_then_finalize_equal_one_plain_run(reference, tmp_path):
    bank, out = tmp_path / "bank", tmp_path / "out"
    first = build_bank(reference["shards"], bank, reference["config"], progress=False, part=ShardSlice(0, 2))
    assert first.ok and first.embed.done == SHARDS // 2 and not (bank / "manifest.json").exists()
    with pytest.raises(BankError, match=r"not embedded yet \(3 of 6 shard"):
        build_bank(reference["shards"], bank, reference["config"], progress=False, finalize=True)
    second = build_bank(reference["shards"], bank, reference["config"], progress=False, part=ShardSlice(1, 2))
    assert second.embed.done == SHARDS // 2 and "slice 1 of 2 embedded" in second.line()
    final = build_bank(reference["shards"], bank, reference["config"], progress=False, finalize=True)
    assert final.embed.done == 0 and final.rows == SHARDS * ROWS
    same_files(bank, reference["bank"], BANK_FILES)
    same_files(bank / "parts", reference["bank"] / "parts", data_files(reference["bank"] / "parts"))
    for index in range(2):
        assert (
            enrich(
                bank, reference["shards"], out, EnrichConfig(batch_size=16), progress=False, part=ShardSlice(index, 2)
            ).done
            == SHARDS // 2
        )
    assert data_files(out) == data_files(reference["out"])
    same_files(out, reference["out"], data_files(out))


# ------------------------------------------------------------------------------------------- Ray


@pytest.mark.slow
def test_ray_run_is_byte_identical_to_the_local_run(reference, ray_cluster, tmp_path):
    from cocu.curation.executors.ray_actors import RayExecutor

    bank, out = tmp_path / "bank", tmp_path / "out"
    summary = build_bank(
        reference["shards"], bank, reference["config"], progress=False, executor=RayExecutor(workers=2)
    )
    assert summary.ok and summary.embed.done == SHARDS
    same_files(bank, reference["bank"], BANK_FILES)
    same_files(bank / "parts", reference["bank"] / "parts", data_files(reference["bank"] / "parts"))
    stage = enrich(
        bank, reference["shards"], out, EnrichConfig(batch_size=16), progress=False, executor=RayExecutor(workers=2)
    )
    assert stage.ok and stage.done == SHARDS and stage.counts["images"] == SHARDS * ROWS
    assert data_files(out) == data_files(reference["out"])
    same_files(out, reference["out"], data_files(out))


def flaky(task: ShardTask, params, progress) -> dict[str, int]:
    """Kill its own process on a shard's first try, raise on every try for 'bad', write otherwise."""
    tries = task.target.with_suffix(".tries")
    count = int(tries.read_text()) + 1 if tries.exists() else 1
    tries.write_text(str(count))
    if task.source.name.startswith("bad"):
        raise RuntimeError("the disk said no")
    if task.source.name.startswith("die") and count == 1:
        os._exit(1)  # the actor dies mid-shard, as on an out-of-memory kill
    task.target.write_text(task.source.read_text())
    return {"images": 1}


@pytest.mark.slow
def test_ray_retries_a_dead_actor_and_reports_what_keeps_failing(ray_cluster, tmp_path):
    from cocu.curation.executors.ray_actors import RayExecutor

    ray_cluster.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # its stage function travels by value

    names = ["die0", "ok1", "bad2", "ok3"]
    for name in names:
        (tmp_path / f"{name}.src").write_text(name)
    (tmp_path / "out").mkdir()
    tasks = [ShardTask(tmp_path / f"{n}.src", tmp_path / "out" / f"{n}.txt") for n in names]
    stage = Stage("flaky", flaky, {})
    summary = run_stage(stage, tasks, RayExecutor(workers=2, max_retries=2), progress=False)
    assert summary.done == 3 and len(summary.failures) == 1
    assert "bad2.src" in summary.failures[0] and "failed 3 time(s), last: the disk said no" in summary.failures[0]
    assert "\n" not in summary.failures[0]
    tries = {n: int((tmp_path / "out" / f"{n}.tries").read_text()) for n in names}
    assert tries == {"die0": 2, "ok1": 1, "bad2": 3, "ok3": 1}
    assert (tmp_path / "out" / "die0.txt").read_text() == "die0"
    assert not (tmp_path / "out" / "bad2.txt").exists()


@pytest.mark.slow
def test_killed_ray_run_resumes(reference, ray_cluster, tmp_path):
    """SIGKILL the driver of a Ray build-bank mid-run; the rerun embeds only what is missing, to the same bytes."""
    from cocu.curation.executors.ray_actors import RayExecutor

    bank = tmp_path / "bank"
    address = ray_cluster.get_runtime_context().gcs_address
    config = reference["config"]
    command = [
        sys.executable,
        "-m",
        "cocu.cli.curate",
        "build-bank",
        "--shards",
        str(reference["shards"]),
        "--model",
        MODEL,
        "--pretrained",
        config.pretrained,
        "--out",
        str(bank),
        "--batch-size",
        "32",
        "--decode-workers",
        "0",
        "--min-count",
        "3",
        "--executor",
        "ray",
        "--ray-address",
        address,
        "--workers",
        "1",
    ]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((bank / "parts").glob("*.manifest.json")) and time.monotonic() < deadline:
        assert driver.poll() is None, "the driver ended before finishing a shard"
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = len(list((bank / "parts").glob("*.manifest.json")))
    assert 1 <= finished < SHARDS
    resumed = build_bank(reference["shards"], bank, config, progress=False, executor=RayExecutor(workers=2))
    assert resumed.ok and resumed.embed.skipped == finished and resumed.embed.done == SHARDS - finished
    assert not list((bank / "parts").glob(".*.tmp"))
    same_files(bank, reference["bank"], BANK_FILES)
    assert pq.read_table(bank / "images.parquet").equals(pq.read_table(reference["bank"] / "images.parquet"))
