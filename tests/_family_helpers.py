"""Session caches of the families' tokenizer layouts and tiny models (behind the conftest fixtures
``family_layouts`` and ``tiny_families``): each is built on first use, from the Mistral and Tekken
tokenizers the session already imported, and shared by every test that asks for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lep_plugin.demo.families import (
    LAYOUT_SOURCES,
    LAYOUTS,
    build_layout,
    family,
    tiny_base,
    tiny_instruct,
)

# the byte-level BPEs (131k) cut for the tiny end-to-end models: the layout is the same, the models small
TINY_BPE = {"llama3": 8000, "qwen": 8000}


class LayoutCache:
    """``get(layout)``: the full-size tokenizer of a layout; ``get(layout, bpe_size)``: a cut one."""

    def __init__(self, root: Path, sources: dict[str, Path]):
        self.root = root
        self.sources = sources  # imported shipped tokenizers: {"mistral": dir, "tekken": dir}
        self._dirs: dict[tuple[str, int | None], Path] = {}

    def get(self, layout: str, bpe_size: int | None = None) -> Path:
        key = (layout, bpe_size)
        if key not in self._dirs:
            out = self.root / f"{layout}-{bpe_size or 'full'}"
            self._dirs[key] = build_layout(layout, out, bpe_size, self.sources.get(LAYOUT_SOURCES[layout]))
        return self._dirs[key]


ALL_LAYOUTS = list(LAYOUTS)


@dataclass(frozen=True)
class TinyFamily:
    name: str
    base: Path
    instruct: Path


class FamilyCache:
    """``get(name)``: the tiny base and instruct models of a family (random weights, d=64, 2 layers)."""

    def __init__(self, root: Path, layouts: LayoutCache):
        self.root = root
        self.layouts = layouts
        self._models: dict[str, TinyFamily] = {}

    def get(self, name: str) -> TinyFamily:
        if name not in self._models:
            layout = family(name).layout
            tokenizer = self.layouts.get(layout, TINY_BPE.get(layout))
            base = tiny_base(name, tokenizer, self.root / name / "base")
            self._models[name] = TinyFamily(name, base, tiny_instruct(name, base, self.root / name / "instruct"))
        return self._models[name]
