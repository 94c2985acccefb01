"""Tiny base and "instruct" models for the demo, trained by the demo itself on the CPU in about two minutes.

* base: a 2-layer Llama (d=96) with the real Mistral-7B tokenizer, trained from scratch as a language
  model on the demo texts (mostly Russian and English prose);
* instruct: the base fine-tuned on chat-format instructions (copy, upper-case, count words …) through the
  tokenizer's chat template, loss on the answers only.

Both are far too small to be useful models; they are real checkpoints of the two kinds LEP works on,
so every later stage (vocabulary, embedding training, propagation, evaluation) runs for real. Training
is time-boxed (``seconds``) so the demo fits its budget on any machine.

The defaults are the demo's. The mini reproduction (``benchmarks/mini_reproduction.py``) needs an
instruct model that really copies, and opts in to more: repeated passages in the base's texts
(``repeat``), longer sequences, extra chat examples (``extra``) and a warm-up + cosine learning rate
over the time box (``schedule``).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from lep_plugin.common.corpus import iter_texts
from lep_plugin.demo.families import tiny_config


def _config(tok, hidden: int, layers: int):

    return tiny_config(
        "llama",
        tok,
        hidden,
        layers,
        intermediate_size=hidden * 3,
        max_position_embeddings=1024,
        pad_token_id=tok.eos_token_id,
    )


def _lr_factor(step: int, elapsed: float, seconds: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10 % by the end of the time box.

    The decay follows elapsed time, not steps, because training stops at a wall-clock limit whose step
    count is not known in advance.
    """
    ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
    progress = min(1.0, elapsed / seconds) if seconds > 0 else 1.0
    return ramp * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _train(
    model,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    seconds: float,
    lr: float,
    log: Callable[[str], None],
    label: str,
    schedule: bool = False,
    warmup: int = 30,
    groups: list[dict] | None = None,
    check: Callable[[object], bool] | None = None,
    check_every: float = 60.0,
) -> int:
    """Train until ``seconds`` have passed. ``groups`` are optimizer parameter groups with their own
    ``lr`` (default: every parameter at ``lr``); the schedule scales each group's rate. ``check(model)`` is
    called (model in eval mode, no grad) every ``check_every`` seconds of training; True stops early."""
    groups = groups or [{"params": list(model.parameters()), "lr": lr}]
    for group in groups:
        group["base_lr"] = group["lr"]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    params = [p for group in groups for p in group["params"]]
    model.train()
    start, step, first = time.perf_counter(), 0, None
    next_check = check_every
    for ids, labels in batches:
        if schedule:
            factor = _lr_factor(step, time.perf_counter() - start, seconds, warmup)
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        step += 1
        first = first if first is not None else loss.item()
        if step % 20 == 0:
            log(f"  {label} step {step}: loss {loss.item():.3f} (from {first:.3f})")
        elapsed = time.perf_counter() - start
        if check is not None and elapsed >= next_check:
            model.eval()
            with torch.no_grad():
                done = check(model)
            model.train()
            next_check = (time.perf_counter() - start) + check_every
            if done:
                log(f"  {label}: check passed at step {step}")
                break
        if time.perf_counter() - start > seconds:
            break
    model.eval()
    return step


