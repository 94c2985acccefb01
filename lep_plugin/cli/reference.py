"""The reference of every ``lep:`` key and every ``lep-merge`` setting, made from the pydantic models that
validate them, so the README cannot drift from the code (a test compares them).

    python -m lep_plugin.cli.reference            # print it
    python -m lep_plugin.cli.reference README.md  # rewrite the README's section between the markers
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from lep_plugin.cli.options import quiet_third_party
from lep_plugin.plugin.args import LEPConfig
from lep_plugin.plugin.eval_callback import EvalCallbackOptions
from lep_plugin.propagation.options import MergeOptions

START = "<!-- settings-reference:start (made by `python -m lep_plugin.cli.reference README.md`) -->"
END = "<!-- settings-reference:end -->"


def type_text(annotation: Any) -> str:
    """A field's type as a user reads it: choices joined by |, optional shown by its default."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return type_text(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) for a in typing.get_args(annotation) if a is not type(None))
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (list, tuple):
        inner = typing.get_args(annotation)
        return f"list of {type_text(inner[0])}" if inner else "list"
    if origin is dict:
        return "mapping"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(field) -> str:
    if field.is_required():
        return "required"
    default = field.default
    if default is None or default == ():
        return "–"
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    return f"`{default}`"


def _block_model(annotation: Any) -> type[BaseModel] | None:
    """The options model of a nested block (``X`` or ``X | None``), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _rows(model: type[BaseModel], prefix: str, expand: dict[str, type[BaseModel]] | None = None) -> list[str]:
    """One table row per field, nested blocks expanded; a model's ``REFERENCE_ORDER`` puts its main keys first."""
    rows = []
    first = getattr(model, "REFERENCE_ORDER", ())
    names = sorted(model.model_fields, key=lambda n: first.index(n) if n in first else len(first))
    for name in names:
        field = model.model_fields[name]
        key = f"{prefix}.{name}" if prefix else name
        sub = (expand or {}).get(name) or _block_model(field.annotation)
        if sub is not None:
            rows.append(f"| `{key}` | block | – | {field.description or ''} (keys below) |")
            rows += _rows(sub, key)
        else:
            rows.append(
                f"| `{key}` | {type_text(field.annotation)} | {_default_text(field)} | {field.description or ''} |"
            )
    return rows


def settings_reference() -> str:

    header = ["| key | type | default | what it does |", "| --- | --- | --- | --- |"]
    lines = [
        "### The `lep:` block of an Axolotl YAML",
        "",
        *header,
        *_rows(LEPConfig, "lep", {"eval": EvalCallbackOptions}),
        "",
        "### `lep-merge`",
        "",
        "Each setting is a flag (`--block-rows`; booleans also as `--no-...`) or a key of a YAML file given as the",
        "first argument, at its top level or under `lep_merge:`; flags override the file.",
        "",
        *header,
        *_rows(MergeOptions, ""),
    ]
    return "\n".join(lines)


def with_reference(readme: str) -> str:
    """``readme`` with the text between the markers replaced by the current reference."""
    if START not in readme or END not in readme:
        raise ValueError("the README has no settings-reference markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{settings_reference()}\n{END}{tail}"


def main(argv: list[str]) -> None:

    quiet_third_party()
    if not argv:
        print(settings_reference())
        return
    path = Path(argv[0])
    path.write_text(with_reference(path.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
