"""Tiny models for the evaluation tests: a word-level tokenizer with a chat template, synthetic
held-out text over its lexicon, and a tiny Llama trained in seconds to copy through the exact prompt
that ``lep eval`` builds (so a high copy score is earned, not assumed)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from lep_plugin.evaluation.tasks import CHAT_INSTRUCTION, chat_messages, copy_prompt_ids

SEP = "<copy>"
# Zero-shot "instruct" format of the copier: BOS, the user's message, a separator; the answer ends with EOS.
COPIER_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}{{ ' " + SEP + "' }}{% endif %}"
)


def lexicon(size: int = 60, seed: int = 7) -> list[str]:
    """Distinct pseudo-words (consonant-vowel syllables)."""
    rng = random.Random(seed)
    words: dict[str, None] = {}
    while len(words) < size:
        words.setdefault("".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(4)))
    return list(words)


COPY_WORDS = 24  # every copy text has this many words (~215 chars: both a sentence and a paragraph)


def copy_text(words: list[str], rng: random.Random) -> str:
    """One sentence of COPY_WORDS distinct words (no final period: a rare "word." token would be copied badly).

    A fixed length keeps the copy at a fixed distance from its source, which a tiny model learns in a few
    hundred CPU steps (a general induction-head copier takes far longer to form).
    """
    return " ".join(rng.sample(words, COPY_WORDS))


def synthetic_documents(words: list[str], docs: int, seed: int) -> list[str]:
    """Documents of three newline-separated one-sentence paragraphs (each a copy text)."""
    rng = random.Random(seed)
    return ["\n".join(copy_text(words, rng) for _ in range(4)) for _ in range(docs)]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for text in texts:
            fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return path


def build_word_tokenizer(out: Path, words: list[str]) -> Path:
    """A WordLevel fast tokenizer over ``words`` (and ``word.``), whitespace split, decoded with spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", SEP]
    vocab_words = specials + CHAT_INSTRUCTION.split() + words + [w + "." for w in words]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(vocab_words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=[SEP],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = COPIER_CHAT_TEMPLATE
    tok.save_pretrained(str(out))
    return out


def tiny_llama_config(tok, hidden: int = 64, layers: int = 2):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def copy_examples(tok, texts: list[str]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids + EOS) exactly as the evaluation prompts the model."""
    out = []
    for text in texts:
        prompt = copy_prompt_ids(tok, text, "chat")
        answer = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append((prompt, answer))
    return out


def train_copier(
    tokenizer_dir: Path,
    out: Path,
    steps: int = 500,
    seed: int = 0,
    lr: float = 3e-3,
    hidden: int = 64,
    batch_size: int = 32,
    log=None,
) -> Path:
    """Train a tiny Llama to answer the chat copy prompt with the text; random sentences and paragraphs."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tok, hidden=hidden))
    words = sorted(w for w in tok.get_vocab() if w.isalpha() and w.islower() and w not in CHAT_INSTRUCTION.lower())
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    model.train()
    for step in range(steps):
        texts = []
        texts = [copy_text(words, rng) for _ in range(batch_size)]
        batch = copy_examples(tok, texts)
        length = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((len(batch), length), tok.pad_token_id)
        labels = torch.full((len(batch), length), -100)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for i, (p, a) in enumerate(batch):
            seq = p + a
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(p) : len(seq)] = torch.tensor(a)
            mask[i, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if log is not None and step % 25 == 0:
            log(step, loss.item())
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


def random_model(tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tok))
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


__all__ = [
    "build_word_tokenizer",
    "chat_messages",
    "copy_examples",
    "lexicon",
    "random_model",
    "synthetic_documents",
    "train_copier",
    "write_jsonl",
]
