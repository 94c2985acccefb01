"""Streaming text corpora: ``.jsonl`` (one JSON object per line, a text field) and plain ``.txt``.

Texts are yielded one document at a time so a corpus of any size is never held in memory.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lep_plugin.common.fs import read_json, write_text_atomic
from lep_plugin.errors import LEPError, setting_name


def expand_corpus(patterns: Iterable[str | os.PathLike]) -> list[Path]:
    """Paths from file names and glob patterns; each must exist and be non-empty."""
    files: list[Path] = []
    for pattern in patterns:
        pattern = str(pattern)
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise LEPError(f"corpus pattern {pattern!r} matches no file")
        for match in matches:
            path = Path(match)
            if not path.is_file():
                raise LEPError(f"corpus file {path} does not exist")
            if path.stat().st_size == 0:
                raise LEPError(f"corpus file {path} is empty")
            files.append(path)
    if not files:
        raise LEPError("no corpus file given")
    return files


def iter_texts(files: Iterable[Path], text_field: str = "text", max_chars: int | None = None) -> Iterator[str]:
    """Documents of ``files`` in order; stops after ``max_chars`` characters if given.

    ``.jsonl``: the ``text_field`` of each line; ``.txt``: blank-line separated paragraphs.
    """
    seen = 0
    for path in files:
        for text in _iter_file(Path(path), text_field):
            if not text:
                continue
            yield text
            seen += len(text)
            if max_chars is not None and seen >= max_chars:
                return


def _iter_file(path: Path, text_field: str) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            if path.suffix in (".jsonl", ".json"):
                for number, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        raise LEPError(f"{path}:{number}: not valid JSON") from None
                    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                        raise LEPError(
                            f"{path}:{number}: no string field {text_field!r} (set {setting_name('text_field')})"
                        )
                    yield record[text_field]
            else:
                paragraph: list[str] = []
                for line in fh:
                    if line.strip():
                        paragraph.append(line)
                    elif paragraph:
                        yield "".join(paragraph).rstrip("\n")
                        paragraph = []
                if paragraph:
                    yield "".join(paragraph).rstrip("\n")
    except UnicodeDecodeError as err:
        raise LEPError(f"corpus file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def first_texts(files: Iterable[Path], limit: int | None, text_field: str = "text") -> list[str]:
    """The first ``limit`` documents of ``files`` (all of them when ``limit`` is None)."""
    return list(itertools.islice(iter_texts(files, text_field), limit))


def check_corpus(files: list[Path], text_field: str = "text") -> None:
    """Fail early (before any training) if a file has no text at all."""
    for path in files:
        if next(iter_texts([path], text_field), None) is None:
            raise LEPError(f"corpus file {path} contains no text")


def corpus_fingerprint(
    files: Iterable[Path], text_field: str = "text", max_chars: int | None = None, memo_dir: Path | None = None
) -> str:
    """Content hash of what a vocabulary build reads from ``files``: every byte of them, or – with
    ``max_chars`` – only the texts up to that limit (a 40 GB corpus read to 20 M characters is hashed
    as far as it is read).

    With ``memo_dir`` the hash is kept in a small file there, keyed by the files' paths, sizes and
    modification times, and computed under a file lock: the first process of a launch hashes, the other
    ranks (and every later start or resume) read the memo.
    """
    files = [Path(f) for f in files]
    if memo_dir is None:
        return _hash_corpus(files, text_field, max_chars)
    from filelock import FileLock

    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = hashlib.sha256(json.dumps([stats, text_field, max_chars]).encode()).hexdigest()[:16]
    memo = Path(memo_dir) / f"lep-corpus-{key}.json"
    memo.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(memo) + ".lock"):
        if memo.is_file():
            return read_json(memo, "corpus fingerprint memo")["fingerprint"]
        fingerprint = _hash_corpus(files, text_field, max_chars)
        record = {"fingerprint": fingerprint, "files": stats, "text_field": text_field, "max_chars": max_chars}
        write_text_atomic(memo, json.dumps(record, indent=2))
    return fingerprint


@dataclass(frozen=True)
class CheckedCorpus:
    """Corpus files expanded from their patterns, each checked to hold text, and their fingerprint: done
    once, by whoever reads the corpus first (the plugin), and handed to the vocabulary build."""

    files: tuple[Path, ...]
    fingerprint: str


def checked_corpus(
    patterns: Iterable[str | os.PathLike],
    text_field: str = "text",
    max_chars: int | None = None,
    memo_dir: Path | None = None,
) -> CheckedCorpus:
    """Expand ``patterns``, check every file has text, fingerprint what a build reads (see corpus_fingerprint)."""
    files = expand_corpus(patterns)
    check_corpus(files, text_field)
    return CheckedCorpus(tuple(files), corpus_fingerprint(files, text_field, max_chars, memo_dir))


def _hash_corpus(files: list[Path], text_field: str, max_chars: int | None) -> str:
    digest = hashlib.sha256()
    if max_chars is None:
        for path in files:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\0")
    else:
        for text in iter_texts(files, text_field, max_chars):
            digest.update(text.encode("utf-8"))
            digest.update(b"\0")
    return digest.hexdigest()[:16]
