"""Session fixtures built once for the whole `make test` run, not once per xdist worker.

pytest-xdist runs a session fixture in every worker that needs it: the ZeRO-3 Axolotl run (two ranks,
~100 s) and the lep-merge trios were built twice. :func:`built_once` builds into a dir beside the workers'
temp dirs under a file lock; the other worker waits for it and reads back what the builder returned
(paths, plain values and dataclasses of them, as JSON). Without xdist it is a plain build.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

T = TypeVar("T")


def built_once(tmp_path_factory, key: str, build: Callable[[Path], T]) -> T:
    """``build(dir)`` run once per test run for ``key``; every worker gets its return value."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    work, done = root / f"shared-{key}", root / f"shared-{key}.json"
    with FileLock(str(root / f"shared-{key}.lock")):
        if done.is_file():
            return _decode(json.loads(done.read_text(encoding="utf-8")))
        shutil.rmtree(work, ignore_errors=True)  # a build that failed in a worker before
        work.mkdir()
        value = build(work)
        done.write_text(json.dumps(_encode(value)), encoding="utf-8")
        return value


def _encode(value: Any) -> Any:
    if isinstance(value, Path):
        return {"path": str(value)}
    if dataclasses.is_dataclass(value):
        kind = f"{type(value).__module__}:{type(value).__qualname__}"
        return {
            "dataclass": kind,
            "fields": {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)},
        }
    return {"value": value}


def _decode(data: dict[str, Any]) -> Any:
    if "path" in data:
        return Path(data["path"])
    if "dataclass" in data:
        module, name = data["dataclass"].split(":")
        kind = getattr(importlib.import_module(module), name)
        return kind(**{k: _decode(v) for k, v in data["fields"].items()})
    return data["value"]
