"""The ``tokenizer.model`` that llama.cpp's converter needs from a SentencePiece-style model.

llama.cpp runs a SentencePiece-style vocabulary (▁ for spaces, ``<0xNN>`` byte fallback: Mistral v1,
Llama-2, Phi-3, Gemma) with its own SentencePiece algorithm: it merges the adjacent pair whose
concatenation is the highest-scoring piece. Its converter reads the pieces, scores and types from a
SentencePiece ``tokenizer.model``; without one it falls back to ``tokenizer.json`` with every score equal,
and llama.cpp then merges left to right instead of in the vocabulary's merge order. An HF model dir saved by
a fast tokenizer (every LEP output) has no ``tokenizer.model``, so one is written from ``tokenizer.json``
with the ``sentencepiece`` package's own model format: a BPE piece scores minus the rank of the first merge
that makes it, so llama.cpp merges in the order the HF tokenizer does.
"""

from __future__ import annotations

from typing import Any

from sentencepiece import sentencepiece_model_pb2 as sp

from lep_plugin.common.tokenizers import is_byte_piece
from lep_plugin.errors import LEPError


def _adds_dummy_prefix(spec: dict[str, Any]) -> bool:
    """Whether the HF pipeline puts ▁ before the text (Metaspace prepend, or a Prepend normalizer)."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in steps:
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never") != "never"
    norm = spec.get("normalizer") or {}
    steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    return any(step.get("type") == "Prepend" and step.get("prepend") == "▁" for step in steps)


def _first_merge_rank(merges: list) -> dict[str, int]:
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        ranks.setdefault(a + b, rank)
    return ranks


def _checked_bpe(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` part of ``spec``; only a BPE segments in llama.cpp as in the HF tokenizer."""
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise LEPError(
            f"a SentencePiece-style {model.get('type')} vocabulary cannot run in llama.cpp as this architecture: "
            "its converter writes a SentencePiece-BPE ('llama') tokenizer, which would segment differently; "
            "use a bpe, extend or optimize vocabulary"
        )
    return model


def _pieces(spec: dict[str, Any], model: dict[str, Any]) -> tuple[dict[int, str], dict[int, dict], str]:
    """id -> piece (vocabulary and added tokens), the added tokens by id, and the unknown piece."""
    pieces: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    for i, token in added.items():
        pieces[i] = token["content"]
    unk = model.get("unk_token") or next((t["content"] for t in added.values() if t["content"] == "<unk>"), None)
    if unk is None or unk not in set(pieces.values()):
        raise LEPError("the tokenizer has no unknown token (<unk>), which a SentencePiece model requires")
    return pieces, added, unk


def _add_pieces(proto, pieces: dict[int, str], added: dict[int, dict], unk: str, model: dict[str, Any]) -> None:
    """Every id in order, typed and scored (a BPE piece: minus the rank of the first merge that makes it)."""
    byte_fallback = bool(model.get("byte_fallback"))
    ranks = _first_merge_rank(model.get("merges", []))
    unmerged = -float(len(ranks) + 1)
    Type = sp.ModelProto.SentencePiece.Type
    for i in range(max(pieces) + 1):
        piece = proto.pieces.add()
        text = pieces.get(i)
        if text is None:  # a hole in the ids: never produced
            piece.piece, piece.type, piece.score = f"[PAD{i}]", Type.UNUSED, unmerged
            continue
        piece.piece = text
        if text == unk:
            piece.type, piece.score = Type.UNKNOWN, 0.0
        elif i in added:
            piece.type, piece.score = (Type.CONTROL if added[i].get("special") else Type.USER_DEFINED), 0.0
        elif byte_fallback and is_byte_piece(text):
            piece.type, piece.score = Type.BYTE, 0.0
        else:
            piece.type, piece.score = Type.NORMAL, -float(ranks[text]) if text in ranks else unmerged


def _set_trainer(proto, unk: str, byte_fallback: bool, bos: str | None, eos: str | None) -> None:
    size = len(proto.pieces)
    trainer = proto.trainer_spec
    trainer.model_type = sp.TrainerSpec.ModelType.BPE
    trainer.vocab_size = size
    trainer.byte_fallback = byte_fallback
    trainer.unk_piece = unk
    trainer.unk_id = next(i for i in range(size) if proto.pieces[i].piece == unk)
    present = {p.piece: i for i, p in enumerate(proto.pieces)}
    trainer.bos_id = present.get(bos, -1) if bos else -1
    trainer.eos_id = present.get(eos, -1) if eos else -1
    trainer.pad_id = -1
    if bos in present:
        trainer.bos_piece = bos
    if eos in present:
        trainer.eos_piece = eos


def sentencepiece_model(spec: dict[str, Any], bos: str | None = None, eos: str | None = None) -> bytes:
    """A serialized SentencePiece BPE ``ModelProto`` with the pieces of ``spec`` (a ``tokenizer.json``
    dict of a SentencePiece-style BPE) in id order."""
    model = _checked_bpe(spec)
    pieces, added, unk = _pieces(spec, model)
    proto = sp.ModelProto()
    _add_pieces(proto, pieces, added, unk, model)
    _set_trainer(proto, unk, bool(model.get("byte_fallback")), bos, eos)
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = _adds_dummy_prefix(spec)
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return proto.SerializeToString()
