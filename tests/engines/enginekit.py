"""The engine tests' kit: a real two-node Ray cluster on this machine (each node started by `ray start` as its own
processes), and the small world, checkpoint and plain local run that every engine's output is compared with.

Each node runs `ray start --block` in a process group of its own; teardown kills those groups and nothing else.
(`ray stop` kills every Ray process on the machine, other users' clusters included, so it is not used here.)
The head runs in a folder of its own (not the tests' working directory), with token authentication off and a
health check that declares a killed node dead within seconds.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).parent / "ray")
JOBS = importlib.util.find_spec("aiohttp_cors") is not None  # ray[default]: the dashboard and its job server
SHARDS, ROWS = 12, 10
MODEL = "cocu-test-tiny"
# One environment for the nodes and for every driver the tests start: no token, no telemetry, fast node-death.
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Ray address, plus the cluster settings and ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    return {**env, **RAY_ENV, **extra}


class Node:
    """One `ray start --block` and every process it starts, in a process group of their own."""

    def __init__(self, args: list[str], cwd: Path, log: Path, env: dict[str, str]):
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [RAY, "start", *args, "--block"],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_started(self, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if "Ray runtime started" in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-1500:]
        self.stop()
        pytest.fail(f"ray start did not come up: {tail}")

    def pids(self) -> list[int]:
        """Every process of this node: its process group, and their descendants (Ray's workers start a session of
        their own under the raylet)."""
        parents: dict[int, int] = {}
        group = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            parents[int(entry)] = int(fields[1])
            if int(fields[2]) == self.proc.pid:
                group.add(int(entry))
        found, grew = set(group), True
        while grew:
            more = {pid for pid, parent in parents.items() if parent in found} - found
            found |= more
            grew = bool(more)
        return sorted(found)

    def running(self, title: str) -> bool:
        """True while one of this node's worker processes runs ``title`` (Ray names them ray::Actor.method)."""
        for pid in self.pids():
            try:
                if title in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    return True
            except OSError:
                continue
        return False

    def raylet(self) -> int:
        for pid in self.pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    return pid
            except OSError:
                continue
        raise AssertionError("this node has no raylet")

    def stop(self) -> None:
        workers = self.pids()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in workers:  # the workers, which sit in sessions of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


@dataclass
class Cluster:
    address: str
    temp: Path  # the head's --temp-dir, TEMP/ray: a driver with RAY_TMPDIR=TEMP finds the cluster as on a real node
    head: Node
    worker: Node
    raylet_cwd: Path
    dashboard: int | None = None  # the job server's port, when ray[default] is installed

    def add_worker(self) -> Node:
        node = Node(
            [
                "--address",
                self.address,
                "--num-cpus",
                "1",
                "--object-store-memory",
                "80000000",
                "--disable-usage-stats",
            ],
            self.raylet_cwd,
            self.raylet_cwd / f"worker-{time.monotonic_ns()}.log",
            clean_env(),
        )
        node.wait_started()
        return node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (1 CPU) and a second node (1 CPU), started from a folder that is not the drivers' working directory."""
    pytest.importorskip("ray")
    base = Path(tempfile.mkdtemp(prefix="cr", dir="/tmp"))  # short: Ray's socket paths live under it
    raylet_cwd = tmp_path_factory.mktemp("raylet-cwd")
    dashboard = free_port() if JOBS else None  # Ray's job server (`ray job submit`) needs ray[default]
    head = Node(
        [
            "--head",
            "--port",
            str(free_port()),
            "--num-cpus",
            "1",
            *(
                ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"]
                if dashboard
                else ["--include-dashboard=false"]
            ),
            "--temp-dir",
            str(base / "ray"),
            "--object-store-memory",
            "80000000",
            "--disable-usage-stats",
        ],
        raylet_cwd,
        raylet_cwd / "head.log",
        clean_env(),
    )
    head.wait_started()
    address = (base / "ray" / "ray_current_cluster").read_text().strip()
    made = Cluster(address, base, head, head, raylet_cwd, dashboard)
    try:
        made.worker = made.add_worker()
    except BaseException:
        head.stop()
        raise
    yield made
    for node in {id(n): n for n in (made.worker, head)}.values():
        node.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 12-shard world, a tiny CLIP beside its JSON, and the plain local build-bank + enrich run, all made from
    ROOT with paths relative to it (as the engine runs name them)."""
    from test_curation import save_tiny_clip

    from cocu.curation.bank.build import build_bank
    from cocu.curation.bank.config import BankConfig
    from cocu.curation.enrich.curator import EnrichConfig
    from cocu.curation.enrich.run import enrich
    from cocu.curation.inputs.synthetic import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("engines")
    generate_world(root / "world", WorldConfig(train=SHARDS * ROWS, teacher=0, val=0, shard_size=ROWS), progress=False)
    save_tiny_clip(root / "ckpt", seed=3)
    before = os.getcwd()
    os.chdir(root)
    try:
        config = BankConfig(model=MODEL, pretrained="ckpt/tiny.pt", batch_size=32, decode_workers=0, min_count=2)
        assert build_bank("world/train", "bank-local", config, progress=False).ok
        assert enrich("bank-local", "world/train", "out-local", EnrichConfig(batch_size=16), progress=False).ok
    finally:
        os.chdir(before)
    return {"root": root, "config": config}


BANK_FILES = ["vocabulary.json", "concepts.parquet", "images.parquet", "embeddings.npy", "index.faiss", "manifest.json"]
BANK_ARGS = ["--model", MODEL, "--pretrained", "ckpt/tiny.pt", "--batch-size", "32", "--decode-workers", "0"]
BANK_ARGS += ["--min-count", "2"]


def curate(root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
    """`cocu-curate ARGS` run from ``root``; returns the completed process (stdout and stderr as text)."""
    return subprocess.run(
        [sys.executable, "-m", "cocu.cli.curate", *args],
        cwd=root,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def same_bank(bank: Path, reference: Path) -> None:
    for name in BANK_FILES:
        assert (bank / name).read_bytes() == (reference / name).read_bytes(), name
    parts = sorted(p.name for p in (reference / "parts").glob("*.parquet"))
    assert sorted(p.name for p in (bank / "parts").glob("*.parquet")) == parts
    for name in parts:
        assert (bank / "parts" / name).read_bytes() == (reference / "parts" / name).read_bytes(), name


def same_shards(out: Path, reference: Path) -> None:
    names = sorted(p.name for p in reference.glob("*.parquet"))
    assert sorted(p.name for p in out.glob("*.parquet")) == names
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp"))
