"""The model card (``README.md``) of an LEP output, the way the Hugging Face Hub reads it: YAML front
matter from ``huggingface_hub.ModelCardData``, then what LEP did, the training facts that are known, the
``lep eval`` table when one is given, and a transformers snippet that chats with the model.

Two kinds: :func:`merge_card` for a ``lep-merge`` output (an instruct model with the new vocabulary) and
:func:`training_card` for the plugin's ``output_dir`` (the base model with the new vocabulary and trained
embeddings). :func:`write_card` never replaces a README that a user wrote, unless forced.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lep_plugin.checkpoints.discover import checkpoint_number
from lep_plugin.common.fs import read_json, write_text_atomic
from lep_plugin.common.tokenizers import chars_per_token_change
from lep_plugin.errors import LEPError

README = "README.md"
MARKER = "<!-- lep-plugin model card -->"
# what identifies a card that the HF Trainer (and so Axolotl) generated: not a user's own text
TRAINER_CARD = ("generated automatically according to the information the Trainer had access to", "generated_from_trainer")
TAGS = ["lep", "learned-embedding-propagation", "vocabulary-adaptation"]
PAPER = "https://arxiv.org/abs/2412.21140"
CARD_TEXTS = 2000  # documents of a corpus measured for characters per token
TRAINER_STATE = "trainer_state.json"
VOCAB_METHODS = {
    "extend": "the old vocabulary kept whole, plus new tokens of a target-language BPE (new merges first)",
    "optimize": "the old tokens most used on the target corpus kept, plus new tokens of a target-language BPE",
    "bpe": "a whole new BPE vocabulary trained on the target corpus",
    "unigram": "a whole new Unigram vocabulary trained on the target corpus",
}
MERGE_METHODS = {
    "swap": "the trained embeddings used as they are (P = identity)",
    "overlap": "P fitted by least squares on the tokens both vocabularies share",
    "conversion": "P fitted by least squares on both old embedding matrices mapped into the new vocabulary (the paper's default)",
}


# ------------------------------------------------------------------------------------------------ inputs


def hub_id(path: str | Path) -> str:
    """The Hub id of a model given as a path: ``org/name`` from an HF cache snapshot path or from the
    config's ``_name_or_path``, a string that is not a local path as it is, else the dir name."""
    text = str(path)
    if not Path(text).exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", text):
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
        if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not Path(name).exists():
            return name
    return Path(text).resolve().name


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


def eval_records(path: Path) -> list[dict[str, Any]]:
    """The result records of a ``lep eval --json`` file (checked, so a bad file fails before any work)."""
    payload = read_json(path, "eval JSON")
    records = payload.get("results") if isinstance(payload, dict) else None
    if not records or not all(isinstance(r, dict) and "model" in r and "texts" in r for r in records):
        raise LEPError(f"eval JSON {path} is not a `lep eval --json` file (no results with model and texts)")
    from lep_plugin.evaluation.report import markdown_table

    try:
        markdown_table(records)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise LEPError(f"eval JSON {path} does not hold `lep eval` results: {err!r} is missing or wrong") from None
    return records


def check_eval_json(path: Path | None) -> Path | None:
    """Validator for an ``eval_json`` option: the file is read and checked now."""
    if path is not None:
        eval_records(path)
    return path


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
            facts = {"steps": state.get("global_step"), "epochs": state.get("epoch"),
                     "last_loss": losses[-1] if losses else None, "first_loss": losses[0] if losses else None,
                     "batch_size": state.get("train_batch_size")}
            return {k: v for k, v in facts.items() if v is not None}
    return None


def corpus_texts(files: list[str], limit: int = CARD_TEXTS, text_field: str = "text") -> list[str] | None:
    """Up to ``limit`` documents of the files that exist (None if none does)."""
    from lep_plugin.common.corpus import first_texts

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
    return Measured(chars_per_token_change(old_tok, new_tok, texts), f"the vocabulary's training corpus ({names}; in-sample)")


# ------------------------------------------------------------------------------------------------ render


def _front_matter(base_model: str, metadata: dict[str, Any]) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        base_model=base_model,
        base_model_relation="finetune",
        language=metadata.get("language"),
        license=metadata.get("license"),
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=TAGS,
    )
    return f"---\n{data.to_yaml()}\n---\n"


def _num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}" if isinstance(value, float) else str(value)


