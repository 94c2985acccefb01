"""The recipe of the tiny pretrained base that ships in ``lep_plugin/data/tiny-base`` (issue 27).

A real LEP run starts from a downloaded base (Llama-3-8B, Mistral-7B) that already copies in context; the
demo and the claim benchmark start from this one, pretrained once by this recipe and reused:

* an English-leaning byte-level BPE (Tekken's pre-tokenizer and chat template, 3,500 tokens trained on the
  English texts and a little Russian), so Russian is split into short pieces, as Llama-2/Mistral split it;
* a 2-layer Llama (d=256, 4 heads of 128, untied, RoPE θ = 10⁶) with the copy circuit of
  :mod:`lep_plugin.demo.circuit` written in, then trained as a language model on English and Russian
  text cut into windows, a share of which repeat a passage (:mod:`lep_plugin.demo.repetition`); the circuit's
  blocks are held fixed, everything else (embeddings included) learns around them;
* every few minutes: held-out bits per character and repeat-loss ratio, Russian and English, logged;
  a resumable state (model, optimizer, step) — the data of step s is drawn from (seed, s), so a resumed
  run sees exactly what an uninterrupted one would.

Run it with ``python benchmarks/pretrain_base.py --output DIR`` (README: how long it took).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from lep_plugin.common.corpus import iter_texts
from lep_plugin.common.devices import machine_description
from lep_plugin.common.fs import atomic_file, write_text_atomic
from lep_plugin.demo.circuit import CircuitLayout, circuit_snapshot, install_copy_circuit, restore_circuit_
from lep_plugin.demo.models import repeat_losses_of
from lep_plugin.demo.paths import DEMO_DATA
from lep_plugin.demo.repetition import RepetitionOptions, repetition_texts
from lep_plugin.evaluation.evaluate import bits_per_char
from lep_plugin.vocab.build import build_vocabulary
from lep_plugin.vocab.mistral import import_mistral_common_tokenizer, mistral_common_file
from lep_plugin.vocab.options import VocabOptions

MANIFEST = "manifest.json"


class PretrainOptions(BaseModel):
    """Everything the recipe depends on besides the texts (recorded in the manifest)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    steps: int = Field(1500, description="Optimizer steps (fixed, so the result does not depend on speed).")
    batch: int = 16
    seq: int = 256
    lr: float = 2e-3
    warmup: int = 50
    vocab_size: int = 3500
    hidden: int = 256
    intermediate: int = 768
    heads: int = 4
    head_dim: int = 128
    rope_theta: float = 1e12
    english_share: float = Field(0.3, description="Share of training rows drawn from English text.")
    russian_chars: int = Field(6_000_000, description="Characters of Russian training text.")
    repetition: RepetitionOptions = RepetitionOptions(share=0.5)
    circuit: CircuitLayout | None = CircuitLayout()
    hold_circuit: bool = Field(True, description="Keep the hand-written heads fixed while the rest trains.")
    eval_minutes: float = 5.0
    checkpoint_minutes: float = 5.0
    eval_chars: int = 20_000


def english_texts() -> list[str]:
    """The English training text: the shipped demo documents and the Python documentation's topic pages
    (``pydoc_data``, part of every CPython install: ~465k characters of plain English prose and examples)."""
    import pydoc_data.topics

    topics = [pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics)]
    return list(iter_texts([DEMO_DATA / "en.jsonl"])) + topics


def russian_texts(shared: Path | None, chars: int) -> list[str]:
    """The Russian training text: the shipped demo documents, then ``../shared/data/ru/train.jsonl``."""
    files = [DEMO_DATA / "ru.jsonl"]
    if shared is not None and (shared / "ru" / "train.jsonl").is_file():
        files.append(shared / "ru" / "train.jsonl")
    return list(iter_texts(files, max_chars=chars))


def heldout_texts(shared: Path | None) -> dict[str, list[str]]:
    """Held-out evaluation text per language (never trained on): the shared held-out files."""
    if shared is None or not (shared / "ru" / "heldout.jsonl").is_file():
        raise FileNotFoundError("the pretraining recipe measures on ../shared/data/{ru,en}/heldout.jsonl")
    return {lang: list(iter_texts([shared / lang / "heldout.jsonl"])) for lang in ("ru", "en")}


