"""The model card (``README.md``) of an LEP output, the way the Hugging Face Hub reads it: YAML front
matter from ``huggingface_hub.ModelCardData``, then what LEP did, the training facts that are known, the
``lep eval`` table when one is given, and a transformers snippet that chats with the model.

Two kinds: :func:`merge_card` for a ``lep-merge`` output (an instruct model with the new vocabulary) and
:func:`training_card` for the plugin's ``output_dir`` (the base model with the new vocabulary and trained
embeddings). :func:`write_card` never replaces a README that a user wrote, unless forced.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from lep_plugin.checkpoints.discover import checkpoint_number
from lep_plugin.common.corpus import first_texts
from lep_plugin.common.fs import write_text_atomic
from lep_plugin.common.tokenizers import chars_per_token_change
from lep_plugin.evaluation.report import at_or_below_chance, markdown_table
from lep_plugin.propagation.fits import FitResult, Fits, unrelated_warning
from lep_plugin.propagation.methods import METHODS
from lep_plugin.publish.checks import HUB_ID
from lep_plugin.vocab.build import VOCAB_METHODS

README = "README.md"
MARKER = "<!-- lep-plugin model card -->"
# what identifies a card that the HF Trainer (and so Axolotl) generated: not a user's own text
TRAINER_CARD = (
    "generated automatically according to the information the Trainer had access to",
    "generated_from_trainer",
)
TAGS = ["lep", "learned-embedding-propagation", "vocabulary-adaptation"]
PAPER = "https://arxiv.org/abs/2412.21140"
CARD_TEXTS = 2000  # documents of a corpus measured for characters per token
LANGUAGE_TEXTS = 50  # documents of the vocabulary's corpus whose language is detected
TRAINER_STATE = "trainer_state.json"


def _summary(registry: dict[str, Any], method: str) -> str:
    """A method's one-line summary from its registry (the name itself for a method this version lacks)."""
    return registry[method].summary if method in registry else method


# ------------------------------------------------------------------------------------------------ inputs


def known_hub_id(path: str | Path) -> str | None:
    """The Hub id of a model when it can be known: a string that is not a local path, ``org/name`` from
    an HF cache snapshot path, or the config's ``_name_or_path``; else None (a dir name is not an id)."""
    text = str(path)
    if not Path(text).exists() and HUB_ID.fullmatch(text):
        return text
    for part in Path(text).resolve().parts:
        if part.startswith("models--") and part.count("--") >= 2:
            return part.removeprefix("models--").replace("--", "/", 1)
    config = Path(text) / "config.json"
    if config.is_file():
        try:
            name = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path") or ""
        except (OSError, ValueError):
            name = ""
        if HUB_ID.fullmatch(name) and not Path(name).exists():
            return name
    return None


def hub_id(path: str | Path) -> str:
    """:func:`known_hub_id`, else the dir name (for titles and messages, never for ``base_model``)."""
    return known_hub_id(path) or Path(str(path)).resolve().name


def unknown_hub_id_warning(what: str, path: str | Path, flag: str) -> str:
    return (
        f"WARNING: the Hub id of the {what} model {path} is unknown (not an HF cache path, no `_name_or_path` "
        f"in its config): the model card's `base_model` is a TODO; {flag}"
    )


def carried_metadata(model_dir: Path | None) -> dict[str, Any]:
    """``license`` and ``language`` of a model, from its card's front matter or else its config."""
    if model_dir is None:
        return {}
    found: dict[str, Any] = {}
    readme = Path(model_dir) / README
    if readme.is_file():
        from huggingface_hub import ModelCard

        try:
            data = ModelCard.load(readme, ignore_metadata_errors=True).data
            found = {k: getattr(data, k, None) for k in ("license", "language")}
        except Exception:  # a README without valid front matter carries nothing
            found = {}
    config = Path(model_dir) / "config.json"
    if config.is_file():
        try:
            values = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            values = {}
        for key in ("license", "language"):
            found[key] = found.get(key) or values.get(key)
    return {k: v for k, v in found.items() if v}


