"""Options of the vocabulary tools, shared by ``lep vocab`` and the plugin's ``lep.vocab`` block."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lep_plugin.math.choices import Weighting
from lep_plugin.vocab.build import VOCAB_METHODS

VocabMethod = Literal[tuple(VOCAB_METHODS)]  # the registry's names


class VocabOptions(BaseModel):
    """How to build the new vocabulary."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: VocabMethod = Field(description="; ".join(f"{m.name}: {m.summary}" for m in VOCAB_METHODS.values()))
    vocab_size: int = Field(
        gt=0,
        description="bpe/unigram: size of the new vocabulary (special tokens included); "
        "extend/optimize: size of the target-language BPE whose new tokens are added",
    )
    keep: int | None = Field(default=None, gt=0, description="optimize: how many old tokens to keep")
    text_field: str = Field(default="text", description="field of .jsonl corpus records holding the text")
    min_frequency: int = Field(default=2, ge=1, description="least corpus frequency of a new merge")
    max_chars: int | None = Field(default=None, gt=0, description="read at most this many corpus characters")
    keep_old_tokenization: bool = Field(
        default=True,
        description="extend/optimize: learn the new merges after the old ones, each making a token with a letter "
        "of new_token_scripts, so text without such letters is tokenized exactly as before; false: the "
        "target-language BPE's own tokens and merges ranked first (a little more compression of the target "
        "language, old-language words split differently)",
    )
    new_token_scripts: str = Field(
        default="auto",
        description="extend/optimize: the Unicode scripts (comma-separated first words of letter names, e.g. "
        "CYRILLIC) a new token must hold a letter of; auto: those of at least 25 % of the corpus's letters",
    )

    @model_validator(mode="after")
    def _keep_only_for_optimize(self):
        check_keep(self.method, self.keep)
        return self


def check_keep(method: str | None, keep: int | None, key: str = "keep") -> None:
    """``keep`` is given exactly when the method is ``optimize``; ``key`` is how the user wrote it."""
    if method == "optimize" and keep is None:
        raise ValueError(f"method 'optimize' needs {key} (how many old tokens to keep)")
    if method != "optimize" and keep is not None:
        raise ValueError(f"{key} is only used by method 'optimize', not {method!r}")


class ConvertOptions(BaseModel):
    """How a model's embeddings are given the new vocabulary (``lep vocab convert``, the plugin)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pad_to_multiple_of: int | None = Field(default=None, gt=0, description="pad the embedding rows to a multiple of M")
    weighting: Weighting = Field(
        default="mean", description="how a new token's row averages the rows of its old pieces"
    )
