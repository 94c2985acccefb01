"""The evaluation on real tiny models: a trained copier scores high, a random model low; batched greedy
generation equals one-at-a-time; bits per character checked in closed form and for tokenizer invariance;
sampling is deterministic; the training callback under a plain transformers Trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _eval_helpers import (
    build_word_tokenizer,
    lexicon,
    random_model,
    synthetic_documents,
    train_copier,
    write_jsonl,
)
from _plugin_helpers import worker_threads

from lep_plugin.errors import LEPError
from lep_plugin.evaluation.evaluate import (
    EvalSettings,
    bits_per_char,
    evaluate_model,
    load_model,
    load_tasks,
)
from lep_plugin.evaluation.generate import (
    eos_token_ids,
    greedy_generate,
    newline_token_ids,
)
from lep_plugin.evaluation.tasks import (
    copy_prompt_ids,
    load_copy_tasks,
    resolve_prompt_style,
)

SETTINGS = EvalSettings(
    samples=6, max_new_tokens_sentence=64, max_new_tokens_paragraph=64, bpc_chars=3000, batch_size=4
)


@pytest.fixture(scope="module")
def copy_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("copy")
    words = lexicon()
    tok_dir = build_word_tokenizer(root / "tok", words)
    text = write_jsonl(root / "synthetic.jsonl", synthetic_documents(words, 12, seed=1))
    torch.set_num_threads(worker_threads())  # 2, or 1 per pytest-xdist worker
    return {
        "text": text,
        "tok": tok_dir,
        "copier": train_copier(tok_dir, root / "copier", steps=800, batch_size=24),
        "random": random_model(tok_dir, root / "random"),
    }


def test_copier_scores_high_random_model_low(copy_world):
    tasks = load_tasks([copy_world["text"]], SETTINGS)
    results = {}
    for name in ("copier", "random"):
        model, tok = load_model(copy_world[name], device="cpu")
        results[name] = evaluate_model(model, tok, tasks, SETTINGS, name=name)["texts"]["synthetic"]
    copier, rand = results["copier"], results["random"]
    assert copier["sentence_copy"] >= 0.9, copier
    assert copier["paragraph_copy"] >= 0.8, copier
    assert rand["sentence_copy"] <= 0.6, rand
    assert rand["paragraph_copy"] == 0.0, rand
    # the strict score: the copier near 1 and mostly exact, the random model at or below chance
    chance = copier["chance"]
    assert chance == rand["chance"]  # same tokenizer, same samples: the same chance levels
    assert 0.1 < chance["sentence_strict"] < 0.6 and chance["sentence_exact"] == 0.0
    assert copier["sentence_strict"] >= 0.95 and copier["paragraph_strict"] >= 0.95, copier
    assert copier["sentence_exact"] >= 0.5, copier
    assert rand["sentence_strict"] < chance["sentence_strict"] + 0.1 and rand["sentence_exact"] == 0.0, rand
    # only copied characters count per generated token: the copier's equals the text's chars/token
    # (a word-level tokenizer: one token per word), the random model's rambling earns little
    assert copier["copied_chars_per_token"] == pytest.approx(copier["chars_per_token"], rel=0.1)
    assert rand["copied_chars_per_token"] < copier["copied_chars_per_token"] / 2, rand
    # a random model is close to uniform: about log2(V) bits per token spread over the characters of a token
    # (the copier, trained only on copy prompts, is no language model of the plain text: no claim about it)
    vocab = len(load_model(copy_world["random"], device="cpu")[1])
    uniform = math.log2(vocab) / rand["chars_per_token"]
    assert uniform * 0.9 < rand["bits_per_char"] < uniform * 1.1, (rand, uniform)
    assert math.isfinite(copier["bits_per_char"]) and copier["bits_per_char"] > 0
    # same tokenizer: the tokenization statistics agree
    assert copier["chars_per_token"] == rand["chars_per_token"]
    assert copier["tokens_per_word"] == pytest.approx(1.0)


def test_batched_generation_equals_one_at_a_time(copy_world):
    model, tok = load_model(copy_world["copier"], device="cpu")
    model.eval()
    tasks = load_copy_tasks(copy_world["text"], "s", 5, shots=0)
    # prompts of different lengths, so left padding is exercised
    prompts = [copy_prompt_ids(tok, " ".join(s.split()[: 8 + 4 * i]), "chat") for i, s in enumerate(tasks.sentences)]
    stop = eos_token_ids(model, tok)
    with torch.no_grad():
        batched = greedy_generate(model, prompts, 40, stop, tok.pad_token_id, batch_size=5)
        single = [greedy_generate(model, [p], 40, stop, tok.pad_token_id, batch_size=1)[0] for p in prompts]
        again = greedy_generate(model, prompts, 40, stop, tok.pad_token_id, batch_size=5)
    assert batched == single
    assert batched == again  # deterministic
    assert batched == [_reference_greedy(model, p, 40, stop) for p in prompts]


def _reference_greedy(model, prompt: list[int], max_new_tokens: int, stop: set[int]) -> list[int]:
    """The definition of a greedy copy: argmax of a full forward pass over the whole sequence, one token at
    a time, no cache, no padding, no batching; stop after the first stop token."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            next_id = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(next_id)
            out.append(next_id)
            if next_id in stop:
                break
    return out