def trainer_state(run_dir: Path | None) -> dict[str, Any] | None:
    """Steps, epochs and last loss of the training run in ``run_dir`` (or its last checkpoint)."""
    if run_dir is None or not Path(run_dir).is_dir():
        return None
    run_dir = Path(run_dir)
    candidates = [run_dir / TRAINER_STATE]
    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=checkpoint_number)
    candidates += [c / TRAINER_STATE for c in reversed(checkpoints)]
    candidates += [run_dir.parent / TRAINER_STATE] if run_dir.name.startswith("checkpoint-") else []
    for path in candidates:
        if path.is_file():
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            history = state.get("log_history") or []
            losses = [h["loss"] for h in history if "loss" in h]
            facts = {
                "steps": state.get("global_step"),
                "epochs": state.get("epoch"),
                "last_loss": losses[-1] if losses else None,
                "first_loss": losses[0] if losses else None,
                "batch_size": state.get("train_batch_size"),
            }
            return {k: v for k, v in facts.items() if v is not None}
    return None


def corpus_texts(files: list[str], limit: int = CARD_TEXTS, text_field: str = "text") -> list[str] | None:
    """Up to ``limit`` documents of the files that exist (None if none does)."""

    paths = [Path(f) for f in files if Path(f).is_file()]
    return (first_texts(paths, limit, text_field) or None) if paths else None


@dataclass(frozen=True)
class Measured:
    """Characters per token before/after and on what they were measured."""

    values: dict[str, float]
    source: str


def measure(old_tok, new_tok, text: Path | None, manifest: dict[str, Any] | None) -> Measured | None:
    """On ``text`` when given, else on the vocabulary's own corpus (in-sample) when it still exists."""
    if text is not None:
        texts = corpus_texts([str(text)])
        return Measured(chars_per_token_change(old_tok, new_tok, texts), f"`{Path(text).name}`") if texts else None
    files = (manifest or {}).get("corpus") or []
    texts = corpus_texts(files, text_field=((manifest or {}).get("options") or {}).get("text_field") or "text")
    if texts is None:
        return None
    names = ", ".join(f"`{Path(f).name}`" for f in files[:3]) + (" …" if len(files) > 3 else "")
    return Measured(
        chars_per_token_change(old_tok, new_tok, texts), f"the vocabulary's training corpus ({names}; in-sample)"
    )


def corpus_languages(manifest: dict[str, Any] | None) -> list[str] | None:
    """The languages of the vocabulary's corpus (langdetect on its first documents): each language of at
    least a fifth of them, most frequent first; None when the corpus is gone or says nothing."""
    from langdetect import DetectorFactory, LangDetectException, detect

    files = (manifest or {}).get("corpus") or []
    texts = corpus_texts(
        files, LANGUAGE_TEXTS, text_field=((manifest or {}).get("options") or {}).get("text_field") or "text"
    )
    DetectorFactory.seed = 0  # langdetect samples at random: the same corpus must give the same card
    counts: Counter[str] = Counter()
    for text in texts or []:
        try:
            counts[detect(text[:2000])] += 1
        except LangDetectException:  # a document without letters
            continue
    total = sum(counts.values())
    return [lang for lang, n in counts.most_common() if n >= 0.2 * total] or None


def card_languages(
    explicit: list[str] | None, metadata: dict[str, Any], manifest: dict[str, Any] | None
) -> list[str] | None:
    """The card's ``language``: the one given, else the original model card's, else the vocabulary corpus's."""
    carried = metadata.get("language")
    return explicit or ([carried] if isinstance(carried, str) else carried) or corpus_languages(manifest)


# ------------------------------------------------------------------------------------------------ render


def _front_matter(base_model: str | None, metadata: dict[str, Any], languages: list[str] | None) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        base_model=base_model,
        base_model_relation="finetune" if base_model else None,
        language=languages,
        license=metadata.get("license"),
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=TAGS,
    )
    todo = "" if base_model else "# TODO: base_model: <Hub id (org/name) of the model this one was made from>\n"
    return f"---\n{todo}{data.to_yaml()}\n---\n"


def _title(model: str, languages: list[str] | None, detail: str | None = None) -> str:
    """``# <model name> with an LEP vocabulary (<languages>, <detail>)``: the name, not an output dir."""
    inside = ", ".join(([", ".join(languages)] if languages else []) + ([detail] if detail else []))
    return f"# {model.rstrip('/').split('/')[-1]} with an LEP vocabulary" + (f" ({inside})" if inside else "")


def _warning(text: str | None) -> str:
    return f"> **{text.split(': ', 1)[0].capitalize()}**: {text.split(': ', 1)[1]}\n\n" if text else ""


