"""Settings of ``lep-merge`` (CLI flags, YAML keys and the library call are the same fields)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FilePath, create_model

from lep_plugin.common.devices import DEVICE_PATTERN
from lep_plugin.common.fs import check_no_overlap, check_output_dir
from lep_plugin.common.options import ONE_OR_MORE
from lep_plugin.errors import LEPError
from lep_plugin.evaluation.settings import EvalSettings
from lep_plugin.math.choices import Weighting
from lep_plugin.propagation.methods import METHODS
from lep_plugin.publish.checks import HUB_ID, OutType, check_eval_json, check_hub_id

MergeMethod = Literal[(*METHODS, "all")]  # the registry's names, or every one of them


class MergeOptions(BaseModel):
    """Settings of ``lep-merge`` (CLI flags, YAML keys and the library call are the same fields)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: Path | None = Field(
        default=None,
        description="original base model (HF dir, Axolotl output/checkpoint dir, DeepSpeed dir); required, except "
        "for a PEFT adapter as --adapted whose adapter_config.json names a local base dir",
    )
    instruct: Path = Field(
        description="original instruct model (HF dir): its layers, added tokens and chat template are kept"
    )
    adapted: Path = Field(
        description="adapted base model with the new vocabulary and trained embeddings (any input kind)"
    )
    output: Path = Field(description="output model dir (written atomically)")
    method: MergeMethod = Field(
        default="conversion",
        description="how P is fitted: "
        + "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
        + "; all: one model per method",
    )
    adapted_tokenizer: Path | None = Field(default=None, description="new tokenizer dir, if not inside the adapted dir")
    weighting: Weighting = Field(default="mean", description="vocabulary operator weights (conversion)")
    block_rows: int = Field(default=8192, ge=16, description="rows per block of the streamed fit")
    device: str = Field(
        default="auto",
        pattern=DEVICE_PATTERN,
        description="where the fit (float64 normal equations), the solve and adapted·P run: auto (a GPU if there "
        "is one), cpu, cuda or cuda:N; falls back to the CPU when the GPU lacks the free memory",
    )
    precision: Literal["auto", "exact"] = Field(
        default="auto",
        description="the fit's arithmetic: auto (float32 when the output is 16-bit and the condition estimate "
        "shows that leaves the stored result unchanged, else float64), exact (float64 always)",
    )
    sample_text: Path | None = Field(
        default=None, description="text/.jsonl file to measure characters per token before/after"
    )
    eval_json: Annotated[FilePath, AfterValidator(check_eval_json)] | None = Field(
        default=None, description="`lep eval --json` file whose table goes into the model card (README.md)"
    )
    base_model_id: Annotated[str, AfterValidator(check_hub_id)] | None = Field(
        default=None,
        description="Hub id (org/name) of the instruct model, for the model card's `base_model` (default: from the "
        "instruct dir's Hugging Face cache path or its config's `_name_or_path`)",
    )
    language: list[Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]+)?$")]] | None = Field(
        default=None,
        description="language code(s) for the model card, e.g. ru (repeatable; default: the instruct model card's, "
        "else detected from the vocabulary's corpus)",
    )
    license: str | None = Field(
        default=None,
        description="license for the model card's front matter, e.g. apache-2.0 or llama3 (default: the instruct "
        "model card's)",
    )
    lora_scale: float = Field(
        default=1.0,
        ge=0,
        description="a LoRA donor (--adapted is a PEFT adapter): its body LoRA goes onto the instruct layers as "
        "W + s·(α/r)·B·A (0: embeddings only; the authors' alpha_scale is 1/s)",
    )
    lora_output: Literal["merge", "adapter"] = Field(
        default="merge",
        description="a LoRA donor's body LoRA: merged into the instruct weights, or written as a PEFT adapter of the "
        "output model (its body_lora/ dir)",
    )
    check_adapted: bool = Field(
        default=True,
        description="refuse an adapted model that is not an LEP embedding-only run: the base model's vocabulary, "
        "or transformer layers that differ from the base's (--no-check-adapted merges it anyway)",
    )
    force: bool = Field(default=False, description="replace an existing output dir")
    dry_run: bool = Field(default=False, description="print the plan and write nothing")


ROLES = ("base", "instruct", "adapted")  # the input models, in the order plans and reports list them


def check_merge_paths(options: MergeOptions) -> None:
    """The paths' problems, before anything is read: an input that is not a dir (``base`` may still be
    None: a LoRA donor names it), an output that overlaps an input or exists (without ``force``)."""
    inputs = {role: getattr(options, role) for role in ROLES}
    for role, path in inputs.items():
        if path is not None and not Path(path).is_dir():
            raise LEPError(f"{role} {path} is not a directory")
    check_no_overlap(options.output, inputs)
    if not options.dry_run:
        check_output_dir(options.output, options.force)


# lep-merge settings that a training run answers itself (its base model, its output and the tokenizer in it)
# or that belong to the command line (a dry run, an eval file made elsewhere)
FROM_TRAINING_RUN = ("base", "adapted", "adapted_tokenizer", "eval_json", "dry_run")

_MergeSettings = create_model(
    "PropagateMergeSettings",
    __config__=ConfigDict(frozen=True, extra="forbid"),
    **{
        name: (info.annotation, info)
        for name, info in MergeOptions.model_fields.items()
        if name not in FROM_TRAINING_RUN
    },
)


class PropagateEval(EvalSettings):
    """``lep.propagate.eval``: the instruct model and its LEP version(s) on the same held-out samples."""

    REFERENCE_ORDER: ClassVar[tuple[str, ...]] = ("texts", "samples", "paragraphs")

    texts: list[Path] = Field(
        ..., min_length=1, description="held-out text files (.jsonl with a text field, or .txt), one per language"
    )


class PropagateOptions(_MergeSettings):
    """``lep.propagate``: ``lep-merge``'s settings less those the training run gives (base = ``base_model``,
    adapted = ``output_dir``), and what runs on the merged model before it is in place: an evaluation whose
    table goes into the card, GGUF files."""

    REFERENCE_ORDER: ClassVar[tuple[str, ...]] = ("instruct", "output", "method", "eval", "gguf")

    instruct: str = Field(
        description="the instruct model: an HF model dir, or a Hub id (org/name) already in the local Hugging Face "
        "cache; its layers, added tokens and chat template are kept"
    )
    eval: PropagateEval | None = Field(
        default=None,
        description="evaluate the instruct model and its LEP version(s): eval.json and eval.png in the output, "
        "the table in the model card",
    )
    gguf: Annotated[list[OutType], ONE_OR_MORE] | None = Field(
        default=None,
        description="GGUF files to write into the output with llama.cpp's converter, one per type "
        "(f32, f16, bf16, q8_0), named <output name>-<type>.gguf",
    )

    def merge_options(self, base: Path, adapted: Path, instruct: Path) -> MergeOptions:
        """lep-merge's settings for a training run's ``base`` and ``adapted`` model and the ``instruct`` dir
        that :attr:`instruct` names (a Hub id names the card's ``base_model`` too)."""
        hub_id = self.instruct if HUB_ID.fullmatch(self.instruct) and not Path(self.instruct).exists() else None
        values = self.model_dump(include=set(MergeOptions.model_fields) - {"instruct"}, exclude_none=True)
        values.setdefault("base_model_id", hub_id)
        return MergeOptions(**values, base=base, adapted=adapted, instruct=instruct)
