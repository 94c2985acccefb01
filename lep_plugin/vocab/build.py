"""Building a new vocabulary in the style of an old tokenizer (LEP step 1; arXiv:2412.21140, §3.1).

The methods are the entries of :data:`VOCAB_METHODS`, each with its one-line summary and builder; the
options' choices, the CLI help, the settings reference and the model card read them from there.

Special and added tokens sit either inside the BPE vocabulary (Mistral, Tekken, Gemma) or are appended
after it as added tokens only (Llama-3's 256 specials, Qwen's ``<|endoftext|>`` ..., Phi-3's chat
markers). Every method keeps them all: ``extend`` at their old ids, ``optimize`` in their old order among
the kept tokens, ``bpe``/``unigram`` in front of (inside) or after (appended) the new model's ids.

The new model is trained with the ``tokenizers`` library and dropped into the old ``tokenizer.json``
pipeline (normalizer, pre-tokenizer, decoder, post-processor, added tokens), so the old behaviour around
the vocabulary – BOS insertion, chat markers, byte fallback or byte-level alphabet – survives.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lep_plugin.common.corpus import CheckedCorpus, checked_corpus, expand_corpus, iter_texts
from lep_plugin.common.fs import atomic_output_dir, check_no_overlap, check_output_dir
from lep_plugin.common.tokenizers import (
    MANIFEST,
    Style,
    fingerprint_tokenizer,
    load_tokenizer,
    save_tokenizer_dir,
    tokenizer_json,
    tokenizer_style,
)
from lep_plugin.errors import LEPError
from lep_plugin.vocab.continued import MAX_TOKEN_LENGTH, continue_bpe
from lep_plugin.vocab.merges import completed_merges
from lep_plugin.vocab.report import unreachable_in_spec

if TYPE_CHECKING:  # vocab.options derives its method choices from VOCAB_METHODS below
    from lep_plugin.vocab.options import VocabOptions

Texts = Callable[[], Iterator[str]]  # the corpus, re-iterable
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
# Characters a SentencePiece-style vocabulary gets as tokens of their own; rarer ones use byte fallback
# (the analogue of SentencePiece's character_coverage).
SP_ALPHABET_LIMIT = 400


def build_vocabulary(
    old_tokenizer: str | os.PathLike,
    corpus: Iterable[str | os.PathLike] | CheckedCorpus,
    options: VocabOptions,
    output: str | os.PathLike,
    force: bool = False,
) -> Path:
    """Build the new tokenizer dir ``output`` (HF files + ``lep_vocab.json`` manifest), atomically.

    ``corpus``: files or globs, or a :class:`CheckedCorpus` when the caller has expanded, checked and
    fingerprinted it already (the plugin keyed its cache on it), so a large corpus is read once."""
    output = Path(output)
    check_output_dir(output, force)
    files = list(corpus.files) if isinstance(corpus, CheckedCorpus) else expand_corpus(corpus)
    check_no_overlap(output, [("old tokenizer", old_tokenizer)] + [("corpus", f) for f in files])
    old = load_tokenizer(old_tokenizer)  # the cheap checks first: hashing a large corpus takes a while
    if not isinstance(corpus, CheckedCorpus):
        corpus = checked_corpus(files, options.text_field, options.max_chars)
    spec = tokenizer_json(old)
    style = tokenizer_style(spec)

    def texts() -> Iterator[str]:
        return iter_texts(files, options.text_field, options.max_chars)

    new_spec, stats = VOCAB_METHODS[options.method].build(BuildSource(old, spec, style, texts), options)
    if style == "sentencepiece" and new_spec["model"]["type"] == "BPE":
        # tokenize as SentencePiece and llama.cpp do (see lep_plugin.vocab.merges)
        model = new_spec["model"]
        model["merges"] = [list(pair) for pair in completed_merges(model["vocab"], _merge_pairs(model["merges"]))]
    old_tokens = set(old.get_vocab())
    new_ids = [i for t, i in _vocab_ids(new_spec["model"]).items() if t not in old_tokens]
    stats["unreachable_new_tokens"] = len(unreachable_in_spec(new_spec, new_ids))
    manifest = {
        "lep_plugin_version": version("lep-plugin"),
        "method": options.method,
        "style": style,
        "options": options.model_dump(),
        "old_vocab_size": len(old),
        "new_vocab_size": _vocab_len(new_spec),
        "corpus": [str(f) for f in files],
        "corpus_fingerprint": corpus.fingerprint,
        "old_tokenizer": str(old_tokenizer),
        "old_tokenizer_fingerprint": fingerprint_tokenizer(old),
        **stats,
    }
    with atomic_output_dir(output, force) as tmp:
        save_tokenizer_dir(new_spec, old, tmp, extra_files={MANIFEST: manifest})
    return output


@dataclass(frozen=True)
class BuildSource:
    """What a builder reads: the old tokenizer, its ``tokenizer.json`` and style, and the corpus."""

    old: Any  # the old HF tokenizer
    spec: dict[str, Any]
    style: Style
    texts: Texts


# ----------------------------------------------------------------------------------------------- training


def _trainer_pipeline(spec: dict[str, Any], style: Style) -> dict[str, Any]:
    """The old pipeline for training: no added tokens, and words split at spaces (SentencePiece-style
    tokenizers run the whole text as one 'word' at inference, which a trainer cannot count)."""
    train = {k: copy.deepcopy(v) for k, v in spec.items() if k not in ("model", "added_tokens", "post_processor")}
    train["added_tokens"] = []
    train["post_processor"] = None
    if style == "sentencepiece":
        old_pre = spec.get("pre_tokenizer") or {}
        prepend = old_pre.get("prepend_scheme", "never") if old_pre.get("type") == "Metaspace" else "never"
        train["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": prepend, "split": True}
    return train


def _bpe_model(vocab: dict[str, int], merges: list, byte_fallback: bool) -> dict[str, Any]:
    """A ``tokenizers`` BPE model JSON with the library's defaults (for a trainer, or a new vocabulary)."""
    return {
        "type": "BPE",
        "vocab": vocab,
        "merges": merges,
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": byte_fallback,
        "ignore_merges": False,
    }


