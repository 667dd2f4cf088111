"""`CocuError`, the base of every error cocu raises about its inputs, and its one-line message contract."""

from __future__ import annotations

import os


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
        super().__init__(" ".join(lines))


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
