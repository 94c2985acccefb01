"""The plugin's hooks called in-process on real tiny models, in Axolotl's order: conversion with T (no random
rows, tied models), freezing and the new-row gradient mask, idempotence of every hook."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _plugin_helpers import training_data
from transformers import AutoModelForCausalLM

from lep_plugin.common.tokenizers import load_tokenizer
from lep_plugin.math.operator import apply_operator
from lep_plugin.plugin.freezing import trainable_names
from lep_plugin.plugin.plugin import LEPPlugin
from lep_plugin.vocab.operator import vocabulary_operator


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    return training_data(tmp_path_factory.mktemp("hookdata"), docs=10, vocab_docs=200).parent / "vocab-corpus.jsonl"


def _registered(
    tmp_path: Path, model_dir: Path, corpus: Path, train: str = "embeddings", **extra
) -> tuple[LEPPlugin, dict]:
    vocab = {"method": "extend", "corpus": [str(corpus)], "vocab_size": 800, "cache_dir": str(corpus.parent / "cache")}
    cfg = {
        "base_model": str(model_dir),
        "dataset_prepared_path": str(tmp_path / "prepared"),
        "output_dir": str(tmp_path / "out"),
        "weight_decay": 0.0,
        "lep": {"vocab": vocab, "train": train},
        **extra,
    }
    plugin = LEPPlugin()
    plugin.register(cfg)
    return plugin, cfg


@pytest.mark.parametrize("fixture", ["tiny_mistral", "tiny_llama_tied"])
def test_conversion_is_T_times_old_rows_and_idempotent(request, tmp_path, corpus, fixture):
    model_dir = request.getfixturevalue(fixture)
    plugin, cfg = _registered(tmp_path, model_dir, corpus)
    assert cfg["tokenizer_config"] == str(plugin.plan.new_tokenizer)
    new_tok, old_tok = load_tokenizer(plugin.plan.new_tokenizer), load_tokenizer(model_dir)

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    tied = model.config.tie_word_embeddings
    plugin.post_model_build(cfg, model)

    T = vocabulary_operator(new_tok, old_tok, num_rows=len(new_tok), num_old_rows=old_in.shape[0])
    new_in = model.get_input_embeddings().weight.detach()
    new_out = model.get_output_embeddings().weight.detach()
    assert new_in.shape == (len(new_tok), old_in.shape[1]) and model.config.vocab_size == len(new_tok)
    torch.testing.assert_close(new_in, apply_operator(T, old_in), rtol=0, atol=0)
    if tied:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    else:
        # the output rows are averaged from the old *output* rows, separately
        torch.testing.assert_close(new_out, apply_operator(T, old_out), rtol=0, atol=0)
        assert not torch.equal(new_in, new_out)
    # extend keeps old ids: old rows are copied exactly
    assert torch.equal(new_in[: old_in.shape[0]], old_in)

    snapshot = new_in.clone()
    plugin.post_model_build(cfg, model)  # a second call (e.g. a second load in the same process) is a no-op
    assert torch.equal(model.get_input_embeddings().weight, snapshot)


def test_resize_to_32x_pads_with_mean_rows_not_random(tmp_path, tiny_mistral, corpus):
    plugin, cfg = _registered(tmp_path, tiny_mistral, corpus, resize_token_embeddings_to_32x=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_mistral)
    old_in = model.get_input_embeddings().weight.detach().clone()
    plugin.post_model_build(cfg, model)
    n = len(load_tokenizer(plugin.plan.new_tokenizer))
    weight = model.get_input_embeddings().weight.detach()
    assert weight.shape[0] % 32 == 0 and weight.shape[0] >= n
    for row in weight[n:]:
        torch.testing.assert_close(row, old_in.mean(0))


def test_embeddings_mode_freezes_everything_else(tmp_path, tiny_mistral, corpus):
    plugin, cfg = _registered(tmp_path, tiny_mistral, corpus)
    model = AutoModelForCausalLM.from_pretrained(tiny_mistral)
    plugin.post_model_build(cfg, model)
    plugin.post_model_load(cfg, model)
    plugin.post_model_load(cfg, model)
    assert trainable_names(model) == ["model.embed_tokens.weight", "lm_head.weight"]
    # something later re-enabling a layer is undone when the trainer is created
    model.model.layers[0].self_attn.q_proj.weight.requires_grad_(True)
    plugin.post_trainer_create(cfg, type("Trainer", (), {"model": model})())
    assert trainable_names(model) == ["model.embed_tokens.weight", "lm_head.weight"]


def test_new_rows_mode_masks_old_rows_of_the_gradient(tmp_path, tiny_llama_tied, corpus):
    plugin, cfg = _registered(tmp_path, tiny_llama_tied, corpus, train="new_rows")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_tied)
    old_rows = model.get_input_embeddings().weight.shape[0]
    plugin.post_model_build(cfg, model)
    plugin.post_model_load(cfg, model)
    plugin.post_model_load(cfg, model)  # idempotent: one hook, not two
    assert trainable_names(model) == ["model.embed_tokens.weight"]  # tied: one matrix

    new_tok = load_tokenizer(plugin.plan.new_tokenizer)
    ids = new_tok("Война и мир. Преступление и наказание.", return_tensors="pt").input_ids
    # old tokens of the text and, whatever the text encodes to, some new tokens
    ids = torch.cat([ids, torch.arange(old_rows, old_rows + 4)[None]], dim=1)
    assert int(ids.max()) >= old_rows and len(new_tok) > old_rows + 4
    model(input_ids=ids, labels=ids).loss.backward()
    grad = model.get_input_embeddings().weight.grad
    assert torch.count_nonzero(grad[:old_rows]) == 0
    assert torch.count_nonzero(grad[old_rows:]) > 0


def test_post_train_twice_and_already_converted_base(tmp_path, tiny_mistral, corpus):
    plugin, cfg = _registered(tmp_path, tiny_mistral, corpus)
    model = AutoModelForCausalLM.from_pretrained(tiny_mistral)
    plugin.post_model_build(cfg, model)
    out = Path(cfg["output_dir"])
    out.mkdir()
    model.save_pretrained(out)
    load_tokenizer(plugin.plan.new_tokenizer).save_pretrained(out)
    plugin.post_train(cfg, model)
    plugin.post_train(cfg, model)
    # the vocabulary's manifest, plus what the run trained and the fingerprint of the base it started from
    # (lep-merge checks --base against it instead of comparing every tensor)
    written = json.loads((out / "lep_vocab.json").read_text(encoding="utf-8"))
    record = written.pop("plugin")
    assert written == json.loads((plugin.plan.new_tokenizer / "lep_vocab.json").read_text(encoding="utf-8"))
    assert record["train"] == "embeddings" and record["body"] == "frozen"
    assert record["base"]["tensors"] and all(len(t["sha256"]) == 64 for t in record["base"]["tensors"].values())

    # the output as a base model (`axolotl inference`, a second stage): no new vocabulary, no conversion
    again, cfg2 = _registered(tmp_path / "second", out, corpus)
    assert again.plan.already_converted and cfg2["tokenizer_config"] == str(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    before = reloaded.get_input_embeddings().weight.detach().clone()
    again.post_model_build(cfg2, reloaded)
    assert torch.equal(reloaded.get_input_embeddings().weight, before)
    assert not (tmp_path / "second" / "prepared").exists()
    shutil.rmtree(out)


def test_no_lep_block_leaves_everything_alone(tmp_path, tiny_mistral):
    plugin = LEPPlugin()
    cfg = {"base_model": str(tiny_mistral)}
    plugin.register(cfg)
    model = AutoModelForCausalLM.from_pretrained(tiny_mistral)
    plugin.post_model_build(cfg, model)
    plugin.post_model_load(cfg, model)
    assert "tokenizer_config" not in cfg
    assert all(p.requires_grad for p in model.parameters())
    assert plugin.add_callbacks_post_trainer(cfg, None) == []


def test_register_twice_on_one_config_keeps_the_base_as_old_tokenizer(tmp_path, tiny_mistral, corpus):
    """Ray workers run register() again on the already-registered config (tokenizer_config set by us)."""
    plugin, cfg = _registered(tmp_path, tiny_mistral, corpus)
    first = plugin.plan
    plugin.register(cfg)
    assert plugin.plan.new_tokenizer == first.new_tokenizer and not plugin.plan.built
    assert plugin.plan.old_tokenizer == Path(tiny_mistral) and not plugin.plan.already_converted


def test_eval_block_is_validated_at_register_and_wired_as_callback(tmp_path, tiny_mistral, ru_heldout):
    from lep_plugin.errors import LEPError
    from lep_plugin.plugin.eval_callback import LEPEvalCallback

    cfg = {"base_model": str(tiny_mistral), "output_dir": str(tmp_path / "out"), "lep": {"train": "embeddings"}}
    cfg["lep"]["eval"] = {"texts": [str(ru_heldout)], "every_n_stepz": 5}
    with pytest.raises(LEPError, match=r"lep\.eval\.every_n_stepz: unknown key \(a typo\?\)"):
        LEPPlugin().register(cfg)
    cfg["lep"]["eval"] = {"texts": [str(ru_heldout)], "every_n_steps": 5}
    plugin = LEPPlugin()
    plugin.register(cfg)
    trainer = type("Trainer", (), {"processing_class": load_tokenizer(tiny_mistral)})()
    callbacks = plugin.add_callbacks_post_trainer(cfg, trainer)
    assert any(isinstance(c, LEPEvalCallback) for c in callbacks)