def test_generation_equals_the_greedy_definition_on_a_random_model(copy_world):
    """A random model rarely stops: long continuations, several stop ids, uneven prompt lengths."""
    model, tok = load_model(copy_world["random"], device="cpu")
    model.eval()
    words = lexicon()
    prompts = [copy_prompt_ids(tok, " ".join(words[:n]), "chat") for n in (1, 7, 15)]
    stop = set(eos_token_ids(model, tok)) | {tok.convert_tokens_to_ids(w) for w in words[-3:]}
    with torch.no_grad():
        batched = greedy_generate(model, prompts, 24, stop, tok.pad_token_id, batch_size=3)
    assert batched == [_reference_greedy(model, p, 24, stop) for p in prompts]


def test_per_prompt_budgets_cut_each_row_at_its_own_limit(copy_world):
    """A random model rarely stops: every row runs to its own limit, exactly the greedy definition cut there."""
    model, tok = load_model(copy_world["random"], device="cpu")
    model.eval()
    words = lexicon()
    prompts = [copy_prompt_ids(tok, " ".join(words[:n]), "chat") for n in (3, 9, 5, 12)]
    limits = [2, 17, 9, 30]
    stop = eos_token_ids(model, tok)
    ticks = []
    with torch.no_grad():
        batched = greedy_generate(model, prompts, limits, stop, tok.pad_token_id, batch_size=4, progress=ticks.append)
        assert batched == [_reference_greedy(model, p, n, stop) for p, n in zip(prompts, limits)]
    assert all(len(b) <= n for b, n in zip(batched, limits)) and len(batched[3]) > 17 and ticks == [4]
    with pytest.raises(ValueError):
        greedy_generate(model, prompts, [4, 4], stop, tok.pad_token_id)


def test_paragraph_budget_fits_the_reference(copy_world):
    from transformers import AutoTokenizer

    from lep_plugin.evaluation.evaluate import generation_budgets

    tok = AutoTokenizer.from_pretrained(str(copy_world["tok"]))
    words = lexicon()
    texts = [" ".join(words[:10]), " ".join(words[:40]), " ".join(words * 20)]  # 10, 40 and 1,200 tokens
    assert generation_budgets(tok, texts, 1.5, 1024) == [16, 61, 1024]
    assert generation_budgets(tok, texts, 1.0, 50) == [11, 41, 50]


def test_identical_models_are_named_in_the_table(copy_world):
    from lep_plugin.evaluation.report import identical_groups, markdown_table

    settings = EvalSettings(
        samples=2, max_new_tokens_sentence=6, max_new_tokens_paragraph=6, bpc_chars=300, batch_size=2
    )
    tasks = load_tasks([copy_world["text"]], settings)
    model, tok = load_model(copy_world["random"], device="cpu")
    records = [evaluate_model(model, tok, tasks, settings, name=name) for name in ("swap", "overlap")]
    other, _ = load_model(copy_world["copier"], device="cpu")
    records.append(evaluate_model(other, tok, tasks, settings, name="copier"))
    assert identical_groups(records) == [[0, 1]]
    table = markdown_table(records).splitlines()
    assert table[2].startswith("| swap |") and table[3].startswith("| overlap (identical to swap) |")
    assert table[4].startswith("| copier |")
    assert table[-1] == "Identical results (every metric to three decimals): swap = overlap."
    assert identical_groups(records[1:]) == [] and "Identical" not in markdown_table(records[1:])