def _todo(base_model: str | None, source: str, flag: str) -> str:
    if base_model:
        return ""
    return (
        f"> **TODO** before uploading: add `base_model: <Hub id of {source}>` to the front matter above "
        f"(its Hub id could not be told from its files; {flag} sets it).\n\n"
    )


def _num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}" if isinstance(value, float) else str(value)


def _vocab_rows(manifest: dict[str, Any] | None, old_size: int | None, new_size: int | None) -> list[tuple[str, str]]:
    rows = []
    if manifest:
        method = manifest.get("method", "?")
        rows.append(("vocabulary method", f"`{method}`: {_summary(VOCAB_METHODS, method)}"))
        old_size = manifest.get("old_vocab_size", old_size)
        new_size = manifest.get("new_vocab_size", new_size)
    if old_size is not None and new_size is not None:
        extra = f" ({_num(manifest['new_tokens'])} new)" if manifest and manifest.get("new_tokens") is not None else ""
        rows.append(("vocabulary size", f"{_num(old_size)} → {_num(new_size)} tokens{extra}"))
    if manifest and manifest.get("style"):
        rows.append(("tokenizer style", manifest["style"].replace("_", "-")))
    return rows


def _measured_rows(measured: Measured | None) -> list[tuple[str, str]]:
    if measured is None:
        return []
    v = measured.values
    return [
        (
            f"characters per token on {measured.source}",
            f"{v['old']:.3f} → {v['new']:.3f} ({v['gain']:.2f}× fewer tokens)",
        )
    ]


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows])


def _trained(manifest: dict[str, Any] | None) -> str:
    """What the plugin trained, from the ``plugin.train`` its output manifest records."""
    mode = ((manifest or {}).get("plugin") or {}).get("train", "embeddings")
    return {
        "new_rows": "only the new tokens' rows of `embed_tokens` and `lm_head`",
        "off": "the parameters Axolotl's own settings left trainable (`lep.train: off`)",
    }.get(mode, "only `embed_tokens` and `lm_head`")


def _training_lines(manifest: dict[str, Any] | None, state: dict[str, Any] | None) -> list[str]:
    lines = []
    if manifest and manifest.get("corpus"):
        corpus = ", ".join(f"`{Path(f).name}`" for f in manifest["corpus"][:5])
        lines.append(
            f"- vocabulary trained on: {corpus}"
            + (
                f" (at most {_num(manifest['options']['max_chars'])} characters)"
                if (manifest.get("options") or {}).get("max_chars")
                else ""
            )
        )
    if state:
        parts = [
            f"{_num(state['steps'])} steps" if "steps" in state else None,
            f"{state['epochs']:.2f} epochs" if isinstance(state.get("epochs"), (int, float)) else None,
            f"batch size {state['batch_size']} per device" if "batch_size" in state else None,
        ]
        lines.append(f"- embedding training ({_trained(manifest)}): " + ", ".join(p for p in parts if p))
        if "last_loss" in state:
            first = f"{state['first_loss']:.3f} → " if "first_loss" in state else ""
            lines.append(f"- training loss: {first}{state['last_loss']:.3f}")
    return lines


def _eval_section(records: list[dict[str, Any]] | None) -> str:
    if not records:
        return ""
    below = at_or_below_chance(records)
    warning = (
        f"**At or below chance** in sentence copying (strict score): {'; '.join(below)}. These models do not "
        "copy that text; their copy scores are no evidence for or against LEP.\n\n"
        if below
        else ""
    )
    return (
        "## Evaluation\n\n"
        "`lep eval` (copy tasks, characters per token, bits per character; "
        "the models compared on the same samples):\n\n"
        f"{markdown_table(records)}\n\n{warning}"
    )


def _snippet(model_id: str, prompt: str) -> str:
    return f"""## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model_id = "{model_id}"  # this directory, or its Hub id once uploaded
tokenizer = AutoTokenizer.from_pretrained(model_id)
model = AutoModelForCausalLM.from_pretrained(model_id, dtype="auto")

messages = [{{"role": "user", "content": "{prompt}"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=256)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

For llama.cpp, Ollama or LM Studio: `lep export gguf {model_id} --output {Path(model_id).name}.gguf` (lep-plugin).

"""


PROMPT = "Hello! Who are you, and what can you do?"


