"""What ``lep-merge`` will do, decided before anything heavy is loaded: every input checked (headers,
configs and tokenizers only), the matrices to change, the added tokens to keep, the output size."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from lep_plugin.checkpoints.base import Checkpoint, itemsize, resolve_name
from lep_plugin.checkpoints.discover import open_checkpoint, resolve_model_dir
from lep_plugin.checkpoints.fingerprint import body_names, fingerprint, first_mismatch
from lep_plugin.checkpoints.model_config import (
    EmbeddingNames,
    embedding_names,
    load_config,
)
from lep_plugin.checkpoints.peft import AdapterCheckpoint, resolve_adapter_dir
from lep_plugin.common.tokenizers import load_tokenizer, read_manifest
from lep_plugin.errors import LEPError, setting_name
from lep_plugin.propagation.lora import BodyLora, donor_body_lora, with_adapter_base
from lep_plugin.propagation.methods import methods_of
from lep_plugin.propagation.options import ROLES, MergeOptions, check_merge_paths
from lep_plugin.publish.card import known_hub_id, unknown_hub_id_warning

# adapted rows beyond its tokenizer are accepted as padding (Qwen pads 151,665 ids to 151,936 rows)
MAX_PADDING_ROWS = 1024


@dataclass(frozen=True)
class Model:
    """One input model: where its weights are, how they are read, its config and embedding names."""

    role: str
    given: Path  # the path the user named
    weights_dir: Path  # where the weights are (an Axolotl output's last checkpoint-N, or ``given``)
    checkpoint: Checkpoint
    config: Any
    names: EmbeddingNames


@dataclass(frozen=True)
class Matrix:
    """One matrix to propagate (the input or the output embeddings): its stored name and shape per input."""

    side: str  # "input" (embed_tokens) or "output" (lm_head); a model's place in LEP is its ``role``
    names: dict[str, str]  # input role -> tensor name as stored
    shapes: dict[str, tuple[int, ...]]
    dtype: torch.dtype  # the instruct model's (the output keeps it)

    @property
    def dim(self) -> int:
        return self.shapes["instruct"][1]


@dataclass(frozen=True)
class AddedToken:
    """An added token of the instruct model (chat marker, bos/eos): it keeps its instruct row."""

    content: str
    instruct_id: int
    new_id: int  # its id in the output vocabulary (appended after the new tokenizer's when it lacks it)


@dataclass
class Plan:
    options: MergeOptions
    models: dict[str, Model]
    old_tok: Any
    instruct_tok: Any
    new_tok: Any
    new_tokenizer_dir: Path
    matrices: list[Matrix]
    added: list[AddedToken]
    out_rows: int
    methods: list[str]
    notes: list[str] = field(default_factory=list)
    body_lora: BodyLora | None = None  # a LoRA donor's body LoRA, carried onto the instruct layers

    @property
    def tied(self) -> bool:
        return self.models["instruct"].names.tied

    # Sizes asked once: transformers 5's ``len(tokenizer)`` recounts the vocabulary with its added tokens
    # on every call (59 ms at 158k tokens), so a ``len()`` per added token cost two minutes (issue 22).
    @cached_property
    def new_size(self) -> int:
        """Tokens of the new (adapted) tokenizer, added tokens included."""
        return len(self.new_tok)

    @cached_property
    def old_size(self) -> int:
        """Tokens of the old (base) tokenizer, added tokens included."""
        return len(self.old_tok)

    @property
    def instruct_dir(self) -> Path:
        return self.models["instruct"].weights_dir

    def checkpoint(self, role: str) -> Checkpoint:
        return self.models[role].checkpoint

    def describe(self) -> str:
        lines = ["lep-merge plan"]
        lines += [f"  {role:9s} {self.checkpoint(role).describe()}" for role in ROLES]
        lines.append(f"  tokenizer {self.new_tokenizer_dir} ({self.new_size} tokens; old vocabulary {self.old_size})")
        lines.append(f"  methods   {', '.join(self.methods)}   tied embeddings: {self.tied}")
        for m in self.matrices:
            lines.append(
                f"  change    {m.names['instruct']} {list(m.shapes['instruct'])} -> [{self.out_rows}, {m.dim}] "
                f"{str(m.dtype).removeprefix('torch.')}  (base {m.names['base']}, "
                f"adapted {m.names['adapted']} {list(m.shapes['adapted'])})"
            )
        appended = sum(1 for a in self.added if a.new_id >= self.new_size)
        lines.append(
            f"  added tokens kept with instruct rows: {len(self.added)} ({appended} appended to the vocabulary)"
        )
        lines.append(f"  output    {self.options.output}  ~{self.output_bytes() * len(self.methods) / 1e9:.2f} GB")
        lines.append(f"  memory    ~{self.memory_estimate() / 1e9:.2f} GB peak (estimate)")
        if self.body_lora is not None:
            lines.append(f"  carry     {self.body_lora.describe()}")
        lines.extend(f"  note      {n}" for n in self.notes)
        return "\n".join(lines)

    def output_bytes(self) -> int:
        grown = sum((self.out_rows - m.shapes["instruct"][0]) * m.dim * itemsize(m.dtype) for m in self.matrices)
        return self.checkpoint("instruct").nbytes() + grown

    def memory_estimate(self) -> int:
        """Largest resident set: old base + instruct matrices (fit), or adapted + result (apply), plus
        float64 work blocks and the d×d systems."""
        biggest = block = 0
        for m in self.matrices:
            fit = (m.shapes["base"][0] + m.shapes["instruct"][0]) * m.dim * itemsize(m.dtype)
            apply = (m.shapes["adapted"][0] + self.out_rows) * m.dim * itemsize(m.dtype)
            biggest = max(biggest, fit, apply)
            block = max(block, 6 * self.options.block_rows * m.dim * 8 + 3 * m.dim * m.dim * 8)
        return biggest + block


def plan_merge(options: MergeOptions) -> Plan:
    """Check all inputs and decide what will be written; reads headers, configs and tokenizers only."""
    options = with_adapter_base(options)  # a LoRA donor names its base
    check_merge_paths(options)
    models = _open_models(options)
    if options.check_adapted:
        check_same_tying(models)
    body_lora, lora_notes = donor_body_lora(options, models)
    instruct_tok, old_tok, new_tok_dir, new_tok = _tokenizers(options, models)
    matrices = [_matrix(side, models, old_tok, new_tok, new_tok_dir) for side in _sides(models["instruct"].names)]
    if len({m.shapes["adapted"][0] for m in matrices}) != 1:
        raise LEPError("adapted input and output embeddings have different numbers of rows")
    if options.check_adapted:
        check_adapted(models, old_tok, new_tok)
    added = _added_tokens(instruct_tok, new_tok)
    out_rows = max([matrices[0].shapes["adapted"][0], len(new_tok)] + [a.new_id + 1 for a in added])
    notes = [
        f"{role} read from {models[role].weights_dir}"
        for role in ("base", "adapted")
        if models[role].weights_dir != models[role].given
    ]
    notes += [note for note in (same_weights_note(models), card_base_model_note(options, models)) if note]
    notes += lora_notes
    return Plan(
        options=options,
        models=models,
        old_tok=old_tok,
        instruct_tok=instruct_tok,
        new_tok=new_tok,
        new_tokenizer_dir=new_tok_dir,
        matrices=matrices,
        added=added,
        out_rows=out_rows,
        methods=methods_of(options.method),
        notes=notes,
        body_lora=body_lora,
    )


def _open_models(options: MergeOptions) -> dict[str, Model]:
    models: dict[str, Model] = {}
    for role in ROLES:  # base before adapted: a bare DeepSpeed or adapter dir takes the base's config
        given = Path(getattr(options, role))
        adapter_dir = resolve_adapter_dir(given) if role == "adapted" else None  # a LoRA donor
        weights_dir = adapter_dir or resolve_model_dir(given, role)
        # the instruct model's 16-bit HF weights are what it is; the others' fp32 DeepSpeed masters win
        checkpoint = (
            AdapterCheckpoint(adapter_dir)
            if adapter_dir
            else open_checkpoint(weights_dir, role, prefer_deepspeed=role != "instruct")
        )
        if role == "instruct" and checkpoint.kind == "deepspeed":
            raise LEPError(
                f"instruct {given} is a DeepSpeed checkpoint without HF weights; "
                "the instruct model must be an HF model dir"
            )
        config_dir = next((d for d in (weights_dir, given) if (d / "config.json").is_file()), None)
        if config_dir is not None or role != "adapted":
            config = load_config(config_dir or given, role)
        else:  # a bare DeepSpeed or adapter dir: the adapted model is the base model's architecture
            config = models["base"].config
        models[role] = Model(role, given, weights_dir, checkpoint, config, embedding_names(config))
    _check_same_architecture(models)
    return models


def _hidden(config) -> int | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "hidden_size", None)


def check_base_and_instruct(base, instruct) -> None:
    """The instruct model must be the base's architecture with its hidden size (P is a d×d map between them)."""
    if base.model_type != instruct.model_type:
        raise LEPError(f"base and instruct are different architectures ({base.model_type} vs {instruct.model_type})")
    if _hidden(base) != _hidden(instruct):
        raise LEPError(f"base and instruct have different hidden sizes ({_hidden(base)} vs {_hidden(instruct)})")


