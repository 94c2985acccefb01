"""Atomic output directories: write beside the target, rename at the end, never leave a half-written OUT."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lep_plugin.errors import LEPError


def check_output_dir(output: Path, force: bool) -> None:
    """Refuse an existing output before any work is done (so a long job does not fail at the end)."""
    output = Path(output)
    if output.exists() and not force:
        raise LEPError(f"output {output} already exists (use --force to replace it)")
    if output.exists() and not output.is_dir():
        raise LEPError(f"output {output} exists and is not a directory")


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    # `kill` (SIGTERM) must clean up like Ctrl-C does; only the main thread may set handlers.
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_output_dir(output: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary dir beside ``output``; on success it replaces ``output``, on any error it is removed."""
    output = Path(output)
    check_output_dir(output, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        with _sigterm_as_exception():
            yield tmp
            if output.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
                os.replace(output, trash / output.name)
                os.replace(tmp, output)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
