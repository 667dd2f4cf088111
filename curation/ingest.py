"""Ingestion: URL lists through img2dataset, and webdataset tar shards, into cocu input shards.

img2dataset's ``output_format="parquet"`` already *is* the cocu data contract (``key``, ``jpg``,
``caption`` plus its metadata columns; failed rows kept with a null ``jpg``), so ``download`` only
prepares the list, calls the real library and reads back its per-shard ``*_stats.json`` files. Its
own incremental mode does the resuming: a shard whose stats file exists is never downloaded again.
``convert_webdataset`` turns GroupViT-style tars (``<key>.jpg|png`` + ``<key>.txt``) into Parquet,
one shard per tar, through ``run_stage`` so it is parallel and resumable like every other stage.

img2dataset and webdataset are imported inside the functions: they pull in wandb, albumentations,
OpenCV and torch, and img2dataset's ``spawn`` workers re-import the caller's modules.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .errors import CocuError
from .shards import INPUT_SCHEMA, ShardError, ShardWriter, expand_shards, manifest_path
from .stage import Progress, ShardTask, StageSummary, run_stage

# Column order of the official header-less TSVs (groupvit.md §7.4, img2dataset's dataset_examples).
LIST_LAYOUTS: dict[str, tuple[str, ...]] = {"cc3m": ("caption", "url"), "cc12m": ("url", "caption")}
LIST_FORMATS = ("csv", "csv.gz", "tsv", "tsv.gz", "json", "json.gz", "jsonl", "jsonl.gz", "parquet")
DISTRIBUTORS = ("multiprocessing", "pyspark", "ray")  # img2dataset's ways of spreading shards over workers
# img2dataset arguments that cocu fixes: changing them would break the data contract or the resume.
OWN_ARGUMENTS = ("url_list", "output_folder", "output_format", "encode_format", "incremental_mode")
INPUT_DIR = "_input"  # header-bearing copies of header-less lists; a subfolder, so img2dataset's *.json glob ignores it
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSIONS = ("txt", "text")


@dataclass
class DownloadConfig:
    """What ``download`` hands img2dataset. Defaults follow the GroupViT/CoCu recipe for CC3M/CC12M."""

    url_col: str = "url"
    caption_col: str = "caption"
    input_format: str | None = None  # inferred from the file names
    columns: tuple[str, ...] | None = None  # names of a header-less list's columns, in order (presets set this)
    image_size: int = 512
    resize_mode: str = "keep_ratio"  # keep_ratio + image_size: the smaller side becomes image_size
    resize_only_if_bigger: bool = True
    encode_quality: int = 95
    processes_count: int = field(default_factory=lambda: os.cpu_count() or 1)
    thread_count: int = 64
    number_sample_per_shard: int = 10000
    timeout: int = 10
    retries: int = 0
    extra_columns: tuple[str, ...] = ()  # input columns carried into the shards (img2dataset's save_additional_columns)
    overwrite: bool = False  # start from an empty output folder instead of resuming
    distributor: str = "multiprocessing"  # img2dataset's: multiprocessing, pyspark (a session is made if none) or ray
    ray_address: str | None = (
        None  # with distributor "ray": the cluster to join (None: the running one, else a local one)
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


class IngestError(CocuError):
    """A URL list that cannot be prepared; the message is one line naming the file."""


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
    out = Path(out).absolute()
    source = Path(url_list).absolute()
    fmt = cfg.input_format or _infer_format(source)
    if cfg.overwrite and out.exists():
        shutil.rmtree(out)
    if cfg.columns:
        source = _normalize_headerless(source, fmt, cfg.columns, out / INPUT_DIR, cfg.processes_count, progress)
        fmt = "parquet"
    rows = [
        _scan_list(path, fmt, [cfg.url_col, cfg.caption_col, *cfg.extra_columns]) for path in _list_files(source, fmt)
    ]
    total = None if None in rows else sum(rows)
    expected = None if total is None else sum(math.ceil(n / cfg.number_sample_per_shard) for n in rows)
    previous = _read_stats(out)
    started = time.perf_counter()
    if expected is None or not set(range(expected)) <= set(previous):  # else every shard is done: nothing to start
        if cfg.distributor == "ray":
            _connect_ray(cfg.ray_address)
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
    """img2dataset's Ray distributor uses whatever cluster this process is connected to."""
    try:
        import ray
    except ImportError:
        raise IngestError("distributor 'ray' needs Ray: pip install 'cocu[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)


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


def summarize(out: str | os.PathLike, done_before: set[int] = frozenset()) -> DownloadSummary:
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


def _read_stats(out: Path, skip: set[int] = frozenset()) -> dict[int, dict[str, Any]]:
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


def _infer_format(source: Path) -> str:
    if source.is_dir():
        found = {fmt for fmt in LIST_FORMATS if any(source.glob(f"*.{fmt}"))}
        if len(found) != 1:
            raise ShardError(
                source,
                f"cannot tell the list format from the files here ({', '.join(sorted(found)) or 'none'}); "
                f"pass --input-format",
            )
        return found.pop()
    if not source.exists():
        raise ShardError(source, "no such file or directory")
    for fmt in sorted(LIST_FORMATS, key=len, reverse=True):
        if source.name.endswith("." + fmt):
            return fmt
    if source.name.endswith((".txt", ".txt.gz")):
        raise ShardError(
            source,
            "a .txt list holds URLs only, and cocu needs captions: use a tsv/csv/parquet/jsonl list "
            "with a caption column",
        )
    raise ShardError(
        source, f"unknown URL list format (expected one of: {', '.join(LIST_FORMATS)}); pass --input-format"
    )


def _list_files(source: Path, fmt: str) -> list[Path]:
    """The files img2dataset will read, in its order (a folder: every ``*.<fmt>`` sorted by name)."""
    if fmt not in LIST_FORMATS:
        raise ShardError(source, f"unknown URL list format '{fmt}' (expected one of: {', '.join(LIST_FORMATS)})")
    files = sorted(source.glob(f"*.{fmt}")) if source.is_dir() else [source]
    if not files:
        raise ShardError(source, f"no *.{fmt} file in this folder")
    return files


def _scan_list(path: Path, fmt: str, needed: Sequence[str]) -> int | None:
    """Check that the columns img2dataset will look for exist and hold text, and count rows (None for a JSON array).

    It parses the list the way img2dataset's reader does, so a list it would choke on, or misread,
    fails here in one line before any worker starts.
    """
    try:
        if fmt == "parquet":
            meta = pq.ParquetFile(path)
            _check_columns(path, fmt, meta.schema_arrow, needed)
            return meta.metadata.num_rows
        if fmt.startswith("jsonl"):
            with pa.input_stream(path, compression="detect") as stream:
                table = pajson.read_json(stream)
            _check_columns(path, fmt, table.schema, needed)
            return table.num_rows
        if fmt.startswith(("csv", "tsv")):
            return _scan_csv(path, fmt, needed)
    except (pa.ArrowException, OSError) as err:
        raise ShardError(path, f"not a readable {fmt} list ({str(err).strip().splitlines()[0]})") from None
    return None  # a JSON array needs pandas and the whole file; img2dataset checks it itself


def _scan_csv(path: Path, fmt: str, needed: Sequence[str]) -> int:
    tsv = fmt.startswith("tsv")
    with (
        pa.input_stream(path, compression="detect") as stream,
        pacsv.open_csv(stream, parse_options=pacsv.ParseOptions(delimiter="\t" if tsv else ",")) as reader,
    ):
        _check_columns(path, fmt, reader.schema, needed)
        rows = 0
        for batch in reader:
            if (
                tsv
            ):  # img2dataset reads TSV with CSV quoting: a caption opening with an unmatched " eats the lines after it
                for column in needed[:2]:
                    spans = pc.match_substring(batch.column(column), "\n")
                    if pc.any(spans).as_py():
                        row = rows + pc.index(spans, True).as_py()
                        raise ShardError(
                            path,
                            f"a quote character in column '{column}' joins the following lines into "
                            f"this row; drop the header line and pass --columns (header-less TSV is "
                            f"read without quoting)",
                            row=row,
                        )
            rows += batch.num_rows
    return rows


def _check_columns(path: Path, fmt: str, schema: pa.Schema, needed: Sequence[str]) -> None:
    for column in needed:
        if column not in schema.names:
            hint = (
                " (a header-less list needs --preset cc3m|cc12m or --columns)" if fmt.startswith(("csv", "tsv")) else ""
            )
            raise ShardError(path, f"missing column '{column}' (has: {', '.join(map(str, schema.names))}){hint}")
    for column in needed[:2]:  # img2dataset copies their type into the shards, and the data contract wants text
        kind = schema.field(column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise ShardError(path, f"column '{column}' holds {kind}, not text")


def _normalize_headerless(
    source: Path, fmt: str, columns: Sequence[str], folder: Path, workers: int, progress: bool
) -> Path:
    """Write a header-bearing Parquet copy of each header-less CSV/TSV file into ``folder``; resumable."""
    if not fmt.startswith(("csv", "tsv")):
        raise ShardError(source, f"--columns/--preset apply to header-less csv/tsv lists, not {fmt}")
    files = _list_files(source, fmt)
    tasks = [ShardTask(path, folder / (path.name[: -len(fmt) - 1] + ".parquet")) for path in files]
    targets = {task.target for task in tasks}
    if len(targets) != len(tasks):
        raise ShardError(source, "two list files share a name stem")
    for stale in folder.glob("*.parquet"):  # a list from an earlier run must not join this one
        if stale not in targets:
            stale.unlink()
            manifest_path(stale).unlink(missing_ok=True)
    summary = run_stage(
        "prepare-list",
        tasks,
        _normalize_one,
        {"format": fmt, "columns": list(columns)},
        workers=min(workers, len(tasks)),
        unit="row",
        progress=progress,
    )
    if summary.failures:
        raise IngestError(summary.failures[0])
    return tasks[0].target if len(tasks) == 1 and not source.is_dir() else folder


def _normalize_one(task: ShardTask, params: Mapping[str, Any], progress: Progress) -> dict[str, int]:
    columns = params["columns"]
    tsv = params["format"].startswith("tsv")
    # Quoting off for TSV: web captions hold stray quote characters and a TSV row never spans lines.
    parse = pacsv.ParseOptions(delimiter="\t" if tsv else ",", quote_char=False if tsv else '"')
    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in columns})
    read = pacsv.ReadOptions(column_names=list(columns), block_size=16 << 20)
    rows = 0
    try:
        with (
            pa.input_stream(task.source, compression="detect") as stream,
            pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert) as reader,
            ShardWriter(task.target, reader.schema, row_group_size=1 << 16) as writer,
        ):
            for batch in reader:
                writer.write(batch)
                rows += batch.num_rows
                progress(batch.num_rows)
    except (pa.ArrowException, OSError) as err:
        raise ShardError(
            task.source,
            f"not a header-less {params['format']} list with columns "
            f"{', '.join(columns)} after row {rows} ({str(err).strip().splitlines()[0]})",
        ) from None
    return {"rows": rows}


