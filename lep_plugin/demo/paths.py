"""Where the package's own data lies: the shipped demo texts and the pretrained tiny base."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
DEMO_DATA = DATA / "demo"
TINY_BASE = DATA / "tiny-base"
