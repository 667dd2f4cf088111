"""One writer per output folder: an advisory lock that a second run sharing the folder meets at once.

Two runs writing one folder would delete each other's in-flight temporaries (each cleans up what a killed
run left) and race on the same outputs. The lock is an ``flock`` on a hidden file in the folder, so the
kernel drops it when its holder dies, even by SIGKILL: a rerun after a crash never finds a stale lock.

The array tasks of one job (``--shard-index i --num-shards n``) write disjoint shards of one folder and
only clean up their own temporaries, so they share the folder: each holds the folder's lock *shared*
plus its own slot's lock exclusively. A whole run still needs the folder to itself, and two copies of
the same task still meet.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".cocu.lock"


class FolderInUse(OSError):
    """Another live process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, slot: str | None = None) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) for the block; raise FolderInUse if another run holds it.

    ``slot`` names an array task's share of the folder (e.g. "slice 2 of 8"): tasks with different slots
    run side by side, a whole run (no slot) excludes them all.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = _acquire(path, folder, shared=slot is not None)
    if slot is None:
        for stale in folder.glob(".cocu.*.lock"):  # slots of killed array tasks: none can be alive now
            stale.unlink(missing_ok=True)
        try:
            yield path
        finally:
            _release(fd, path)
        return
    own_path = folder / f".cocu.{slot.replace(' ', '-')}.lock"
    try:
        own = _acquire(own_path, folder, shared=False)
    except FolderInUse:
        _release_shared(fd, path)
        raise
    try:
        yield path
    finally:
        _release(own, own_path)
        _release_shared(fd, path)


def _acquire(path: Path, folder: Path, shared: bool) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "an array task"
            os.close(fd)
            raise FolderInUse(
                f"{folder}: in use by another cocu run (pid {holder}); wait for it to finish or "
                f"choose another output folder"
            ) from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current != os.fstat(fd).st_ino:  # the holder removed the file between our open and our lock
            os.close(fd)
            continue
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd


def _release(fd: int, path: Path) -> None:
    path.unlink(missing_ok=True)  # while still locked: a run that opened the old file sees it vanish and retries
    os.close(fd)


def _release_shared(fd: int, path: Path) -> None:
    """The last task out removes the lock file: only it can turn its shared lock into an exclusive one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