def convert_webdataset(
    tars: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    workers: int = 1,
    batch_rows: int = 512,
    progress: bool = True,
) -> StageSummary:
    """Convert webdataset tars (``jpg``/``png`` + ``txt``) to Parquet shards, one per tar, atomically and resumably.

    Brace patterns (``cc3m-{000000..000436}.tar``), globs, folders and plain paths are accepted.
    Image bytes are copied as they are; a sample without an image or a caption is counted, not written.
    """
    import braceexpand

    patterns = [tars] if isinstance(tars, (str, os.PathLike)) else list(tars)
    expanded = [name for pattern in patterns for name in braceexpand.braceexpand(str(pattern))]
    paths = expand_shards(expanded, suffix=".tar")
    out = Path(out)
    tasks = [ShardTask(path, out / (path.name[: -len(".tar")] + ".parquet")) for path in paths]
    clashes = [name for name, n in Counter(task.target.name for task in tasks).items() if n > 1]
    if clashes:
        raise ShardError(
            out / clashes[0], "two input tars would write this same shard (same file name in different folders)"
        )
    params = {
        "format": "webdataset",
        "image_extensions": list(IMAGE_EXTENSIONS),
        "caption_extensions": list(CAPTION_EXTENSIONS),
        "batch_rows": batch_rows,
    }
    return run_stage("convert", tasks, _convert_tar, params, workers=workers, unit="img", progress=progress)


