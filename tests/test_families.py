"""The families people adapt – Llama-3 (and 3.2, tied), Qwen2 / 2.5 / 3, Gemma 2 / 3, Phi-3, Mistral – as
the fixtures rebuild them (FAMILIES.md): their tokenizer layouts, the model-side findings (Qwen's padding
rows, Llama-3-Instruct's EOS list), and one end-to-end run per architecture: `lep vocab build`, `lep vocab
convert`, `axolotl train` with the plugin, `lep-merge --method all`, `lep eval`, and the merged model
chatting through its template. The vocabulary methods × layouts matrix is in test_vocab.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _plugin_helpers import (
    lep_lines,
    load_weights,
    run_train,
    tiny_config,
    training_data,
    write_config,
)
from builders import RU_HELDOUT, generate_from_chat, write_corpus_slice
from safetensors.torch import load_file, save_file

from lep_plugin.cli.lep import main
from lep_plugin.cli.merge import main as merge_main
from lep_plugin.common.tokenizers import load_tokenizer
from lep_plugin.demo.families import FAMILIES, family
from lep_plugin.math.operator import trained_rows
from lep_plugin.vocab.build import build_vocabulary
from lep_plugin.vocab.convert import convert_embeddings
from lep_plugin.vocab.options import VocabOptions

# layout: (tokenizer length, BOS, EOS, ids of named tokens, are the specials appended after the BPE vocabulary)
LAYOUT_FACTS = {
    "llama3": (
        128_256,
        "<|begin_of_text|>",
        "<|end_of_text|>",
        {
            "<|begin_of_text|>": 128_000,
            "<|end_of_text|>": 128_001,
            "<|start_header_id|>": 128_006,
            "<|end_header_id|>": 128_007,
            "<|eom_id|>": 128_008,
            "<|eot_id|>": 128_009,
            "<|reserved_special_token_247|>": 128_255,
        },
        True,
    ),
    "qwen": (
        130_098,
        None,
        "<|endoftext|>",
        {"<|endoftext|>": 130_072, "<|im_start|>": 130_073, "<|im_end|>": 130_074, "</think>": 130_097},
        True,
    ),
    "gemma": (
        32_105,
        "<bos>",
        "<eos>",
        {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<start_of_turn>": 106, "<end_of_turn>": 107},
        False,
    ),
    "phi3": (
        32_011,
        "<s>",
        "<|endoftext|>",
        {
            "<unk>": 0,
            "<s>": 1,
            "<|endoftext|>": 32_000,
            "<|assistant|>": 32_001,
            "<|system|>": 32_006,
            "<|end|>": 32_007,
            "<|user|>": 32_010,
        },
        True,
    ),
    "mistral-v3": (32_768, "<s>", "</s>", {"<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4}, False),
}


@pytest.mark.parametrize("layout", list(LAYOUT_FACTS))
def test_layout_fixtures_are_the_families(family_layouts, layout):
    """Where the special tokens sit, how BOS is added, and that the chat markers are single tokens."""
    size, bos, eos, ids, appended = LAYOUT_FACTS[layout]
    tok = load_tokenizer(family_layouts.get(layout))
    assert len(tok) == size and (tok.bos_token, tok.eos_token) == (bos, eos)
    assert {t: tok.convert_tokens_to_ids(t) for t in ids} == ids
    in_model = tok.backend_tokenizer.get_vocab(with_added_tokens=False)
    assert all((t not in in_model) == appended for t in ids if t not in ("<unk>", "<s>"))
    plain = tok("Привет", add_special_tokens=False)["input_ids"]
    assert tok("Привет")["input_ids"] == ([tok.bos_token_id] if bos else []) + plain
    if layout == "qwen":  # the tool and think markers are added tokens that are not special
        assert (
            not tok.added_tokens_decoder[ids["</think>"]].special
            and tok.added_tokens_decoder[ids["<|im_end|>"]].special
        )
    text = tok.apply_chat_template([{"role": "user", "content": "Привет"}], tokenize=False, add_generation_prompt=True)
    markers = [t.content for t in tok.added_tokens_decoder.values() if t.content in text]
    assert markers and all(
        tok(m, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(m)] for m in markers
    )


@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "tekken"])  # tekken: a 131k-row model, as mistral's
def test_tiny_family_models(tiny_families, name):
    """Rows (Qwen and Phi-3 pad past the tokenizer), tying and the instruct model's EOS list."""
    from transformers import AutoConfig, GenerationConfig

    fam, models = family(name), tiny_families.get(name)
    tok, instruct_tok = load_tokenizer(models.base), load_tokenizer(models.instruct)
    config = AutoConfig.from_pretrained(models.base)
    assert config.model_type == fam.model_type and config.tie_word_embeddings == fam.tied
    if fam.row_multiple:
        assert config.vocab_size > len(tok) and config.vocab_size % fam.row_multiple == 0
    else:
        assert config.vocab_size == len(tok)
    eos = [instruct_tok.convert_tokens_to_ids(t) for t in fam.chat_eos]
    generation = GenerationConfig.from_pretrained(models.instruct)
    assert generation.eos_token_id == (eos if len(eos) > 1 else eos[0])
    assert instruct_tok.eos_token == (fam.chat_eos_token or tok.eos_token)
    assert (
        "lm_head.weight" not in load_weights(models.base) if fam.tied else "lm_head.weight" in load_weights(models.base)
    )


