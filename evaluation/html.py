"""Static HTML pages a person opens from the file system: one jinja2 environment, atomic page writes.

The pages use no server, no network and no CDN: styles and scripts are inlined from ``templates/``,
pictures are files beside the page, so a gallery folder can be copied anywhere and opened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from cocu.curation.core.errors import writing
from cocu.curation.core.locking import sibling_lock
from cocu.curation.core.outputs import PAGE_MARKER, OutputFolderError
from cocu.curation.core.shards import atomic_write_bytes

MARKER = PAGE_MARKER  # written last into every folder made by ``page_folder``; a rerun may replace such a folder


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cocu.evaluation", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["asset"] = asset
    return env


def asset(name: str) -> Markup:
    """A stylesheet or script from ``templates/``, inlined verbatim (neither parsed as a template nor escaped)."""
    return Markup((files("cocu.evaluation") / "templates" / name).read_text())


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def write_page(path: str | os.PathLike, template: str, **context: Any) -> Path:
    """Render ``template`` and write it to ``path`` atomically."""
    atomic_write_bytes(path, render(template, **context).encode())
    return Path(path)


@contextlib.contextmanager
def page_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Build a whole folder of pages under a temporary name; it replaces ``out`` only when the block completes.

    A folder that exists but was not made here (it has no marker file) is refused rather than deleted, and
    temporaries left by a killed earlier run are removed first, so a rerun after a crash is one clean run. The
    folder's lock (beside it) keeps a second run off the same folder: it stops at once instead of deleting the
    first one's temporaries. A full disk is one ``DiskFull`` line; the earlier folder stays whole.
    """
    target = Path(out).resolve()
    if target.exists() and not target.is_dir():
        raise OutputFolderError(f"{out}: is a file, not a folder; choose another --out")
    if target.exists() and any(target.iterdir()) and not (target / MARKER).exists():
        raise OutputFolderError(
            f"{out}: exists and is not a folder written by cocu (no {MARKER}); choose a new or empty --out"
        )
    with sibling_lock(target), writing(target):  # a second run on this --out stops here, before deleting anything
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # a killed run's: no live run can own them now
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            yield work
            if target.exists():
                old = target.with_name(f".{target.name}.old.{os.getpid()}.tmp")
                os.replace(target, old)
                os.replace(work, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(work, target)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