def fingerprint_texts(texts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def build_tokenizer(out: Path, english: list[str], russian: list[str], vocab_size: int) -> Path:
    """The English-leaning byte-level BPE: Tekken's layout, trained on the English texts plus the first ten
    Russian demo documents (about a tenth of the characters)."""
    work = out / "tokenizer-work"
    work.mkdir(parents=True, exist_ok=True)
    mix = work / "english-leaning.jsonl"
    mix.write_text("".join(json.dumps({"text": t}) + "\n" for t in english + russian[:10]), encoding="utf-8")
    tekken = import_mistral_common_tokenizer(mistral_common_file("tekken_240718.json"), work / "tekken")
    options = VocabOptions(method="bpe", vocab_size=vocab_size)
    return build_vocabulary(tekken, [mix], options, out / "tokenizer", force=True)


def token_chunks(tok, texts: Iterable[str], options: PretrainOptions, seed: int) -> torch.Tensor:
    """``texts`` in repetition windows, tokenized (BOS … EOS per window), cut into rows of ``seq + 1`` tokens."""
    ids: list[int] = []
    for window in repetition_texts(texts, options.repetition, seed=seed):
        ids += [tok.bos_token_id, *tok(window, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    rows = len(ids) // options.seq
    return torch.tensor(ids[: rows * options.seq]).view(rows, options.seq)


def step_batch(step: int, chunks: dict[str, torch.Tensor], options: PretrainOptions) -> torch.Tensor:
    """The rows of step ``step``: drawn from (seed, step) alone, so a resumed run repeats an uninterrupted one."""
    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + step)
    english = torch.rand(options.batch, generator=generator) < options.english_share
    rows = []
    for is_english in english.tolist():
        pool = chunks["en"] if is_english else chunks["ru"]
        rows.append(pool[int(torch.randint(len(pool), (1,), generator=generator))])
    return torch.stack(rows)


def lr_factor(step: int, options: PretrainOptions) -> float:
    """Linear warm-up, then cosine decay to 10 % at the last step."""
    if step < options.warmup:
        return (step + 1) / options.warmup
    progress = (step - options.warmup) / max(1, options.steps - options.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def new_model(tok, options: PretrainOptions):
    """The 2-layer Llama, with the copy circuit written in when ``options.circuit`` is set."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=options.hidden,
        intermediate_size=options.intermediate,
        num_hidden_layers=2,
        num_attention_heads=options.heads,
        num_key_value_heads=options.heads,
        head_dim=options.head_dim,
        max_position_embeddings=1024,
        rope_theta=options.rope_theta,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    torch.manual_seed(options.seed)
    model = LlamaForCausalLM(config)
    facts = install_copy_circuit(model, options.circuit, options.seed) if options.circuit else {}
    return model, facts


def measure(model, tok, heldout: dict[str, list[str]], chars: int) -> dict[str, float]:
    """Held-out bits per character and repeat-loss ratio per language."""
    out: dict[str, float] = {}
    model.eval()
    for lang, texts in heldout.items():
        sample, total = [], 0
        for text in texts:
            if total >= chars:
                break
            sample.append(text[: chars - total])
            total += len(sample[-1])
        with torch.no_grad():
            out[f"{lang}_bits_per_char"] = round(bits_per_char(model, tok, sample, window=512), 4)
        out[f"{lang}_repeat_loss_ratio"] = round(repeat_losses_of(model, tok, texts)["ratio"], 4)
    model.train()
    return out


def save_state(path: Path, model, opt, step: int, seconds: float, history: list[dict]) -> None:
    """The resumable state, written atomically (a kill mid-write leaves the previous one)."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "seconds": seconds}
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
    write_text_atomic(path.with_suffix(".history.json"), json.dumps(history, indent=1))


def load_state(path: Path, model, opt) -> tuple[int, float, list[dict]]:
    if not path.is_file():
        return 0, 0.0, []
    state = torch.load(path, weights_only=True)  # tensors and numbers only: no pickle is executed
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    history = json.loads(path.with_suffix(".history.json").read_text(encoding="utf-8"))
    return int(state["step"]), float(state["seconds"]), history


def train_loop(
    model, tok, chunks, heldout, options: PretrainOptions, work: Path, log: Callable[[str], None], stop_after=None
):
    """Train to ``options.steps``, resuming from ``work/state.pt``; returns (history, seconds). ``stop_after``
    ends this call after that many steps (state saved), as an interrupted run would end."""
    from tqdm import tqdm

    work.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=0.01, betas=(0.9, 0.95))
    step, seconds, history = load_state(work / "state.pt", model, opt)
    snapshot = circuit_snapshot(model) if options.circuit and options.hold_circuit else None
    began, last_eval, last_save = time.perf_counter() - seconds, seconds, seconds
    if not history:
        history.append({"step": 0, "seconds": 0.0, **measure(model, tok, heldout, options.eval_chars)})
        log(f"step 0: {history[-1]}")
    model.train()
    bar = tqdm(total=options.steps, initial=step, desc="pretraining", disable=None)
    last = options.steps if stop_after is None else min(options.steps, step + stop_after)
    while step < last:
        for group in opt.param_groups:
            group["lr"] = options.lr * lr_factor(step, options)
        batch = step_batch(step, chunks, options)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if snapshot:
            restore_circuit_(snapshot)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        seconds = time.perf_counter() - began
        if seconds - last_eval >= options.eval_minutes * 60 or step == options.steps:
            history.append({"step": step, "seconds": round(seconds, 1), "loss": round(loss.item(), 4)})
            history[-1] |= measure(model, tok, heldout, options.eval_chars)
            log(f"step {step}: {history[-1]}")
            last_eval = seconds
        if seconds - last_save >= options.checkpoint_minutes * 60 or step == last:
            save_state(work / "state.pt", model, opt, step, seconds, history)
            last_save = seconds
    bar.close()
    return history, seconds


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pretrain(out: Path, options: PretrainOptions, shared: Path | None, command: str, log=print) -> Path:
    """The whole recipe into ``out`` (``out/tiny-base`` is the result; ``out/state.pt`` resumes a run)."""
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    english, russian = english_texts(), russian_texts(shared, options.russian_chars)
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        build_tokenizer(out, english, russian, options.vocab_size)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    chunks = {
        "en": token_chunks(tok, english, options, options.seed),
        "ru": token_chunks(tok, russian, options, options.seed + 1),
    }
    log(f"training rows: {len(chunks['en'])} English, {len(chunks['ru'])} Russian of {options.seq} tokens")
    heldout = heldout_texts(shared)
    model, circuit_facts = new_model(tok, options)
    history, seconds = train_loop(model, tok, chunks, heldout, options, out, log)
    data = {
        "english": fingerprint_texts(english),
        "russian": fingerprint_texts(russian),
        "english_chars": sum(map(len, english)),
        "russian_chars": sum(map(len, russian)),
    }
    return save_base(out / "tiny-base", model, tok, options, history, seconds, data, circuit_facts, command)


def save_base(target, model, tok, options, history, seconds, data, circuit_facts, command) -> Path:
    """The model (one float32 safetensors file), its tokenizer and the manifest with the weights' sha256."""
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target), safe_serialization=True)
    tok.save_pretrained(str(target))
    manifest = {
        "recipe": "lep_plugin.demo.pretrain (issue 27): hand-written copy circuit + language-model training",
        "command": command,
        "options": options.model_dump(mode="json"),
        "steps": options.steps,
        "wall_seconds": round(seconds, 1),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "data": data,
        "circuit": circuit_facts,
        "final": history[-1],
        "history": history,
        "sha256": {"model.safetensors": sha256_file(target / "model.safetensors")},
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads_env": os.environ.get("OMP_NUM_THREADS"),
    }
    write_text_atomic(target / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return target