def _repeated(chunk: list[int], rng: random.Random, shuffle: bool) -> list[int]:
    """The first half of ``chunk`` written twice, so the second copy is predictable by looking each next
    token up in the first one: what makes a small model grow induction (copy) heads.

    On a corpus small enough to memorise, the model lowers the second copy's loss by recalling the text
    instead, and no copy head forms: the texts must be many more than the steps can memorise.
    ``shuffle`` puts the half's tokens in random order first, so only copying can predict them (measured
    on the mini reproduction: it made the language model worse and copying no better, so it is off there).
    """
    half = chunk[: len(chunk) // 2]
    if shuffle:
        half = rng.sample(half, len(half))
    return (half + half + chunk)[: len(chunk)]


def _lm_batches(tok, files: list[Path], seq: int, batch: int, seed: int, repeat: float = 0.0, shuffle: bool = False):
    ids: list[int] = []
    for text in iter_texts(files):
        ids += tok(text, add_special_tokens=True)["input_ids"] + [tok.eos_token_id]
    chunks = [ids[i : i + seq] for i in range(0, len(ids) - seq, seq)]
    rng = random.Random(seed)
    while True:
        rng.shuffle(chunks)
        for i in range(0, len(chunks) - batch, batch):
            rows = [
                _repeated(c, rng, shuffle) if repeat and rng.random() < repeat else c for c in chunks[i : i + batch]
            ]
            block = torch.tensor(rows)
            yield block, block


def _chat_examples(tok, records: Iterable[dict], max_len: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids + EOS) of chat records that fit ``max_len`` tokens."""
    examples = []
    for record in records:
        messages = record["messages"]
        prompt_text = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        prompt = tok(prompt_text, add_special_tokens=False)["input_ids"]  # the template writes BOS itself
        answer = tok(messages[-1]["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(prompt) + len(answer) <= max_len:
            examples.append((prompt, answer))
    return examples


def _chat_batches(tok, instructions: Path, batch: int, seed: int, max_len: int = 256, extra: Sequence[dict] = ()):
    records = [json.loads(line) for line in instructions.read_text(encoding="utf-8").splitlines()]
    examples = _chat_examples(tok, [*records, *extra], max_len)
    rng = random.Random(seed)
    while True:
        rng.shuffle(examples)
        for i in range(0, len(examples) - batch, batch):
            group = examples[i : i + batch]
            width = max(len(p) + len(a) for p, a in group)
            ids = torch.full((len(group), width), tok.eos_token_id)
            labels = torch.full((len(group), width), -100)
            for r, (p, a) in enumerate(group):
                ids[r, : len(p) + len(a)] = torch.tensor(p + a)
                labels[r, len(p) : len(p) + len(a)] = torch.tensor(a)
            yield ids, labels


def train_base(
    tokenizer_dir: Path,
    texts: list[Path],
    out: Path,
    seconds: float,
    log=print,
    hidden: int = 96,
    layers: int = 2,
    seq: int = 128,
    lr: float = 3e-3,
    repeat: float = 0.0,
    shuffle: bool = False,
    schedule: bool = False,
) -> Path:
    """A language model from scratch; ``repeat`` is the fraction of training sequences that repeat a passage
    (of shuffled tokens if ``shuffle``)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    model = LlamaForCausalLM(_config(tok, hidden, layers))
    batches = _lm_batches(tok, texts, seq=seq, batch=8, seed=0, repeat=repeat, shuffle=shuffle)
    steps = _train(model, batches, seconds, lr, log, "base", schedule=schedule)
    model.save_pretrained(str(out), max_shard_size="4MB")
    tok.save_pretrained(str(out))
    log(f"  base: {steps} steps")
    return out


def embedding_groups(model, lr: float, embed_lr: float | None) -> list[dict] | None:
    """Parameter groups with the input and output embeddings at ``embed_lr`` (None: one group at ``lr``)."""
    if embed_lr is None:
        return None
    embeds = {id(model.get_input_embeddings().weight)}
    if model.get_output_embeddings() is not None:
        embeds.add(id(model.get_output_embeddings().weight))
    params = list(model.parameters())
    return [
        {"params": [p for p in params if id(p) not in embeds], "lr": lr},
        {"params": [p for p in params if id(p) in embeds], "lr": embed_lr},
    ]


def train_instruct(
    base: Path,
    instructions: Path,
    out: Path,
    seconds: float,
    log=print,
    extra: Sequence[dict] = (),
    lr: float = 1e-3,
    max_len: int = 256,
    schedule: bool = False,
    embed_lr: float | None = None,
    check: Callable[[object], bool] | None = None,
    check_every: float = 60.0,
    history: dict | None = None,
) -> Path:
    """The base tuned on the chat records of ``instructions`` plus ``extra`` ones (loss on answers only).

    ``embed_lr``: a separate learning rate for the input and output embeddings (LEP assumes instruction
    tuning moves them little). ``check(model)`` runs every ``check_every`` seconds and stops the training
    early when it returns True (``seconds`` is then the limit). ``history`` (a dict) receives the steps
    and the seconds taken.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base))
    batches = _chat_batches(tok, instructions, batch=8, seed=1, max_len=max_len, extra=extra)
    began = time.perf_counter()
    steps = _train(
        model,
        batches,
        seconds,
        lr,
        log,
        "instruct",
        schedule=schedule,
        groups=embedding_groups(model, lr, embed_lr),
        check=check,
        check_every=check_every,
    )
    if history is not None:
        history.update(steps=steps, seconds=round(time.perf_counter() - began, 1))
    model.save_pretrained(str(out), max_shard_size="4MB")
    tok.save_pretrained(str(out))
    log(f"  instruct: {steps} steps")
    return out
