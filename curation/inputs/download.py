"""Downloading a URL + caption list through img2dataset into cocu input shards.

img2dataset's ``output_format="parquet"`` already *is* the cocu data contract (``key``, ``jpg``,
``caption`` plus its metadata columns; failed rows kept with a null ``jpg``), so ``download`` only
prepares the list, calls the real library and reads back its per-shard ``*_stats.json`` files. Its
own incremental mode does the resuming: a shard whose stats file exists is never downloaded again.

img2dataset is imported inside the functions: it pulls in wandb, albumentations,
OpenCV and torch, and img2dataset's ``spawn`` workers re-import the caller's modules.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cocu.curation.core.configs import option
from cocu.curation.core.network import no_answer
from cocu.curation.inputs.url_lists import (
    LIST_LAYOUTS,
    IngestError,
    infer_format,
    list_files,
    normalize_headerless,
    scan_list,
)

DISTRIBUTORS = ("multiprocessing", "pyspark", "ray")  # img2dataset's ways of spreading shards over workers
# img2dataset arguments that cocu fixes: changing them would break the data contract or the resume.
OWN_ARGUMENTS = ("url_list", "output_folder", "output_format", "encode_format", "incremental_mode")
INPUT_DIR = "_input"  # header-bearing copies of header-less lists; a subfolder, so img2dataset's *.json glob ignores it


@dataclass
class DownloadConfig:
    """What ``download`` hands img2dataset. Defaults follow the GroupViT/CoCu recipe for CC3M/CC12M."""

    url_col: str = option("url", "Column holding the image URL.")
    caption_col: str = option("caption", "Column holding the caption.")
    input_format: str | None = option(None, "tsv, csv, parquet, jsonl, json (+ .gz); inferred from the file names.")
    columns: tuple[str, ...] | None = None  # names of a header-less list's columns, in order (presets set this)
    image_size: int = option(512, "Target size; with keep_ratio the smaller side (GroupViT recipe).", minimum=1)
    resize_mode: str = option("keep_ratio", "img2dataset resize mode: keep_ratio, center_crop, border, no, ...")
    resize_only_if_bigger: bool = option(True, "Only shrink, never enlarge.")
    encode_quality: int = 95
    processes_count: int = option(
        help="Download processes (one shard each at a time).", default_factory=lambda: os.cpu_count() or 1, minimum=1
    )
    thread_count: int = option(64, "Download threads per process.", minimum=1)
    number_sample_per_shard: int = option(
        10000, "URLs per output shard (img2dataset's number_sample_per_shard).", flags=("--shard-size",), minimum=1
    )
    timeout: int = option(10, "Seconds before a URL counts as failed.", minimum=1)
    retries: int = option(0, "Extra tries per failed URL.", minimum=0)
    extra_columns: tuple[str, ...] = option(
        (),
        "Input column to carry into the shards (repeatable; img2dataset's save_additional_columns).",
        flags=("--extra-col",),
    )
    overwrite: bool = option(False, "Delete OUT first instead of resuming after its finished shards.")
    distributor: str = option(
        "multiprocessing",
        "How img2dataset spreads shards: processes here, a pyspark session (made if none), or a Ray cluster.",
        choices=DISTRIBUTORS,
    )
    ray_address: str | None = option(
        None, "With --distributor ray: the cluster (auto or HOST:PORT; default: the running one, else a local one)."
    )
    spark_master: str | None = option(
        None,
        "With --distributor pyspark: the Spark master (spark://HOST:7077, yarn, local[8]); default: the one "
        "spark-submit gave, else a local session.",
    )
    disallowed_header_directives: list[str] | None = None  # None: img2dataset's opt-out default; [] turns it off
    img2dataset_kwargs: dict[str, Any] = field(default_factory=dict)  # any other img2dataset.download argument

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DownloadConfig:
        if name not in LIST_LAYOUTS:
            raise ValueError(f"unknown preset '{name}' (known: {', '.join(LIST_LAYOUTS)})")
        return cls(columns=LIST_LAYOUTS[name], url_col="url", caption_col="caption", **overrides)


@dataclass
class DownloadSummary:
    """Totals over every shard in the output folder, read from img2dataset's stats files."""

    shards: int = 0
    shards_expected: int | None = None
    shards_skipped: int = 0  # finished by an earlier run, not downloaded again
    count: int = 0
    successes: int = 0
    failed_to_download: int = 0
    failed_to_resize: int = 0
    count_this_run: int = 0
    seconds: float = 0.0  # wall time of this run, start-up included
    download_seconds: float = 0.0  # first shard start to last shard end in this run (img2dataset's own clock)
    errors: Counter = field(default_factory=Counter)

    @property
    def shards_failed(self) -> int:
        return max(0, (self.shards_expected or 0) - self.shards)

    @property
    def images_per_second(self) -> float:
        """URLs handled per second while shards were downloading (what img2dataset's "total" line reports)."""
        return self.count_this_run / self.download_seconds if self.download_seconds > 0 else 0.0

    def line(self) -> str:
        failed = f", {self.shards_failed} failed (run again to retry them)" if self.shards_failed else ""
        text = (
            f"download: {self.shards} shard(s) done ({self.shards_skipped} from an earlier run){failed}; "
            f"{self.count} urls: success {self.successes}, failed_to_download {self.failed_to_download}, "
            f"failed_to_resize {self.failed_to_resize}; {self.count_this_run} urls this run in {self.seconds:.1f}s "
            f"({self.images_per_second:.1f} urls/s while downloading)"
        )
        if self.errors:
            text += "; top errors: " + ", ".join(f"{message!r} x{n}" for message, n in self.errors.most_common(3))
        return text