def _check_same_architecture(models: dict[str, Model]) -> None:
    base, instruct, adapted = (models[r].config for r in ROLES)
    check_base_and_instruct(base, instruct)
    if adapted.model_type != base.model_type:
        raise LEPError(f"adapted is a {adapted.model_type} model but base is {base.model_type}")


def _tokenizer_dir(*candidates: Path | None) -> Path:
    """The first candidate that holds a tokenizer (else the last one given, for the error message)."""
    for c in candidates:
        if c is not None and (Path(c) / "tokenizer.json").is_file():
            return Path(c)
    return Path([c for c in candidates if c is not None][-1])


def _tokenizers(options: MergeOptions, models: dict[str, Model]):
    """Instruct (added tokens, chat template), old (base, else instruct) and new (adapted) tokenizers."""
    base, instruct, adapted = (models[r] for r in ROLES)
    instruct_tok = load_tokenizer(_tokenizer_dir(instruct.weights_dir, instruct.given))
    base_tok_dir = _tokenizer_dir(base.weights_dir, base.given)
    old_tok = load_tokenizer(base_tok_dir) if (base_tok_dir / "tokenizer.json").is_file() else instruct_tok
    if old_tok.backend_tokenizer.get_vocab(with_added_tokens=False) != instruct_tok.backend_tokenizer.get_vocab(
        with_added_tokens=False
    ):
        raise LEPError(
            "base and instruct have different old vocabularies (their tokenizers differ beyond added tokens)"
        )
    new_tok_dir = _tokenizer_dir(options.adapted_tokenizer, adapted.weights_dir, adapted.given)
    return instruct_tok, old_tok, new_tok_dir, load_tokenizer(new_tok_dir)


