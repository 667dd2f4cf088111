"""An IVF index built for tens of millions of vectors: trained once, filled part by part, parts merged; resumable.

Building a 27 M or 100 M index is hours of CPU, so it must survive a crash the way the per-shard
stages do. In a work folder beside the bank:

    trained.faiss          the empty index after k-means on a seeded sample (GPU k-means when faiss-gpu
                           sees a GPU): the costly step, done once
    part-00000.faiss ...   the trained index holding rows [i·P, (i+1)·P) of the embeddings, each
                           written atomically; a rerun skips the parts already there
    state.json             what the parts were made from; another digest empties the folder

The parts are then merged into the trained index one at a time with FAISS's inverted-list merging
(``IndexIVF.merge_from``, which moves a part's lists and leaves it empty), so the finished index is in
memory once, plus one part. Entries keep their row order inside every list, so the result is the very
index one ``add`` of all rows gives. A part's rows are read from the memory-mapped embeddings a chunk
at a time; FAISS's own threads parallelize each add, and parts are independent, so another engine could
fill them on other machines.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from cocu.curation.bank.index import trained_index, write_index
from cocu.curation.core.shards import atomic_write_json

PART_ROWS = 1 << 20
ADD_CHUNK = 65536
STATE = "state.json"


def is_ivf(factory: str) -> bool:
    return "IVF" in factory


def build_index_in_parts(
    vectors: np.ndarray,
    factory: str,
    workdir: str | Path,
    digest: str,
    seed: int = 0,
    part_rows: int = PART_ROWS,
    use_gpu: bool | None = None,
    train_rows: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> faiss.Index:
    """The IVF index of ``vectors`` (float16/float32 rows, e.g. a memmap), resuming from ``workdir``.

    ``digest`` names everything the result depends on (embeddings, factory, seed); parts made under
    another digest are discarded. The caller removes ``workdir`` once the merged index is saved.
    """
    workdir = Path(workdir)
    _start_or_resume(
        workdir,
        {
            "digest": digest,
            "factory": factory,
            "seed": seed,
            "part_rows": part_rows,
            "rows": len(vectors),
            "train_rows": train_rows,
        },
    )
    trained_file = workdir / "trained.faiss"
    if not trained_file.exists():
        write_index(trained_index(vectors, factory, seed, use_gpu, train_rows), trained_file)
    starts = range(0, len(vectors), part_rows)
    for number, start in enumerate(starts):
        part_file = workdir / f"part-{number:05d}.faiss"
        stop = min(start + part_rows, len(vectors))
        if part_file.exists():
            if progress is not None:
                progress(stop - start)
            continue
        part = faiss.read_index(str(trained_file))
        for chunk in range(start, stop, ADD_CHUNK):
            rows = np.ascontiguousarray(vectors[chunk : min(chunk + ADD_CHUNK, stop)], dtype=np.float32)
            part.add_with_ids(rows, np.arange(chunk, chunk + len(rows), dtype=np.int64))  # global row numbers
            if progress is not None:
                progress(len(rows))
        write_index(part, part_file)
        del part
    return merge_parts(trained_file, [workdir / f"part-{n:05d}.faiss" for n in range(len(starts))])


def merge_parts(trained_file: Path, part_files: list[Path]) -> faiss.Index:
    """Merge the parts' inverted lists into the trained index, one part in memory at a time."""
    merged = faiss.read_index(str(trained_file))
    target = faiss.extract_index_ivf(merged)
    for part_file in part_files:
        part = faiss.read_index(str(part_file))
        target.merge_from(faiss.extract_index_ivf(part), 0)  # ids were given when the part was filled
        del part
    merged.ntotal = target.ntotal  # a pre-transform (OPQ) wrapper counts its own rows
    return merged


def _start_or_resume(workdir: Path, state: dict) -> None:
    try:
        previous = json.loads((workdir / STATE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        previous = None
    if previous != state:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        atomic_write_json(workdir / STATE, state)
    for leftover in workdir.glob(".*.tmp"):  # a part a killed build was writing
        leftover.unlink()
