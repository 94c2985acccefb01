"""Command-line faces derived from frozen pydantic option models, and the one-line error convention.

``@options_from_model(Model)`` adds one click option per field (help from the field's description,
choices from ``Literal``, repeatable for lists) and calls the command with a validated ``Model``
instance, so every CLI validates exactly like the library and the Axolotl plugin do.
"""

from __future__ import annotations

import functools
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import click
import pydantic

from lep_plugin.cli.quiet import quiet_third_party
from lep_plugin.errors import LEPError, describe_validation_error, settings_named


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, multiple) for a field annotation."""
    annotation = _unwrap_optional(annotation)
    origin = get_origin(annotation)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        inner = get_args(annotation)
        return _click_type(inner[0] if inner else str)[0], True
    if origin is Literal:
        return click.Choice([str(a) for a in get_args(annotation)]), False
    if annotation is Path:
        return click.Path(path_type=Path), False
    if annotation in (int, float, str, bool):
        return annotation, False
    return str, False


def options_from_model(model: type[pydantic.BaseModel], exclude: tuple[str, ...] = ()):
    """Decorator: turn ``model``'s fields into click options; the command receives ``options=model(...)``."""

    def decorate(command):
        names = [n for n in model.model_fields if n not in exclude]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            values = {n: kwargs.pop(n) for n in names if n in kwargs}
            values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
            values = {k: v for k, v in values.items() if v is not None and v != []}
            try:
                options = model(**values)
            except pydantic.ValidationError as err:
                with settings_named("flag"):
                    raise click.UsageError(describe_validation_error(err, model)) from None
            return command(*args, options=options, **kwargs)

        for name in reversed(names):
            field = model.model_fields[name]
            ctype, multiple = _click_type(field.annotation)
            flag = "--" + name.replace("_", "-")
            if ctype is bool:
                decl = [f"{flag}/--no-{name.replace('_', '-')}"]
            else:
                decl = [flag]
            default_text = None if field.is_required() else field.default
            # required: click marks it in --help and names the flag when it is missing; otherwise no default
            # of click's own, so the model's default applies (and is shown in the help text)
            no_default = {} if field.is_required() else {"default": None}
            wrapper = click.option(
                *decl,
                name,
                type=None if ctype is bool else ctype,
                multiple=multiple,
                required=field.is_required(),
                help=(field.description or "")
                + (f"  [default: {default_text}]" if default_text not in (None, []) else ""),
                **no_default,
            )(wrapper)
        return wrapper

    return decorate


def run_cli(group: click.Command, argv: list[str] | None = None) -> None:
    """Run a click command; an :class:`LEPError` becomes ``error: ...`` on stderr and exit code 2."""
    quiet_third_party()
    try:
        with settings_named("flag"):
            group.main(args=argv, standalone_mode=False)
    except LEPError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was written", err=True)
        sys.exit(130)
