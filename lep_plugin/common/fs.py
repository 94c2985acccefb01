"""The one rule for outputs: checked before any work, written beside the target and renamed at the end,
never overlapping an input. A failed or interrupted write (Ctrl-C, ``kill``) leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lep_plugin.errors import LEPError


def read_json(path: Path, what: str) -> Any:
    """A JSON file's content; a missing or broken file is one clear error naming ``what`` it is."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LEPError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as err:
        raise LEPError(f"{what} {path} is not valid JSON: {err}") from None


def read_yaml_mapping(path: Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file holding a mapping (an Axolotl config, a lep-merge settings file); one clear error if not."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LEPError(f"{what} {path} does not exist") from None
    except (OSError, yaml.YAMLError) as err:
        raise LEPError(f"{what} {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LEPError(f"{what} {path} must hold a mapping of settings")
    return data


def write_json(path: Path, content: Any) -> None:
    """``content`` as indented UTF-8 JSON (non-ASCII kept readable), for files inside an atomic dir."""
    Path(path).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def current_umask() -> int:
    """The process umask, read without changing it where the OS tells it (Linux), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_if_created(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open()`` / ``mkdir()`` would have (0644 / 0755 under umask 022):
    ``tempfile`` makes files 0600 and dirs 0700, which others could not read once renamed into place."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


def as_if_created_tree(root: str | os.PathLike) -> None:
    """:func:`as_if_created` on ``root`` and everything in it that is too private for the umask: files that
    safetensors, ``tempfile`` or a library wrote 0600 (links are left alone)."""
    mask = current_umask()
    for path in [Path(root), *Path(root).rglob("*")]:
        if path.is_symlink():
            continue
        wanted = (0o777 if path.is_dir() else 0o666) & ~mask
        mode = path.stat().st_mode & 0o7777
        if mode & wanted != wanted:
            os.chmod(path, mode | wanted)


def temp_dir(prefix: str, dir: str | os.PathLike) -> Path:
    """A new temporary dir in ``dir`` with the mode of a plain ``mkdir`` (it is renamed into place later).

    Made by ``os.mkdir`` under a random name, not ``mkdtemp`` + chmod: the dir has its final mode from the
    start, and nothing runs between its creation and the caller's cleanup handler (an interrupt there
    would leave it behind)."""
    for _ in range(100):
        path = Path(dir) / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise LEPError(f"could not create a temporary dir in {dir}")


def check_no_overlap(
    output: str | os.PathLike,
    inputs: Mapping[str, str | os.PathLike | None] | Iterable[tuple[str, str | os.PathLike | None]],
) -> None:
    """Refuse an output that is an input, lies inside one, or contains one (replacing it would lose it).

    ``inputs`` names each input (``{"base": path}`` or ``[("text", path), ...]``) for the message."""
    out = Path(output).resolve()
    pairs = inputs.items() if isinstance(inputs, Mapping) else inputs
    for what, path in pairs:
        if path is None:
            continue
        source = Path(path).resolve()
        if out == source or out.is_relative_to(source) or source.is_relative_to(out):
            raise LEPError(f"output {output} overlaps the {what} input {path}; choose another output")


def check_output_dir(output: str | os.PathLike, force: bool) -> None:
    """Refuse an existing output dir before any work is done (so a long job does not fail at the end)."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise LEPError(f"output {output} exists and is not a directory")
    if output.exists() and not force:
        raise LEPError(f"output {output} already exists (use --force to replace it)")


def check_output_file(output: str | os.PathLike, force: bool) -> None:
    """Refuse an output file that exists (without ``force``), is a dir, or has no parent dir."""
    output = Path(output)
    if output.is_dir():
        raise LEPError(f"output {output} is a directory")
    if output.exists() and not force:
        raise LEPError(f"output {output} already exists (use --force to replace it)")
    if not output.parent.resolve().is_dir():
        raise LEPError(f"directory of output {output} does not exist")


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
    with _sigterm_as_exception():  # before the dir exists: a `kill` at any later point cleans it up
        tmp = temp_dir(f".{output.name}.tmp-", output.parent)
        try:
            yield tmp
            as_if_created_tree(tmp)  # what the writers made 0600 (safetensors does) reads as the umask says
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


@contextlib.contextmanager
def atomic_file(output: str | os.PathLike, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``output`` to write; on success it is synced to disk and renamed
    over ``output``, on any error it is removed. The temporary name keeps ``output``'s suffix (writers
    such as matplotlib pick the format from it)."""
    output = Path(output)
    check_output_file(output, force)
    fd, name = tempfile.mkstemp(prefix=f".{output.name}.tmp-", suffix=output.suffix, dir=output.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with _sigterm_as_exception():
            yield tmp
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            as_if_created(tmp)  # after the writer: some replace the file instead of writing into it
            os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(output: str | os.PathLike, text: str, force: bool = True) -> None:
    with atomic_file(output, force) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_jsonl_atomic(records: Iterable[dict], output: str | os.PathLike, force: bool = False) -> int:
    """Write ``records`` as JSON lines (streamed) through :func:`atomic_file`; returns how many."""
    count = 0
    with atomic_file(output, force) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count
