"""The FAISS index of the bank: factory string by corpus size, chunked build, tunable search, GPU when present.

Inner product on L2-normalized vectors is cosine similarity. Exact ``Flat`` search is affordable up
to about a million vectors; beyond that an IVF index with an HNSW coarse quantizer and compressed
codes keeps memory and query time bounded (FAISS guidelines for choosing an index).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from cocu.curation.core.shards import atomic_path

log = logging.getLogger(__name__)
FLAT_LIMIT = 1_000_000
GPU_FLAT_LIMIT = 10_000_000
IVF_SQ8_LIMIT = 10_000_000
DEFAULT_NPROBE = 64


def choose_factory(rows: int, dim: int, gpu: bool = False) -> str:
    """The factory string for a corpus of ``rows`` vectors of ``dim`` dimensions.

    Exact ``Flat`` up to 1 M vectors (10 M when the search runs on a GPU, where brute force is fast),
    ``IVF<nlist>_HNSW32,SQ8`` up to 10 M, ``OPQ,IVF_HNSW,PQ`` beyond; nlist ~ 16·sqrt(rows).
    """
    if rows <= (GPU_FLAT_LIMIT if gpu else FLAT_LIMIT):
        return "Flat"
    nlist = 2 ** int(round(math.log2(16 * math.sqrt(rows))))
    if rows <= IVF_SQ8_LIMIT:
        return f"IVF{min(nlist, 65536)}_HNSW32,SQ8"
    m = max(8, min(64, dim // 8))
    return f"OPQ{m}_{min(dim, 4 * m)},IVF{min(nlist, 1 << 20)}_HNSW32,PQ{m}"


def gpu_available() -> bool:
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return True
    _say_faiss_build_once()
    return False


FAISS_GPU_HINT = "pip uninstall -y faiss-cpu && pip install faiss-gpu-cu12"


def faiss_build_problem(distributions: list[str], cuda_visible: bool, faiss_has_gpu: bool) -> str | None:
    """Why "GPU when present" would quietly search on the CPU, in one line; None when it would not.

    faiss-cpu and faiss-gpu both install the package ``faiss/``, so with both installed the one installed last owns
    it; cocu depends on faiss-cpu (no extra can replace a dependency), so a GPU node swaps it by hand.
    """
    gpu_builds = [name for name in distributions if name.startswith("faiss-gpu")]
    if gpu_builds and "faiss-cpu" in distributions:
        return (
            f"faiss-cpu and {gpu_builds[0]} are both installed and overwrite each other's faiss/; "
            f"keep one: pip uninstall -y faiss-cpu {gpu_builds[0]} && pip install {gpu_builds[0]}"
        )
    if cuda_visible and not faiss_has_gpu:
        return (
            f"a GPU is visible but this faiss is a CPU build, so FAISS runs on the CPU; for the GPU: {FAISS_GPU_HINT}"
        )
    return None


@functools.cache
def _say_faiss_build_once() -> None:
    from importlib.metadata import distributions

    import torch

    names = sorted({(dist.metadata["Name"] or "").lower() for dist in distributions()})
    problem = faiss_build_problem(names, torch.cuda.is_available(), hasattr(faiss, "StandardGpuResources"))
    if problem:
        log.warning(problem)


def default_nprobe(factory: str) -> int | None:
    """FAISS probes one inverted list by default, far too few for retrieval quality; IVF gets 64."""
    return DEFAULT_NPROBE if "IVF" in factory else None


@dataclass(frozen=True)
class SearchParams:
    """Speed/recall knobs; ``None`` keeps FAISS's default. They do nothing on a ``Flat`` index."""

    nprobe: int | None = None
    ef_search: int | None = None

    def string(self, index: faiss.Index) -> str:
        parts = []
        ivf = _ivf(index)
        if self.nprobe is not None and ivf is not None:
            parts.append(f"nprobe={self.nprobe}")
        if self.ef_search is not None:
            if ivf is not None and "HNSW" in type(faiss.downcast_index(ivf.quantizer)).__name__:
                parts.append(f"quantizer_efSearch={self.ef_search}")
            elif "HNSW" in type(faiss.downcast_index(_inner(index))).__name__:
                parts.append(f"efSearch={self.ef_search}")
        return ",".join(parts)


def _inner(index: faiss.Index) -> faiss.Index:
    while isinstance(index, (faiss.IndexPreTransform, faiss.IndexIDMap)):
        index = faiss.downcast_index(index.index)
    return index


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def training_size(factory: str, rows: int) -> int:
    """How many vectors to train on: 64 per inverted list (FAISS asks for at least 39), 100k at least."""
    match = re.search(r"IVF(\d+)", factory)
    return min(rows, max(64 * int(match.group(1)) if match else 0, 100_000))