def test_evaluation_restores_training_mode(copy_world):
    model, tok = load_model(copy_world["random"], device="cpu")
    model.train()
    tasks = load_tasks(
        [copy_world["text"]],
        EvalSettings(samples=1, max_new_tokens_sentence=4, max_new_tokens_paragraph=4, bpc_chars=200),
    )
    evaluate_model(
        model, tok, tasks, EvalSettings(samples=1, max_new_tokens_sentence=4, max_new_tokens_paragraph=4, bpc_chars=200)
    )
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def _uniform_model(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # all logits 0: every token has probability 1/V
    return model.eval()


def test_bits_per_char_closed_form_under_two_tokenizers(copy_world, mistral_tokenizer, ru_heldout):
    """A uniform model pays log2(V) bits per token: bpc = log2(V) * tokens / chars for any tokenizer."""
    from builders import read_texts
    from transformers import AutoTokenizer

    cases = [
        (
            AutoTokenizer.from_pretrained(str(copy_world["tok"])),
            [t.replace("\n", " ") for t in synthetic_documents(lexicon(), 3, 5)],
        ),
        (AutoTokenizer.from_pretrained(str(mistral_tokenizer)), [t[:1500] for t in read_texts(ru_heldout, 2)]),
    ]
    for tok, texts in cases:
        model = _uniform_model(len(tok))
        tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)  # + BOS context, not scored
        chars = sum(len(t) for t in texts)
        expected = math.log2(len(tok)) * tokens / chars
        with torch.no_grad():
            assert bits_per_char(model, tok, texts, window=128) == pytest.approx(expected, rel=1e-5)


