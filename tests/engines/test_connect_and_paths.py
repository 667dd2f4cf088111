"""Joining a cluster (explicit address, auto, RAY_ADDRESS, none with a dead cluster's address file left over), paths a
worker cannot see, and naming a Spark master for downloads: each failure is one line naming what it is about."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
from enginekit import clean_env, free_port

from cocu.curation.core.stage import ShardTask
from cocu.curation.inputs.download import DownloadConfig, download
from cocu.curation.inputs.url_lists import IngestError

ray = pytest.importorskip("ray")

from cocu.curation.executors.ray_actors import RayExecutor  # noqa: E402
from cocu.curation.executors.ray_cluster import RayAddressError  # noqa: E402
from cocu.curation.executors.ray_worker import ShardWorker, WorkerPathError  # noqa: E402


@pytest.fixture
def no_cluster(monkeypatch, tmp_path):
    """This process as if it were not connected to Ray, with Ray's temp folder (its address file) under tmp_path."""
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail(f"ray.init{a}{k} was called"))
    return tmp_path


def leftover(folder: Path) -> str:
    """The address file of a cluster that was killed: it names a port where nothing listens any more."""
    address = f"127.0.0.1:{free_port()}"
    (folder / "ray").mkdir(exist_ok=True)
    (folder / "ray" / "ray_current_cluster").write_text(address)
    return address


def test_an_explicit_address_that_does_not_answer_is_one_line(no_cluster):
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(RayAddressError) as caught:
        RayExecutor(address=address).connect()
    assert str(caught.value) == f"--ray-address {address}: no Ray cluster answers there (Connection refused)"


def test_ray_address_from_the_environment_is_named_when_it_does_not_answer(no_cluster, monkeypatch):
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(RayAddressError, match=f"^RAY_ADDRESS {address}: no Ray cluster answers there"):
        RayExecutor().connect()


def test_auto_names_the_address_file_of_a_dead_cluster_or_its_absence(no_cluster):
    with pytest.raises(RayAddressError, match="--ray-address auto: no Ray cluster runs on this node"):
        RayExecutor(address="auto").connect()
    address = leftover(no_cluster)
    with pytest.raises(RayAddressError) as caught:
        RayExecutor(address="auto").connect()
    assert f"ray_current_cluster names {address}, which does not answer" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_no_address_starts_a_local_cluster_despite_a_dead_clusters_address_file():
    """Before: "When connecting to an existing cluster, object_store_memory must not be provided"."""
    folder = Path(tempfile.mkdtemp(prefix="cx", dir="/tmp"))  # short: the new cluster's sockets go under it
    leftover(folder)
    code = (
        "import ray\nfrom cocu.curation.executors.ray_actors import RayExecutor\n"
        "RayExecutor().connect()\nprint('CPU', ray.cluster_resources().get('CPU'))\nray.shutdown()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(RAY_TMPDIR=str(folder)),
        capture_output=True,
        text=True,
        timeout=180,
    )
    subprocess.run(["rm", "-rf", str(folder)], check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "CPU " in run.stdout


def test_a_path_a_worker_cannot_see_names_the_path_and_the_node(tmp_path):
    worker = ShardWorker(None, (), 1, cwd=str(tmp_path / "not-on-this-node"))
    missing = ShardTask(tmp_path / "shard.parquet", tmp_path / "out" / "shard.parquet")
    with pytest.raises(WorkerPathError) as caught:
        worker.run(lambda *a: {}, missing, {})
    text = str(caught.value)
    assert text.startswith(f"{missing.source}: not visible on node ") and "share the filesystem" in text
    missing.source.write_bytes(b"")
    with pytest.raises(WorkerPathError, match=f"^{missing.target}: not visible on node"):
        worker.run(lambda *a: {}, missing, {})


# ------------------------------------------------------------------------------------------- Spark master


@pytest.fixture
def url_list(tmp_path) -> Path:
    path = tmp_path / "list.tsv"
    path.write_text("url\tcaption\nhttp://127.0.0.1:9/a.jpg\ta cat\n")
    return path


@pytest.fixture
def fake_spark(monkeypatch):
    """A pyspark stand-in that records the session img2dataset would find active, and what ran inside it."""
    record: dict = {"master": None, "active": False, "stopped": False, "ran_inside": None}

    class Session:
        def stop(self):
            record["active"], record["stopped"] = False, True

    class Builder:
        def appName(self, name):  # noqa: N802 - pyspark's name
            return self

        def master(self, url):
            record["master"] = url
            return self

        def getOrCreate(self):  # noqa: N802
            record["active"] = True
            return Session()

    sql = types.ModuleType("pyspark.sql")
    sql.SparkSession = types.SimpleNamespace(builder=Builder())  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyspark", types.ModuleType("pyspark"))
    monkeypatch.setitem(sys.modules, "pyspark.sql", sql)
    import cocu.curation.inputs.download as module

    def run(kwargs, watcher):
        record["ran_inside"] = (record["active"], kwargs["distributor"])

    monkeypatch.setattr(module, "_run_img2dataset", run)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    return record


def test_spark_master_makes_the_session_img2dataset_then_uses(fake_spark, url_list, tmp_path):
    download(url_list, tmp_path / "out", DownloadConfig(distributor="pyspark", spark_master="local[2]"), progress=False)
    assert fake_spark["master"] == "local[2]" and fake_spark["ran_inside"] == (True, "pyspark")
    assert fake_spark["stopped"]


def test_under_spark_submit_its_master_is_used(fake_spark, url_list, tmp_path, monkeypatch):
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "40000")  # set by the JVM that spark-submit started
    download(url_list, tmp_path / "out", DownloadConfig(distributor="pyspark"), progress=False)
    assert fake_spark["master"] is None and fake_spark["ran_inside"] == (True, "pyspark")
    assert not fake_spark["stopped"]  # spark-submit's session is its own


def test_a_spark_master_that_does_not_answer_is_one_line(fake_spark, url_list, tmp_path):
    port = free_port()
    master = f"spark://127.0.0.1:{port}"
    with pytest.raises(IngestError) as caught:
        download(url_list, tmp_path / "out", DownloadConfig(distributor="pyspark", spark_master=master), progress=False)
    assert str(caught.value) == (
        f"--spark-master {master}: no Spark master answers at 127.0.0.1:{port} (Connection refused)"
    )
    with pytest.raises(IngestError, match="--spark-master local: needs --distributor pyspark"):
        download(url_list, tmp_path / "out", DownloadConfig(spark_master="local"), progress=False)


def test_the_cli_takes_spark_master(monkeypatch, tmp_path, url_list):
    from typer.testing import CliRunner

    from cocu.cli import data

    seen = {}
    monkeypatch.setattr("cocu.curation.inputs.download.download", lambda url, out, cfg: seen.update(cfg=cfg) or 1 / 0)
    runner = CliRunner()
    runner.invoke(
        data.app,
        [
            "download",
            str(url_list),
            str(tmp_path / "o"),
            "--distributor",
            "pyspark",
            "--spark-master",
            "spark://h:7077",
        ],
    )
    assert seen["cfg"].spark_master == "spark://h:7077" and seen["cfg"].distributor == "pyspark"
