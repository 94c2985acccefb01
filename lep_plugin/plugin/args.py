"""The ``lep:`` block of an Axolotl YAML, as pydantic models.

Axolotl merges :class:`LEPArgs` into its config schema (``get_input_args``), so a typo inside ``lep:``
is rejected by Axolotl's own validation with the offending key named; the plugin's ``register()`` parses
the same block earlier (before any dataset or model is touched) with :func:`parse_lep_block`.

    plugins: [lep_plugin.LEPPlugin]
    lep:
      vocab:                      # build (or reuse) the new vocabulary; omit to train the old one
        method: extend            # bpe | unigram | extend | optimize
        corpus: [data/ru/*.jsonl]
        vocab_size: 64000
        keep: 64000               # optimize only
      # or, for a ready tokenizer dir:   vocab: {tokenizer: path/to/dir}
      train: embeddings           # embeddings | new_rows | off
      body: frozen                # frozen | lora (with `adapter: lora|qlora` + lora_modules_to_save:
                                  #   [embed_tokens, lm_head]: a 4-bit frozen body, or a LoRA donor)
      eval: {...}                 # optional, handed to lep_plugin.plugin.eval_callback
      propagate:                  # optional: lep-merge (+ eval, GGUF) when training ends
        instruct: meta-llama/Meta-Llama-3-8B-Instruct
        output: out/llama3-ru-instruct
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from lep_plugin.common.options import ONE_OR_MORE
from lep_plugin.errors import LEPError, describe_validation_error, settings_named
from lep_plugin.propagation.options import PropagateOptions
from lep_plugin.vocab.options import (
    ConvertOptions,
    VocabMethod,
    VocabOptions,
    check_keep,
)

TrainMode = Literal["embeddings", "new_rows", "off"]
BodyMode = Literal["frozen", "lora"]
# the embedding modules an adapter run must train whole (PEFT's `modules_to_save`): LEP propagates matrices
EMBEDDING_MODULES = ("embed_tokens", "lm_head")


class VocabSection(VocabOptions, ConvertOptions):
    """``lep.vocab``: where the new vocabulary comes from – built by a method (the fields of
    :class:`VocabOptions`) from ``corpus``, or a ready ``tokenizer`` dir – and how embeddings get it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    REFERENCE_ORDER: ClassVar[tuple[str, ...]] = ("tokenizer", "method", "corpus", "vocab_size", "keep")

    tokenizer: str | None = Field(
        default=None, description="a ready HF tokenizer dir to use as the new vocabulary (instead of building one)"
    )
    # required by VocabOptions, optional here: a ready tokenizer needs neither
    method: VocabMethod | None = Field(default=None, description=VocabOptions.model_fields["method"].description)
    vocab_size: int | None = Field(default=None, gt=0, description=VocabOptions.model_fields["vocab_size"].description)
    corpus: Annotated[list[str], ONE_OR_MORE] | None = Field(
        default=None, description="target-language .jsonl/.txt files or globs"
    )
    cache_dir: str | None = Field(
        default=None,
        description="where built vocabularies are kept, each in a dir `lep-vocab-<hash of old tokenizer, corpus "
        "and options>` (default: Axolotl's `dataset_prepared_path`, else `last_run_prepared`)",
    )

    @model_validator(mode="after")
    def _keep_only_for_optimize(self):  # replaces VocabOptions' check: which source first, then `keep:`
        build_keys = ("method", "corpus", "vocab_size", "keep", "max_chars")
        if self.tokenizer is not None:
            extra = [k for k in build_keys if getattr(self, k) is not None]
            if extra:
                raise ValueError(
                    f"give either `tokenizer:` (a ready vocabulary) or `method:` with a corpus, not both "
                    f"(remove {', '.join(extra)})"
                )
            return self
        if self.method is None:
            raise ValueError(
                "set `method:` (bpe | unigram | extend | optimize) or `tokenizer:` (a ready tokenizer dir)"
            )
        if not self.corpus:
            raise ValueError(f"method {self.method!r} needs `corpus:` (target-language .jsonl files or globs)")
        if self.vocab_size is None:
            raise ValueError(f"method {self.method!r} needs `vocab_size:`")
        check_keep(self.method, self.keep, key="`keep:`")
        return self

    def build_options(self) -> VocabOptions:
        """The vocabulary library's options (only for a built vocabulary)."""
        return VocabOptions(**self.model_dump(include=set(VocabOptions.model_fields)))

    def convert_options(self) -> ConvertOptions:
        return ConvertOptions(**self.model_dump(include=set(ConvertOptions.model_fields)))


class LEPConfig(BaseModel):
    """The ``lep:`` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab: VocabSection | None = Field(default=None, description="the new vocabulary; omit to keep the old one")
    train: TrainMode = Field(
        default="embeddings",
        description="embeddings: train embed_tokens and lm_head only; new_rows: only the rows of new tokens; "
        "off: leave Axolotl's own trainable-parameter settings alone",
    )
    body: BodyMode = Field(
        default="frozen",
        description="frozen: the transformer layers never change (with `adapter: qlora` + `load_in_4bit` they are "
        "loaded quantised and the adapter's LoRA weights stay frozen at zero); lora: the body LoRA of Axolotl's "
        "`adapter:` settings trains with the embeddings (a LoRA continued pretraining; `lep-merge` carries it)",
    )
    # Options of the training-time evaluation callback: a dict here, validated by
    # lep_plugin.plugin.eval_callback.EvalCallbackOptions in register() (so the two evolve separately).
    eval: dict[str, Any] | None = Field(
        default=None, description="copy tasks and bits per character every N steps, into the trainer's logs"
    )
    propagate: PropagateOptions | None = Field(
        default=None,
        description="when training ends: lep-merge of the output into the instruct model (rank 0), then the "
        "evaluation and GGUF files it asks for; `lep propagate CONFIG.yml` runs the same later",
    )

    @model_validator(mode="after")
    def _new_rows_needs_new_tokens(self):
        if self.train == "new_rows" and self.vocab is None:
            raise ValueError("`train: new_rows` needs a vocabulary change (`vocab:`): without it there are no new rows")
        return self


class LEPArgs(BaseModel):
    """Mixed into Axolotl's config schema: the ``lep:`` block plus its checks against the rest of the YAML."""

    lep: LEPConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _lep_conflicts(cls, data: Any) -> Any:
        if isinstance(data, dict):
            conflicts = yaml_conflicts(data)
            if conflicts:
                raise ValueError(conflicts_message(conflicts))
        return data