PLUGIN_NOT_LOADED = "was `plugins: [lep_plugin.LEPPlugin]` in its YAML? (--no-check-adapted merges it anyway)"


def check_same_tying(models: dict[str, Model]) -> None:
    """Instruction tuning keeps a model's tying: a base that ties its embeddings and an instruct model that
    does not (or the reverse) are two different models (Llama-3.2's tied 1B/3B against Llama-3's 8B)."""
    base, instruct = models["base"], models["instruct"]
    if base.names.tied != instruct.names.tied:
        ties = {True: "ties its input and output embeddings", False: "has separate input and output embeddings"}
        raise LEPError(
            f"base {base.given} {ties[base.names.tied]} but instruct {instruct.given} {ties[instruct.names.tied]}: "
            f"not the base this instruct model was tuned from{NO_CHECK}"
        )


def check_adapted(models: dict[str, Model], old_tok, new_tok) -> None:
    """Refuse an adapted model that an LEP run did not make: Axolotl silently drops the ``lep:`` block of
    a YAML that does not load the plugin, and then trains every weight with the old vocabulary."""
    adapted, base = models["adapted"], models["base"]
    if new_tok.backend_tokenizer.get_vocab(with_added_tokens=False) == old_tok.backend_tokenizer.get_vocab(
        with_added_tokens=False
    ):
        raise LEPError(
            f"adapted {adapted.given} has the base model's vocabulary ({len(old_tok):,} tokens), "
            f"not a new one: {PLUGIN_NOT_LOADED}"
        )
    manifest = read_manifest(adapted.weights_dir) or read_manifest(adapted.given) or {}
    plugin = manifest.get("plugin") or {}
    recorded = plugin.get("base") or {}
    frozen = plugin.get("train") in ("embeddings", "new_rows")
    if recorded.get("tensors"):
        check_recorded_base(base, adapted, recorded)
        if frozen:
            return  # the right base, and the plugin froze the body itself: no need to compare every tensor
    if adapted.checkpoint.kind == AdapterCheckpoint.kind:
        return  # a LoRA donor: its body is the base's plus the LoRA that lep-merge carries (lora.plan_body_lora)
    changed = first_changed_tensor(base, adapted)  # no fingerprint (made before it was recorded): compare all
    if changed is not None and frozen:
        raise LEPError(
            f"adapted {adapted.given}: transformer tensor {changed} differs from base {base.given}'s, so the run did "
            f"not start from this base model: pass the base model it was trained from as --base{NO_CHECK}"
        )
    if changed is not None:
        raise LEPError(
            f"adapted {adapted.given}: transformer tensor {changed} differs from the base model's, but LEP trains "
            f"only the embeddings: {PLUGIN_NOT_LOADED}"
        )


NO_CHECK = " (--no-check-adapted merges it anyway)"


