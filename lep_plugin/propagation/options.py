"""Settings of ``lep-merge`` (CLI flags, YAML keys and the library call are the same fields)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FilePath

from lep_plugin.common.devices import DEVICE_PATTERN
from lep_plugin.math.operator import Weighting
from lep_plugin.publish.card import check_eval_json

MergeMethod = Literal["swap", "overlap", "conversion", "all"]


class MergeOptions(BaseModel):
    """Settings of ``lep-merge`` (CLI flags, YAML keys and the library call are the same fields)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: Path = Field(description="original base model (HF dir, Axolotl output/checkpoint dir, DeepSpeed dir)")
    instruct: Path = Field(description="original instruct model (HF dir): its layers, added tokens and chat template are kept")
    adapted: Path = Field(description="adapted base model with the new vocabulary and trained embeddings (any input kind)")
    output: Path = Field(description="output model dir (written atomically)")
    method: MergeMethod = Field(default="conversion", description="how P is fitted; 'all' writes one model per method")
    adapted_tokenizer: Path | None = Field(default=None, description="new tokenizer dir, if not inside the adapted dir")
    weighting: Weighting = Field(default="mean", description="vocabulary operator weights (conversion)")
    block_rows: int = Field(default=8192, ge=16, description="rows per block of the streamed fit")
    device: str = Field(
        default="auto",
        pattern=DEVICE_PATTERN,
        description="where the fit (float64 normal equations), the solve and adapted·P run: auto (a GPU if there "
        "is one), cpu, cuda or cuda:N; falls back to the CPU when the GPU lacks the free memory",
    )
    sample_text: Path | None = Field(default=None, description="text/.jsonl file to measure characters per token before/after")
    eval_json: Annotated[FilePath, AfterValidator(check_eval_json)] | None = Field(default=None, description="`lep eval --json` file whose table goes into the model card (README.md)")
    check_adapted: bool = Field(
        default=True,
        description="refuse an adapted model that is not an LEP embedding-only run: the base model's vocabulary, "
        "or transformer layers that differ from the base's (--no-check-adapted merges it anyway)",
    )
    force: bool = Field(default=False, description="replace an existing output dir")
    dry_run: bool = Field(default=False, description="print the plan and write nothing")
