"""How the evaluation runs: the settings ``lep eval``, the training callback (``lep.eval``) and
``lep.propagate.eval`` share. Apart from the model calls so that validating a YAML loads no torch."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from lep_plugin.evaluation.tasks import PromptStyle


class EvalSettings(BaseModel):
    """How the evaluation runs (shared by ``lep eval`` and the ``lep: eval:`` training callback)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    samples: int = Field(16, ge=1, description="Sentences and paragraphs sampled per text file.")
    seed: int = Field(0, description="Seed of the sentence/paragraph sampling.")
    shots: int = Field(3, ge=0, description="Few-shot examples in the plain prompt of base models.")
    prompt_style: PromptStyle = Field(
        "auto",
        description="'chat' (zero-shot, chat template), 'base' (plain few-shot) or 'auto' "
        "(chat if the tokenizer has a chat template).",
    )
    max_new_tokens_sentence: int = Field(128, ge=1, description="Generation limit of the sentence copy task.")
    max_new_tokens_paragraph: int = Field(
        1024,
        ge=1,
        description="Generation cap of the paragraph copy task (Darumeru's 1,024); each paragraph gets at most "
        "paragraph_budget x its own token count.",
    )
    paragraph_budget: float = Field(
        1.5,
        ge=1.0,
        description="New tokens per paragraph as a multiple of the reference's token count (+1 for the end token), "
        "capped by max_new_tokens_paragraph.",
    )
    paragraphs: bool = Field(
        True,
        description="Run the paragraph copy task, most of the evaluation's time (off: --no-paragraphs / "
        "paragraphs: false; the sentence tasks and bits per character still run).",
    )
    batch_size: int = Field(8, ge=1, description="Prompts generated together.")
    bpc_chars: int = Field(
        20_000, ge=0, description="Characters of held-out text scored for bits per character (0: skip)."
    )
    bpc_window: int = Field(
        1024, ge=2, description="Token window of the bits-per-character pass (context resets at each window)."
    )
    text_field: str = Field("text", description="Field of .jsonl text files holding the text.")
    log_samples: bool = Field(
        True, description="Keep every prompt, reference, output and score in the result (like lm-eval's --log_samples)."
    )

    @classmethod
    def of(cls, options: BaseModel) -> EvalSettings:
        """The evaluation settings inside a larger options model (``lep eval``'s, the callback's)."""
        return cls(**options.model_dump(include=set(cls.model_fields)))
