"""What an LEP output carries for publishing, written where it is made: its model card (``README.md``) and
the tokenizer before LEP (``original_tokenizer/``: llama.cpp names a byte-level pre-tokenizer from it, see
:mod:`lep_plugin.publish.gguf`); a ``lep-merge`` output also gets the vocabulary's ``lep_vocab.json``.

* :func:`finish_merge_output` – called by ``lep-merge`` for each model it writes (inside its atomic dir);
* :func:`merge_facts` – what ``lep-merge``'s cards state besides the fits, gathered once per merge;
* :func:`finish_training_output` – called by the plugin's ``post_train`` on the main process (twice per
  run: the same files are written again).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lep_plugin.common.tokenizers import (
    MANIFEST,
    fingerprint_tokenizer,
    load_tokenizer,
    read_manifest,
)
from lep_plugin.errors import LEPError
from lep_plugin.propagation.fits import Fits
from lep_plugin.publish.card import (
    CardFacts,
    card_languages,
    carried_metadata,
    known_hub_id,
    measure,
    merge_card,
    trainer_state,
    training_card,
    unknown_hub_id_warning,
    write_card,
)
from lep_plugin.publish.checks import eval_records
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


def _manifest_source(plan) -> Path | None:
    """The dir whose ``lep_vocab.json`` a ``lep-merge`` output carries: the adapted model's, else its tokenizer's."""
    adapted = plan.models["adapted"]
    candidates = (adapted.given, adapted.weights_dir, plan.new_tokenizer_dir)
    return next((Path(c) for c in candidates if c is not None and (Path(c) / MANIFEST).is_file()), None)


def merge_facts(plan) -> CardFacts:
    """What the cards of one ``lep-merge`` state besides the fits, read and measured once for all the
    methods it writes (characters per token: on ``--sample-text``, else in-sample on the vocabulary's corpus)."""
    options = plan.options
    if options.sample_text is not None and not Path(options.sample_text).is_file():
        raise LEPError(f"sample text {options.sample_text} does not exist")
    source = _manifest_source(plan)
    manifest = read_manifest(source) if source is not None else None
    instruct = plan.models["instruct"].given
    metadata = carried_metadata(instruct) | ({"license": options.license} if options.license else {})
    return CardFacts(
        base=str(plan.models["base"].given),
        manifest=manifest,
        old_size=plan.old_size,
        new_size=plan.new_size,
        metadata=metadata,
        base_model_id=options.base_model_id or known_hub_id(instruct),
        languages=card_languages(options.language, metadata, manifest),
        measured=measure(plan.instruct_tok, plan.new_tok, options.sample_text, manifest),
        state=trainer_state(plan.models["adapted"].given),
        instruct=str(instruct),
        records=eval_records(options.eval_json) if options.eval_json is not None else None,
        body_lora=plan.body_lora.report() if plan.body_lora is not None else None,
    )


def finish_merge_output(plan, method: str, target: Path, facts: CardFacts, fits: Fits) -> None:
    """Manifest, original tokenizer and model card of one ``lep-merge`` model in ``target``."""
    source = _manifest_source(plan)
    if source is not None:
        shutil.copyfile(source / MANIFEST, Path(target) / MANIFEST)
    save_original_tokenizer(plan.instruct_tok, target)
    name = plan.options.output if len(plan.methods) == 1 else Path(plan.options.output) / method
    # a fresh output dir: nothing of the user's is there to keep
    write_card(target, merge_card(str(name), method, facts, fits), force=True)


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
    metadata = carried_metadata(Path(base) if Path(base).is_dir() else None)
    facts = CardFacts(
        base=base,
        manifest=manifest,
        old_size=len(old_tok),
        new_size=len(new_tok),
        metadata=metadata,
        base_model_id=known_hub_id(base),
        languages=card_languages(None, metadata, manifest),
        measured=measure(old_tok, new_tok, None, manifest),
        state=trainer_state(output),
    )
    card = training_card(str(cfg["output_dir"]), facts)  # as the YAML names it: its lep-merge line runs from there
    written = write_card(output, card)
    if not written:
        echo(f"{output}/README.md is the user's own: kept (the LEP model card was not written)")
    elif facts.base_model_id is None:
        echo(
            unknown_hub_id_warning(
                "base", base, "name it by its Hub id in `base_model:`, or edit the card's front matter"
            )
        )
    return written