def trained_index(
    vectors: np.ndarray, factory: str, seed: int = 0, use_gpu: bool | None = None, train_rows: int | None = None
) -> faiss.Index:
    """An empty index of ``factory``, trained on a seeded sample of ``vectors``; IVF k-means on the GPUs when present.

    ``train_rows`` overrides the sample size (``training_size``), e.g. to bound k-means time on a CPU.
    """
    rows, dim = vectors.shape
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        size = training_size(factory, rows) if train_rows is None else min(rows, train_rows)
        sample = np.sort(np.random.default_rng(seed).choice(rows, size=size, replace=False))
        train = np.empty((len(sample), dim), np.float32)  # filled a chunk at a time: no float16 copy of the sample
        for start in range(0, len(sample), 65536):
            train[start : start + 65536] = vectors[sample[start : start + 65536]]
        ivf = _ivf(index)
        if ivf is not None:
            ivf.cp.seed = seed
        clustering: faiss.Index | None = (
            None  # held here: SWIG does not keep the Python object alive through the attribute
        )
        if (gpu_available() if use_gpu is None else use_gpu) and ivf is not None:
            clustering = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(ivf.d))
            ivf.clustering_index = clustering
        index.train(train)
        if ivf is not None and clustering is not None:
            ivf.clustering_index = None  # type: ignore[assignment]  # SWIG stub: None detaches the GPU clustering
    return index


def build_index(
    vectors: np.ndarray,
    factory: str,
    seed: int = 0,
    chunk: int = 65536,
    use_gpu: bool | None = None,
    progress: Callable[[int], None] | None = None,
) -> faiss.Index:
    """Train (on a seeded sample) and fill an inner-product index from float16/float32 rows, a chunk at a time."""
    rows = len(vectors)
    index = trained_index(vectors, factory, seed, use_gpu)
    for start in range(0, rows, chunk):
        index.add(np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32))
        if progress is not None:
            progress(min(chunk, rows - start))
    return index


def write_index(index: faiss.Index, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def read_index(path: str | os.PathLike, mmap: bool = True) -> faiss.Index:
    """Open an index file; memory-mapped when FAISS can, so parallel workers share one copy in the page cache."""
    if mmap:
        try:
            return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            pass
    return faiss.read_index(str(path))


class Searcher:
    """Batched k-NN search over an index, on the GPUs when faiss-gpu is installed and the index type allows it."""

    def __init__(self, index: faiss.Index, params: SearchParams = SearchParams(), use_gpu: bool | None = None):
        self.cpu_index = index
        self.search_params = params
        self.params = params.string(index)
        if self.params:
            # faiss's SWIG stub types the value as a number; the "name=value,..." string form is the documented one
            faiss.ParameterSpace().set_index_parameters(index, self.params)  # type: ignore[arg-type]
        self.index = index
        if gpu_available() if use_gpu is None else use_gpu:
            self.index = _to_gpu(index, self.params)

    @property
    def on_gpu(self) -> bool:
        return self.index is not self.cpu_index

    def placed(self, use_gpu: bool | None = None) -> Searcher:
        """The same index where this process searches (``use_gpu`` None: the GPUs when faiss-gpu sees any)."""
        return Searcher(self.cpu_index, self.search_params, use_gpu)

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of shape (n, k); missing results have id -1."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def gpu_cloner_options() -> faiss.GpuMultipleClonerOptions:
    """How an index goes to the GPUs: float16 storage, and an HNSW (or other CPU-only) coarse quantizer kept on the
    CPU, which faiss otherwise refuses to clone, so the default IVF-HNSW and OPQ indexes search on the GPU too."""
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = True
    if hasattr(options, "allowCpuCoarseQuantizer"):  # faiss >= 1.8; older ones keep the index on the CPU
        options.allowCpuCoarseQuantizer = True
    return options


def _to_gpu(index: faiss.Index, params: str) -> faiss.Index:
    try:
        gpu_index = faiss.index_cpu_to_all_gpus(index, co=gpu_cloner_options())
        # nprobe is the GPU index's own; the coarse quantizer's efSearch stays set on its CPU copy (Searcher set it)
        gpu_params = ",".join(p for p in params.split(",") if p.startswith("nprobe="))
        if gpu_params:
            # faiss's SWIG stub types the value as a number; the "name=value,..." string form is the documented one
            faiss.GpuParameterSpace().set_index_parameters(gpu_index, gpu_params)  # type: ignore[arg-type]
        return gpu_index
    except (RuntimeError, AttributeError) as err:  # an index type faiss-gpu has no kernel for (HNSW, fast-scan)
        log.warning("faiss-gpu cannot take this index; searching on CPU: %s", _first_line(err))
        return index


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__
