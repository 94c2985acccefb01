"""``make gguf-check``: does llama.cpp run an LEP model the way transformers does?

For one SentencePiece-style family (the real Mistral-7B v0.1 vocabulary) and one byte-level family (the
real 131k Tekken vocabulary), on tiny random Mistral-architecture models:

    base → instruct (perturbed copy) → `lep vocab build --method extend` on Russian → `lep vocab convert`
    of the base → embeddings moved ("trained") → `lep-merge --method conversion` → `lep export gguf` (f32)

then, with llama.cpp built from the llama-cpp-python source distribution (once, into the cache):

1. tokenization: llama.cpp's token ids of every held-out Russian and English document equal the HF
   tokenizer's;
2. chat prompts: llama.cpp's ids of the chat-template text (special tokens parsed) equal the HF ids;
3. generation: greedy decoding from the GGUF equals transformers' (float32, the same prompt ids).

Run: ``.venv/bin/python benchmarks/gguf_check.py [--out out/gguf-check] [--tokens 24]``. Not part of CI
(the first run compiles llama.cpp: minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lep_plugin.common.corpus import first_texts
from lep_plugin.common.fs import atomic_output_dir
from lep_plugin.demo.pipeline import SHARED
from lep_plugin.propagation.options import MergeOptions
from lep_plugin.propagation.run import run_merge
from lep_plugin.publish.gguf import GGUFOptions, export_gguf
from lep_plugin.publish.llama_cpp import built_bindings
from lep_plugin.vocab.build import build_vocabulary
from lep_plugin.vocab.convert import convert_checkpoint
from lep_plugin.vocab.mistral import (
    import_mistral_common_tokenizer,
    mistral_common_file,
)
from lep_plugin.vocab.options import VocabOptions

FAMILIES = {"mistral-v1 (SentencePiece-style)": "tokenizer.model.v1", "tekken (byte-level)": "tekken_240718.json"}
PROMPTS = [
    "Привет! Перескажи в двух предложениях, о чём этот текст: «Мороз и солнце; день чудесный!»",
    "Translate into Russian: The weather is lovely today.",
    "Сколько будет 17 + 25? Ответь одним числом.",
    "Write a haiku about tokenizers.",
]


def _texts(path: Path, limit: int | None = None) -> list[str]:
    return first_texts([path], limit)


def _tiny_mistral(tok_dir: Path, out: Path, seed: int) -> Path:
    # transformers here, not at the top: seconds of start-up that --help need not pay
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    config = MistralConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        initializer_range=0.1,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    MistralForCausalLM(config).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _perturbed(src: Path, out: Path, seed: int, scale: float, only_embeddings: bool = False) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not only_embeddings or "embed_tokens" in name or "lm_head" in name:
                param.add_(scale * torch.randn(param.shape, generator=g))
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    for extra in ("lep_vocab.json",):
        if (src / extra).is_file():
            (out / extra).write_bytes((src / extra).read_bytes())
    return out


def build_lep_model(family: str, source: str, root: Path, corpus: Path) -> Path:
    """The LEP pipeline on a tiny model of ``family``; returns the lep-merge output dir."""
    root.mkdir(parents=True, exist_ok=True)
    tok = import_mistral_common_tokenizer(mistral_common_file(source), root / "tokenizer")
    base = _tiny_mistral(tok, root / "base", seed=0)
    instruct = _perturbed(base, root / "instruct", seed=1, scale=0.02)
    options = VocabOptions(method="extend", vocab_size=3000, max_chars=300_000)
    new_tok = build_vocabulary(tok, [corpus], options, root / "tokenizer-extend")
    convert_checkpoint(base, new_tok, root / "converted")
    adapted = _perturbed(root / "converted", root / "adapted", seed=2, scale=0.01, only_embeddings=True)
    merge_options = MergeOptions(
        base=base, instruct=instruct, adapted=adapted, output=root / "lep", method="conversion"
    )
    run_merge(merge_options, echo=lambda _: None)
    return root / "lep"


def _llama(gguf_path: Path):
    from llama_cpp import Llama  # importable only once main() has put the built bindings on sys.path

    return Llama(model_path=str(gguf_path), n_ctx=1024, n_batch=1024, logits_all=True, verbose=False, n_threads=2)


def check_tokenization(llm, tok, texts: list[str]) -> tuple[int, list[str]]:
    differ, examples = 0, []
    for text in texts:
        hf = tok(text, add_special_tokens=False)["input_ids"]
        cpp = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if hf != cpp:
            differ += 1
            if len(examples) < 2:
                i = next((k for k in range(min(len(hf), len(cpp))) if hf[k] != cpp[k]), min(len(hf), len(cpp)))
                hf_pieces, cpp_pieces = (
                    tok.convert_ids_to_tokens(hf[i : i + 3]),
                    tok.convert_ids_to_tokens(cpp[i : i + 3]),
                )
                examples.append(f"HF {hf_pieces} vs llama.cpp {cpp_pieces}")
    return differ, examples


def _hf_greedy(model, ids: list[int], steps: int) -> tuple[list[int], list[float], list[np.ndarray]]:
    out = model(torch.tensor([ids]), use_cache=True)
    tokens, margins, logits = [], [], []
    for _ in range(steps):
        row = out.logits[0, -1].double()
        top = torch.topk(row, 2)
        tokens.append(int(top.indices[0]))
        margins.append(float(top.values[0] - top.values[1]))
        logits.append(row.numpy())
        out = model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens, margins, logits


def check_chat(llm, model, tok, steps: int, original_llm=None, original_tok=None) -> list[dict]:
    """Per chat prompt: llama.cpp's ids of the template text (special tokens parsed) against HF's (and the
    same for the original instruct model, as a baseline), then llama.cpp's greedy choice at every step of
    transformers' greedy generation from the same ids (fed the HF token, so one numerical tie does not
    derail the rest) and the largest logit difference."""
    rows = []
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        row = {"prompt_ids_equal": llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == ids}
        if original_llm is not None:
            original_ids = original_tok(text, add_special_tokens=False)["input_ids"]
            original_cpp = original_llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            row["original_prompt_ids_equal"] = original_cpp == original_ids
        with torch.no_grad():
            hf, margins, hf_logits = _hf_greedy(model, ids, steps)
        llm.reset()
        llm.eval(ids)
        differ, ties, delta = [], [], 0.0
        for k in range(steps):
            cpp_row = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            delta = max(delta, float(np.abs(cpp_row - hf_logits[k]).max()))
            if int(np.argmax(cpp_row)) != hf[k]:
                (ties if margins[k] < TIE else differ).append(k)
            llm.eval([hf[k]])
        row |= {
            "steps_differ": differ,
            "steps_tied": ties,
            "max_logit_delta": delta,
            "generation_equal": not differ and not ties,
        }
        rows.append(row)
    return rows


# top-2 logit margin below which a different greedy choice is a numerical tie, not a different model
TIE = 1e-3


def check_family(
    family: str,
    source: str,
    out: Path,
    corpus: Path,
    heldout: dict[str, list[str]],
    tokens: int,
    timings: dict[str, float],
) -> dict:
    """The LEP pipeline for one family, its GGUF export (and the original instruct model's), then the
    tokenization and chat checks in llama.cpp; the family's result record."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = time.time()
    slug = family.split()[0]
    lep = build_lep_model(family, source, out / slug, corpus)
    timings[f"{slug}: LEP pipeline"] = time.time() - t
    t = time.time()
    gguf_path = out / f"{slug}-lep.f32.gguf"
    summary = export_gguf(lep, GGUFOptions(output=gguf_path, outtype="f32"), echo=lambda _: None)
    timings[f"{slug}: lep export gguf"] = time.time() - t
    t = time.time()
    original_gguf = out / f"{slug}-original-instruct.f16.gguf"
    export_gguf(out / slug / "instruct", GGUFOptions(output=original_gguf), echo=lambda _: None)
    tok = AutoTokenizer.from_pretrained(str(lep))
    model = AutoModelForCausalLM.from_pretrained(str(lep), dtype=torch.float32).eval()
    llm = _llama(gguf_path)
    tokenization = {lang: check_tokenization(llm, tok, texts) for lang, texts in heldout.items()}
    original_tok = AutoTokenizer.from_pretrained(str(out / slug / "instruct"))
    chat = check_chat(llm, model, tok, tokens, _llama(original_gguf), original_tok)
    timings[f"{slug}: llama.cpp checks"] = time.time() - t
    # the LEP model must tokenize chat prompts in llama.cpp as its original instruct model does there
    family_ok = all(d == 0 for d, _ in tokenization.values()) and all(
        r["prompt_ids_equal"] == r["original_prompt_ids_equal"] and not r["steps_differ"] for r in chat
    )
    return {
        "family": family,
        "pre_tokenizer": summary["pre_tokenizer"],
        "tokenizer": summary["tokenizer"],
        "notes": summary["notes"],
        "tokenization": tokenization,
        "chat": chat,
        "ok": family_ok,
    }


def print_results(results: list[dict], heldout: dict[str, list[str]], tokens: int, timings: dict[str, float]) -> None:
    """The table of both families, the tokenization differences and GGUF notes, the stage times."""
    print(
        "\n| family | GGUF tokenizer | held-out docs tokenized differently (ru / en) "
        "| chat prompts: ids equal, LEP (original) "
        "| greedy steps: llama.cpp's choice = transformers' | max abs logit difference |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        tk, chat = r["tokenization"], r["chat"]
        steps = len(chat) * tokens
        agree = steps - sum(len(c["steps_differ"]) + len(c["steps_tied"]) for c in chat)
        ties = sum(len(c["steps_tied"]) for c in chat)
        print(
            f"| {r['family']} | {r['tokenizer']} / {r['pre_tokenizer']} "
            f"| {tk['ru'][0]} of {len(heldout['ru'])} / {tk['en'][0]} of {len(heldout['en'])} "
            f"| {sum(c['prompt_ids_equal'] for c in chat)} of {len(chat)} "
            f"({sum(c['original_prompt_ids_equal'] for c in chat)} of {len(chat)}) "
            f"| {agree} of {steps}"
            + (f" (+{ties} ties, top-2 margin < {TIE:g})" if ties else "")
            + f" | {max(c['max_logit_delta'] for c in chat):.1e} |"
        )
    for r in results:
        for lang, (_, examples) in r["tokenization"].items():
            for example in examples:
                print(f"  {r['family']} {lang}: e.g. {example}")
        for note in r["notes"]:
            print(f"  {r['family']} note: {note}")
    for name, seconds in timings.items():
        print(f"  {name}: {seconds:.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/gguf-check"))
    parser.add_argument("--tokens", type=int, default=24, help="greedy tokens generated per chat prompt")
    parser.add_argument("--docs", type=int, default=None, help="held-out documents per language (default: all)")
    args = parser.parse_args()
    started = time.time()
    timings: dict[str, float] = {}

    t = time.time()
    sys.path.insert(0, str(built_bindings()))
    timings["llama.cpp build (0 when cached)"] = time.time() - t
    heldout = {lang: _texts(SHARED / lang / "heldout.jsonl", args.docs) for lang in ("ru", "en")}
    results = []
    with atomic_output_dir(args.out, force=True) as out:
        corpus = out / "ru-train-slice.jsonl"
        lines = (json.dumps({"text": x}, ensure_ascii=False) + "\n" for x in _texts(SHARED / "ru" / "train.jsonl", 800))
        corpus.write_text("".join(lines), encoding="utf-8")
        for family, source in FAMILIES.items():
            results.append(check_family(family, source, out, corpus, heldout, args.tokens, timings))
        record = {"results": results, "seconds": timings}
        (out / "gguf_check.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    ok = all(r["ok"] for r in results)
    print_results(results, heldout, args.tokens, timings)
    verdict = "PASSED" if ok else "FAILED"
    print(f"gguf-check: {verdict} in {time.time() - started:.0f} s (results in {args.out}/gguf_check.json)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
