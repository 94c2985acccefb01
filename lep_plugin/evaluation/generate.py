"""Greedy generation for the copy tasks: batched, left-padded, stopping on every EOS of the model."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from lep_plugin.common.distributed import forward_needs_all_ranks
from lep_plugin.common.tokenizers import fingerprint_tokenizer


@contextlib.contextmanager
def inference_mode(model) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd for the duration; the training mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


def model_device(model) -> torch.device:
    return next(model.parameters()).device


_NEWLINE_IDS: dict[str, frozenset[int]] = {}


def newline_token_ids(tokenizer) -> frozenset[int]:
    """Ids of every token whose text contains a newline (the plain prompt's end of a copy)."""
    key = fingerprint_tokenizer(tokenizer)
    if key not in _NEWLINE_IDS:
        size = len(tokenizer)
        texts = tokenizer.backend_tokenizer.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
        _NEWLINE_IDS[key] = frozenset(i for i, text in enumerate(texts) if "\n" in text)
    return _NEWLINE_IDS[key]


def eos_token_ids(model, tokenizer) -> set[int]:
    """EOS of the tokenizer and of the model's generation config (chat models often end turns differently)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    return ids


class _RowBudgets:
    """Ends each row of a batch after its own number of new tokens (``generate`` has one limit per call).

    A stopping criterion by duck typing (``generate`` only calls it): subclassing transformers'
    ``StoppingCriteria`` would import transformers with this module, seconds on every ``lep --help``.
    """

    def __init__(self, prompt_width: int, budgets: Sequence[int], device: torch.device):
        self.prompt_width = prompt_width
        self.budgets = torch.tensor(list(budgets), dtype=torch.long, device=device)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return (input_ids.shape[1] - self.prompt_width) >= self.budgets


def greedy_generate(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    stop_ids: set[int] | frozenset[int],
    pad_id: int | None,
    batch_size: int = 8,
    progress: Callable[[int], object] | None = None,
) -> list[list[int]]:
    """Greedy continuations of ``prompts`` by ``model.generate``, batched with left padding.

    Each continuation ends with the first stop token (included) or after ``max_new_tokens`` (one limit, or
    one per prompt). Prompts are batched in length order to waste little padding; the result is in the
    order of ``prompts``; ``progress(n)`` is called after each batch of n prompts. Under DeepSpeed ZeRO-3 or
    FSDP with several ranks every forward pass is a collective, so all ranks keep stepping until the slowest
    is done (``synced_gpus``).
    """
    from transformers import StoppingCriteriaList

    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(prompts) or min(budgets, default=1) < 1:
        raise ValueError("one generation limit of at least 1 per prompt")
    pad_id = 0 if pad_id is None else pad_id  # any id: padded positions are masked out
    synced = forward_needs_all_ranks(model)
    device = model_device(model)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    results: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, width - len(prompts[i]) :] = torch.tensor(list(prompts[i]), dtype=torch.long)
            mask[r, width - len(prompts[i]) :] = 1
        limits = [budgets[i] for i in rows]
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            synced_gpus=synced,
            generation_config=_greedy_config(max(limits), stop_ids, pad_id),
            stopping_criteria=StoppingCriteriaList([_RowBudgets(width, limits, device)]),
        )
        for r, i in enumerate(rows):
            tokens = out[r, width : width + limits[r]].tolist()
            # generate pads a row that stopped early: keep up to its first stop token
            end = next((k + 1 for k, t in enumerate(tokens) if t in stop_ids), len(tokens))
            results[i] = tokens[:end]
        if progress is not None:
            progress(len(rows))
    return results


def _greedy_config(max_new_tokens: int, stop_ids: set[int] | frozenset[int], pad_id: int):
    from transformers import GenerationConfig

    stop = sorted(stop_ids)
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop or None,
        pad_token_id=pad_id,
        temperature=None,
        top_p=None,
        top_k=None,
    )
