"""The one exception type users see as a single clear line (CLIs exit 2 with it), and the one way a
setting is named in a message: in the words of the place it came from – ``--vocab-size`` on a command
line, ``lep.vocab.vocab_size`` in an Axolotl YAML.

The face that reads the settings (a CLI, the plugin's ``register()``) says which words it uses with
:func:`settings_named`; library code names a setting with :func:`setting_name` and never guesses.
"""

from __future__ import annotations

import contextlib
import difflib
import types
import typing
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError


class LEPError(Exception):
    """Bad input or an impossible request. The message is shown to the user as one line."""


class LEPExit(LEPError, SystemExit):
    """A :class:`LEPError` already shown to the user, raised from code that runs inside another program
    (Axolotl's hooks): it ends the process with exit code 2 and no traceback, yet callers that catch
    ``LEPError`` (or ``Exception``) still can."""

    def __init__(self, message: str):
        LEPError.__init__(self, message)
        self.code = 2


@dataclass(frozen=True)
class SettingWords:
    """How settings are named: ``flag`` (``--text-field``), ``yaml`` (``lep.vocab.text_field``), ``plain``."""

    kind: Literal["flag", "yaml", "plain"] = "plain"
    prefix: str = ""  # yaml: the path of the block the settings are in

    def name(self, path: str) -> str:
        if self.kind == "flag":
            return "--" + path.rsplit(".", 1)[-1].replace("_", "-")
        if self.kind == "yaml":
            return ".".join(p for p in (self.prefix, path) if p)
        return path


_PLAIN = SettingWords()
_WORDS: ContextVar[SettingWords | None] = ContextVar("lep_setting_words", default=None)


@contextlib.contextmanager
def settings_named(kind: Literal["flag", "yaml", "plain"], prefix: str = "") -> Iterator[None]:
    """Within the block, :func:`setting_name` and :func:`describe_validation_error` use these words."""
    token = _WORDS.set(SettingWords(kind, prefix))
    try:
        yield
    finally:
        _WORDS.reset(token)


def setting_name(path: str) -> str:
    """``path`` (a field name, or ``vocab.text_field``) as the user wrote that setting."""
    words = _WORDS.get()
    return (_PLAIN if words is None else words).name(path)


def _fields_at(model: type[BaseModel] | None, loc: tuple[str, ...]) -> list[str]:
    """The field names of the (nested) model found at ``loc`` (for "did you mean")."""
    from pydantic import BaseModel

    for part in loc:
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return []
        annotation = field.annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            annotation = next(
                (a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)), None
            )
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def describe_validation_error(err: ValidationError, model: type[BaseModel] | None = None) -> str:
    """``lep.vocab.vocab_sise: unknown key (a typo?) – did you mean vocab_size?; ...`` on one line: where
    each problem is, in the words of :func:`settings_named`, and what is wrong. ``model`` is the model
    that was validated (for the "did you mean" of unknown keys)."""
    parts = []
    for item in err.errors():
        loc = tuple(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc[-1], _fields_at(model, loc[:-1]), n=1, cutoff=0.6)
            message = "unknown key (a typo?)" + (
                f" – did you mean {setting_name('.'.join((*loc[:-1], close[0])))}?" if close else ""
            )
        elif item["type"] == "missing":
            message = "required"
        where = setting_name(".".join(loc)) if loc else ""
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
