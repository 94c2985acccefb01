"""Converting a model to a new vocabulary, on disk (`lep vocab convert`) and in memory (the plugin's path):
special ids mapped with EOS lists kept whole, and a DeepSpeed-only checkpoint dir as the source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from builders import build_tiny_model

from lep_plugin.checkpoints.safetensors import SafetensorsCheckpoint
from lep_plugin.cli.lep import main
from lep_plugin.common.tokenizers import load_tokenizer
from lep_plugin.vocab.build import build_vocabulary
from lep_plugin.vocab.convert import convert_embeddings
from lep_plugin.vocab.options import VocabOptions


@pytest.fixture(scope="module")
def moved_ids(tmp_path_factory, tekken_tokenizer, ru_corpus_small):
    """A tiny Llama on the Tekken tokenizer whose generation config ends turns on a *list* of tokens, and
    an `optimize` vocabulary of it, which renumbers the kept old tokens: the list's last token keeps its
    string but not its id."""
    root = tmp_path_factory.mktemp("moved-ids")
    model_dir = build_tiny_model("llama", tekken_tokenizer, root / "model")
    new_dir = build_vocabulary(
        tekken_tokenizer,
        [ru_corpus_small],
        VocabOptions(method="optimize", vocab_size=3000, keep=4000, max_chars=300_000),
        root / "optimize",
    )
    tok, new_vocab = load_tokenizer(model_dir), load_tokenizer(new_dir).get_vocab()
    moved = next(i for t, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]) if new_vocab.get(t, i) != i)
    eos_list = [tok.eos_token_id, tok.convert_tokens_to_ids("[/INST]"), moved]
    generation = (
        json.loads((model_dir / "generation_config.json").read_text())
        if (model_dir / "generation_config.json").is_file()
        else {}
    )
    generation |= {"eos_token_id": eos_list, "bos_token_id": tok.bos_token_id, "pad_token_id": None}
    (model_dir / "generation_config.json").write_text(json.dumps(generation))
    return model_dir, new_dir, [tok.convert_ids_to_tokens(i) for i in eos_list]


def _expected_ids(new_tok, tokens: list[str]) -> list[int]:
    ids = [new_tok.convert_tokens_to_ids(t) for t in tokens]
    assert None not in ids
    return ids


def test_vocab_convert_keeps_the_eos_list(moved_ids, tmp_path):
    model_dir, new_dir, eos_tokens = moved_ids
    old_ids = [load_tokenizer(model_dir).convert_tokens_to_ids(t) for t in eos_tokens]
    new_tok = load_tokenizer(new_dir)
    expected = _expected_ids(new_tok, eos_tokens)
    assert expected[-1] != old_ids[-1]  # the vocabulary moved it: its old number is now another token
    out = tmp_path / "converted"
    main(["vocab", "convert", "--model", str(model_dir), "--tokenizer", str(new_dir), "--output", str(out)])
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == expected
    assert generation["bos_token_id"] == new_tok.bos_token_id
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(new_tok) and config["eos_token_id"] == new_tok.eos_token_id


def test_in_memory_conversion_keeps_the_eos_list(moved_ids):
    from transformers import AutoModelForCausalLM

    model_dir, new_dir, eos_tokens = moved_ids
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    new_tok = load_tokenizer(new_dir)
    rows = convert_embeddings(model, new_tok, load_tokenizer(model_dir))
    assert rows == len(new_tok) == model.get_input_embeddings().weight.shape[0]
    assert list(model.generation_config.eos_token_id) == _expected_ids(new_tok, eos_tokens)
    assert model.config.vocab_size == rows


@pytest.mark.e2e
def test_vocab_convert_reads_a_deepspeed_only_checkpoint(zero3_checkpoint, mistral_tokenizer, tmp_path):
    """A `checkpoint-N` dir that holds only DeepSpeed ZeRO-3 partitions converts (every tensor rebuilt from
    the fp32 partitions and fragments) to the same model as the run's HF save of that step."""
    run = zero3_checkpoint
    ds_only = tmp_path / "ds-only"
    shutil.copytree(
        run.checkpoint, ds_only, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json", "*.bin")
    )
    assert not list(ds_only.glob("*.safetensors")) and (ds_only / "latest").is_file()
    outputs = {}
    for kind, source in (("deepspeed", ds_only), ("hf", run.output)):
        outputs[kind] = tmp_path / kind
        main(
            [
                "vocab",
                "convert",
                "--model",
                str(source),
                "--tokenizer",
                str(mistral_tokenizer),
                "--output",
                str(outputs[kind]),
            ]
        )
    from_ds, from_hf = SafetensorsCheckpoint(outputs["deepspeed"]), SafetensorsCheckpoint(outputs["hf"])
    assert sorted(from_ds.names()) == sorted(from_hf.names())
    for name in from_hf.names():
        torch.testing.assert_close(from_ds.get(name).float(), from_hf.get(name).float(), rtol=1e-5, atol=1e-6, msg=name)
    assert from_ds.shape("model.embed_tokens.weight")[0] == len(load_tokenizer(mistral_tokenizer))
    assert Path(outputs["deepspeed"] / "config.json").is_file()
