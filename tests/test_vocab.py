"""Vocabulary building (LEP step 1) on real tokenizers and the shared corpora."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures import EN_HELDOUT, RU_HELDOUT, read_texts

from lep_plugin.common.tokenizers import load_tokenizer, read_manifest, tokenizer_json
from lep_plugin.math.operator import apply_operator
from lep_plugin.vocab.build import build_vocabulary
from lep_plugin.vocab.operator import token_pieces, vocabulary_operator
from lep_plugin.vocab.options import VocabOptions

METHODS = {
    "bpe": VocabOptions(method="bpe", vocab_size=6000),
    "unigram": VocabOptions(method="unigram", vocab_size=6000, max_chars=250_000),
    "extend": VocabOptions(method="extend", vocab_size=6000),
    "optimize": VocabOptions(method="optimize", vocab_size=6000, keep=12000),
}
STYLES = ["mistral", "tekken"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, request, ru_corpus_small, mistral_tokenizer, tekken_tokenizer):
    """All methods × both tokenizer styles, built once for the module."""
    root = tmp_path_factory.mktemp("vocab")
    olds = {"mistral": mistral_tokenizer, "tekken": tekken_tokenizer}
    out = {}
    for style in STYLES:
        for method, options in METHODS.items():
            out[style, method] = build_vocabulary(olds[style], [ru_corpus_small], options, root / f"{style}-{method}")
    return olds, out


@pytest.fixture(scope="module")
def heldout_texts():
    return read_texts(RU_HELDOUT) + read_texts(EN_HELDOUT)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("method", list(METHODS))
def test_lossless_on_every_heldout_document(built, heldout_texts, style, method):
    _, out = built
    tok = load_tokenizer(out[style, method])
    backend = tok.backend_tokenizer
    encodings = backend.encode_batch(heldout_texts, add_special_tokens=False)
    decoded = backend.decode_batch([e.ids for e in encodings], skip_special_tokens=False)
    broken = [i for i, (a, b) in enumerate(zip(heldout_texts, decoded)) if a != b]
    assert not broken, f"{len(broken)} documents do not round-trip, first: {heldout_texts[broken[0]][:80]!r}"


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("method", list(METHODS))
def test_old_pipeline_and_special_tokens_survive(built, style, method):
    olds, out = built
    old, new = load_tokenizer(olds[style]), load_tokenizer(out[style, method])
    old_spec, new_spec = tokenizer_json(old), tokenizer_json(new)
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        assert new_spec[part] == old_spec[part]
    assert [t["content"] for t in new_spec["added_tokens"]] == [t["content"] for t in old_spec["added_tokens"]]
    assert (new.bos_token, new.eos_token, new.unk_token, new.pad_token) == (old.bos_token, old.eos_token, old.unk_token, old.pad_token)
    assert new.chat_template == old.chat_template and new.model_max_length == old.model_max_length
    # BOS insertion by the post-processor, with the new id of BOS
    assert new("привет")["input_ids"][0] == new.bos_token_id == new.convert_tokens_to_ids(old.bos_token)
    chat = [{"role": "user", "content": "Привет"}, {"role": "assistant", "content": "Здравствуйте"}]
    assert new.apply_chat_template(chat, tokenize=False) == old.apply_chat_template(chat, tokenize=False)
    manifest = read_manifest(out[style, method])
    assert manifest["method"] == method and manifest["new_vocab_size"] == len(new)
    assert len(manifest["corpus_fingerprint"]) == 16 and len(manifest["old_tokenizer_fingerprint"]) == 16


@pytest.mark.parametrize("style", STYLES)
def test_extend_keeps_every_old_id(built, style):
    olds, out = built
    old, new = load_tokenizer(olds[style]), load_tokenizer(out[style, "extend"])
    old_vocab, new_vocab = old.get_vocab(), new.get_vocab()
    assert all(new_vocab[t] == i for t, i in old_vocab.items())
    assert len(new) > len(old) + 1000
    assert read_manifest(out[style, "extend"])["new_tokens"] == len(new) - len(old)


@pytest.mark.parametrize("style", STYLES)
def test_optimize_keeps_frequent_tokens_and_bytes(built, style):
    olds, out = built
    old, new = load_tokenizer(olds[style]), load_tokenizer(out[style, "optimize"])
    manifest = read_manifest(out[style, "optimize"])
    assert manifest["kept_old_tokens"] <= 12000
    new_vocab = new.get_vocab()
    # the most frequent old Russian pieces survive; rare old (e.g. CJK) pieces are dropped
    ru = " ".join(read_texts(RU_HELDOUT, 20))
    ids = old(ru, add_special_tokens=False)["input_ids"]
    top = torch.bincount(torch.tensor(ids)).topk(50).indices.tolist()
    assert all(old.convert_ids_to_tokens(i) in new_vocab for i in top)
    assert len(new) < len(old)
    assert all(t["content"] in new_vocab for t in tokenizer_json(old)["added_tokens"])
    # every byte stays encodable: the byte-fallback tokens (SentencePiece) or the byte-level alphabet
    from tokenizers import pre_tokenizers

    bytes_ = [f"<0x{i:02X}>" for i in range(256)] if style == "mistral" else pre_tokenizers.ByteLevel.alphabet()
    assert len(bytes_) == 256 and all(b in new_vocab for b in bytes_)
    rare = "\u2603\U0001F600 ⅏ 𝔘"  # snowman, emoji, rare symbols: only bytes can spell them
    assert new.decode(new(rare, add_special_tokens=False)["input_ids"]) == rare


@pytest.mark.parametrize("style", STYLES)
def test_pieces_spell_each_new_token(built, style):
    """T's decomposition is exact: the old pieces of every new token decode to that token's text."""
    olds, out = built
    old, new = load_tokenizer(olds[style]), load_tokenizer(out[style, "bpe"])
    pieces = token_pieces(new, old)
    for new_id in range(len(new)):
        token = new.convert_ids_to_tokens(new_id)
        assert old.convert_tokens_to_string(old.convert_ids_to_tokens(pieces[new_id])) == new.convert_tokens_to_string([token])


def test_operator_equals_per_token_loop(built):
    """Vectorised T·old against a direct per-token average, including untrained old rows."""
    olds, out = built
    old, new = load_tokenizer(olds["mistral"]), load_tokenizer(out["mistral", "extend"])
    torch.manual_seed(0)
    old_rows = torch.randn(len(old), 16)
    old_rows[5:40] = 0.0  # never-trained rows: left out of the averages
    operator = vocabulary_operator(new, old, num_rows=len(new) + 7)
    fast = apply_operator(operator, old_rows)
    trained = old_rows.norm(dim=1) > 0
    fallback = old_rows[trained].mean(0)
    model = old.backend_tokenizer.model
    vocab = old.get_vocab()
    for new_id in list(range(0, len(new), 37)) + list(range(len(new), len(new) + 7)):
        token = new.convert_ids_to_tokens(new_id) if new_id < len(new) else None
        ids = [] if token is None else ([vocab[token]] if token in vocab else [t.id for t in model.tokenize(token)])
        ids = [i for i in ids if trained[i]]
        expected = old_rows[ids].mean(0) if ids else fallback
        torch.testing.assert_close(fast[new_id], expected, rtol=1e-5, atol=1e-6)


def test_position_weighting_favours_later_pieces(built):
    olds, out = built
    old, new = load_tokenizer(olds["mistral"]), load_tokenizer(out["mistral", "bpe"])
    mean = vocabulary_operator(new, old).to_dense()
    position = vocabulary_operator(new, old, weighting="position").to_dense()
    pieces = token_pieces(new, old)
    multi = next(i for i, p in enumerate(pieces) if len(set(p)) == len(p) == 3)
    p = pieces[multi]
    assert mean[multi, p].tolist() == pytest.approx([1 / 3] * 3)
    assert position[multi, p].tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert torch.allclose(position.sum(1), torch.ones(len(new), dtype=position.dtype))


def test_convert_checkpoint_streams_and_initialises(built, tiny_mistral, tmp_path):
    """`lep vocab convert`: loads with AutoModelForCausalLM, embeddings equal T·old, other tensors and
    shards untouched."""
    import hashlib

    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lep_plugin.cli.lep import main

    _, out = built
    new_dir = out["mistral", "extend"]
    target = tmp_path / "converted"
    main(["vocab", "convert", "--model", str(tiny_mistral), "--tokenizer", str(new_dir), "--output", str(target), "--pad-to-multiple-of", "64"])
    old_model = AutoModelForCausalLM.from_pretrained(tiny_mistral)
    model = AutoModelForCausalLM.from_pretrained(target)
    tok = AutoTokenizer.from_pretrained(target)
    old_tok, new_tok = load_tokenizer(tiny_mistral), load_tokenizer(new_dir)
    rows = -(-len(new_tok) // 64) * 64
    assert model.config.vocab_size == rows == model.get_input_embeddings().weight.shape[0]
    assert len(tok) == len(new_tok) and tok.chat_template == old_tok.chat_template
    operator = vocabulary_operator(new_tok, old_tok, num_rows=rows)
    torch.testing.assert_close(model.get_input_embeddings().weight, apply_operator(operator, old_model.get_input_embeddings().weight.detach()))
    torch.testing.assert_close(model.get_output_embeddings().weight, apply_operator(operator, old_model.get_output_embeddings().weight.detach()))
    old_state, new_state = old_model.state_dict(), model.state_dict()
    for name, tensor in old_state.items():
        if "embed_tokens" not in name and "lm_head" not in name:
            assert torch.equal(tensor, new_state[name]), name
    # shards without an embedding are byte-identical copies
    index = json.loads((tiny_mistral / "model.safetensors.index.json").read_text())["weight_map"]
    untouched = set(index.values()) - {index["model.embed_tokens.weight"], index["lm_head.weight"]}
    assert untouched
    for shard in untouched:
        digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
        assert digest(tiny_mistral / shard) == digest(target / shard)
    assert read_manifest(target)["method"] == "extend"
    ids = tok("Привет, мир", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