def _train(
    spec: dict[str, Any], style: Style, texts: Texts, kind: str, size: int, options: VocabOptions
) -> dict[str, Any]:
    """Train a ``kind`` ("bpe"/"unigram") model of ``size`` tokens in the old style; its model JSON."""
    from tokenizers import Tokenizer, pre_tokenizers, trainers

    pipeline = _trainer_pipeline(spec, style)
    pipeline["model"] = (
        _bpe_model({}, [], byte_fallback=False)
        if kind == "bpe"
        else {"type": "Unigram", "unk_id": None, "vocab": [], "byte_fallback": False}
    )
    tokenizer = Tokenizer.from_str(json.dumps(pipeline, ensure_ascii=False))
    alphabet = pre_tokenizers.ByteLevel.alphabet() if style == "byte_level" else []
    if kind == "bpe":
        limit = {} if style == "byte_level" else {"limit_alphabet": SP_ALPHABET_LIMIT}
        trainer = trainers.BpeTrainer(
            vocab_size=size,
            min_frequency=options.min_frequency,
            show_progress=False,
            initial_alphabet=alphabet,
            max_token_length=MAX_TOKEN_LENGTH,
            **limit,
        )
    else:
        trainer = trainers.UnigramTrainer(
            vocab_size=size,
            show_progress=False,
            initial_alphabet=alphabet,
            max_piece_length=16,
            shrinking_factor=0.75,
        )
    tokenizer.train_from_iterator(texts(), trainer=trainer)
    return json.loads(tokenizer.to_str())["model"]


# ------------------------------------------------------------------------------------------- assembling


def _added_in_model(spec: dict[str, Any]) -> list[str]:
    """Added tokens that also live in the old model's vocabulary (Mistral's <unk>/<s>/</s>, Tekken's
    1000 control tokens, Gemma's <bos> ... <end_of_turn>), in old id order: they keep their places at the
    front of a whole new vocabulary."""
    vocab = _vocab_ids(spec["model"])
    return [t["content"] for t in sorted(spec.get("added_tokens", []), key=lambda t: t["id"]) if t["content"] in vocab]