@dataclass(frozen=True)
class CardFacts:
    """What a model card states besides the fits, gathered once per output: ``lep-merge --method all``
    renders the same facts into each method's card."""

    base: str  # the base model as the user named it
    manifest: dict[str, Any] | None  # the vocabulary's lep_vocab.json
    old_size: int | None
    new_size: int | None
    metadata: dict[str, Any]  # license and language carried from the original model (carried_metadata)
    base_model_id: str | None  # the front matter's base_model; None: a TODO
    languages: list[str] | None = None
    measured: Measured | None = None
    state: dict[str, Any] | None = None  # the embedding training run (trainer_state)
    instruct: str = ""  # lep-merge: the instruct model as the user named it
    records: list[dict[str, Any]] | None = None  # lep-merge --eval-json: the `lep eval` results
    body_lora: dict[str, Any] | None = None  # lep-merge of a LoRA donor: lep_merge.json's body_lora


MERGE_CARD = Template(
    """$front_matter
$marker

$title

$todo`$instruct` with a new vocabulary, without new instruction tuning: made with Learned Embedding Propagation \
(LEP; Tikhomirov & Chernyshev, [arXiv:2412.21140]($paper)) by lep-plugin. The vocabulary was changed on the base \
model `$base`, whose embeddings alone were trained; these embeddings were then carried into the instruct model with \
a d×d least-squares correction. The instruct model's layers, chat template and chat tokens are kept.

## What LEP did

$table

$guide$training$evaluation$snippet## Files

- `lep_merge.json`: the propagation (method, fit residuals, inputs)$vocab_file;
- `original_tokenizer/`: the instruct model's tokenizer before LEP (for comparisons, and for `lep export gguf`, \
which takes llama.cpp's pre-tokenizer name from it).
$body_lora"""
)

TRAINING_CARD = Template(
    """$front_matter
$marker

$title

$todo`$base` with a new vocabulary and embeddings trained for it ($trained): steps 1–3 of Learned Embedding \
Propagation (LEP; Tikhomirov & Chernyshev, [arXiv:2412.21140]($paper)), made with the lep-plugin Axolotl plugin. \
A base model, not a chat model: `lep-merge` carries these embeddings into the matching instruct model.

## What LEP did

$table

$training## Next

```bash
lep-merge --base $base --instruct INSTRUCT_MODEL --adapted $adapted --method conversion --output OUTPUT
```
"""
)


def _per_side(values: dict[str, float | None]) -> str:
    return ", ".join(f"{side} {v:.4f}" for side, v in values.items() if v is not None)


def _residual(fit: FitResult | None, system: str) -> float | None:
    return None if fit is None else fit.residuals.get(system)


def _compared(method: str, system: str, fits: Fits) -> str:
    """What the other methods written give on ``system``; a P = identity method (swap) is always known:
    the fit of ``method`` measured it on its own system."""
    said = []
    for other, described in METHODS.items():
        if other == method:
            continue
        got = {side: _residual(by_method.get(other), system) for side, by_method in fits.items()}
        identity = described.system is None
        if identity:
            got = {side: v if v is not None else fits[side][method].swap_residual for side, v in got.items()}
        if any(v is not None for v in got.values()):
            said.append(f"{other}{' (no correction, P = identity)' if identity else ''}: {_per_side(got)}")
    return "; ".join(said)


def _residual_guide(method: str, fits: Fits) -> tuple[str, str]:
    """(the residual row's value, a paragraph on how to read it: what no correction and the other methods
    give on the same system, and what a wrong base gives). Empty strings when nothing was fitted."""
    own = {side: by_method[method] for side, by_method in fits.items()}
    system = next(iter(own.values())).shown_system() if own else None
    residuals = {side: result.residuals.get(system) for side, result in own.items()} if system else {}
    if all(v is None for v in residuals.values()):
        return "", ""
    said = _compared(method, system, fits)
    guide = (
        f"How to read the residual: how far the base model's embeddings times one d×d matrix P are from the instruct "
        f"model's, both mapped into the new vocabulary ({system} system; 0 = exact)."
        + (f" On the same system {said}." if said else "")
        + " With the right base model it is small but not 0: instruction tuning moved the embeddings a little and P "
        "takes up the linear part of that. 0.0000 means base and instruct have the same embeddings (the instruct model "
        "given as `--base`: nothing was corrected); near 1 means unrelated models (a wrong `--base`).\n\n"
    )
    return _per_side(residuals), guide


