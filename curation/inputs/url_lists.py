"""URL lists before img2dataset reads them: their format, their columns, and header-less lists given headers.

The list is parsed the way img2dataset's reader will, so a list it would choke on, or misread, fails here in one line
that names the file before any download worker starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from cocu.curation.core.errors import CocuError
from cocu.curation.core.shards import ShardError, ShardWriter, manifest_path
from cocu.curation.core.stage import Progress, ShardTask, Stage, run_stage
from cocu.curation.executors.local import LocalExecutor

# Column order of the official header-less TSVs (groupvit.md §7.4, img2dataset's dataset_examples).
LIST_LAYOUTS: dict[str, tuple[str, ...]] = {"cc3m": ("caption", "url"), "cc12m": ("url", "caption")}
LIST_FORMATS = ("csv", "csv.gz", "tsv", "tsv.gz", "json", "json.gz", "jsonl", "jsonl.gz", "parquet")


class IngestError(CocuError):
    """A URL list that cannot be prepared; the message is one line naming the file."""


def infer_format(source: Path) -> str:
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


def list_files(source: Path, fmt: str) -> list[Path]:
    """The files img2dataset will read, in its order (a folder: every ``*.<fmt>`` sorted by name)."""
    if fmt not in LIST_FORMATS:
        raise ShardError(source, f"unknown URL list format '{fmt}' (expected one of: {', '.join(LIST_FORMATS)})")
    files = sorted(source.glob(f"*.{fmt}")) if source.is_dir() else [source]
    if not files:
        raise ShardError(source, f"no *.{fmt} file in this folder")
    return files


def scan_list(path: Path, fmt: str, needed: Sequence[str]) -> int | None:
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
            # img2dataset reads TSV with CSV quoting: a caption opening with an unmatched " eats the lines after it
            if tsv:
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


def normalize_headerless(
    source: Path, fmt: str, columns: Sequence[str], folder: Path, workers: int, progress: bool
) -> Path:
    """Write a header-bearing Parquet copy of each header-less CSV/TSV file into ``folder``; resumable."""
    if not fmt.startswith(("csv", "tsv")):
        raise ShardError(source, f"--columns/--preset apply to header-less csv/tsv lists, not {fmt}")
    files = list_files(source, fmt)
    tasks = [ShardTask(path, folder / (path.name[: -len(fmt) - 1] + ".parquet")) for path in files]
    targets = {task.target for task in tasks}
    if len(targets) != len(tasks):
        raise ShardError(source, "two list files share a name stem")
    for stale in folder.glob("*.parquet"):  # a list from an earlier run must not join this one
        if stale not in targets:
            stale.unlink()
            manifest_path(stale).unlink(missing_ok=True)
    stage = Stage("prepare-list", _normalize_one, {"format": fmt, "columns": list(columns)}, unit="row")
    summary = run_stage(stage, tasks, LocalExecutor(workers), progress)
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
