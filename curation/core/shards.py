"""Parquet shards of the data contract: validated batch reads, atomic writes, per-shard manifests.

An input shard is what img2dataset writes with ``output_format="parquet"``: one row per pair with
``key`` (string), ``jpg`` (encoded image bytes) and ``caption`` (string); every other column is
carried through untouched. Nothing here ever holds more than one batch of one shard in memory.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import secrets
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cocu.curation.core.errors import FileError, shown, writing

REQUIRED_COLUMNS: dict[str, tuple[pa.DataType, ...]] = {
    "key": (pa.string(), pa.large_string()),
    "jpg": (pa.binary(), pa.large_binary()),
    "caption": (pa.string(), pa.large_string()),
}
# A list-of-strings column as Arrow may store it (curated concept lists, truth sidecars).
STRING_LISTS: tuple[pa.DataType, ...] = (
    pa.list_(pa.string()),
    pa.list_(pa.large_string()),
    pa.large_list(pa.string()),
    pa.large_list(pa.large_string()),
)
INPUT_SCHEMA = pa.schema([("key", pa.string()), ("jpg", pa.binary()), ("caption", pa.string())])
MANIFEST_SUFFIX = ".manifest.json"
TMP_SUFFIX = ".tmp"


class ShardError(FileError):
    """A problem with one shard, manifest or sidecar file, in one line that names the file and, when known, the row."""


def expand_shards(patterns: str | os.PathLike | Sequence[str | os.PathLike], suffix: str = ".parquet") -> list[Path]:
    """Resolve globs, directories and plain paths to a sorted list of shard files; empty is an error."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    found: set[Path] = set()
    for pattern in patterns:
        text = str(pattern)
        if os.path.isdir(text):
            found.update(Path(p) for p in glob.glob(os.path.join(text, f"*{suffix}")))
        elif glob.has_magic(text):
            found.update(Path(p) for p in glob.glob(text))
        elif os.path.exists(text):
            found.add(Path(text))
        else:
            raise ShardError(text, "no such file or directory")
    shards = sorted(p for p in found if p.is_file() and not p.name.startswith("."))
    if not shards:
        raise ShardError(", ".join(map(str, patterns)), f"matches no {suffix} file")
    return shards


def local_path(path: str | os.PathLike) -> str:
    """The absolute path pyarrow is given: it reads a relative path with a ':' (``bank-0-6:2/x.parquet``) as a URI."""
    return os.path.abspath(path)


def open_parquet(path: str | os.PathLike) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(local_path(path))
    except FileNotFoundError:
        raise ShardError(path, "no such file") from None
    except (pa.ArrowException, OSError) as err:
        raise ShardError(path, f"not a readable Parquet file ({_first_line(err)})") from None


def check_schema(
    path: str | os.PathLike, schema: pa.Schema, required: Mapping[str, tuple[pa.DataType, ...]] = REQUIRED_COLUMNS
) -> None:
    """Raise a ShardError naming the first missing column or wrong type."""
    for name, types in required.items():
        if schema.names.count(name) > 1:
            raise ShardError(path, f"has {schema.names.count(name)} columns named '{name}'; a shard needs exactly one")
        index = schema.get_field_index(name)
        if index < 0:
            raise ShardError(path, f"missing required column '{name}' (has: {', '.join(schema.names)})")
        actual = schema.field(index).type
        if actual not in types:
            raise ShardError(path, f"column '{name}' has type {actual}, expected {' or '.join(map(str, types))}")


def count_rows(path: str | os.PathLike) -> int:
    return open_parquet(path).metadata.num_rows


def iter_batches(
    path: str | os.PathLike,
    batch_size: int = 1024,
    columns: Sequence[str] | None = None,
    required: Mapping[str, tuple[pa.DataType, ...]] = REQUIRED_COLUMNS,
    check_keys: bool = True,
) -> Iterator[pa.RecordBatch]:
    """Stream a shard in record batches, checking the schema first and key uniqueness as it goes."""
    shard = open_parquet(path)
    schema = shard.schema_arrow
    check_schema(path, schema, required)
    seen: set[str] = set()
    row = 0
    try:
        for batch in shard.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None):
            if check_keys and "key" in batch.schema.names:
                _check_keys(path, batch.column("key").to_pylist(), row, seen)
            yield batch
            row += batch.num_rows
    except (pa.ArrowException, OSError) as err:
        raise ShardError(path, f"unreadable data after row {row} ({_first_line(err)})") from None


def _check_keys(path, keys: list[str | None], start: int, seen: set[str]) -> None:
    for offset, key in enumerate(keys):
        if key is None or key == "":
            raise ShardError(path, "empty key", row=start + offset)
        if key in seen:
            raise ShardError(path, f"duplicate key '{shown(key)}'", row=start + offset)
        seen.add(key)


