"""Where llama.cpp comes from: a checkout the user names (``--llama-cpp`` or ``LLAMA_CPP_DIR``), or the copy
vendored in the llama-cpp-python source distribution, fetched once from PyPI with pip into a cache.

Nothing of llama.cpp is kept in this repository: the converter (``convert_hf_to_gguf.py`` with its
``conversion/`` package and ``gguf-py``) is run from wherever it is found, and ``make gguf-check`` builds
llama-cpp-python (llama.cpp's library and its Python bindings) from the same source distribution.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lep_plugin.common.fs import temp_dir
from lep_plugin.errors import LEPError

# The llama-cpp-python release whose vendored llama.cpp is used when no checkout is given.
LLAMA_CPP_PYTHON = "0.3.36"
ENV_DIR = "LLAMA_CPP_DIR"
ENV_CACHE = "LEP_CACHE_DIR"
CONVERTER = "convert_hf_to_gguf.py"
# What the converter needs from the vendored tree (its code, its gguf-py, its vocab/template files).
CONVERTER_PARTS = (CONVERTER, "conversion/", "gguf-py/", "models/", "LICENSE")


@dataclass(frozen=True)
class LlamaCpp:
    """A llama.cpp tree that holds the converter; ``origin`` says where it came from (for messages)."""

    root: Path
    origin: str

    @property
    def converter(self) -> Path:
        return self.root / CONVERTER


def cache_dir() -> Path:
    """``$LEP_CACHE_DIR``, else ``$XDG_CACHE_HOME/lep-plugin``, else ``~/.cache/lep-plugin``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lep-plugin"


def _checkout(path: Path, what: str) -> LlamaCpp:
    path = Path(path).expanduser()
    if not (path / CONVERTER).is_file():
        raise LEPError(f"{what} {path} is not a llama.cpp checkout (it has no {CONVERTER})")
    return LlamaCpp(path.resolve(), f"{what} {path}")


def find_llama_cpp(given: Path | None = None, fetch: bool = True) -> LlamaCpp:
    """The llama.cpp tree to convert with: ``given``, else ``$LLAMA_CPP_DIR``, else the cached copy of the
    llama-cpp-python source distribution (fetched now if ``fetch``)."""
    if given is not None:
        return _checkout(given, "--llama-cpp")
    if os.environ.get(ENV_DIR):
        return _checkout(Path(os.environ[ENV_DIR]), ENV_DIR)
    root = vendored_dir()
    if not (root / CONVERTER).is_file():
        if not fetch:
            raise LEPError(f"llama.cpp's converter is not in the cache {root}")
        _extract(sdist(), root, CONVERTER_PARTS)
    return LlamaCpp(root, f"llama-cpp-python {LLAMA_CPP_PYTHON} source distribution (cached in {root})")


def vendored_dir() -> Path:
    return cache_dir() / f"llama-cpp-python-{LLAMA_CPP_PYTHON}" / "llama.cpp"


def sdist() -> Path:
    """The llama-cpp-python source distribution, downloaded once with pip into the cache."""
    from filelock import FileLock

    folder = cache_dir() / "sdist"
    target = folder / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            command = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--disable-pip-version-check",
                "-q",
                f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                "-d",
                tmp,
            ]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
            except (OSError, subprocess.TimeoutExpired) as err:
                raise _fetch_error(str(err)) from None
            found = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            if done.returncode != 0 or not found:
                raise _fetch_error((done.stderr or done.stdout).strip().splitlines()[-1:] or ["no file"])
            os.replace(found[0], target)
    return target


def _fetch_error(detail) -> LEPError:
    detail = detail[0] if isinstance(detail, list) else detail
    return LEPError(
        f"cannot fetch llama.cpp's converter (pip download llama-cpp-python=={LLAMA_CPP_PYTHON} failed: {detail}); "
        f"pass --llama-cpp DIR or set {ENV_DIR} to a llama.cpp checkout"
    )


def _extract(archive: Path, root: Path, parts: tuple[str, ...]) -> None:
    """Extract ``vendor/llama.cpp/<parts>`` of the source distribution into ``root`` (atomically)."""
    from filelock import FileLock

    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / ".lock")):
        if (root / CONVERTER).is_file():
            return
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        tmp = temp_dir(".llama.cpp.tmp-", root.parent)  # the cache is readable like any install
        try:
            with tarfile.open(archive) as tar:
                members = []
                for member in tar.getmembers():
                    if not member.name.startswith(prefix):
                        continue
                    rel = member.name[len(prefix) :]
                    if any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in parts):
                        member.name = rel
                        members.append(member)
                tar.extractall(tmp, members=members, filter="data")
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


# CPU-only build of the library and its Python bindings; no examples, tools, server or multimodal library.
BUILD_CMAKE_ARGS = (
    "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF "
    "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
)


def built_bindings(echo=print) -> Path:
    """A dir to put on ``sys.path`` that holds the ``llama_cpp`` package (llama-cpp-python's bindings with
    llama.cpp compiled from the source distribution); built once into the cache with pip (minutes)."""
    from filelock import FileLock

    target = cache_dir() / f"llama-cpp-python-{LLAMA_CPP_PYTHON}" / "built"
    marker = target / ".complete"
    if marker.is_file():
        return target
    archive = sdist()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / ".build.lock")):
        if marker.is_file():
            return target
        echo(f"building llama-cpp-python {LLAMA_CPP_PYTHON} (llama.cpp for the CPU) into {target} ...")
        tmp = temp_dir(".built.tmp-", target.parent)
        env = dict(os.environ, CMAKE_ARGS=BUILD_CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "--target",
            str(tmp),
            str(archive),
            "diskcache",
        ]  # diskcache: the bindings' one missing import
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise LEPError(f"building llama-cpp-python failed: {(done.stderr or done.stdout).strip()[-2000:]}")
            (tmp / ".complete").write_text(LLAMA_CPP_PYTHON + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
