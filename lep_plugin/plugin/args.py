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
      eval: {...}                 # optional, handed to lep_plugin.plugin.eval_callback
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lep_plugin.errors import LEPError

TrainMode = Literal["embeddings", "new_rows", "off"]


class VocabSection(BaseModel):
    """``lep.vocab``: where the new vocabulary comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokenizer: str | None = Field(
        default=None, description="a ready HF tokenizer dir to use as the new vocabulary (instead of building one)"
    )
    method: Literal["bpe", "unigram", "extend", "optimize"] | None = Field(
        default=None,
        description="bpe/unigram: a whole new vocabulary; extend: add target-language tokens to the old one; "
        "optimize: keep the `keep` most used old tokens, then extend",
    )
    corpus: list[str] | None = Field(default=None, description="target-language .jsonl/.txt files or globs")
    vocab_size: int | None = Field(default=None, gt=0, description="size of the trained (new) vocabulary")
    keep: int | None = Field(default=None, gt=0, description="optimize: how many old tokens to keep")
    text_field: str = Field(default="text", description="field of the .jsonl records holding the text")
    min_frequency: int = Field(default=2, ge=1, description="least corpus frequency of a new merge")
    max_chars: int | None = Field(default=None, gt=0, description="read at most this many corpus characters")
    cache_dir: str | None = Field(
        default=None,
        description="where built vocabularies are kept (default: beside Axolotl's dataset_prepared_path)",
    )
    weighting: Literal["mean", "position"] = Field(
        default="mean", description="how a new token's row averages the rows of its old pieces"
    )

    @field_validator("corpus", mode="before")
    @classmethod
    def _one_file_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _source_is_clear(self):
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
            raise ValueError("set `method:` (bpe | unigram | extend | optimize) or `tokenizer:` (a ready tokenizer dir)")
        if not self.corpus:
            raise ValueError(f"method {self.method!r} needs `corpus:` (target-language .jsonl files or globs)")
        if self.vocab_size is None:
            raise ValueError(f"method {self.method!r} needs `vocab_size:`")
        if self.method == "optimize" and self.keep is None:
            raise ValueError("method 'optimize' needs `keep:` (how many old tokens to keep)")
        if self.method != "optimize" and self.keep is not None:
            raise ValueError(f"`keep:` is only used by method 'optimize', not {self.method!r}")
        return self

    def build_options(self):
        """The vocabulary library's options (only for a built vocabulary)."""
        from lep_plugin.io.vocab import VocabOptions

        return VocabOptions(
            method=self.method,
            vocab_size=self.vocab_size,
            keep=self.keep,
            text_field=self.text_field,
            min_frequency=self.min_frequency,
            max_chars=self.max_chars,
        )


class LEPConfig(BaseModel):
    """The ``lep:`` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab: VocabSection | None = Field(default=None, description="the new vocabulary; omit to keep the old one")
    train: TrainMode = Field(
        default="embeddings",
        description="embeddings: train embed_tokens and lm_head only; new_rows: only the rows of new tokens; "
        "off: leave Axolotl's own trainable-parameter settings alone",
    )
    # Options of the training-time evaluation callback: a dict here, validated by
    # lep_plugin.plugin.eval_callback.EvalCallbackOptions in register() (so the two evolve separately).
    eval: dict[str, Any] | None = Field(default=None, description="training-time evaluation (see eval_callback)")

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
                raise ValueError(conflicts[0])
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
    if data.get("adapter"):
        problems.append(
            f"`lep.train: {train}` trains the embedding matrices themselves; remove `adapter: {data['adapter']}` "
            "(or set `lep.train: off`)"
        )
    if data.get("lora_modules_to_save"):
        problems.append(f"`lora_modules_to_save:` has no effect with `lep.train: {train}`; remove it")
    if train == "new_rows" and (data.get("weight_decay") or 0) > 0:
        problems.append(
            "`lep.train: new_rows` needs `weight_decay: 0`: AdamW's decay would change the frozen old rows"
        )
    return problems


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
            raise LEPError(f"invalid `lep:` block: {format_validation_error(err)}") from None
    conflicts = yaml_conflicts(data)
    if conflicts:
        raise LEPError(conflicts[0])
    return config


def format_validation_error(err: ValidationError, prefix: str = "lep") -> str:
    """``lep.vocab.methd: extra key not allowed; ...`` – the YAML path of each problem and what is wrong."""
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in (prefix, *item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (a typo?)"
        parts.append(f"{loc}: {message}")
    return "; ".join(parts)
