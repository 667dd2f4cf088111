"""`CocuError`, the base of every error cocu raises about its inputs, and its one-line message contract."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

MAX_MESSAGE = 2000  # characters of one error line; longer messages are cut (a 100,000-character key, say)
MAX_VALUE = 80  # characters of one quoted value (a key, a concept) inside a message
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
# What a checkpoint that torch.load(weights_only=True) refuses is told (never torch's advice to load it unsafely)
PICKLED_CHECKPOINT = (
    "holds pickled Python objects, which cocu never loads (loading them can run any code); "
    "use a checkpoint of tensors and plain data (torch.save(model.state_dict(), PATH))"
)


class CocuError(ValueError):
    """Bad input, said in one line that names the file (and row, when known) and what is wrong.

    The commands catch it and print ``str(err)`` alone, so a message never spans lines. A message re-raised from a
    DataLoader worker (torch wraps it in the worker's traceback) is cut back to the original message on its last line;
    other line breaks are folded. A ``ValueError``, so callers written before the base existed keep working.
    """

    def __init__(self, message: str):
        lines = [line.strip() for line in str(message).splitlines() if line.strip()]
        if len(lines) > 1 and any(
            line.startswith("Traceback") or line == "Original Traceback (most recent call last):" for line in lines
        ):
            name, colon, cause = lines[-1].partition(": ")
            lines = [cause if colon and name.endswith("Error") else lines[-1]]
        line = " ".join(lines)
        if len(line) > MAX_MESSAGE:
            line = f"{line[:MAX_MESSAGE]}... ({len(line) - MAX_MESSAGE} more characters)"
        super().__init__(line)


class FileError(CocuError):
    """A problem with one file: the message names the file and, when known, the row."""

    def __init__(self, path: str | os.PathLike, problem: str, row: int | None = None):
        self.path, self.problem, self.row = str(path), problem, row
        where = f"{self.path}: row {row}" if row is not None else self.path
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # survive the trip back from a worker process
        return type(self), (self.path, self.problem, self.row)


class VocabularyError(FileError):
    """A vocabulary JSON that cannot be read or is not one cocu wrote."""


DISK_FULL = "could not be written: the disk is full; free some space and rerun (the earlier output is kept)"


class DiskFull(FileError):
    """A write that failed because the disk (or the user's quota) is full: names the file that could not be written."""

    def __init__(self, path: str | os.PathLike, problem: str = "", row: int | None = None):
        super().__init__(path, problem or DISK_FULL)


def shown(value: object, limit: int = MAX_VALUE) -> str:
    """``value`` for a message: its repr-free text, cut to ``limit`` characters with the count of what was cut."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def is_disk_full(err: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, also when a library only says so in its message (pyarrow, FAISS)."""
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        return True
    text = str(err)
    return any(os.strerror(code) in text for code in _DISK_FULL) or "[errno 28]" in text.lower()


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk met inside the block into one ``DiskFull`` line naming ``path``."""
    try:
        yield
    except DiskFull:
        raise
    except (OSError, RuntimeError) as err:
        if is_disk_full(err):
            raise DiskFull(path) from None
        raise
