"""Join the Ray cluster a user means, or start one here: an explicit address, ``auto``/``RAY_ADDRESS``, or none.

A user starts Ray three ways (``ray start`` then ``--ray-address HOST:PORT``; ``auto`` or ``RAY_ADDRESS``, as
inside ``ray job submit``; nothing at all, on a laptop), and a stopped cluster leaves its address file behind;
``connect_ray`` turns each into one cluster joined, or one line naming the address that does not answer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cocu.curation.core.errors import CocuError
from cocu.curation.core.network import no_answer

OBJECT_STORE_BYTES = 256 * 1024 * 1024  # shards travel by path, not through the object store


class RayAddressError(CocuError):
    """A Ray address that names no running cluster, in one line naming it."""


def connect_ray(address: str | None, object_store_memory: int = OBJECT_STORE_BYTES) -> str:
    """Join a cluster or start one here; returns what was joined ("local" when one was started).

    ``address`` HOST:PORT or ray://...: that cluster. "auto": the cluster this node belongs to (``RAY_ADDRESS``,
    else the address file ``ray start`` leaves in Ray's temp folder). None: ``RAY_ADDRESS`` when set (as inside
    ``ray job submit``), else the running cluster of this node, else a new local one; an address file that a
    stopped cluster left behind is ignored. An address that does not answer is one line naming it and where
    it came from. ``object_store_memory`` only sizes a cluster started here (a running one has its own).
    """
    import ray

    if ray.is_initialized():
        return "connected"
    chosen, origin = address, "--ray-address"
    if chosen in (None, "auto") and os.environ.get("RAY_ADDRESS", "").strip():
        chosen, origin = os.environ["RAY_ADDRESS"].strip(), "RAY_ADDRESS"
    if chosen in (None, "auto"):
        recorded = _recorded_address()
        if recorded is not None:
            path, found = recorded
            reason = no_answer(found)
            if reason is None:
                chosen, origin = found, str(path)
            elif chosen == "auto":
                raise RayAddressError(
                    f"{origin} auto: {path} names {found}, which does not answer ({reason}; a stopped "
                    "cluster?); start one with `ray start --head` or give HOST:PORT"
                )
            else:
                chosen = None  # a dead cluster's leftover file: start a fresh one
        elif chosen == "auto":
            raise RayAddressError(
                f"{origin} auto: no Ray cluster runs on this node ({_address_file()} does not exist and "
                "RAY_ADDRESS is not set); start one with `ray start --head` or give HOST:PORT"
            )
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if chosen is None:
        ray.init(address="local", object_store_memory=object_store_memory, **options)
        return "local"
    if "://" not in chosen:
        reason = no_answer(chosen)
        if reason is not None:
            raise RayAddressError(f"{origin} {chosen}: no Ray cluster answers there ({reason})")
    try:
        ray.init(address=chosen, **options)
    except Exception as err:  # a version mismatch, a port that is not a Ray GCS: one line naming the address
        raise RayAddressError(f"{origin} {chosen}: could not join the Ray cluster ({_first_line(err)})") from None
    return chosen


def _address_file() -> Path:
    """Where ``ray start`` records the cluster of this node (Ray's own rule: $RAY_TMPDIR, $TMPDIR, else /tmp)."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base) / "ray" / "ray_current_cluster"


def _recorded_address() -> tuple[Path, str] | None:
    path = _address_file()
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return (path, text) if text else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
