"""The math floor's named choices, importable without torch: the CLIs build their options (and answer a
usage error) from them before any tensor is needed."""

from __future__ import annotations

from typing import Literal

Weighting = Literal["mean", "position"]  # how a new token's row averages its old pieces' rows (operator T)
