"""webdataset tars (GroupViT's ``<key>.jpg|png`` + ``<key>.txt``) into cocu input shards, one Parquet shard per tar.

Runs through ``run_stage``, so it is parallel and resumable like every other stage; webdataset is imported inside the
functions, as it pulls in torch.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from cocu.curation.core.shards import INPUT_SCHEMA, ShardError, ShardWriter, expand_shards
from cocu.curation.core.stage import Progress, ShardTask, Stage, StageSummary, run_stage
from cocu.curation.executors.local import LocalExecutor

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSIONS = ("txt", "text")


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
    return run_stage(Stage("convert", _convert_tar, params), tasks, LocalExecutor(workers), progress)


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
