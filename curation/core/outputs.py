"""Output folders: every command that writes a folder refuses one that overlaps its inputs or holds others' files.

An output inside an input folder (or holding one) makes a rerun read its own output as input (``build-bank --out``
inside ``--shards``) or rewrite the inputs in place (``enrich --out`` equal to ``--shards``). A folder holding files
the command did not make (a user's ``index.html``, ``results.md``) would be overwritten or mixed with its output. Both
are refused up front, in one line that says what to do, before anything is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from cocu.curation.core.errors import CocuError, shown

PAGE_MARKER = "cocu-page.json"  # written last into every folder of pages (show, eval pages); a rerun may replace it
# Files cocu's own tools leave in folders that other commands write into (the benchmark's run folders).
SIDE_FILES = frozenset({"benchmark-params.json", "grouping_bound.json"})


class OutputFolderError(CocuError):
    """An output folder that cannot be used: a file, overlapping the inputs, or holding files cocu did not make."""


def check_output_folder(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike],
    made: Callable[[Path], bool],
    command: str,
    option: str = "--out",
) -> Path:
    """Refuse ``out`` in one line if it is a file, overlaps one of ``inputs``, or holds a visible entry for which
    ``made`` is False. Hidden entries (temporaries, locks) are the commands' own.

    Overlap: ``out`` is an input folder or lies inside one (a folder is read whole), or holds an input (a file's
    folder, or one above it). An ``out`` beside an input file, in its folder's subfolder, is fine."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder}: is a file, not a folder; choose another {option}")
    check_overlap(folder, inputs, option)
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            if not entry.name.startswith(".") and not made(entry):
                raise OutputFolderError(
                    f"{folder}: holds {shown(entry.name)}, which {command} did not make; choose a new or empty "
                    f"{option} (or move what it holds elsewhere)"
                )
    return folder


def check_overlap(folder: Path, inputs: Iterable[str | os.PathLike], option: str) -> None:
    target = folder.resolve()
    for given in inputs:
        path = Path(given)
        if not path.exists():
            continue
        resolved = path.resolve()
        if resolved.is_dir() and (target == resolved or resolved in target.parents):  # a folder is read whole
            how = "is" if target == resolved else "is inside"
            raise OutputFolderError(
                f"{folder}: {how} the input folder {resolved}; choose an {option} outside the inputs "
                f"(a rerun would read its own output, or overwrite the input)"
            )
        if target in resolved.parents:  # the folder of an input file, or one above it
            raise OutputFolderError(
                f"{folder}: holds the input {path}; choose an {option} outside the inputs "
                f"(a rerun would read its own output, or overwrite the input)"
            )


def input_places(patterns: Iterable[str | os.PathLike], files: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """What a command reads, for the overlap check: the folders and files given, and the files they matched."""
    return [Path(p) for p in patterns if os.path.exists(p)] + [Path(f) for f in files]


def is_eval_record(path: Path) -> bool:
    """True for a ``metrics.json`` written by ``cocu-eval seg``."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "miou" in record and "per_class_iou" in record


def is_cocu_folder(path: Path, depth: int = 2) -> bool:
    """A folder another cocu command made (an evaluation, a page folder), or one holding only such folders."""
    if not path.is_dir():
        return False
    if (path / PAGE_MARKER).exists() or is_eval_record(path / "metrics.json"):
        return True
    visible = [p for p in path.iterdir() if not p.name.startswith(".")]
    return depth > 0 and all(is_cocu_folder(p, depth - 1) for p in visible)
