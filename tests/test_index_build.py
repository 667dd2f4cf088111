"""The IVF index built part by part: the same bytes as one add of every row, and a crash costs one part."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from cocu.curation.bank.index import build_index
from cocu.curation.bank.index_parts import build_index_in_parts


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    x = np.random.default_rng(3).standard_normal((12000, 32)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def serialized(index: faiss.Index) -> bytes:
    return bytes(faiss.serialize_index(index))


@pytest.mark.parametrize(
    "factory, rows",
    [
        ("IVF32,SQ8", 12000),
        ("IVF32_HNSW32,Flat", 12000),
        pytest.param("OPQ4_16,IVF16,PQ4x4", 3000, marks=pytest.mark.slow),
    ],
)
def test_parts_merged_are_the_index_of_one_add(vectors, factory, rows, tmp_path):
    one = build_index(vectors[:rows], factory, seed=5)
    parts = build_index_in_parts(vectors[:rows], factory, tmp_path / "work", "digest", seed=5, part_rows=rows // 3 + 1)
    assert parts.ntotal == rows
    assert serialized(parts) == serialized(one)
    assert sorted(p.name for p in (tmp_path / "work").glob("part-*")) == [f"part-0000{i}.faiss" for i in range(3)]


def test_a_rerun_reuses_the_trained_index_and_finished_parts(vectors, tmp_path):
    work = tmp_path / "work"
    first = serialized(build_index_in_parts(vectors, "IVF32,SQ8", work, "a", part_rows=5000))
    kept = {p.name: p.stat().st_mtime_ns for p in work.glob("*.faiss")}
    (work / "part-00002.faiss").unlink()  # the crash came while the last part was being filled
    (work / ".part-00002.faiss.x1y2.tmp").write_bytes(b"half a part")
    added = []
    again = build_index_in_parts(vectors, "IVF32,SQ8", work, "a", part_rows=5000, progress=added.append)
    assert serialized(again) == first
    assert {p.name: p.stat().st_mtime_ns for p in work.glob("*.faiss") if p.name != "part-00002.faiss"} == {
        name: mtime for name, mtime in kept.items() if name != "part-00002.faiss"
    }
    assert not list(work.glob(".*.tmp"))
    assert sum(added) == len(vectors)  # progress counts the reused parts too
    build_index_in_parts(vectors[:9000], "IVF32,SQ8", work, "b", part_rows=5000)  # other embeddings: start over
    assert sorted(p.name for p in work.glob("part-*")) == ["part-00000.faiss", "part-00001.faiss"]
    assert (work / "trained.faiss").stat().st_mtime_ns != kept["trained.faiss"]