def _convert_tar(task: ShardTask, params: Mapping[str, Any], progress: Progress) -> dict[str, int]:
    rows = incomplete = 0
    seen: set[str] = set()
    batch: dict[str, list] = {name: [] for name in INPUT_SCHEMA.names}
    with ShardWriter(task.target, INPUT_SCHEMA) as writer:
        for sample in _tar_samples(task.source):
            key = sample["__key__"]
            if key in seen:
                raise ShardError(
                    task.source,
                    f"duplicate key '{key}' (its members are not adjacent in the tar)",
                    row=rows + incomplete,
                )
            seen.add(key)
            image = next((sample[ext] for ext in params["image_extensions"] if ext in sample), None)
            text = next((sample[ext] for ext in params["caption_extensions"] if ext in sample), None)
            if image is None or text is None:
                incomplete += 1
                continue
            try:
                caption = text.decode("utf-8")
            except UnicodeDecodeError:
                raise ShardError(task.source, f"caption of '{key}' is not UTF-8 text", row=rows + incomplete) from None
            for name, value in (("key", key), ("jpg", image), ("caption", caption)):
                batch[name].append(value)
            rows += 1
            if len(batch["key"]) >= params["batch_rows"]:
                _flush(writer, batch, progress)
        _flush(writer, batch, progress)
    return {"rows": rows, "incomplete": incomplete}


