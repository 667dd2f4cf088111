"""One writer per output folder: an advisory lock that a second run sharing the folder meets at once.

Two runs writing one folder would delete each other's in-flight temporaries (each cleans up what a killed
run left) and race on the same outputs. The lock is an ``flock`` on a hidden file in the folder, so the
kernel drops it when its holder dies, even by SIGKILL: a rerun after a crash never finds a stale lock.

The array tasks of one job (``--shard-index i --num-shards n``) write disjoint shards of one folder and
only clean up their own temporaries, so they share the folder: each holds the folder's lock *shared*
plus its own slot's lock exclusively. A whole run still needs the folder to itself, and two copies of
the same task still meet.

A process forked while holding a lock (a DataLoader decode worker, say) would share the lock's open file and keep it
after its parent died (OOM killer, ``kill -9`` of the main process alone): every lock descriptor is closed in a
forked child, so the lock always dies with the process that took it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from cocu.curation.core.errors import DiskFull, is_disk_full

LOCK_NAME = ".cocu.lock"
_HELD: set[int] = set()  # lock descriptors of this process, closed in every forked child


def _close_in_child() -> None:
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)  # the parent's descriptor keeps the lock; the child holds none
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class FolderInUse(OSError):
    """Another live process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, slot: str | None = None) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) for the block; raise FolderInUse if another run holds it.

    ``slot`` names an array task's share of the folder (e.g. "slice 2 of 8"): tasks with different slots
    run side by side, a whole run (no slot) excludes them all.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: is a file, not a folder; choose another --out")
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


@contextlib.contextmanager
def sibling_lock(target: str | os.PathLike) -> Iterator[Path]:
    """The lock of a folder that is replaced whole (``page_folder``): a hidden ``.NAME.cocu.lock`` beside it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.parent / f".{target.name}.cocu.lock"
    fd = _acquire(path, target, shared=False)
    try:
        yield path
    finally:
        _release(fd, path)


def _acquire(path: Path, folder: Path, shared: bool) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as err:
            if is_disk_full(err):
                raise DiskFull(
                    path, "could not create the lock file: the disk is full; free some space and rerun"
                ) from None
            raise
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
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as err:
                _release(fd, path)
                if is_disk_full(err):
                    raise DiskFull(
                        path, "could not write the lock file: the disk is full; free some space and rerun"
                    ) from None
                raise
        _HELD.add(fd)
        return fd


def _release(fd: int, path: Path) -> None:
    path.unlink(missing_ok=True)  # while still locked: a run that opened the old file sees it vanish and retries
    _HELD.discard(fd)
    os.close(fd)


def _release_shared(fd: int, path: Path) -> None:
    """The last task out removes the lock file: only it can turn its shared lock into an exclusive one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except BlockingIOError:
        pass
    finally:
        _HELD.discard(fd)
        os.close(fd)