def check_recorded_base(base: Model, adapted: Model, recorded: dict[str, Any]) -> None:
    """Refuse a ``--base`` whose body is not the one the plugin run's manifest fingerprinted."""
    mismatch = first_mismatch(base.checkpoint, recorded["tensors"], "base")
    if mismatch is not None:
        raise LEPError(
            f"adapted {adapted.given} was trained from {recorded.get('model') or 'another model'}, whose transformer "
            f"layers differ from base {base.given}'s (tensor {mismatch}): pass the base model that run started "
            f"from as --base{NO_CHECK}"
        )


def same_weights_note(models: dict[str, Model]) -> str | None:
    """A warning when ``--base`` and ``--instruct`` hold the same body (one layer's tensors compared)."""
    base, instruct = models["base"], models["instruct"]
    embeddings = [resolve_name(base.checkpoint, n, "base") for n in (base.names.input, base.names.output) if n]
    digests = fingerprint(base.checkpoint, body_names(base.checkpoint, embeddings))
    if first_mismatch(instruct.checkpoint, digests, "instruct") is not None:
        return None
    return (
        f"WARNING: base {base.given} and instruct {instruct.given} hold the same weights: LEP needs the base model "
        "the instruct model was tuned from (with one model twice the fit is the identity and nothing is corrected)"
    )


def card_base_model_note(options: MergeOptions, models: dict[str, Model]) -> str | None:
    """Said before the work: the card's ``base_model`` (the instruct model's Hub id) will be a TODO."""
    instruct = models["instruct"].given
    if options.base_model_id or known_hub_id(instruct):
        return None
    name = setting_name("base_model_id")  # a flag of lep-merge, or a key of `lep.propagate`
    return unknown_hub_id_warning(
        "instruct", instruct, f"pass {name} ORG/NAME" if name.startswith("--") else f"set `{name}: ORG/NAME`"
    )


def first_changed_tensor(base: Model, adapted: Model) -> str | None:
    """The first non-embedding tensor of ``base`` whose value ``adapted`` does not have (streamed)."""
    embeddings = {base.names.input, base.names.output}
    for name in base.checkpoint.stored_names():
        if name in embeddings:
            continue
        try:
            stored = resolve_name(adapted.checkpoint, name, "adapted")
        except LEPError:
            return name
        original = base.checkpoint.get(name)
        if not torch.equal(adapted.checkpoint.get(stored).to(original.dtype), original):
            return name
    return None


def _sides(names: EmbeddingNames) -> tuple[str, ...]:
    return ("input",) if names.tied else ("input", "output")  # tied: one matrix, one fit


def _matrix(side: str, models: dict[str, Model], old_tok, new_tok, new_tok_dir: Path) -> Matrix:
    names, shapes = {}, {}
    for what, model in models.items():
        wanted = model.names.input if side == "input" or model.names.tied else model.names.output
        names[what] = resolve_name(model.checkpoint, wanted, what)
        shapes[what] = tuple(model.checkpoint.shape(names[what]))
        if len(shapes[what]) != 2:
            raise LEPError(f"{what} tensor {names[what]} is not a matrix (shape {list(shapes[what])})")
    d = shapes["instruct"][1]
    if shapes["base"][1] != d or shapes["adapted"][1] != d:
        raise LEPError(
            f"hidden sizes differ: base {shapes['base'][1]}, instruct {d}, adapted {shapes['adapted'][1]} "
            f"({side} embeddings)"
        )
    if shapes["base"][0] < len(old_tok) or shapes["instruct"][0] < len(old_tok):
        raise LEPError(
            f"base/instruct {side} embeddings have fewer rows than the old tokenizer's {len(old_tok)} tokens"
        )
    rows = shapes["adapted"][0]
    if rows < len(new_tok) or rows - len(new_tok) > MAX_PADDING_ROWS:
        raise LEPError(
            f"adapted {side} embeddings have {rows} rows but its tokenizer ({new_tok_dir}) has {len(new_tok)} tokens"
        )
    return Matrix(side, names, shapes, models["instruct"].checkpoint.dtype(names["instruct"]))


def _added_tokens(instruct_tok, new_tok) -> list[AddedToken]:
    """The instruct model's added tokens with their output ids: the new tokenizer's id for the same
    string, or the next free id after the new vocabulary."""
    new_vocab = new_tok.get_vocab()
    next_id = len(new_tok)
    added = []
    for instruct_id, token in sorted(instruct_tok.added_tokens_decoder.items()):
        new_id = new_vocab.get(token.content)
        if new_id is None:
            new_id, next_id = next_id, next_id + 1
        added.append(AddedToken(token.content, instruct_id, new_id))
    return added