def decode_text(column: pa.Array | pa.ChunkedArray) -> tuple[list[str | None], list[int]]:
    """A string column as Python strings; values that are not valid UTF-8 become None and their positions are returned.

    Parquet readers do not check UTF-8, so one bad caption would otherwise fail a whole shard at ``to_pylist``.
    """
    try:
        return column.to_pylist(), []
    except UnicodeDecodeError:
        pass
    values: list[str | None] = []
    bad: list[int] = []
    for position, raw in enumerate(column.cast(pa.binary()).to_pylist()):
        try:
            values.append(None if raw is None else raw.decode("utf-8"))
        except UnicodeDecodeError:
            values.append(None)
            bad.append(position)
    return values, bad


def validate_shard(path: str | os.PathLike, batch_size: int = 4096) -> int:
    """Read a whole shard once and return its row count: schema, keys (unique, non-empty) and captions (UTF-8)."""
    rows = 0
    for batch in iter_batches(path, batch_size=batch_size, columns=["key", "caption"]):
        _, bad = decode_text(batch.column("caption"))
        if bad:
            raise ShardError(path, "caption is not valid UTF-8", row=rows + bad[0])
        rows += batch.num_rows
    return rows


def check_keys_across_shards(sources: Sequence[Path]) -> None:
    """Refuse a corpus whose shards share a key, reading only the key columns.

    A shard that cannot be read is skipped here; the embed stage reports it with the others.
    """
    keys: list[pa.Array] = []
    readable: list[Path] = []
    for source in sources:
        try:
            batches = iter_batches(source, 65536, ["key"], check_keys=False)
            chunks = [b.column("key").cast(pa.string()) for b in batches]
            keys.append(pa.concat_arrays(chunks) if chunks else pa.array([], pa.string()))
            readable.append(source)
        except ShardError:
            continue
    everything = pa.chunked_array(keys, pa.string())
    if len(everything) == 0 or pc.count_distinct(everything).as_py() == len(everything):
        return
    counts = pc.value_counts(everything)
    duplicate = pc.filter(counts, pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
    where = [
        (path, pc.index(k, duplicate).as_py())
        for path, k in zip(readable, keys)
        if pc.any(pc.equal(k, duplicate)).as_py()
    ]
    if len(where) < 2:
        return  # a duplicate inside one shard: the embed stage names it with its row
    (first, _), (second, row) = where[0], where[1]
    raise ShardError(
        second, f"key '{shown(duplicate)}' is also in {first}; keys must be unique across the corpus", row=row
    )


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block completes.

    A full disk met in the block (or by the rename) is raised as ``DiskFull`` naming ``path``."""
    target = Path(path)
    with writing(target):  # a full disk: one line naming the file; the earlier file stays as it was
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temporary(target)
        try:
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()


def _create_temporary(target: Path) -> Path:
    """An empty new file beside ``target``, created with mode 0666 so the umask decides who may read the output
    (``tempfile.mkstemp`` would make every output 0600)."""
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def remove_stale_temporaries(directory: str | os.PathLike, owners: Collection[str] | None = None) -> int:
    """Delete temporaries left by a killed writer; returns how many were removed.

    With ``owners`` (final file names), only their temporaries go: the array tasks of one job share an
    output folder, and one task must not delete the files another is still writing.
    """
    removed = 0
    for tmp in Path(directory).glob(f".*{TMP_SUFFIX}"):
        if owners is not None and tmp.name[1:].rsplit(".", 2)[0] not in owners:
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


class ShardWriter:
    """Write one Parquet file batch by batch; it appears under its final name only when closed cleanly."""

    def __init__(
        self, path: str | os.PathLike, schema: pa.Schema, row_group_size: int = 1024, compression: str = "zstd"
    ):
        self.path = Path(path)
        self.schema = schema
        self.rows = 0
        self._row_group_size = row_group_size
        self._compression = compression
        self._context = atomic_path(self.path)
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ShardWriter:
        tmp = self._context.__enter__()
        self._writer = pq.ParquetWriter(
            local_path(tmp),
            self.schema,
            compression=self._compression,
            write_statistics=["key"] if "key" in self.schema.names else True,
        )
        return self

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        if self._writer is None:
            raise RuntimeError(f"{self.path}: ShardWriter.write outside its with block")
        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        if table.schema != self.schema:
            table = table.select(self.schema.names).cast(self.schema)
        self._writer.write_table(table, row_group_size=self._row_group_size)
        self.rows += table.num_rows

    def __exit__(self, exc_type, exc, tb) -> bool | None:
        assert self._writer is not None
        try:
            self._writer.close()
        except Exception as err:  # the footer did not fit on the disk: the temporary goes, DiskFull names the file
            if exc is None:
                self._context.__exit__(type(err), err, err.__traceback__)
                raise
        return self._context.__exit__(exc_type, exc, tb)


def write_table(path: str | os.PathLike, table: pa.Table, row_group_size: int = 1024) -> None:
    with ShardWriter(path, table.schema, row_group_size=row_group_size) as writer:
        writer.write(table)


def manifest_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name.split(".")[0] + MANIFEST_SUFFIX)


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