def _vocab_rows(manifest: dict[str, Any] | None, old_size: int | None, new_size: int | None) -> list[tuple[str, str]]:
    rows = []
    if manifest:
        method = manifest.get("method", "?")
        rows.append(("vocabulary method", f"`{method}`: {VOCAB_METHODS.get(method, method)}"))
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
    return [(f"characters per token on {measured.source}", f"{v['old']:.3f} → {v['new']:.3f} ({v['gain']:.2f}× fewer tokens)")]


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
        lines.append(f"- vocabulary trained on: {corpus}" + (f" (at most {_num(manifest['options']['max_chars'])} characters)" if (manifest.get("options") or {}).get("max_chars") else ""))
    if state:
        parts = [f"{_num(state['steps'])} steps" if "steps" in state else None,
                 f"{state['epochs']:.2f} epochs" if isinstance(state.get("epochs"), (int, float)) else None,
                 f"batch size {state['batch_size']} per device" if "batch_size" in state else None]
        lines.append(f"- embedding training ({_trained(manifest)}): " + ", ".join(p for p in parts if p))
        if "last_loss" in state:
            first = f"{state['first_loss']:.3f} → " if "first_loss" in state else ""
            lines.append(f"- training loss: {first}{state['last_loss']:.3f}")
    return lines


def _eval_section(records: list[dict[str, Any]] | None) -> str:
    if not records:
        return ""
    from lep_plugin.evaluation.report import markdown_table

    return (
        "## Evaluation\n\n"
        "`lep eval` (copy tasks, characters per token, bits per character; the models compared on the same samples):\n\n"
        f"{markdown_table(records)}\n\n"
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


def merge_card(
    name: str,
    *,
    instruct: str,
    base: str,
    method: str,
    fits: dict[str, dict[str, Any]],
    manifest: dict[str, Any] | None,
    old_size: int,
    new_size: int,
    metadata: dict[str, Any],
    measured: Measured | None = None,
    state: dict[str, Any] | None = None,
    records: list[dict[str, Any]] | None = None,
) -> str:
    """The card of a ``lep-merge`` output (``fits``: matrix role → its ``residual_on_*`` values)."""
    residuals = ", ".join(
        f"{role} {values[f'residual_on_{method}']:.4f}" for role, values in fits.items() if f"residual_on_{method}" in values
    )
    rows = [("instruct model", f"`{instruct}`"), ("base model (embedding training)", f"`{base}`")]
    rows += _vocab_rows(manifest, old_size, new_size)
    rows.append(("propagation method", f"`{method}`: {MERGE_METHODS.get(method, method)}"))
    if residuals:
        rows.append(("fit relative residual ‖AP − B‖/‖B‖", residuals))
    rows += _measured_rows(measured)
    training = _training_lines(manifest, state)
    body = (
        f"{MARKER}\n\n# {Path(name).name}\n\n"
        f"`{instruct}` with a new vocabulary, without new instruction tuning: made with Learned Embedding Propagation "
        f"(LEP; Tikhomirov & Chernyshev, [arXiv:2412.21140]({PAPER})) by lep-plugin. The vocabulary was changed on the "
        f"base model `{base}`, whose embeddings alone were trained; these embeddings were then carried into the instruct "
        f"model with a d×d least-squares correction. The instruct model's layers, chat template and chat tokens are kept.\n\n"
        f"## What LEP did\n\n{_table(rows)}\n\n"
        + (("## Training\n\n" + "\n".join(training) + "\n\n") if training else "")
        + _eval_section(records)
        + _snippet(name, PROMPT)
        + "## Files\n\n"
        "- `lep_merge.json`: the propagation (method, fit residuals, inputs)"
        + ("; `lep_vocab.json`: how the vocabulary was built" if manifest else "")
        + ";\n- `original_tokenizer/`: the instruct model's tokenizer before LEP (for comparisons, and for `lep export gguf`, "
        "which takes llama.cpp's pre-tokenizer name from it).\n"
    )
    return _front_matter(hub_id(instruct), metadata) + "\n" + body


def training_card(
    name: str,
    *,
    base: str,
    manifest: dict[str, Any] | None,
    old_size: int | None,
    new_size: int | None,
    metadata: dict[str, Any],
    measured: Measured | None = None,
    state: dict[str, Any] | None = None,
) -> str:
    """The card of the plugin's ``output_dir``: the base model with the new vocabulary and trained embeddings."""
    rows = [("base model", f"`{base}`")] + _vocab_rows(manifest, old_size, new_size) + _measured_rows(measured)
    training = _training_lines(manifest, state)
    body = (
        f"{MARKER}\n\n# {Path(name).name}\n\n"
        f"`{base}` with a new vocabulary and embeddings trained for it ({_trained(manifest)}): steps 1–3 of Learned Embedding Propagation (LEP; Tikhomirov & Chernyshev, "
        f"[arXiv:2412.21140]({PAPER})), made with the lep-plugin Axolotl plugin. A base model, not a chat model: "
        "`lep-merge` carries these embeddings into the matching instruct model.\n\n"
        f"## What LEP did\n\n{_table(rows)}\n\n"
        + (("## Training\n\n" + "\n".join(training) + "\n\n") if training else "")
        + "## Next\n\n"
        "```bash\n"
        f"lep-merge --base {base} --instruct INSTRUCT_MODEL --adapted {name} --method conversion --output OUTPUT\n"
        "```\n"
    )
    return _front_matter(hub_id(base), metadata) + "\n" + body


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
