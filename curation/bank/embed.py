"""The bank's embed stage: each shard's images through CLIP into ``parts/``, one resumable task per shard.

Also the per-process pieces other stages share: one loaded CLIP per spec and each worker's share of the cores.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from cocu.curation.bank.clip import ClipModel, load_clip
from cocu.curation.core.placement import wants_gpu
from cocu.curation.core.shards import decode_text, iter_batches, write_table
from cocu.curation.core.stage import ShardTask, params_digest
from cocu.curation.core.stopping import install_in_worker

PART_FORMAT = 2  # 2: parts hold the sha256 of each image's bytes

_models: dict[tuple, ClipModel] = {}  # a memo: one loaded model per process and spec


def cached_clip(model: str, pretrained: str | None, model_config: str | None, device: str | None) -> ClipModel:
    """One loaded model per process and spec."""
    key = (model, pretrained, model_config, device)
    if key not in _models:
        _models[key] = load_clip(model, pretrained, model_config, device)
    return _models[key]


def set_worker_threads(share: int, decode_workers: int | None, on_gpu: bool = False) -> int:
    """Give this process ``share`` cores (what its executor gave the worker); returns its number of image decoders.

    FAISS gets the whole share. Torch gets what the decoders leave, since they run while the model
    does and oversubscribed OpenMP threads wait on each other (3x slower on this 2-core machine). With the model on
    a GPU torch needs one core, and the decoders (what bounds the embed stage there) take the rest; on a CPU they
    take at most 8, leaving the model its share.
    """
    import faiss
    import torch

    if decode_workers is None:
        decoders = max(1, share - 1) if on_gpu else max(1, min(8, share - 1))
    else:
        decoders = decode_workers
    torch.set_num_threads(max(1, share - decoders))
    faiss.omp_set_num_threads(share)
    return decoders


@contextlib.contextmanager
def restored_threads() -> Iterator[None]:
    """Give back the caller's torch and FAISS thread counts after a stage ran workers in this process."""
    import faiss
    import torch

    saved = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        faiss.omp_set_num_threads(saved[1])


def init_embed_worker(threads: int, settings: dict[str, Any]) -> dict[str, Any]:
    """The embed stage's worker setup: this worker's thread share; the settings are its context."""
    install_in_worker()
    on_gpu = wants_gpu(settings["device"]) and torch.cuda.is_available()
    return {**settings, "decode_workers": set_worker_threads(threads, settings["decode_workers"], on_gpu)}


def embed_part(
    task: ShardTask, params: dict[str, Any], progress: Callable[[int], None], s: dict[str, Any]
) -> dict[str, int]:
    """Embed one shard's images into ``parts/<shard>.parquet`` (key, caption, embedding); failed images are left out."""
    keys, captions, digests, bad_captions = [], [], [], 0
    for batch in iter_batches(task.source, batch_size=1024, columns=["key", "caption", "jpg"]):
        keys.extend(batch.column("key").to_pylist())
        text, bad = decode_text(batch.column("caption"))
        captions.extend(text)  # a caption that is not UTF-8 counts as empty: the image still joins the bank
        bad_captions += len(bad)
        digests.extend(image_digests(batch.column("jpg")))
    clip = cached_clip(s["model"], s["pretrained"], s["model_config"], s["device"])
    result = clip.embed_shard(
        task.source, batch_size=s["batch_size"], num_workers=s["decode_workers"], progress=progress
    )
    ok = result.ok
    keep = np.nonzero(ok)[0]
    table = pa.table(
        {
            "key": pa.array([keys[i] for i in keep], pa.string()),
            "sha256": pa.array([digests[i] for i in keep], pa.binary(32)),
            "caption": pa.array([captions[i] or "" for i in keep], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(result.vectors[keep].ravel()), clip.embed_dim),
        }
    )
    write_table(task.target, table)
    missing = sum(1 for e in result.errors if e is not None and e.startswith("no image"))
    return {
        "images": len(keys),
        "embedded": len(keep),
        "no_image": missing,
        "undecodable": int((~ok).sum()) - missing,
        "bad_caption": bad_captions,
    }


def image_digests(jpgs: pa.Array | pa.ChunkedArray) -> list[bytes | None]:
    """sha256 of each image's bytes (None for a null image): what makes a stored embedding reusable for a row."""
    return [None if data is None else hashlib.sha256(data).digest() for data in jpgs.to_pylist()]


def part_name(source: Path) -> str:
    """A part file name unique per source path (shards of different folders may share a file name)."""
    digest = params_digest({"path": str(source.resolve())})[:8]
    return f"{source.name.split('.')[0]}-{digest}.parquet"