def test_bits_per_char_invariant_under_relabelled_vocabulary(copy_world, tmp_path):
    """The same trained model under a second tokenizer with the same segmentation but other ids (and the
    embedding rows moved with them) has the same bits per character, whatever the window."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    model, tok = load_model(copy_world["copier"], device="cpu")
    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    perm = torch.randperm(len(vocab), generator=torch.Generator().manual_seed(3))
    spec["model"]["vocab"] = {w: int(perm[i]) for w, i in vocab.items()}
    for added in spec["added_tokens"]:
        added["id"] = int(perm[added["id"]])
    spec["post_processor"]["special_tokens"]["<s>"]["ids"] = [int(perm[tok.bos_token_id])]
    tok2 = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    import copy as copylib

    model2 = copylib.deepcopy(model)
    with torch.no_grad():
        model2.model.embed_tokens.weight[perm] = model.model.embed_tokens.weight
        model2.lm_head.weight[perm] = model.lm_head.weight
    texts = load_copy_tasks(copy_world["text"], "s", 1, bpc_chars=4000).heldout
    assert [perm[i].item() for i in tok(texts[0])["input_ids"]] == tok2(texts[0])["input_ids"]
    with torch.no_grad():
        a = bits_per_char(model.eval(), tok, texts, window=64)
        b = bits_per_char(model2.eval(), tok2, texts, window=64)
    assert a == pytest.approx(b, rel=1e-5)
    assert 0 < a < 2


def test_sampling_is_deterministic_and_seeded(ru_heldout):
    a = load_copy_tasks(ru_heldout, "ru", 5, seed=0, pool_chars=200_000)
    b = load_copy_tasks(ru_heldout, "ru", 5, seed=0, pool_chars=200_000)
    c = load_copy_tasks(ru_heldout, "ru", 5, seed=1, pool_chars=200_000)
    assert a == b
    assert a.sentences != c.sentences
    assert all("\n" not in p and 200 <= len(p) <= 1000 for p in a.paragraphs)
    assert not set(a.shots) & set(a.sentences)


def test_prompt_style_base_and_chat(mistral_tokenizer, copy_world, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(mistral_tokenizer))
    assert resolve_prompt_style(tok, "auto") == "chat"  # Mistral template present -> instruct, zero-shot
    chat = tok.decode(copy_prompt_ids(tok, "Привет, мир.", "chat"))
    assert chat.count("<s>") == 1 and "[INST]" in chat and "Привет, мир." in chat
    base = tok.decode(copy_prompt_ids(tok, "Привет, мир.", "base", shots=["Один.", "Два."]))
    assert base.startswith("<s>") and base.rstrip().endswith("Copy:") and "Copy: Два." in base
    newline = newline_token_ids(tok)
    assert tok.convert_tokens_to_ids("<0x0A>") in newline and tok.convert_tokens_to_ids("▁the") not in newline
    tok.chat_template = None
    assert resolve_prompt_style(tok, "auto") == "base"
    with pytest.raises(LEPError):
        resolve_prompt_style(tok, "chat")


def test_empty_or_missing_text_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(LEPError, match="empty"):
        load_copy_tasks(empty, "e", 2)
    with pytest.raises(LEPError, match="does not exist"):
        load_copy_tasks(tmp_path / "nope.txt", "n", 2)
    short = tmp_path / "short.txt"
    short.write_text("Hi.\n")
    with pytest.raises(LEPError, match="usable length"):
        load_copy_tasks(short, "s", 2)


def test_callback_under_a_plain_trainer(copy_world, tmp_path):
    """The callback inside a real transformers Trainer: numbers reach log_history and the JSON history."""
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
    )

    from lep_plugin.plugin.eval_callback import HISTORY_FILE, build_eval_callback

    tok = AutoTokenizer.from_pretrained(str(copy_world["tok"]))
    model = AutoModelForCausalLM.from_pretrained(str(copy_world["random"]))
    rows = [tok(t)["input_ids"] for t in synthetic_documents(lexicon(), 8, seed=9)]
    data = Dataset.from_dict({"input_ids": rows, "labels": rows})
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=1,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    seen_training = []
    options = {
        "texts": [str(copy_world["text"])],
        "samples": 2,
        "every_n_steps": 2,
        "at_start": True,
        "max_new_tokens_sentence": 8,
        "max_new_tokens_paragraph": 8,
        "bpc_chars": 500,
    }
    callback = build_eval_callback(options, tok, args.output_dir, trainer=trainer)
    original = callback._evaluate

    def spy(*a, **k):
        before = trainer.model.training
        record = original(*a, **k)
        seen_training.append((before, trainer.model.training))
        return record

    callback._evaluate = spy
    trainer.add_callback(callback)
    trainer.train()
    history = json.loads((tmp_path / "out" / HISTORY_FILE).read_text())
    assert [h["step"] for h in history] == [0, 2, 3]  # at start, every 2 steps, and the last step
    assert 0 <= history[-1]["texts"]["synthetic"]["sentence_copy"] <= 1
    # the model in training is a base model: plain prompts although its tokenizer has a chat template
    assert {h["prompt_style"] for h in history} == {"base"}
    assert "log" not in history[-1]["texts"]["synthetic"]  # per-sample logs would grow the file every step
    logged = [h for h in trainer.state.log_history if "lep_eval/synthetic/sentence_copy" in h]
    assert [h["step"] for h in logged] == [0, 2, 3]
    assert all(math.isfinite(h["lep_eval/synthetic/bits_per_char"]) for h in logged)
    # the strict score, exact match and their chance levels reach the logs beside Darumeru's
    for h in logged:
        for name in ("sentence_strict", "sentence_exact", "paragraph_strict"):
            assert 0 <= h[f"lep_eval/synthetic/{name}"] <= 1 and 0 <= h[f"lep_eval/synthetic/chance/{name}"] <= 1
    assert history[-1]["summary"]["synthetic_strict"] == logged[-1]["lep_eval/synthetic/sentence_strict"]
    assert history[-1]["summary_chance"]["synthetic_strict"] == logged[-1]["lep_eval/synthetic/chance/sentence_strict"]
    # the mode is restored after each evaluation (before the first step the Trainer has not set train mode yet)
    assert seen_training == [(False, False), (True, True), (True, True)]


def test_callback_options_reject_unknown_keys(copy_world):
    from pydantic import ValidationError

    from lep_plugin.plugin.eval_callback import EvalCallbackOptions

    with pytest.raises(ValidationError):
        EvalCallbackOptions(texts=[copy_world["text"]], every_n_step=3)
    with pytest.raises(LEPError, match="does not exist"):
        from lep_plugin.plugin.eval_callback import build_eval_callback

        build_eval_callback({"texts": ["/nonexistent.jsonl"]}, None, "/tmp")