def _lep_dict(data: dict[str, Any]) -> dict[str, Any] | None:
    lep = data.get("lep")
    if isinstance(lep, BaseModel):
        return lep.model_dump()
    return lep if isinstance(lep, dict) else None


def yaml_conflicts(data: dict[str, Any]) -> list[str]:
    """Settings elsewhere in the YAML that contradict ``lep.train`` (an error, never silently overridden)."""
    lep = _lep_dict(data)
    if not lep:
        return []
    train = lep.get("train", "embeddings")
    if train == "off":
        return []
    problems = []
    if data.get("unfrozen_parameters"):
        problems.append(
            f"`lep.train: {train}` decides which parameters train; remove `unfrozen_parameters:` "
            "(or set `lep.train: off` to use it)"
        )
    problems += adapter_conflicts(data, train, lep.get("body", "frozen"))
    if train == "new_rows" and (data.get("weight_decay") or 0) > 0:
        problems.append("`lep.train: new_rows` needs `weight_decay: 0`: AdamW's decay would change the frozen old rows")
    fsdp_config = data.get("fsdp_config") or {}
    version = data.get("fsdp_version") or (fsdp_config.get("fsdp_version") if isinstance(fsdp_config, dict) else None)
    if train == "new_rows" and (data.get("fsdp") or fsdp_config) and str(version) != "2":
        problems.append(
            "`lep.train: new_rows` under FSDP needs `fsdp_version: 2`: FSDP1 flattens the embedding matrices "
            "into one buffer, where the plugin cannot find the rows of old tokens"
        )
    return problems


def conflicts_message(problems: list[str]) -> str:
    """Every conflict in one line, so a user fixes them all in one edit (not one per run)."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} settings conflict with `lep:`: " + "; ".join(
        f"({i}) {p}" for i, p in enumerate(problems, 1)
    )


def adapter_conflicts(data: dict[str, Any], train: str, body: str) -> list[str]:
    """The adapter settings ``lep.train`` (not off) accepts: none, or ``adapter: lora|qlora`` that trains
    ``embed_tokens`` and ``lm_head`` whole (``lora_modules_to_save``) – a quantised frozen body or a body LoRA."""
    adapter = data.get("adapter")
    if not adapter:
        problems = []
        if body == "lora":
            problems.append(
                "`lep.body: lora` trains a body LoRA: set `adapter: lora` (or `qlora`) and its `lora_*` settings"
            )
        quantised = [k for k in ("load_in_4bit", "load_in_8bit") if data.get(k)]
        if quantised:
            problems.append(
                f"`{quantised[0]}:` loads the body quantised only with an adapter: add `adapter: "
                f"{'qlora' if quantised[0] == 'load_in_4bit' else 'lora'}` "
                "and `lora_modules_to_save: [embed_tokens, lm_head]`"
            )
        if data.get("lora_modules_to_save"):
            problems.append(
                f"`lora_modules_to_save:` has no effect without `adapter:` (`lep.train: {train}`); remove it"
            )
        return problems
    if adapter not in ("lora", "qlora"):
        return [f"`lep.train: {train}` works with `adapter: lora` or `qlora`, not `adapter: {adapter}`"]
    on_embeddings = [m for m in EMBEDDING_MODULES if m in (data.get("lora_target_modules") or [])]
    if on_embeddings:
        return [
            (
                f"`lora_target_modules` puts a LoRA on {on_embeddings[0]}; LEP trains the embedding matrices whole: "
                "move it to `lora_modules_to_save: [embed_tokens, lm_head]`"
            )
        ]
    missing = [m for m in EMBEDDING_MODULES if m not in (data.get("lora_modules_to_save") or [])]
    if missing:
        return [
            (
                f"`lep.train: {train}` with `adapter: {adapter}` trains the embeddings whole: add "
                f"`lora_modules_to_save: [embed_tokens, lm_head]` (missing {', '.join(missing)})"
            )
        ]
    return []


def parse_lep_block(data: dict[str, Any]) -> LEPConfig | None:
    """The ``lep:`` block of a raw YAML dict, or None if there is none; a bad block is one clear LEPError."""
    raw = data.get("lep")
    if raw is None:
        return None
    if isinstance(raw, LEPConfig):
        config = raw
    else:
        try:
            config = LEPConfig.model_validate(dict(raw) if isinstance(raw, dict) else raw)
        except ValidationError as err:
            with settings_named("yaml", "lep"):
                raise LEPError(f"invalid `lep:` block: {describe_validation_error(err, LEPConfig)}") from None
    conflicts = yaml_conflicts(data)
    if conflicts:
        raise LEPError(conflicts_message(conflicts))
    return config