def _poisoned_padding_rows(model_dir: Path, out: Path, value: float = 1e4) -> Path:
    """A copy of ``model_dir`` whose embedding rows past its tokenizer hold ``value``: never a token."""
    shutil.copytree(model_dir, out)
    rows = len(load_tokenizer(model_dir))
    for shard in out.glob("*.safetensors"):
        tensors = load_file(str(shard))
        for name, tensor in tensors.items():
            if "embed_tokens" in name or "lm_head" in name:
                tensor[rows:] = value
        save_file(tensors, str(shard), metadata={"format": "pt"})
    return out


def test_padding_rows_are_never_averaged_into_new_rows(tiny_families, ru_corpus_small, tmp_path):
    """Qwen's rows past its tokenizer (151,665 ids, 151,936 rows) are no token: no new row – a token's
    average, or the fallback of a row with nothing to average (padding of the new matrix) – uses them."""
    from transformers import AutoModelForCausalLM

    models = tiny_families.get("qwen2")
    old_rows = json.loads((models.base / "config.json").read_text())["vocab_size"]
    assert old_rows > len(load_tokenizer(models.base))
    base = _poisoned_padding_rows(models.base, tmp_path / "base")
    new_dir = build_vocabulary(
        base, [ru_corpus_small], VocabOptions(method="extend", vocab_size=1500, max_chars=300_000), tmp_path / "tok"
    )
    new_tok = load_tokenizer(new_dir)
    assert len(new_tok) > old_rows  # new tokens take ids past the old padding rows' positions
    main(
        [
            "vocab",
            "convert",
            "--model",
            str(base),
            "--tokenizer",
            str(new_dir),
            "--output",
            str(tmp_path / "converted"),
            "--pad-to-multiple-of",
            "128",
        ]
    )
    weights = load_weights(tmp_path / "converted")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert weights[name].shape[0] % 128 == 0 and weights[name].shape[0] > len(new_tok)
        assert weights[name].abs().max() < 10, f"{name}: a padding row of the old model was averaged in"
    model = AutoModelForCausalLM.from_pretrained(base)
    convert_embeddings(model, new_tok, load_tokenizer(base))
    for param in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        assert param.abs().max() < 10