class DownloadInterrupted(KeyboardInterrupt):
    """img2dataset exits on SIGINT; finished shards are kept and a rerun resumes after them."""


def download(
    url_list: str | os.PathLike, out: str | os.PathLike, config: DownloadConfig | None = None, progress: bool = True
) -> DownloadSummary:
    """Download a URL + caption list into Parquet shards of the data contract with img2dataset."""
    cfg = config or DownloadConfig()
    clash = sorted(set(cfg.img2dataset_kwargs) & set(OWN_ARGUMENTS))
    if clash:
        raise ValueError(
            f"img2dataset_kwargs may not set {', '.join(clash)}: cocu fixes them to keep the data contract"
        )
    if cfg.distributor not in DISTRIBUTORS:
        raise ValueError(f"distributor '{cfg.distributor}' is not one of {', '.join(DISTRIBUTORS)}")
    if cfg.spark_master is not None and cfg.distributor != "pyspark":
        raise IngestError(f"--spark-master {cfg.spark_master}: needs --distributor pyspark")
    if cfg.ray_address is not None and cfg.distributor != "ray":
        raise IngestError(f"--ray-address {cfg.ray_address}: needs --distributor ray")
    out = Path(out).absolute()
    source = Path(url_list).absolute()
    fmt = cfg.input_format or infer_format(source)
    if cfg.overwrite and out.exists():
        shutil.rmtree(out)
    if cfg.columns:
        source = normalize_headerless(source, fmt, cfg.columns, out / INPUT_DIR, cfg.processes_count, progress)
        fmt = "parquet"
    rows = [
        scan_list(path, fmt, [cfg.url_col, cfg.caption_col, *cfg.extra_columns]) for path in list_files(source, fmt)
    ]
    counted = [n for n in rows if n is not None]  # a JSON array list is not counted: then neither total is known
    total = sum(counted) if len(counted) == len(rows) else None
    expected = None if total is None else sum(math.ceil(n / cfg.number_sample_per_shard) for n in counted)
    previous = _read_stats(out)
    started = time.perf_counter()
    if expected is None or not set(range(expected)) <= set(previous):  # else every shard is done: nothing to start
        if cfg.distributor == "ray":
            _connect_ray(cfg.ray_address)
        with _spark_session(cfg.spark_master) if cfg.distributor == "pyspark" else contextlib.nullcontext():
            _run_img2dataset(
                dict(
                    url_list=str(source),
                    output_folder=str(out),
                    output_format="parquet",
                    input_format=fmt,
                    url_col=cfg.url_col,
                    caption_col=cfg.caption_col,
                    save_additional_columns=list(cfg.extra_columns) or None,
                    image_size=cfg.image_size,
                    resize_mode=cfg.resize_mode,
                    resize_only_if_bigger=cfg.resize_only_if_bigger,
                    encode_format="jpg",
                    encode_quality=cfg.encode_quality,
                    processes_count=cfg.processes_count,
                    thread_count=cfg.thread_count,
                    number_sample_per_shard=cfg.number_sample_per_shard,
                    timeout=cfg.timeout,
                    retries=cfg.retries,
                    incremental_mode="incremental",
                    enable_wandb=False,
                    distributor=cfg.distributor,
                    disallowed_header_directives=cfg.disallowed_header_directives,
                    **cfg.img2dataset_kwargs,
                ),
                _StatsWatcher(out, previous, total, progress),
            )
    summary = summarize(out, set(previous))
    summary.shards_expected = expected
    summary.seconds = time.perf_counter() - started
    return summary


