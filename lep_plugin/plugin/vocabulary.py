"""Register-time vocabulary work: find the old tokenizer, build or reuse the new one, check a ready one.

Runs in every process of a launch before Axolotl tokenizes anything, so the new tokenizer lives in a
content-addressed dir (``lep-vocab-<hash of old tokenizer + corpus + options>``) and is built under a
file lock: the first process builds, the others wait on the lock and then find the finished dir.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from lep_plugin.common.corpus import checked_corpus
from lep_plugin.common.fs import atomic_output_dir, write_json
from lep_plugin.common.tokenizers import (
    MANIFEST,
    fingerprint_tokenizer,
    load_tokenizer,
    read_manifest,
)
from lep_plugin.errors import LEPError
from lep_plugin.plugin.args import VocabSection
from lep_plugin.vocab.build import build_vocabulary

LOG = logging.getLogger("lep_plugin")
CACHE_PREFIX = "lep-vocab-"


@dataclass(frozen=True)
class VocabPlan:
    """What register() decided: the old and new tokenizer dirs and whether the model needs converting."""

    old_tokenizer: Path  # local dir of the base model's tokenizer
    new_tokenizer: Path
    fingerprint: str  # of the new tokenizer
    built: bool  # this process built it (False: reused from the cache or already in the model)
    already_converted: bool  # the base model already carries the new vocabulary (e.g. `axolotl inference`)


def model_source(cfg: dict[str, Any]) -> str:
    source = cfg.get("base_model_config") or cfg.get("base_model")
    if not source:
        raise LEPError("the YAML has no base_model: the plugin needs the base model's tokenizer")
    return str(source)


def old_tokenizer_source(cfg: dict[str, Any]) -> str:
    """The tokenizer Axolotl would load without the plugin.

    A ``tokenizer_config`` that is one of the plugin's own vocabulary dirs was set by an earlier
    ``register()`` on this config (Ray workers register again): the old tokenizer is then the model's.
    """
    configured = cfg.get("tokenizer_config")
    if configured and not (Path(str(configured)).name.startswith(CACHE_PREFIX) and read_manifest(configured)):
        return str(configured)
    return model_source(cfg)


def _local_dir(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        return path
    # a hub id: resolve to the cached snapshot so the vocabulary library reads plain files
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=["tokenizer*", "special_tokens_map.json", "*.jinja"]))
    except Exception as err:  # hub errors have many types
        raise LEPError(f"cannot get the tokenizer of {source!r}: {err}") from err


def cache_root(cfg: dict[str, Any], section: VocabSection) -> Path:
    """Beside Axolotl's prepared datasets (they are derived from the same tokenizer)."""
    if section.cache_dir:
        return Path(section.cache_dir)
    return Path(cfg.get("dataset_prepared_path") or "last_run_prepared")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def check_special_tokens(new_tok, old_tok, where: str) -> None:
    """A ready tokenizer must keep the base model's special and added tokens (bos/eos/unk, chat markers)."""
    for name in ("bos_token", "eos_token", "unk_token"):
        old_value, new_value = getattr(old_tok, name, None), getattr(new_tok, name, None)
        if old_value is not None and old_value != new_value:
            raise LEPError(
                f"lep.vocab.tokenizer {where}: {name} is {new_value!r} but the base model's is {old_value!r} "
                "(a new vocabulary must keep the base model's special tokens)"
            )
    new_added = {t.content for t in new_tok.added_tokens_decoder.values()}
    missing = [t.content for t in old_tok.added_tokens_decoder.values() if t.special and t.content not in new_added]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise LEPError(f"lep.vocab.tokenizer {where} lacks {len(missing)} special token(s) of the base model: {shown}")


@dataclass(frozen=True)
class VocabTarget:
    """Where the new vocabulary of a YAML lives, found without building it (``lep check`` stops here)."""

    old_dir: Path  # local dir of the base model's tokenizer
    target: Path  # the content-addressed vocabulary dir (may not exist yet)
    build: Callable[[Path], None] | None  # writes ``target``; None when the base model already carries it
    describe: str  # what the vocabulary is, for messages


