"""Config fields that are also command-line options: a field's default and its help are written once, on the field.

The configs are plain dataclasses the Python API takes; ``cocu.cli.options`` turns every field declared with
``option`` into a typer option of the same default, help and bounds, so a command never restates a default.
A field declared without ``option`` is left to the Python API (its default applies on the command line).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, field
from typing import Any


def option(
    default: Any = MISSING,
    help: str = "",  # noqa: A002 - the name typer and argparse use
    *,
    flags: Sequence[str] = (),
    default_factory: Callable[[], Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: Sequence[str] | None = None,
) -> Any:
    """A dataclass field with its command-line help, its own flag names (else ``--field-name``) and bounds."""
    if not help:
        raise ValueError("an option needs its help text")
    metadata = {
        "help": help,
        "flags": tuple(flags),
        "minimum": minimum,
        "maximum": maximum,
        "choices": tuple(choices) if choices else None,
    }
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def is_option(item: Field) -> bool:
    return "help" in item.metadata


def option_default(item: Field) -> Any:
    """The field's default (a factory's value); MISSING for a required field."""
    if item.default is not MISSING:
        return item.default
    if item.default_factory is not MISSING:
        return item.default_factory()
    return MISSING
