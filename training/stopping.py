"""SIGTERM in `cocu-train fit`: the run stops with status 143 and one line, never as a finished run (status 0).

While Lightning trains, its own handler notes the signal and its loop raises ``SIGTERMException`` between two
steps; ``GroupViTCheckpoint.on_exception`` saves ``last.ckpt`` there and ``cli/train.py`` says where the run stopped.
Outside the loop (parsing, the shard scan, model set-up) the handler installed here stops the run itself. It stays
installed while Lightning trains (Lightning calls it beside its own), so a later error can tell that a SIGTERM came
first (a loader worker that the same signal ended).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

EXIT_SIGTERM = 128 + signal.SIGTERM  # 143, as a shell reports a process ended by SIGTERM
STOPPED_BEFORE = "fit stopped by SIGTERM outside its training loop; rerun with --ckpt_path last to resume"
STOPPED_IN_STEP = (
    "fit stopped by SIGTERM (its loader workers were ended by it first); rerun with --ckpt_path last to resume "
    "from the last checkpoint"
)
_received = [False]


def sigterm_received() -> bool:
    return _received[0]


def _handler(signum: int, frame: FrameType | None) -> None:
    _received[0] = True
    if signal.getsignal(signal.SIGTERM) is not _handler:
        return  # called by Lightning's handler, which stops the loop at the next step boundary
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    print(f"error: {STOPPED_BEFORE}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_SIGTERM)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    _received[0] = False
    signal.signal(signal.SIGTERM, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
