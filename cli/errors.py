"""How every command ends on bad input: one line, ``error: ...`` on stderr, exit status 1, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from cocu.curation.core.errors import CocuError

INPUT_ERRORS: tuple[type[BaseException], ...] = (CocuError, ValueError, OSError)  # OSError: a missing file, a full disk


@contextmanager
def one_line_errors(*errors: type[BaseException]) -> Iterator[None]:
    """Turn ``errors`` (default: ``INPUT_ERRORS``) raised inside into the command's one-line error."""
    caught = errors or INPUT_ERRORS
    try:
        yield
    except caught as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