def locate_vocabulary(cfg: dict[str, Any], section: VocabSection, memo: bool = False) -> VocabTarget:
    """The old tokenizer, the new vocabulary's cache dir and how to build it. Reads but writes nothing,
    except – with ``memo`` – the corpus fingerprint's memo file in the cache dir (see ``corpus_fingerprint``)."""
    old_source = old_tokenizer_source(cfg)
    old_dir = _local_dir(old_source)
    if read_manifest(model_source(cfg)) is not None:
        # The base model is already an LEP output: training again, `axolotl inference` or `merge-lora` on
        # it must neither build a vocabulary on top of the new one nor convert its embeddings twice.
        return VocabTarget(old_dir, old_dir, None, "the base model's own LEP vocabulary")
    old_tok = load_tokenizer(old_dir)
    old_fp = fingerprint_tokenizer(old_tok)
    root = cache_root(cfg, section)
    if section.tokenizer is not None:
        return _ready_vocabulary(Path(section.tokenizer), old_source, old_tok, old_fp, root, old_dir)
    options = section.build_options()
    corpus = checked_corpus(
        section.corpus or [], options.text_field, options.max_chars, memo_dir=root if memo else None
    )
    key = _digest("build", old_fp, corpus.fingerprint, options.model_dump_json())

    def build(output: Path) -> None:
        build_vocabulary(old_dir, corpus, options, output)

    described = (
        f"{options.method} vocabulary (vocab_size {options.vocab_size:,}) from {len(corpus.files)} corpus file(s)"
    )
    return VocabTarget(old_dir, root / f"{CACHE_PREFIX}{key}", build, described)


def _ready_vocabulary(ready: Path, old_source: str, old_tok, old_fp: str, root: Path, old_dir: Path) -> VocabTarget:
    new_tok = load_tokenizer(ready)
    check_special_tokens(new_tok, old_tok, f"{ready}")
    # Copied into the content-addressed cache so that Axolotl's dataset cache (keyed on the tokenizer
    # path, not its contents) never reuses data tokenized with an edited ready dir.
    manifest = read_manifest(ready) or {
        "method": "ready",
        "source": str(ready.resolve()),
        "old_tokenizer": old_source,
        "old_tokenizer_fingerprint": old_fp,
        "old_vocab_size": len(old_tok),
        "new_vocab_size": len(new_tok),
    }

    def build(output: Path) -> None:
        with atomic_output_dir(output) as tmp:
            shutil.copytree(ready, tmp, dirs_exist_ok=True)
            write_json(tmp / MANIFEST, manifest)

    target = root / f"{CACHE_PREFIX}{_digest('ready', old_fp, fingerprint_tokenizer(new_tok))}"
    return VocabTarget(old_dir, target, build, f"the ready tokenizer {ready} ({len(new_tok):,} tokens)")


def _rank() -> int:
    # lazy: the process-group helpers load torch; `lep check` locates a vocabulary without them
    from lep_plugin.common.distributed import rank

    return rank()


def plan_vocabulary(cfg: dict[str, Any], section: VocabSection) -> VocabPlan:
    """Decide (and if needed build) the new tokenizer dir. Exactly one process builds it."""
    located = locate_vocabulary(cfg, section, memo=True)
    if located.build is None:
        LOG.info("LEP rank %d: %s already carries an LEP vocabulary; nothing to build", _rank(), located.old_dir)
        tok = load_tokenizer(located.old_dir)
        return VocabPlan(
            located.old_dir, located.old_dir, fingerprint_tokenizer(tok), built=False, already_converted=True
        )
    located.target.parent.mkdir(parents=True, exist_ok=True)
    built = _build_once(located.target, located.build)
    new_tok = load_tokenizer(located.target)
    return VocabPlan(
        located.old_dir, located.target, fingerprint_tokenizer(new_tok), built=built, already_converted=False
    )


def _build_once(target: Path, build) -> bool:
    """Build ``target`` unless it exists; the lock makes concurrent processes wait for the first builder."""
    with FileLock(str(target) + ".lock"):
        if (target / MANIFEST).is_file():
            LOG.info("LEP rank %d: reusing vocabulary %s", _rank(), target)
            return False
        LOG.info("LEP rank %d: building vocabulary %s", _rank(), target)
        build(target)
        LOG.info("LEP rank %d: built vocabulary %s", _rank(), target)
        return True
