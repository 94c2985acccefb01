"""What a merged model dir holds besides the weights: the output tokenizer (the new vocabulary plus the
instruct model's added tokens, special-token map and chat template), the configs with mapped ids, and the
summary a user reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lep_plugin.checkpoints.model_config import write_config_files
from lep_plugin.errors import LEPError
from lep_plugin.propagation.fits import Fits
from lep_plugin.propagation.plan import Plan


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
        if token.new_id >= plan.new_size:  # not len(): one vocabulary count per call (issue 22)
            src = plan.instruct_tok.added_tokens_decoder[token.instruct_id]
            added = AddedToken(
                token.content,
                single_word=src.single_word,
                lstrip=src.lstrip,
                rstrip=src.rstrip,
                normalized=src.normalized,
                special=src.special,
            )
            tok.add_tokens([added], special_tokens=src.special)
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = getattr(plan.instruct_tok, name, None)
        if value is not None:
            setattr(tok, name, value)
    extra = getattr(plan.instruct_tok, "extra_special_tokens", None) or getattr(
        plan.instruct_tok, "additional_special_tokens", None
    )
    if extra:
        try:
            tok.add_special_tokens({"additional_special_tokens": list(extra)}, replace_extra_special_tokens=False)
        except TypeError:
            tok.add_special_tokens({"additional_special_tokens": list(extra)})
    if plan.instruct_tok.chat_template:
        tok.chat_template = plan.instruct_tok.chat_template
    size = len(tok)
    if size > plan.out_rows:
        raise LEPError(f"output tokenizer has {size} tokens but the embeddings {plan.out_rows} rows")
    return tok


def write_tokenizer_and_configs(plan: Plan, target: Path) -> None:
    tok = output_tokenizer(plan)
    tok.save_pretrained(str(target))
    write_config_files(plan.instruct_dir, target, plan.instruct_tok, tok, plan.out_rows)


def recommendation(methods: list[str], fits: Fits) -> str | None:
    """One line: which written method to use, from the fits. Every method's P is scored on the widest
    system fitted (conversion: every new token; else overlap), input and output residuals summed; the
    lowest wins, ties go to conversion (the paper's default, best or near-best in its tables)."""
    if len(methods) < 2 or not fits:
        return None
    system = next(iter(fits.values()))[methods[0]].widest_system()
    if system is None:
        return None
    score = {m: sum(by_method[m].residuals[system] for by_method in fits.values()) for m in methods}
    best = min(methods, key=lambda m: (round(score[m], 12), m != "conversion"))
    others = ", ".join(f"{m} {score[m]:.6g}" for m in methods if m != best)
    return (
        f"recommendation: {best} – the lowest residual on the {system} system ({score[best]:.6g}; {others}), "
        "summed over the matrices"
    )


def summary_text(report: dict[str, Any], fits: Fits, output: Path) -> str:
    """What ``lep-merge`` prints when done: size and time, every fit, the advice and characters per token."""
    lines = [f"lep-merge: wrote {output} ({report['output_bytes'] / 1e9:.2f} GB) in {report['seconds']:.1f} s"]
    for side, by_method in fits.items():
        for method, result in by_method.items():
            # 6 significant digits: methods often differ only in the third or fourth
            res = ", ".join(f"{system} fit {v:.6g}" for system, v in result.residuals.items())
            lines.append(f"  {method:10s} {side:6s} relative residual: {res or 'n/a'}")
        first = next(iter(by_method.values()), None)
        if first is not None and first.precision is not None:
            lines.append(f"  precision  {side:6s} {first.precision}: {first.precision_reason}")
    advice = report.get("recommendation")
    if advice:
        lines.append(f"  {advice}")
    cpt = report.get("chars_per_token")
    if cpt:
        lines.append(f"  characters per token: {cpt['old']:.2f} -> {cpt['new']:.2f} ({cpt['gain']:.2f}x fewer tokens)")
    return "\n".join(lines)
