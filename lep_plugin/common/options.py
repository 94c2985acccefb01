"""What several option models share (pydantic only: validating a YAML loads no torch)."""

from __future__ import annotations

from typing import Any

from pydantic import BeforeValidator


def one_or_more(value: Any) -> Any:
    """One value where a list is expected is a list of one: ``corpus: ru.jsonl``, ``gguf: q8_0``."""
    return [value] if isinstance(value, str) else value


ONE_OR_MORE = BeforeValidator(one_or_more)  # for ``Annotated[list[...], ONE_OR_MORE]``
