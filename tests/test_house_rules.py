"""The house rules a reviewer would otherwise check by eye (issue 21): short functions, imports at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = sorted((REPO / "lep_plugin").rglob("*.py"))
SOURCES = PACKAGE + sorted((REPO / "benchmarks").glob("*.py"))
MAX_FUNCTION_LINES = 60


def _functions(tree: ast.AST):
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def test_the_sources_are_found():
    assert len(SOURCES) > 50 and any(p.name == "plugin.py" for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_function_is_over_60_lines(path: Path):
    long = [
        f"{f.name} ({f.end_lineno - f.lineno + 1} lines)"
        for f in _functions(ast.parse(path.read_text(encoding="utf-8")))
        if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"split into named steps: {', '.join(long)}"


@pytest.mark.parametrize("path", PACKAGE, ids=lambda p: str(p.relative_to(REPO)))
def test_own_modules_are_imported_at_the_top_unless_a_comment_says_why(path: Path):
    lines = path.read_text(encoding="utf-8").splitlines()
    hidden = []
    for function in _functions(ast.parse("\n".join(lines))):
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("lep_plugin")):
                said = lines[node.lineno - 1] + (lines[node.lineno - 2] if node.lineno > 1 else "")
                if "lazy" not in said:
                    hidden.append(f"line {node.lineno} in {function.name}")
    assert not hidden, f"import at the top, or say why with a '# lazy: ...' comment: {', '.join(hidden)}"
