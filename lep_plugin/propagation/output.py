"""What a merged model dir holds besides the weights: the output tokenizer (the new vocabulary plus the
instruct model's added tokens, special-token map and chat template), the configs with mapped ids, and the
summary a user reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lep_plugin.checkpoints.model_config import write_config_files
from lep_plugin.common.corpus import first_texts
from lep_plugin.common.tokenizers import chars_per_token_change
from lep_plugin.errors import LEPError
from lep_plugin.propagation.plan import Plan

SAMPLE_TEXTS = 2000  # documents of --sample-text measured for characters per token


def with_added_rows(out: torch.Tensor, plan: Plan, added_rows: dict[int, torch.Tensor]) -> torch.Tensor:
    """``out`` grown to the output's rows, the instruct model's added tokens given their instruct rows."""
    if out.shape[0] < plan.out_rows:
        out = torch.cat([out, torch.zeros(plan.out_rows - out.shape[0], out.shape[1], dtype=out.dtype)])
    for token in plan.added:
        if token.instruct_id in added_rows:
            out[token.new_id] = added_rows[token.instruct_id].to(out.dtype)
    return out


def output_tokenizer(plan: Plan):
    """The new tokenizer plus the instruct model's added tokens, special-token map and chat template."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(plan.new_tokenizer_dir))
    for token in plan.added:
        if token.new_id >= len(plan.new_tok):
            src = plan.instruct_tok.added_tokens_decoder[token.instruct_id]
            added = AddedToken(token.content, single_word=src.single_word, lstrip=src.lstrip, rstrip=src.rstrip, normalized=src.normalized, special=src.special)
            tok.add_tokens([added], special_tokens=src.special)
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = getattr(plan.instruct_tok, name, None)
        if value is not None:
            setattr(tok, name, value)
    extra = getattr(plan.instruct_tok, "extra_special_tokens", None) or getattr(plan.instruct_tok, "additional_special_tokens", None)
    if extra:
        try:
            tok.add_special_tokens({"additional_special_tokens": list(extra)}, replace_extra_special_tokens=False)
        except TypeError:
            tok.add_special_tokens({"additional_special_tokens": list(extra)})
    if plan.instruct_tok.chat_template:
        tok.chat_template = plan.instruct_tok.chat_template
    if len(tok) > plan.out_rows:
        raise LEPError(f"output tokenizer has {len(tok)} tokens but the embeddings {plan.out_rows} rows")
    return tok


def write_tokenizer_and_configs(plan: Plan, target: Path) -> None:
    tok = output_tokenizer(plan)
    tok.save_pretrained(str(target))
    write_config_files(plan.instruct_dir, target, plan.instruct_tok, tok, plan.out_rows)


def chars_per_token(plan: Plan) -> dict[str, float] | None:
    """Characters per token of the old and the new vocabulary on ``--sample-text``."""
    path = plan.options.sample_text
    if path is None:
        return None
    if not Path(path).is_file():
        raise LEPError(f"sample text {path} does not exist")
    texts = first_texts([Path(path)], SAMPLE_TEXTS)
    return chars_per_token_change(plan.instruct_tok, plan.new_tok, texts)


def recommendation(report: dict[str, Any]) -> str | None:
    """One line: which written method to use, from the fits. Every method's P is scored on the widest
    system fitted (conversion: every new token; else overlap), input and output residuals summed; the
    lowest wins, ties go to conversion (the paper's default, best or near-best in its tables)."""
    methods = report["methods"]
    if len(methods) < 2:
        return None
    first = next(iter(report["fits"].values()))
    system = next((s for s in ("conversion", "overlap") if f"residual_on_{s}" in first[methods[0]]), None)
    if system is None:
        return None
    key = f"residual_on_{system}"
    score = {m: sum(fits[m][key] for fits in report["fits"].values()) for m in methods}
    best = min(methods, key=lambda m: (round(score[m], 12), m != "conversion"))
    others = ", ".join(f"{m} {score[m]:.6g}" for m in methods if m != best)
    return f"recommendation: {best} – the lowest residual on the {system} system ({score[best]:.6g}; {others}), summed over the matrices"


def summary_text(report: dict[str, Any], output: Path) -> str:
    lines = [f"lep-merge: wrote {output} ({report['output_bytes'] / 1e9:.2f} GB) in {report['seconds']:.1f} s"]
    for role, fits in report["fits"].items():
        for method, values in fits.items():
            # 6 significant digits: methods often differ only in the third or fourth
            res = ", ".join(f"{k.removeprefix('residual_on_')} fit {v:.6g}" for k, v in values.items() if k.startswith("residual"))
            lines.append(f"  {method:10s} {role:6s} relative residual: {res or 'n/a'}")
    advice = report.get("recommendation")
    if advice:
        lines.append(f"  {advice}")
    cpt = report.get("chars_per_token")
    if cpt:
        lines.append(f"  characters per token: {cpt['old']:.2f} -> {cpt['new']:.2f} ({cpt['gain']:.2f}x fewer tokens)")
    return "\n".join(lines)
