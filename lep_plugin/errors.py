"""The one exception type users see as a single clear line (CLIs exit non-zero with it), and the one way a
pydantic validation error is worded for them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class LEPError(Exception):
    """Bad input or an impossible request. The message is shown to the user as one line."""


def describe_validation_error(err: ValidationError, prefix: str | None = None) -> str:
    """``lep.vocab.methd: unknown key (a typo?); ...`` – where each problem is and what is wrong, on one line.

    ``prefix`` is the path of the validated block in its file (``lep``, ``lep.eval``); without it the
    location is the field name as the user typed it.
    """
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (a typo?)"
        parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts)