def _flush(writer: ShardWriter, batch: dict[str, list], progress: Progress) -> None:
    n = len(batch["key"])
    if n:
        writer.write(pa.table(batch, schema=INPUT_SCHEMA))
        progress(n)
        for values in batch.values():
            values.clear()


def _tar_samples(path: Path) -> Iterator[dict[str, Any]]:
    """Stream one tar's samples with webdataset's own grouping (members sharing a basename form a sample)."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    samples = 0
    try:
        with open(path, "rb") as handle:
            members = ({**member, "__url__": str(path)} for member in tar_file_iterator(handle))
            for sample in group_by_keys(members):
                yield sample
                samples += 1
    except Exception as err:  # tarfile.ReadError, EOFError, webdataset's ValueError on duplicate members, ...
        message = str(err.args[0] if err.args else err).split(" @ ")[0].strip().splitlines()
        raise ShardError(
            path,
            f"not a readable webdataset tar after {samples} sample(s) "
            f"({type(err).__name__}: {message[0] if message else ''})",
        ) from None
    if not _has_end_marker(path):
        # tarfile takes a cut at a member boundary for the end of the archive: samples would be lost silently
        raise ShardError(
            path, f"truncated tar: {samples} sample(s) read, then the data stops without the end-of-archive marker"
        )


def _has_end_marker(path: Path) -> bool:
    """Every tar writer ends the archive with two zero blocks (then zero padding); a truncated copy does not."""
    size = path.stat().st_size
    if size % 512 or size < 1024:
        return False
    with open(path, "rb") as handle:
        handle.seek(size - 1024)
        return not any(handle.read(1024))