def _training_section(manifest: dict[str, Any] | None, state: dict[str, Any] | None) -> str:
    lines = _training_lines(manifest, state)
    return ("## Training\n\n" + "\n".join(lines) + "\n\n") if lines else ""


def merge_card(name: str, method: str, facts: CardFacts, fits: Fits) -> str:
    """The card of the model ``lep-merge`` wrote to ``name`` with ``method`` (``fits``: matrix side → method
    → fit, of every method written: this one's residuals are shown, the others' compared)."""
    residuals, guide = _residual_guide(method, fits)
    rows = [("instruct model", f"`{facts.instruct}`"), ("base model (embedding training)", f"`{facts.base}`")]
    rows += _vocab_rows(facts.manifest, facts.old_size, facts.new_size)
    rows.append(("propagation method", f"`{method}`: {_summary(METHODS, method)}"))
    if residuals:
        rows.append(("fit relative residual ‖AP − B‖/‖B‖", residuals))
    rows += _measured_rows(facts.measured)
    return MERGE_CARD.substitute(
        front_matter=_front_matter(facts.base_model_id, facts.metadata, facts.languages),
        marker=MARKER,
        title=_title(facts.base_model_id or hub_id(facts.instruct), facts.languages, method),
        todo=_warning(unrelated_warning(fits, method))
        + _todo(facts.base_model_id, f"`{facts.instruct}`", "`lep-merge --base-model-id ORG/NAME`"),
        instruct=facts.instruct,
        base=facts.base,
        paper=PAPER,
        table=_table(rows),
        guide=guide,
        training=_training_section(facts.manifest, facts.state),
        evaluation=_eval_section(facts.records),
        snippet=_snippet(name, PROMPT),
        vocab_file="; `lep_vocab.json`: how the vocabulary was built" if facts.manifest else "",
        body_lora=body_lora_section(facts.body_lora) if facts.body_lora else "",
    )


def training_card(adapted: str, facts: CardFacts) -> str:
    """The card of the plugin's ``output_dir`` (``adapted``: as the user's YAML names it, for the
    ``lep-merge`` line): the base model with the new vocabulary and trained embeddings."""
    rows = [("base model", f"`{facts.base}`")] + _vocab_rows(facts.manifest, facts.old_size, facts.new_size)
    rows += _measured_rows(facts.measured)
    return TRAINING_CARD.substitute(
        front_matter=_front_matter(facts.base_model_id, facts.metadata, facts.languages),
        marker=MARKER,
        title=_title(hub_id(facts.base), facts.languages),
        todo=_todo(facts.base_model_id, f"`{facts.base}`", "a Hub id as `base_model:` in the YAML"),
        base=facts.base,
        trained=_trained(facts.manifest),
        paper=PAPER,
        table=_table(rows),
        training=_training_section(facts.manifest, facts.state),
        adapted=adapted,
    )


# ------------------------------------------------------------------------------------------------- write


def is_replaceable(readme: Path) -> bool:
    """A README that is ours or that the HF Trainer generated may be rewritten; a user's own may not."""
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return MARKER in text or any(mark in text for mark in TRAINER_CARD)


def write_card(directory: Path, card: str, force: bool = False) -> bool:
    """Write ``card`` as ``directory/README.md`` unless a user's own README is there (and not ``force``).
    Returns whether it was written."""
    readme = Path(directory) / README
    if readme.exists() and not force and not is_replaceable(readme):
        return False
    write_text_atomic(readme, card)
    return True


def body_lora_section(body_lora: dict[str, Any]) -> str:
    """What a LoRA donor's body LoRA became in this model (``lep_merge.json``'s ``body_lora``)."""
    how = (
        "merged into the instruct model's layers"
        if body_lora["output"] == "merge"
        else "written as a PEFT adapter of this model in `body_lora/` (the layers here are the instruct model's)"
    )
    formula = "α/√r (rsLoRA)" if body_lora["rslora"] else "α/r"
    return (
        "\n## Body LoRA carried from the donor\n\n"
        f"The adapted model was a LoRA continued pretraining (`{body_lora['adapter']}`): "
        "its embeddings were propagated "
        f"as above, and its body LoRA ({body_lora['pairs']} pairs, rank {', '.join(map(str, body_lora['ranks']))}, "
        f"α {', '.join(_num(a) for a in body_lora['alphas'])}) was {how}, as W + s·{formula}·B·A with "
        f"s = {_num(body_lora['lora_scale'])} (`--lora-scale`).\n"
    )
