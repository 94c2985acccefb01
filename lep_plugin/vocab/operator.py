"""The vocabulary operator T between two tokenizers (LEP step 2; arXiv:2412.21140, §3.2).

T is built from the tokenizers alone (``lep_plugin.math.operator`` does the tensor work): each new token
is split into old tokens by running the *old model* (BPE/Unigram) on the new token's raw piece string.
Both vocabularies of one style share the piece alphabet (``▁`` + byte fallback, or the byte-level
alphabet), so this is exact and needs none of the decode/re-encode tricks around SentencePiece's dummy
leading space. Tokenizers of different styles fall back to decode → re-encode.
"""

from __future__ import annotations

import torch

from lep_plugin.common.tokenizers import tokenizer_json, tokenizer_style
from lep_plugin.errors import LEPError
from lep_plugin.math.operator import (
    Weighting,
    apply_operator,
    build_operator,
    trained_rows,
)


def token_pieces(new_tok, old_tok) -> list[list[int]]:
    """For every new id, the old ids it is averaged from (empty list for id holes)."""
    old_vocab = old_tok.get_vocab()
    new_vocab = new_tok.get_vocab()
    same_style = tokenizer_style(tokenizer_json(new_tok)) == tokenizer_style(tokenizer_json(old_tok))
    old_model = old_tok.backend_tokenizer.model
    pieces: list[list[int]] = [[] for _ in range(max(new_vocab.values()) + 1)]
    for token, new_id in new_vocab.items():
        if token in old_vocab:
            pieces[new_id] = [old_vocab[token]]
        elif same_style:
            pieces[new_id] = [t.id for t in old_model.tokenize(token)]
        else:
            text = new_tok.convert_tokens_to_string([token])
            pieces[new_id] = old_tok(text, add_special_tokens=False)["input_ids"]
    return pieces


def vocabulary_operator(
    new_tok, old_tok, weighting: Weighting = "mean", num_rows: int | None = None, num_old_rows: int | None = None
) -> torch.Tensor:
    """Sparse CSR T of shape (num_rows, num_old_rows): new-vocabulary rows from old-vocabulary rows.

    ``num_rows`` ≥ the new tokenizer's ids adds padding rows (empty, so they get the mean of trained
    rows); ``num_old_rows`` ≥ the old tokenizer's ids matches a padded old embedding matrix.
    """
    pieces = token_pieces(new_tok, old_tok)
    old_ids = max(old_tok.get_vocab().values()) + 1
    num_old_rows = num_old_rows or old_ids
    if num_old_rows < old_ids:
        raise LEPError(f"the model has {num_old_rows} embedding rows but its tokenizer uses ids up to {old_ids - 1}")
    num_rows = num_rows or len(pieces)
    if num_rows < len(pieces):
        raise LEPError(f"{num_rows} rows cannot hold the new tokenizer's {len(pieces)} ids")
    pieces += [[] for _ in range(num_rows - len(pieces))]
    return build_operator(pieces, num_old_rows, weighting)


def initial_rows(operator: torch.Tensor, old: torch.Tensor, old_ids: int) -> torch.Tensor:
    """``T · old`` (LEP step 2) with only the first ``old_ids`` rows – the old tokenizer's – ever averaged.

    Rows past the tokenizer are padding (Qwen2.5 pads 151,665 ids to 151,936 rows, Phi-3 32,011 to
    32,064): no token, never trained as one, yet of ordinary norm. T never names them as a token's piece,
    and they are also kept out of the fallback (the mean of trained rows) that a row with nothing to
    average gets.
    """
    trained = None
    if not old.is_meta:  # a meta matrix has no norms: apply_operator gives its shape only
        trained = trained_rows(old)
        trained[old_ids:] = False
    return apply_operator(operator, old, trained)


def padded_size(size: int, multiple: int | None) -> int:
    return size if not multiple else -(-size // multiple) * multiple
