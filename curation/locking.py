"""One writer per output folder: an advisory lock that a second run sharing the folder meets at once.

Two runs writing one folder would delete each other's in-flight temporaries (each cleans up what a killed
run left) and race on the same outputs. The lock is an ``flock`` on a hidden file in the folder, so the
kernel drops it when its holder dies, even by SIGKILL: a rerun after a crash never finds a stale lock.
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
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) for the block; raise FolderInUse if another run holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = _acquire(path, folder)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still locked: a run that opened the old file sees it vanish and retries
        os.close(fd)


def _acquire(path: Path, folder: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FolderInUse(f"{folder}: in use by another cocu run (pid {holder}); wait for it to finish or "
                              f"choose another output folder") from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current != os.fstat(fd).st_ino:  # the holder removed the file between our open and our lock
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
