"""The plugin inside real ``axolotl train`` processes on tiny models (CPU): plain, resumed, two processes,
DeepSpeed ZeRO-2 and ZeRO-3. Each run is a few steps at sequence length 128."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from _plugin_helpers import (
    assert_only_embeddings_changed,
    lep_lines,
    load_weights,
    losses,
    run_train,
    tiny_config,
    training_data,
    write_config,
)
from _publish_helpers import check_tokenizer, read_gguf
from builders import RU_HELDOUT, build_instruct, write_corpus_slice

from lep_plugin.cli.merge import main as merge_main
from lep_plugin.common.tokenizers import fingerprint_tokenizer, load_tokenizer

pytestmark = pytest.mark.e2e


def _new_tokenizer_dir(output: str) -> Path:
    match = lep_lines(output, r"vocabulary (\S+) \((built|reused)")
    assert match, "the plugin did not report its vocabulary"
    return Path(match[0].group(2))


def _assert_saved_tokenizer_is_new(saved: Path, new_dir: Path, base: Path) -> None:
    saved_tok, new_tok, old_tok = load_tokenizer(saved), load_tokenizer(new_dir), load_tokenizer(base)
    assert fingerprint_tokenizer(saved_tok) == fingerprint_tokenizer(new_tok)
    # the saved vocabulary is the new one, not the base model's
    assert saved_tok.get_vocab() == new_tok.get_vocab() and new_tok.get_vocab() != old_tok.get_vocab()
    assert saved_tok.chat_template == old_tok.chat_template
    manifest = json.loads((saved / "lep_vocab.json").read_text(encoding="utf-8"))
    assert manifest["new_vocab_size"] == len(new_tok)


def test_mistral_embeddings_train_save_and_resume(tmp_path, tiny_mistral):
    data = training_data(tmp_path / "data")
    cfg = tiny_config(tmp_path / "a", tiny_mistral, data, max_steps=6, save_steps=3)
    output = run_train(write_config(tmp_path / "a.yml", cfg))
    out = Path(cfg["output_dir"])

    assert len(lep_lines(output, "vocabulary .* \\(built")) == 1
    assert len(lep_lines(output, "training model.embed_tokens.weight, lm_head.weight only")) == 1  # said once
    assert not lep_lines(output, "embedding checksum")  # a cross-rank check: nothing to compare in one process
    history = losses(out / "checkpoint-6" / "trainer_state.json")
    assert len(history) == 6 and history[-1] < history[0] - 0.2, history

    assert_only_embeddings_changed(tiny_mistral, out)
    new_dir = _new_tokenizer_dir(output)
    new_len = len(load_tokenizer(new_dir))
    assert load_weights(out)["model.embed_tokens.weight"].shape[0] == new_len
    for saved in (out, out / "checkpoint-3", out / "checkpoint-6"):
        _assert_saved_tokenizer_is_new(saved, new_dir, tiny_mistral)

    # the optimizer holds state for the two embedding matrices only
    optimizer = torch.load(out / "checkpoint-3" / "optimizer.pt", weights_only=True)
    shapes = sorted(tuple(s["exp_avg"].shape) for s in optimizer["state"].values())
    assert shapes == [(new_len, 64), (new_len, 64)]

    # resume from checkpoint-3 (base model reconverted, then the checkpoint's weights loaded): same result
    resumed = dict(cfg, output_dir=str(tmp_path / "b" / "out"), resume_from_checkpoint=str(out / "checkpoint-3"))
    output_b = run_train(write_config(tmp_path / "b.yml", resumed))
    assert len(lep_lines(output_b, "vocabulary .* \\(reused")) == 1  # same cache: nothing rebuilt
    first, second = load_weights(out), load_weights(Path(resumed["output_dir"]))
    assert losses(Path(resumed["output_dir"]) / "checkpoint-6" / "trainer_state.json")[:3] == history[:3]
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=1e-5, atol=1e-6)


def test_llama_byte_level_bpe_vocabulary(tmp_path, tiny_llama):
    """A whole new byte-level BPE vocabulary (smaller than the old 131k one) on the Tekken/Llama-3-style model,
    propagated when training ends into a q8_0 GGUF (the byte-level layout of ``lep.propagate``: the real
    Tekken tokenizer, whose pre-tokenizer llama.cpp's converter knows)."""
    data = training_data(tmp_path / "data")
    cfg = tiny_config(tmp_path, tiny_llama, data, max_steps=6, save_strategy="no", save_steps=None)
    cfg["lep"]["vocab"].update(method="bpe", vocab_size=3000)
    instruct = build_instruct(tiny_llama, tmp_path / "instruct")
    cfg["lep"]["propagate"] = {"instruct": str(instruct), "output": str(tmp_path / "lep-instruct"), "gguf": "q8_0"}
    # the training-time evaluation callback, on a held-out slice, every 3 steps
    heldout = write_corpus_slice(RU_HELDOUT, tmp_path / "heldout.jsonl", 3)
    cfg["lep"]["eval"] = {
        "texts": [str(heldout)],
        "every_n_steps": 3,
        "samples": 2,
        "paragraphs": False,
        "max_new_tokens_sentence": 16,
        "bpc_chars": 1000,
    }
    output = run_train(write_config(tmp_path / "llama.yml", cfg))
    out = Path(cfg["output_dir"])
    history = json.loads((out / "lep_eval_history.json").read_text(encoding="utf-8"))
    assert [h["step"] for h in history] == [3, 6]
    assert all(0 < next(iter(h["texts"].values()))["bits_per_char"] < 50 for h in history)
    assert re.search(r"'lep_eval/heldout[^']*/sentence_copy'", output), (
        "evaluation numbers did not reach the trainer logs"
    )

    assert_only_embeddings_changed(tiny_llama, out)
    new_dir = _new_tokenizer_dir(output)
    _assert_saved_tokenizer_is_new(out, new_dir, tiny_llama)
    assert load_weights(out)["lm_head.weight"].shape[0] == len(load_tokenizer(new_dir)) < 10_000
    loss_values = [float(v) for v in re.findall(r"'loss': '([0-9.]+)'", output)]
    assert len(loss_values) >= 4 and loss_values[-1] < loss_values[0], loss_values

    published, hand = tmp_path / "lep-instruct", tmp_path / "hand"
    merge_main(["--base", str(tiny_llama), "--instruct", str(instruct), "--adapted", str(out), "--output", str(hand)])
    propagated, merged = load_weights(published), load_weights(hand)
    assert propagated.keys() == merged.keys() and all(torch.equal(propagated[k], merged[k]) for k in merged)
    meta = check_tokenizer(read_gguf(published / "lep-instruct-q8_0.gguf"), published)
    assert meta["model"] == "gpt2" and meta["pre"] == "tekken"  # the original pre-tokenizer, kept


def test_deepspeed_zero3_new_rows(zero3_checkpoint):
    """Trained beside two busy loops (issue 23: a half-gathered embedding matrix moved the frozen rows)."""
    run = zero3_checkpoint
    assert (run.checkpoint / "latest").read_text().strip() == f"global_step{run.step}"
    assert any((run.checkpoint / f"global_step{run.step}").glob("*model_states.pt"))
    assert lep_lines(run.log, "training \\d+ new-token rows of model.embed_tokens.weight, lm_head.weight")

    base, new = load_weights(run.base_model), load_weights(run.output)
    old_rows = base["model.embed_tokens.weight"].shape[0]
    for name, tensor in base.items():
        if "embed_tokens" in name or "lm_head" in name:
            # extend keeps old ids: their rows are copied by T and then frozen row-wise (even under ZeRO-3)
            assert torch.equal(new[name][:old_rows], tensor), name
        else:
            assert torch.equal(new[name], tensor), name
    # the new rows trained: they differ from their T-initialisation in the first checkpoint's model
    first = load_weights(run.output / "checkpoint-2")
    assert not torch.equal(first["lm_head.weight"][old_rows:], new["lm_head.weight"][old_rows:])
    _assert_saved_tokenizer_is_new(run.checkpoint, _new_tokenizer_dir(run.log), run.base_model)