def test_convert_keeps_the_llama3_instruct_eos_list(tiny_families, ru_corpus_small, tmp_path):
    """`lep vocab convert` of a Llama-3-Instruct layout ([<|end_of_text|>, <|eom_id|>, <|eot_id|>] end a turn)
    to an `optimize` vocabulary, which renumbers every old token: the whole list, mapped by string."""
    models = tiny_families.get("llama3")
    new_dir = build_vocabulary(
        models.instruct,
        [ru_corpus_small],
        VocabOptions(method="optimize", vocab_size=1500, keep=4000, max_chars=300_000),
        tmp_path / "tok",
    )
    old_tok, new_tok = load_tokenizer(models.instruct), load_tokenizer(new_dir)
    eos = list(family("llama3").chat_eos)
    assert [new_tok.convert_tokens_to_ids(t) for t in eos] != [old_tok.convert_tokens_to_ids(t) for t in eos]
    main(
        [
            "vocab",
            "convert",
            "--model",
            str(models.instruct),
            "--tokenizer",
            str(new_dir),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    expected = [new_tok.convert_tokens_to_ids(t) for t in eos]
    for name in ("config.json", "generation_config.json"):
        config = json.loads((tmp_path / "out" / name).read_text())
        assert config["eos_token_id"] == expected, name
        assert config["bos_token_id"] == new_tok.convert_tokens_to_ids("<|begin_of_text|>"), name
    assert load_tokenizer(tmp_path / "out").eos_token == "<|eot_id|>"


# ---------------------------------------------------------------------------------------- end to end

# family -> (vocabulary method, what trains): both training modes across the architectures; `new_rows`
# needs `extend` (old ids keep their rows)
END_TO_END = {
    "llama3": ("optimize", "embeddings"),
    "llama3.2": ("extend", "new_rows"),
    "qwen2": ("bpe", "embeddings"),
    "qwen2-tied": ("extend", "new_rows"),
    "qwen3": ("extend", "embeddings"),
    "gemma2": ("extend", "new_rows"),
    "gemma3": ("bpe", "embeddings"),
    "phi3": ("extend", "new_rows"),
}
VOCAB_FLAGS = {
    "bpe": ["--vocab-size", "3000"],
    "extend": ["--vocab-size", "1500"],
    "optimize": ["--vocab-size", "1500", "--keep", "4000"],
}


def _check_special_ids(model_dir: Path, tok, eos_tokens) -> None:
    """config.json and generation_config.json name the same tokens as before, by their new ids."""
    expected = [tok.convert_tokens_to_ids(t) for t in eos_tokens]
    expected = expected if len(expected) > 1 else expected[0]
    for name in ("config.json", "generation_config.json"):
        config = json.loads((model_dir / name).read_text())
        assert config["eos_token_id"] == expected, name
        if tok.bos_token is not None:
            assert config["bos_token_id"] == tok.bos_token_id, name


def _check_tied(model_dir: Path, fam) -> None:
    """A tied model stays tied: one matrix in the files, the config says so."""
    config = json.loads((model_dir / "config.json").read_text())
    assert config.get("tie_word_embeddings", False) == fam.tied
    assert ("lm_head.weight" in load_weights(model_dir)) != fam.tied


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(END_TO_END))
def test_family_end_to_end(name, tiny_families, ru_corpus_small, tmp_path):
    from transformers import AutoModelForCausalLM

    method, train = END_TO_END[name]
    fam, models = family(name), tiny_families.get(name)
    instruct_tok = load_tokenizer(models.instruct)
    new_dir = tmp_path / "tok"
    main(
        [
            "vocab",
            "build",
            "--tokenizer",
            str(models.base),
            "--corpus",
            str(ru_corpus_small),
            "--method",
            method,
            "--max-chars",
            "300000",
            "--output",
            str(new_dir),
            *VOCAB_FLAGS[method],
        ]
    )
    new_tok = load_tokenizer(new_dir)

    # lep vocab convert of the instruct model: its EOS list and every special id mapped, tying kept
    main(
        [
            "vocab",
            "convert",
            "--model",
            str(models.instruct),
            "--tokenizer",
            str(new_dir),
            "--output",
            str(tmp_path / "converted"),
        ]
    )
    _check_special_ids(tmp_path / "converted", new_tok, fam.chat_eos)
    _check_tied(tmp_path / "converted", fam)

    # axolotl train with the plugin on the base model (a ready vocabulary), two steps
    data = training_data(tmp_path / "data", docs=8, vocab_docs=8)
    cfg = tiny_config(
        tmp_path,
        models.base,
        data,
        max_steps=2,
        save_strategy="no",
        save_steps=None,
        sequence_len=64,
        dataset_processes=1,
        weight_decay=0.0,
    )
    cfg["lep"] = {"vocab": {"tokenizer": str(new_dir)}, "train": train}
    output = run_train(write_config(tmp_path / "train.yml", cfg), launcher=["--launcher", "python"])
    adapted = Path(cfg["output_dir"])
    what = "new-token rows of" if train == "new_rows" else ""
    assert lep_lines(output, f"training .*{what}.*model.embed_tokens.weight"), output[-3000:]
    trained = load_weights(adapted)["model.embed_tokens.weight"]
    assert trained.shape[0] == len(new_tok)
    if train == "new_rows":
        # extend kept every old id (appended specials included): their rows are the base's, frozen. A row
        # the base never trained (the pad token's, zeroed at initialisation) gets the trained rows' mean.
        old_ids = len(load_tokenizer(models.base))
        base_rows = load_weights(models.base)["model.embed_tokens.weight"][:old_ids]
        was_trained = trained_rows(base_rows)
        assert torch.equal(trained[:old_ids][was_trained], base_rows[was_trained])
    else:  # every row trains: the old ones moved away from the base's
        base_rows = load_weights(models.base)["model.embed_tokens.weight"]
        assert not torch.equal(trained[: base_rows.shape[0]], base_rows)
    base_weights, adapted_weights = load_weights(models.base), load_weights(adapted)
    for name, tensor in base_weights.items():  # the transformer body is the base's, bit for bit
        if "embed_tokens" not in name and "lm_head" not in name:
            assert torch.equal(adapted_weights[name], tensor), f"{name} changed although frozen"
    _check_tied(adapted, fam)

    # lep-merge: one fit per matrix (one for a tied model), every method chat-ready
    merged = tmp_path / "merged"
    merge_main(
        [
            "--base",
            str(models.base),
            "--instruct",
            str(models.instruct),
            "--adapted",
            str(adapted),
            "--method",
            "all",
            "--output",
            str(merged),
        ]
    )
    report = json.loads((merged / "lep_merge.json").read_text())
    assert set(report["fits"]) == ({"input"} if fam.tied else {"input", "output"})
    for method_dir in ("swap", "overlap", "conversion"):
        _check_tied(merged / method_dir, fam)
        _check_special_ids(merged / method_dir, load_tokenizer(merged / method_dir), fam.chat_eos)
    chat_model = merged / "conversion"
    tok = load_tokenizer(chat_model)
    assert tok.chat_template == instruct_tok.chat_template and tok.eos_token == instruct_tok.eos_token
    assert len(tok) == len(new_tok) and tok.get_vocab() == new_tok.get_vocab()

    # lep eval: the instruct model against its LEP version, on held-out Russian
    heldout = write_corpus_slice(RU_HELDOUT, tmp_path / "heldout.jsonl", 3)
    main(
        [
            "eval",
            str(models.instruct),
            str(chat_model),
            "--text",
            str(heldout),
            "--samples",
            "2",
            "--no-paragraphs",
            "--max-new-tokens-sentence",
            "6",
            "--bpc-chars",
            "300",
            "--json",
            str(tmp_path / "eval.json"),
        ]
    )
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert [r["prompt_style"] for r in results] == ["chat", "chat"]
    assert results[1]["vocab_size"] == len(new_tok)
    for result in results:
        assert 0 < result["texts"]["heldout"]["bits_per_char"] < 50

    # the merged model loads and chats through its template: each marker one token with its new id
    model = AutoModelForCausalLM.from_pretrained(chat_model)
    if fam.tied:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    prompt, out = generate_from_chat(model, tok, "Привет, как дела?", max_new_tokens=4)
    assert out.shape[1] > prompt.shape[1]
    text = tok.apply_chat_template([{"role": "user", "content": "Привет"}], tokenize=False, add_generation_prompt=True)
    markers = [t.content for t in tok.added_tokens_decoder.values() if t.content in text]
    assert markers and all(tok.convert_tokens_to_ids(m) in prompt[0].tolist() for m in markers)
