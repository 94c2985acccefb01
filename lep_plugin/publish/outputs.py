"""What an LEP output carries for publishing, written where it is made: its model card (``README.md``) and
the tokenizer before LEP (``original_tokenizer/``: llama.cpp names a byte-level pre-tokenizer from it, see
:mod:`lep_plugin.publish.gguf`); a ``lep-merge`` output also gets the vocabulary's ``lep_vocab.json``.

* :func:`finish_merge_output` – called by ``lep-merge`` for each model it writes (inside its atomic dir);
* :func:`finish_training_output` – called by the plugin's ``post_train`` on the main process (twice per
  run: the same files are written again).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lep_plugin.common.tokenizers import (
    MANIFEST,
    fingerprint_tokenizer,
    load_tokenizer,
    read_manifest,
)
from lep_plugin.publish.card import (
    carried_metadata,
    eval_records,
    measure,
    merge_card,
    trainer_state,
    training_card,
    write_card,
)
from lep_plugin.publish.gguf import ORIGINAL_TOKENIZER


def save_original_tokenizer(tokenizer, target: Path) -> None:
    """``tokenizer`` (the one before LEP) as ``target/original_tokenizer/``, unless the same is there."""
    folder = Path(target) / ORIGINAL_TOKENIZER
    if (folder / "tokenizer.json").is_file():
        try:
            if fingerprint_tokenizer(load_tokenizer(folder)) == fingerprint_tokenizer(tokenizer):
                return
        except Exception:  # an unreadable copy is replaced
            pass
        shutil.rmtree(folder)
    tokenizer.save_pretrained(str(folder))


def _copy_manifest(sources: list[Path | None], target: Path) -> dict[str, Any] | None:
    for source in sources:
        if source is not None and (Path(source) / MANIFEST).is_file():
            if Path(source).resolve() != Path(target).resolve():
                shutil.copyfile(Path(source) / MANIFEST, Path(target) / MANIFEST)
            return read_manifest(target)
    return None


def _measured(old_tok, new_tok, text: Path | None, manifest: dict[str, Any] | None):
    """Characters per token before/after, once per (tokenizers, text) in a process: `lep-merge --method
    all` writes three cards, the plugin's post_train runs twice."""
    key = (fingerprint_tokenizer(old_tok), fingerprint_tokenizer(new_tok), str(text), tuple((manifest or {}).get("corpus") or ()))
    if key not in _MEASURED:
        _MEASURED[key] = measure(old_tok, new_tok, text, manifest)
    return _MEASURED[key]


_MEASURED: dict[tuple, Any] = {}


def finish_merge_output(plan, method: str, target: Path, report: dict[str, Any]) -> None:
    """Manifest, original tokenizer and model card of one ``lep-merge`` model in ``target``."""
    adapted = plan.models["adapted"]
    manifest = _copy_manifest([adapted.given, adapted.weights_dir, plan.new_tokenizer_dir], target)
    save_original_tokenizer(plan.instruct_tok, target)
    options = plan.options
    eval_json = getattr(options, "eval_json", None)
    single = len(plan.methods) == 1
    card = merge_card(
        str(options.output) if single else str(Path(options.output) / method),
        instruct=str(plan.models["instruct"].given),
        base=str(plan.models["base"].given),
        method=method,
        fits={role: fits[method] for role, fits in report["fits"].items()},
        manifest=manifest,
        old_size=len(plan.old_tok),
        new_size=len(plan.new_tok),
        metadata=carried_metadata(plan.models["instruct"].given),
        measured=_measured(plan.instruct_tok, plan.new_tok, options.sample_text, manifest),
        state=trainer_state(adapted.given),
        records=eval_records(eval_json) if eval_json is not None else None,
    )
    write_card(target, card, force=True)  # a fresh output dir: nothing of the user's is there


def finish_training_output(cfg, plan, echo=print) -> bool:
    """Original tokenizer and model card in the plugin's ``output_dir``; a README that the user wrote there
    is kept. Returns whether the card was written. Never fails the end of a training run: a problem is
    reported and the card left out."""
    output = Path(cfg["output_dir"])
    if not output.is_dir():
        return False
    try:
        return _finish_training_output(cfg, plan, output, echo)
    except Exception as err:  # the trained model is saved already; the card is not worth failing for
        echo(f"the LEP model card was not written to {output}: {err}")
        return False


def _finish_training_output(cfg, plan, output: Path, echo) -> bool:
    manifest = read_manifest(output) or read_manifest(plan.new_tokenizer)
    old_tok = load_tokenizer(plan.old_tokenizer)
    new_tok = load_tokenizer(plan.new_tokenizer)
    save_original_tokenizer(old_tok, output)
    base = str(cfg.get("base_model") or plan.old_tokenizer)
    card = training_card(
        output.name,
        base=base,
        manifest=manifest,
        old_size=len(old_tok),
        new_size=len(new_tok),
        metadata=carried_metadata(Path(base) if Path(base).is_dir() else None),
        measured=_measured(old_tok, new_tok, None, manifest),
        state=trainer_state(output),
    )
    written = write_card(output, card)
    if not written:
        echo(f"{output}/README.md is the user's own: kept (the LEP model card was not written)")
    return written
