"""Typer options made from a dataclass config: ``@config_options(EnrichConfig)`` gives a command one option per field.

The command declares one parameter of the config's type; the decorator replaces it, in the signature typer
reads, by the config's ``option`` fields (``cocu.curation.core.configs``), and builds the config from them when
the command runs. Defaults, help and bounds therefore live on the config alone, as LightningCLI does for
``cocu-train fit``. A config that refuses its values (``__post_init__``) ends the command with its one-line error.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import typer

from cocu.cli.errors import one_line_errors
from cocu.curation.core.configs import is_option, option_default


def config_options(config_type: type, param: str = "config", exclude: Sequence[str] = ()) -> Callable:
    """Replace the command's ``param`` parameter by the options of ``config_type`` (less ``exclude``)."""
    hints = typing.get_type_hints(config_type)
    items = [f for f in dataclasses.fields(config_type) if is_option(f) and f.name not in exclude]

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        if param not in signature.parameters:
            raise TypeError(f"{command.__name__} has no parameter {param!r} to fill from {config_type.__name__}")
        parameters = [existing for existing in signature.parameters.values() if existing.name != param]
        for item in items:  # keyword-only, after the command's own: typer lists them in this order
            annotation, default = _typer_option(item, hints[item.name])
            parameters.append(
                inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            )

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            values = {item.name: _from_cli(kwargs.pop(item.name), hints[item.name]) for item in items}
            with one_line_errors(ValueError, OSError):  # the config's own checks: one line, as every cocu error
                kwargs[param] = config_type(**values)
            return command(**kwargs)

        del run.__wrapped__  # typer must read the new signature, not the command's
        run.configs = [*getattr(command, "configs", []), (config_type, tuple(exclude))]  # type: ignore[attr-defined]
        run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate


def _typer_option(item: dataclasses.Field, hint: Any) -> tuple[Any, Any]:
    """The annotation typer reads and the ``typer.Option`` default for one config field."""
    meta = item.metadata
    default = option_default(item)
    annotation = hint
    if _is_tuple(hint):  # a repeatable option on the command line
        repeated = types.GenericAlias(list, (_item_type(hint),))
        annotation = repeated | None if _optional(hint) else repeated
        default = list(default) if isinstance(default, tuple) else default
    flags = meta["flags"] or (f"--{item.name.replace('_', '-')}",)
    extra: dict[str, Any] = {}
    if meta["choices"]:
        annotation = typing.Literal.__getitem__(meta["choices"])  # typer checks the value and lists the choices
    if meta["minimum"] is not None:
        extra["min"] = meta["minimum"]
    if meta["maximum"] is not None:
        extra["max"] = meta["maximum"]
    if hint is bool and len(flags) == 1:
        flags = (f"{flags[0]}/--no-{flags[0][2:]}",)
    option = typer.Option(... if default is dataclasses.MISSING else default, *flags, help=meta["help"], **extra)
    return annotation, option


def _from_cli(value: Any, hint: Any) -> Any:
    return tuple(value) if _is_tuple(hint) and value is not None else value


def _optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _bare(hint: Any) -> Any:
    if _optional(hint):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _is_tuple(hint: Any) -> bool:
    return typing.get_origin(_bare(hint)) is tuple


def _item_type(hint: Any) -> Any:
    return typing.get_args(_bare(hint))[0]
