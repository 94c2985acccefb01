"""Tiny base and "instruct" models for the demo, trained by the demo itself on the CPU in about two minutes.

* base: a 2-layer Llama (d=96) with the real Mistral-7B tokenizer, trained from scratch as a language
  model on the demo texts (mostly Russian and English prose);
* instruct: the base fine-tuned on chat-format instructions (copy, upper-case, count words …) through the
  tokenizer's chat template, loss on the answers only.

Both are far too small to be useful models; they are real checkpoints of the two kinds LEP works on,
so every later stage (vocabulary, embedding training, propagation, evaluation) runs for real. Training
is time-boxed (``seconds``) so the demo fits its budget on any machine.

The defaults are the demo's. The benchmarks need a base that copies in context (LEP's premise) and opt
in to more: windows with repeated passages in the base's texts and a copy warm-up
(:mod:`lep_plugin.demo.repetition`), longer sequences, extra chat examples (``extra``) and a warm-up +
cosine learning rate over the time box (``schedule``).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from lep_plugin.calibration.copy_task import copy_mixture, mixture_summary
from lep_plugin.checkpoints.discover import open_checkpoint
from lep_plugin.common.corpus import iter_texts
from lep_plugin.demo.families import tiny_config
from lep_plugin.demo.paths import DEMO_DATA
from lep_plugin.demo.repetition import RepetitionOptions, random_token_rows, repetition_texts
from lep_plugin.math import propagation as prop


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


def _lm_batches(tok, texts: Iterable[str], seq: int, batch: int, seed: int):
    ids: list[int] = []
    for text in texts:
        ids += tok(text, add_special_tokens=True)["input_ids"] + [tok.eos_token_id]
    chunks = [ids[i : i + seq] for i in range(0, len(ids) - seq, seq)]
    rng = random.Random(seed)
    while True:
        rng.shuffle(chunks)
        for i in range(0, len(chunks) - batch, batch):
            block = torch.tensor(chunks[i : i + batch])
            yield block, block


def _copy_warmup_batches(tok, batch: int, seed: int, lengths: tuple[int, int] = (8, 24), row_tokens: int = 64):
    """Random strings of the vocabulary's ordinary tokens written over and over (``random_token_rows``), their
    length drawn per batch: with one fixed length a model learns to copy from a fixed distance back, which
    is no use on text (measured: it forms in 300 steps and leaves held-out text's repeat loss unchanged)."""
    special = set(tok.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tok)) if i not in special])
    generator = torch.Generator().manual_seed(seed)
    while True:
        length = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=generator))
        block = random_token_rows(ordinary, batch, length, -(-row_tokens // length), generator)[:, :row_tokens]
        yield block, block


def repeat_losses_of(model, tok, texts: Iterable[str], docs: int = 16, length: int = 60) -> dict[str, float]:
    """In-context copying of a language model: mean loss (nats/token) on a ``length``-token passage of each
    of the first ``docs`` texts and on the same passage written again right after it, and their ratio
    (≈ 1: no copying; a model with induction heads predicts the second occurrence far better)."""
    first = second = 0.0
    texts = [t for t in itertools.islice((t for t in texts if t.strip()), docs)]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"][:length]
        x = torch.tensor([[tok.bos_token_id, *ids, *ids]])
        with torch.no_grad():
            nll = -torch.log_softmax(model(x).logits[0, :-1].float(), -1).gather(1, x[0, 1:, None])[:, 0]
        first += float(nll[: len(ids)].mean())
        second += float(nll[len(ids) :].mean())
    first, second = first / len(texts), second / len(texts)
    return {"first": first, "second": second, "ratio": second / first}


def repeat_losses(model_dir: Path, texts: Iterable[str], docs: int = 16, length: int = 60) -> dict[str, float]:
    """:func:`repeat_losses_of` the model saved in ``model_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return repeat_losses_of(model, tok, texts, docs, length)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = open_checkpoint(model_dir, "model", prefer_deepspeed=False)
    return {name: checkpoint.get(name).float() for name in checkpoint.names()}


def relative_changes(base_dir: Path, instruct_dir: Path) -> dict[str, float]:
    """How far an instruction step moved a model (LEP assumes: little): ‖W_instruct − W_base‖ / ‖W_base‖ of
    the input embeddings, the output embeddings and the transformer body (all its tensors together), and the
    relative residual of the best linear map base → instruct fitted on all rows of each embedding matrix."""
    base, inst = _weights(base_dir), _weights(instruct_dir)
    emb = {"input": "model.embed_tokens.weight", "output": "lm_head.weight"}
    out: dict[str, float] = {}
    for role, name in emb.items():
        out[f"{role}_change"] = float((inst[name] - base[name]).norm() / base[name].norm())
        eq = prop.accumulate([(base[name].double(), inst[name].double())], base[name].shape[1])
        out[f"{role}_linear_fit_residual"] = prop.solve(eq).residual
    body = [k for k in base if k not in emb.values()]
    diff = math.sqrt(sum(float((inst[k] - base[k]).norm() ** 2) for k in body))
    norm = math.sqrt(sum(float(base[k].norm() ** 2) for k in body))
    out["body_change"] = diff / norm
    return out


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
    repetition: RepetitionOptions | None = None,
    copy_warmup_seconds: float = 0.0,
    schedule: bool = False,
) -> Path:
    """A language model from scratch on ``texts`` (cut into windows with repeated passages if ``repetition``),
    after ``copy_warmup_seconds`` of random token strings written several times over (the copy warm-up)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    model = LlamaForCausalLM(_config(tok, hidden, layers))
    if copy_warmup_seconds:
        warmup = _copy_warmup_batches(tok, batch=32, seed=0)
        log(f"  copy warm-up: {_train(model, warmup, copy_warmup_seconds, 1e-3, log, 'copy warm-up')} steps")
    documents = iter_texts(texts)
    if repetition is not None:
        documents = repetition_texts(documents, repetition, seed=0)
    batches = _lm_batches(tok, documents, seq=seq, batch=8, seed=0)
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


def make_instruct(
    base: Path,
    out: Path,
    seconds: float,
    texts: dict[str, list[str]],
    log=print,
    copies: int = 4000,
    lr: float = 1e-3,
    embed_lr: float = 3e-5,
    history: dict | None = None,
) -> Path:
    """The instruction step of the pretrained tiny base: its chat template, the shipped instructions and
    ``copies`` copy chats made from ``texts`` (language -> documents, ``copy_mixture``), the transformer at
    ``lr`` and the embeddings at ``embed_lr`` (LEP assumes instruction tuning moves them little), a warm-up +
    cosine schedule over the ``seconds`` time box."""
    chats, counts = copy_mixture(texts, copies)
    log(f"  instruction data: {DEMO_DATA / 'instructions.jsonl'} + {len(chats)} copy chats ({mixture_summary(counts)})")
    return train_instruct(
        base,
        DEMO_DATA / "instructions.jsonl",
        out,
        seconds,
        log,
        extra=chats,
        lr=lr,
        max_len=384,
        schedule=True,
        embed_lr=embed_lr,
        history=history,
    )