def _connect_ray(address: str | None) -> None:
    """img2dataset's Ray distributor uses whatever cluster this process is connected to (``connect_ray``'s rules)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise IngestError("distributor 'ray' needs Ray: pip install 'cocu[ray]'") from None
    from cocu.curation.executors.ray_cluster import connect_ray

    connect_ray(address)


@contextlib.contextmanager
def _spark_session(master: str | None) -> Iterator[None]:
    """The Spark session img2dataset's pyspark distributor then finds active and uses (it makes a local one else).

    ``master`` given: a session on it, made here and stopped after the download. Under ``spark-submit`` (the
    JVM that started this Python set ``PYSPARK_GATEWAY_PORT``): a session on the master spark-submit was given.
    Otherwise nothing is made here and img2dataset starts its own ``local[processes_count]`` session.
    """
    if master is None and not os.environ.get("PYSPARK_GATEWAY_PORT"):
        yield
        return
    for address in _spark_addresses(master or ""):
        reason = no_answer(address)
        if reason is not None:
            raise IngestError(f"--spark-master {master}: no Spark master answers at {address} ({reason})")
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise IngestError("distributor 'pyspark' needs pyspark: pip install pyspark") from None
    builder = SparkSession.builder.appName("cocu-download")
    if master is not None:
        builder = builder.master(master)
    try:
        session = builder.getOrCreate()
    except Exception as err:  # the JVM's long traceback: one line naming the master
        raise IngestError(f"--spark-master {master or '(spark-submit)'}: no Spark session ({err})") from None
    try:
        yield
    finally:
        if master is not None:
            session.stop()


def _spark_addresses(master: str) -> list[str]:
    """HOST:PORT of each standalone master in ``spark://h1:7077,h2:7077`` (nothing to check for yarn, local[...])."""
    if not master.startswith("spark://"):
        return []
    return [part if ":" in part else f"{part}:7077" for part in master[len("spark://") :].split(",") if part]


def _run_img2dataset(kwargs: dict[str, Any], watcher: _StatsWatcher) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home on import otherwise
    import img2dataset

    previous_handler = signal.getsignal(signal.SIGINT)
    watcher.start()
    try:
        img2dataset.download(**kwargs)
    except SystemExit as exit_:  # img2dataset's SIGINT handler removes _tmp and calls sys.exit(0)
        raise DownloadInterrupted(
            f"download into {kwargs['output_folder']} interrupted; run the same command again to resume"
        ) from exit_
    finally:
        signal.signal(signal.SIGINT, previous_handler)  # img2dataset replaces it for good otherwise
        watcher.stop()


def summarize(out: str | os.PathLike, done_before: Collection[int] = frozenset()) -> DownloadSummary:
    """Add up img2dataset's ``*_stats.json`` files; shards in ``done_before`` count as skipped."""
    summary = DownloadSummary()
    start, end = float("inf"), float("-inf")
    for shard_id, stats in _read_stats(Path(out)).items():
        summary.shards += 1
        summary.count += stats["count"]
        summary.successes += stats["successes"]
        summary.failed_to_download += stats["failed_to_download"]
        summary.failed_to_resize += stats["failed_to_resize"]
        summary.errors.update({k: v for k, v in stats.get("status_dict", {}).items() if k != "success"})
        if shard_id in done_before:
            summary.shards_skipped += 1
        else:
            summary.count_this_run += stats["count"]
            start, end = min(start, stats["start_time"]), max(end, stats["end_time"])
    summary.download_seconds = max(0.0, end - start)
    return summary


def _read_stats(out: Path, skip: Collection[int] = frozenset()) -> dict[int, dict[str, Any]]:
    """img2dataset's per-shard stats by shard id (a shard is finished exactly when its stats file exists)."""
    stats = {}
    for path in sorted(out.glob("*_stats.json")):
        try:
            shard_id = int(path.name.split("_")[0])
            if shard_id not in skip:
                stats[shard_id] = json.loads(path.read_text())
        except (ValueError, OSError):
            continue  # being written right now; the next poll reads it
    return stats


class _StatsWatcher:
    """A tqdm bar in images: img2dataset reports per finished shard, through its stats files."""

    def __init__(
        self,
        out: Path,
        previous: Mapping[int, Mapping[str, Any]],
        total: int | None,
        enabled: bool,
        interval: float = 0.5,
    ):
        self._out, self._seen, self._interval = out, set(previous), interval
        self._bar = tqdm(
            total=total,
            initial=sum(stats["count"] for stats in previous.values()),
            unit="img",
            unit_scale=True,
            desc="download",
            disable=not enabled,
            dynamic_ncols=True,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        self._bar.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._poll()

    def _poll(self) -> None:
        for shard_id, stats in _read_stats(self._out, skip=self._seen).items():
            self._seen.add(shard_id)
            self._bar.update(stats["count"])
            self._bar.set_postfix_str(f"shards {len(self._seen)}", refresh=False)
