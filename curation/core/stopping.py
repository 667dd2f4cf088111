"""SIGTERM (a scheduler's time limit, ``kill PID``) stops a curation command cleanly: temporaries and locks removed.

By default SIGTERM ends Python at once, leaving its hidden temporaries and the folder's lock file behind, with no word
said. Inside ``stop_on_sigterm`` it raises ``Stopped`` (a ``SystemExit`` with status 143, as a shell reports a
SIGTERM) in the main thread, so every ``finally`` and ``with`` block on the way out runs: ``atomic_path`` removes its
temporary, ``folder_lock`` its lock, ``page_folder`` its half-built folder. One line says so on stderr. Worker
processes started by the stage get the signal passed on; forked children (DataLoader decode workers) go back to
the default, so they die quietly instead of printing a traceback.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from tqdm import tqdm

EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class Stopped(SystemExit):
    """Raised in the main thread on SIGTERM; exits with status 143."""

    def __init__(self) -> None:
        super().__init__(EXIT_SIGTERM)


_active: list[str] = []  # the message of the innermost stop_on_sigterm block


def _handler(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    for child in multiprocessing.active_children():  # the stage's worker processes stop their shard too
        with contextlib.suppress(OSError):
            os.kill(child.pid, signal.SIGTERM)  # type: ignore[arg-type]
    tqdm.write(f"error: {_active[-1]}", file=sys.stderr)  # a line of its own, beside a progress bar
    sys.stderr.flush()
    raise Stopped()


def _default_in_child() -> None:
    if signal.getsignal(signal.SIGTERM) in (_handler, _worker_handler):
        with contextlib.suppress(ValueError):  # not the main thread of the child
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_in_child)


@contextlib.contextmanager
def stop_on_sigterm(message: str) -> Iterator[None]:
    """Within the block, SIGTERM prints ``error: MESSAGE`` and raises ``Stopped`` (exit status 143).

    Outside the main thread (a library caller's worker thread) signals cannot be caught: the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    _active.append(message)
    signal.signal(signal.SIGTERM, _handler)
    try:
        yield
    finally:
        _active.pop()
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def install_in_worker() -> None:
    """In a stage's worker process: SIGTERM raises ``Stopped`` too, so the shard in hand removes its temporary.

    A no-op in the main process (a stage run in-process calls its worker initializer there)."""
    if multiprocessing.parent_process() is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _worker_handler)


def _worker_handler(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Stopped()