def _added_outside(spec: dict[str, Any]) -> dict[str, int]:
    """Added tokens *appended* after the old model's vocabulary (Llama-3's 256 specials, Qwen's
    <|endoftext|> ..., Phi-3's chat markers), with their old ids."""
    vocab = _vocab_ids(spec["model"])
    return {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t["content"] not in vocab}


def _vocab_ids(model: dict[str, Any]) -> dict[str, int]:
    if model["type"] == "BPE":
        return model["vocab"]
    return {piece: i for i, (piece, _score) in enumerate(model["vocab"])}


def _vocab_len(spec: dict[str, Any]) -> int:
    ids = list(_vocab_ids(spec["model"]).values()) + [t["id"] for t in spec.get("added_tokens", [])]
    return max(ids) + 1


def _merge_pairs(merges: list) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]


def _reserved(spec: dict[str, Any], style: Style) -> list[str]:
    """Old tokens every new vocabulary starts with: in-model special tokens, then byte tokens."""
    reserved = _added_in_model(spec)
    if style == "sentencepiece" and spec["model"].get("byte_fallback"):
        reserved += [b for b in BYTE_TOKENS if b not in reserved]
    return reserved


def _finish(spec: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """Put ``model`` into the old pipeline; number the added tokens and the post-processor's special ids.

    An added token inside ``model``'s vocabulary takes its id there; one outside it goes after the model's
    ids, in old order. That is the only place the ``tokenizers`` library allows: it numbers an added token
    the model lacks from the model's vocabulary size on, whatever id ``tokenizer.json`` gives it.
    """
    new = copy.deepcopy(spec)
    new["model"] = model
    vocab = _vocab_ids(model)
    next_id = max(vocab.values()) + 1
    new["added_tokens"] = sorted(new.get("added_tokens", []), key=lambda t: t["id"])
    for token in new["added_tokens"]:
        if token["content"] in vocab:
            token["id"] = vocab[token["content"]]
        else:
            token["id"] = next_id
            next_id += 1
    ids = {t["content"]: t["id"] for t in new["added_tokens"]} | vocab
    _remap_post_processor(new.get("post_processor"), ids)
    return new


def _remap_post_processor(node: Any, ids: dict[str, int]) -> None:
    if isinstance(node, dict):
        for entry in (node.get("special_tokens") or {}).values():
            entry["ids"] = [ids[t] for t in entry["tokens"]]
        for value in node.values():
            _remap_post_processor(value, ids)
    elif isinstance(node, list):
        for value in node:
            _remap_post_processor(value, ids)


def _whole_new(source: BuildSource, options: VocabOptions):
    """``bpe`` / ``unigram``: a whole new vocabulary of ``vocab_size`` tokens, old special/byte tokens first."""
    spec, style = source.spec, source.style
    reserved = _reserved(spec, style)
    outside = _added_outside(spec)
    train_size = options.vocab_size - len(reserved) - len(outside)
    alphabet_floor = 256 if style == "byte_level" else 0
    if train_size <= alphabet_floor:
        raise LEPError(
            f"vocab_size {options.vocab_size} is too small: {len(reserved) + len(outside)} old special, added "
            f"and byte tokens are always kept{' and the byte-level alphabet needs 256' if alphabet_floor else ''}"
        )
    trained = _train(spec, style, source.texts, options.method, train_size, options)
    if options.method == "bpe":
        vocab = {t: i for i, t in enumerate(reserved)}
        for token in sorted(trained["vocab"], key=trained["vocab"].get):
            if token not in outside:  # an appended added token stays one (it goes after the model's ids)
                vocab.setdefault(token, len(vocab))
        model = (
            {**spec["model"], "vocab": vocab, "merges": trained["merges"]}
            if spec["model"]["type"] == "BPE"
            else _bpe_model(vocab, trained["merges"], byte_fallback=style == "sentencepiece")
        )
    else:
        pieces = [(p, s) for p, s in trained["vocab"] if p not in set(reserved) and p not in outside]
        floor = min((s for _, s in pieces), default=0.0) - 20.0  # reserved pieces: never chosen by Viterbi
        model = {
            "type": "Unigram",
            "vocab": [[t, floor] for t in reserved] + [[p, s] for p, s in pieces],
            "unk_id": reserved.index(spec["model"].get("unk_token") or "<unk>") if "<unk>" in reserved else None,
            "byte_fallback": style == "sentencepiece",
        }
    return _finish(spec, model), {"trained_size": len(_vocab_ids(trained)), "reserved": len(reserved)}


def _extend(source: BuildSource, options: VocabOptions, keep_ids: set[int] | None):
    """The old vocabulary (all of it, or the model ids ``keep_ids`` and every added token) plus new
    target-language tokens after the last old id.

    Old ids – of the model's tokens and of the added tokens appended after them – are one id space:
    ``extend`` keeps it as it is, ``optimize`` keeps its order and closes it up. New tokens come after it,
    so appended tokens (Llama-3's 256 specials, Qwen's ``<|endoftext|>`` ...) are no longer at the end:
    they join the model's vocabulary at their ids, as Tekken's control tokens sit in its own (no merge makes
    them, and the added-token list still marks them special), and Llama-3's ``<|begin_of_text|>`` is
    128,000 before and after, the new tokens starting at 128,256.

    As many new tokens as a target-language BPE of ``vocab_size`` has beyond the kept ones: by default
    learned on top of the old merges (:mod:`lep_plugin.vocab.continued`), so old-language text keeps its
    tokenization; with ``keep_old_tokenization: false`` the BPE's own tokens, its merges ranked first.
    """
    spec, style = source.spec, source.style
    if spec["model"]["type"] != "BPE":
        raise LEPError(f"method {options.method!r} needs a BPE tokenizer, this one is {spec['model']['type']}")
    old_vocab: dict[str, int] = spec["model"]["vocab"]
    outside = _added_outside(spec)
    old_merges = _merge_pairs(spec["model"]["merges"])
    if keep_ids is None:
        kept = old_vocab | outside
        merges = old_merges
    else:
        order = sorted([(i, t) for t, i in old_vocab.items() if i in keep_ids] + [(i, t) for t, i in outside.items()])
        kept = {t: n for n, (_, t) in enumerate(order)}
        merges = [(a, b) for a, b in old_merges if a in kept and b in kept and a + b in kept]
    added = {t["content"] for t in spec.get("added_tokens", [])}
    trained = _train(spec, style, source.texts, "bpe", options.vocab_size, options)
    trained_new = [t for t in sorted(trained["vocab"], key=trained["vocab"].get) if t not in kept and t not in added]
    stats: dict[str, Any] = {"kept_old_tokens": len(kept), "trained_size": len(trained["vocab"])}
    if options.keep_old_tokenization:
        kept_model = {**spec["model"], "vocab": kept, "merges": [list(m) for m in merges]}
        pipeline = _trainer_pipeline(spec, style)
        grown = continue_bpe(pipeline, style == "byte_level", kept_model, source.texts, len(trained_new), options)
        new_tokens, new_merges = grown.tokens, grown.merges
        stats["new_token_scripts"] = list(grown.scripts)
    else:
        new_tokens, new_merges = trained_new, _merge_pairs(trained["merges"])
    vocab = dict(kept)
    next_id = max(kept.values()) + 1
    for token in new_tokens:
        if token not in vocab:
            vocab[token] = next_id
            next_id += 1
    ordered = merges + new_merges if options.keep_old_tokenization else new_merges + merges
    all_merges = [list(pair) for pair in dict.fromkeys(tuple(p) for p in ordered)]
    model = {**spec["model"], "vocab": vocab, "merges": all_merges}
    stats["new_tokens"] = len(vocab) - len(kept)
    return _finish(spec, model), stats


def _most_frequent(source: BuildSource, options: VocabOptions) -> set[int]:
    """Old model-vocabulary ids to keep: the most frequent on the corpus, closed under merges, always with
    special/added tokens and the byte alphabet; ``options.keep`` in all, counting the added tokens appended
    after the model's vocabulary (always kept, outside it)."""
    spec, style = source.spec, source.style
    vocab: dict[str, int] = spec["model"]["vocab"]
    appended = len(_added_outside(spec))
    if options.keep > len(vocab) + appended:
        raise LEPError(f"keep {options.keep} is larger than the old vocabulary ({len(vocab) + appended} tokens)")
    from tokenizers import pre_tokenizers

    forced_tokens = _reserved(spec, style)
    if style == "byte_level":
        forced_tokens += [c for c in pre_tokenizers.ByteLevel.alphabet() if c in vocab]
    forced = {vocab[t] for t in forced_tokens if t in vocab}
    budget = options.keep - appended  # for the model's own tokens
    if budget < len(forced):
        raise LEPError(
            f"keep {options.keep} is smaller than the {len(forced) + appended} special, "
            "added and byte tokens always kept"
        )

    counts = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
    backend = source.old.backend_tokenizer
    batch: list[str] = []
    for text in source.texts():
        batch.append(text)
        if len(batch) == 256:
            _count(backend, batch, counts)
            batch = []
    _count(backend, batch, counts)

    parent = {}
    for a, b in _merge_pairs(spec["model"]["merges"]):
        parent.setdefault(vocab.get(a + b, -1), (vocab[a], vocab[b]))
    kept = set(forced)

    def closure(token: int) -> set[int]:
        need, stack = set(), [token]
        while stack:
            t = stack.pop()
            if t in kept or t in need:
                continue
            need.add(t)
            stack.extend(parent.get(t, ()))
        return need

    in_vocab = np.zeros(counts.size, dtype=bool)
    in_vocab[list(vocab.values())] = True
    for token in np.lexsort((np.arange(counts.size), -counts)):  # most frequent first, ties by lowest id
        if len(kept) >= budget:
            break
        token = int(token)
        if token in kept or not in_vocab[token]:
            continue
        need = closure(token)
        if len(kept) + len(need) <= budget:
            kept |= need
    return kept


def _count(backend, batch: list[str], counts: np.ndarray) -> None:
    if not batch:
        return
    for encoding in backend.encode_batch(batch, add_special_tokens=False):
        ids = np.asarray(encoding.ids, dtype=np.int64)
        counts += np.bincount(ids[ids < counts.size], minlength=counts.size)


def _extend_all(source: BuildSource, options: VocabOptions):
    """``extend``: every old id keeps its meaning, new tokens go after the last old id."""
    return _extend(source, options, keep_ids=None)


def _optimize(source: BuildSource, options: VocabOptions):
    """``optimize``: the ``keep`` old tokens most used on the corpus, then extend."""
    return _extend(source, options, keep_ids=_most_frequent(source, options))


# ----------------------------------------------------------------------------------------------- registry

Builder = Callable[["BuildSource", "VocabOptions"], tuple[dict[str, Any], dict[str, Any]]]


@dataclass(frozen=True)
class VocabularyMethod:
    """One way to build the new vocabulary: the name users write, what it does, where it comes from."""

    name: str
    summary: str  # one line, shown in --help, the settings reference and the model card
    build: Builder
    reference: str = "arXiv:2412.21140, §3.1"


VOCAB_METHODS: dict[str, VocabularyMethod] = {
    m.name: m
    for m in (
        VocabularyMethod("bpe", "a whole new BPE vocabulary trained on the target corpus", _whole_new),
        VocabularyMethod("unigram", "a whole new Unigram vocabulary trained on the target corpus", _whole_new),
        VocabularyMethod(
            "extend",
            "the old vocabulary kept whole, plus target-language tokens learned on top of its merges "
            "(old-language text tokenized as before)",
            _extend_all,
        ),
        VocabularyMethod(
            "optimize",
            "the old tokens most used on the target corpus kept (`keep`), plus new tokens of a target-language BPE",
            _optimize,
        ),
    )
}
