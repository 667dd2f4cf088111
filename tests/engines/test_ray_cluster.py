"""build-bank and enrich on a real two-node Ray cluster (`ray start`, separate processes), driven by the CLI from a
folder that is not the raylets' working directory, with relative paths; compared byte for byte with the plain local
run. The last test kills the second node's raylet mid-run: the run must end in bounded time, with the local bytes or
with the lost shards listed, and leave no temporary behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from enginekit import BANK_ARGS, RAY, clean_env, curate, free_port, same_bank, same_shards, temporaries

pytestmark = pytest.mark.slow


def test_two_nodes_give_the_local_bytes_from_relative_paths(cluster, world):
    root = world["root"]
    assert cluster.raylet_cwd != root
    started = time.monotonic()
    # RAY_ADDRESS names the cluster (as inside `ray job submit`); no --ray-address
    bank = curate(
        root,
        "build-bank",
        "--shards",
        "world/train",
        "--out",
        "bank-ray",
        *BANK_ARGS,
        "--executor",
        "ray",
        "--workers",
        "2",
        env=clean_env(RAY_ADDRESS=cluster.address),
    )
    assert bank.returncode == 0, bank.stderr[-3000:]
    assert "12 shard(s) written" in bank.stdout and "0 failed" in bank.stdout
    built = time.monotonic()
    # No address at all: the running cluster of this node (its address file), not a new local one. Three actors on two
    # CPUs: the third never starts, and must not hold a shard (it held one for ever before).
    curated = curate(
        root,
        "enrich",
        "--bank",
        "bank-ray",
        "--shards",
        "world/train",
        "--out",
        "out-ray",
        "--batch-size",
        "16",
        "--executor",
        "ray",
        "--workers",
        "3",
        env=clean_env(RAY_TMPDIR=str(cluster.temp)),
        timeout=240,
    )
    assert curated.returncode == 0, curated.stderr[-3000:]
    print(f"two-node build-bank {built - started:.1f}s, enrich {time.monotonic() - built:.1f}s")
    same_bank(root / "bank-ray", root / "bank-local")
    same_shards(root / "out-ray", root / "out-local")
    assert not (cluster.raylet_cwd / "bank-ray").exists() and not (cluster.raylet_cwd / "out-ray").exists()
    assert temporaries(root / "bank-ray") == temporaries(root / "out-ray") == []


def test_enrich_inside_ray_job_submit_joins_the_jobs_cluster(cluster, world):
    """`ray job submit` sets RAY_ADDRESS for its entrypoint; before, that run failed on object_store_memory."""
    if cluster.dashboard is None:
        pytest.skip("Ray's job server needs ray[default] (aiohttp_cors and friends), which is not installed")
    root = world["root"]
    entry = [sys.executable, "-m", "cocu.cli.curate", "enrich", "--bank", str(root / "bank-local")]
    entry += ["--shards", str(root / "world" / "train"), "--out", str(root / "out-job"), "--batch-size", "16"]
    entry += ["--executor", "ray"]
    job = subprocess.run(
        [RAY, "job", "submit", "--address", f"http://127.0.0.1:{cluster.dashboard}", "--", *entry],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    assert "12 shard(s) written" in job.stdout
    same_shards(root / "out-job", root / "out-local")


def test_an_address_that_does_not_answer_is_one_line(world):
    port = free_port()
    run = curate(
        world["root"],
        "enrich",
        "--bank",
        "bank-local",
        "--shards",
        "world/train",
        "--out",
        "out-nowhere",
        "--executor",
        "ray",
        "--ray-address",
        f"127.0.0.1:{port}",
        timeout=120,
    )
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last == f"error: --ray-address 127.0.0.1:{port}: no Ray cluster answers there (Connection refused)"


def kill_when(node, title: str, driver: subprocess.Popen, seconds: float = 180) -> float:
    """SIGKILL ``node``'s raylet as soon as one of its workers runs ``title``; returns when."""
    deadline = time.monotonic() + seconds
    while not node.running(title):
        assert driver.poll() is None, (
            "the run ended before the node could be killed: " + driver.communicate()[1][-3000:]
        )
        assert time.monotonic() < deadline, f"no worker of the second node ran {title}"
        time.sleep(0.02)
    os.kill(node.raylet(), signal.SIGKILL)
    return time.monotonic()


def finished(driver: subprocess.Popen, since: float, seconds: float = 120) -> tuple[str, str]:
    try:
        stdout, stderr = driver.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.communicate()
        pytest.fail(f"the driver still waits {seconds:.0f} s after the node was lost")
    print(f"the run ended {time.monotonic() - since:.1f}s after the raylet was killed")
    return stdout, stderr


def test_a_node_lost_while_build_bank_starts_its_actors_ends_the_run(cluster, world):
    """SIGKILL the second node's raylet while its actor loads the model: the head's actor does every shard."""
    root = world["root"]
    command = [sys.executable, "-m", "cocu.cli.curate", "build-bank", "--shards", "world/train", "--out", "bank-lost"]
    command += [*BANK_ARGS, "--executor", "ray", "--workers", "2"]
    env = clean_env(RAY_ADDRESS=cluster.address)
    driver = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = kill_when(cluster.worker, "ray::ShardWorker", driver)
    stdout, stderr = finished(driver, killed)
    assert "worker(s) lost" in stdout, stdout + stderr[-3000:]
    if driver.returncode == 0:
        same_bank(root / "bank-lost", root / "bank-local")
    else:
        assert "error: " in stderr and "failed" in stdout
    assert temporaries(root / "bank-lost") == []


def test_a_node_lost_mid_shard_retries_it_and_leaves_no_temporary(cluster, tmp_path):
    """SIGKILL the second node's raylet while its actor is inside a shard: the shard is retried on the head, the
    run ends with every shard written, the summary counts the retry and the lost worker, no temporary is left."""
    node = cluster.add_worker()  # the previous test killed the first one
    script = str(Path(__file__).with_name("slow_stage_driver.py"))
    env = clean_env(RAY_ADDRESS=cluster.address)
    driver = subprocess.Popen(
        [sys.executable, script, str(tmp_path), "6", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        killed = kill_when(node, "ray::ShardWorker.run", driver)
        stdout, stderr = finished(driver, killed)
    finally:
        node.stop()
    assert driver.returncode == 0, stdout + stderr[-3000:]
    assert "6 shard(s) written" in stdout and "worker(s) lost" in stdout and "attempt(s) retried" in stdout, stdout
    assert [(tmp_path / "out" / f"{i}.txt").read_text() for i in range(6)] == [f"shard {i}" for i in range(6)]
    assert temporaries(tmp_path) == []
