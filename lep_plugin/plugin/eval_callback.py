"""Training-time evaluation (``lep: eval: {...}``): every N steps, the copy tasks, tokenization statistics
and bits per character of the model being trained go into the trainer's logs (so W&B / TensorBoard show
them beside the loss) and into ``lep_eval_history.json`` in the output dir.

Log keys: ``lep_eval/<text>/<metric>`` for every metric of ``evaluate.METRICS`` (the strict copy score
``sentence_strict``, ``sentence_exact``, Darumeru's ``sentence_copy``, ...) and
``lep_eval/<text>/chance/<metric>`` for each copy metric's chance level, drawn as a flat line beside it.

Wiring (in the plugin): ``add_callbacks_post_trainer(cfg, trainer)`` returns
``[build_eval_callback(options, tokenizer, cfg.output_dir, trainer=trainer)]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from transformers import TrainerCallback

from lep_plugin.common.distributed import (
    broadcast_from_main,
    forward_needs_all_ranks,
    log_rank,
)
from lep_plugin.common.fs import write_text_atomic
from lep_plugin.errors import LEPError, describe_validation_error, settings_named
from lep_plugin.evaluation.evaluate import (
    evaluate_model,
    flat_metrics,
    load_tasks,
)
from lep_plugin.evaluation.settings import EvalSettings
from lep_plugin.evaluation.tasks import PromptStyle

HISTORY_FILE = "lep_eval_history.json"
LOG_PREFIX = "lep_eval/"


class EvalCallbackOptions(EvalSettings):
    """The ``lep: eval:`` block of an Axolotl config."""

    texts: list[Path] = Field(..., min_length=1, description="Held-out text files (.jsonl with a text field, or .txt).")
    every_n_steps: int = Field(500, ge=1, description="Evaluate after every N optimizer steps.")
    at_start: bool = Field(False, description="Also evaluate before the first step (the starting point of the curves).")
    at_end: bool = Field(
        True, description="Also evaluate after the last step if it is not a multiple of every_n_steps."
    )
    samples: int = Field(8, ge=1, description="Sentences and paragraphs sampled per text file.")
    prompt_style: PromptStyle = Field(
        "base",
        description="The model in training is a base model: 'base' asks with plain few-shot prompts even when "
        "its tokenizer has a chat template; 'chat' or 'auto' to train a chat model.",
    )
    log_samples: bool = Field(
        False, description="Keep every prompt and output in lep_eval_history.json (it grows with every evaluation)."
    )


def eval_options(options: dict[str, Any]) -> EvalCallbackOptions:
    """``lep.eval`` validated by the callback's own model (errors name the YAML key)."""
    try:
        return EvalCallbackOptions.model_validate(options)
    except ValidationError as err:
        with settings_named("yaml", "lep.eval"):
            raise LEPError(
                f"invalid `lep.eval:` block: {describe_validation_error(err, EvalCallbackOptions)}"
            ) from None


class LEPEvalCallback(TrainerCallback):
    """Runs :func:`evaluate_model` on the model being trained.

    The main process evaluates and the other ranks wait for its result (their copies of the weights are
    the same), then every rank logs it. Under DeepSpeed ZeRO-3 or FSDP a forward pass is a collective, so
    there every rank runs the same deterministic evaluation. Only the main process writes the history
    file; the trainer's own reporting integrations report on the main process only.
    """

    def __init__(self, options: EvalCallbackOptions, tokenizer, output_dir: str | os.PathLike, trainer=None):
        self.options = options
        self.settings = EvalSettings.of(options)
        self.tokenizer = tokenizer
        self.output_dir = Path(output_dir)
        self.trainer = trainer
        # Read and sample the texts now: a bad path fails before training starts, not after N steps.
        self.tasks = load_tasks(options.texts, self.settings)
        self.last_step: int | None = None

    # -- hooks -----------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.options.at_start and state.global_step == 0:
            self._evaluate(args, state, model, processing_class)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        step = state.global_step
        due = step % self.options.every_n_steps == 0
        last = self.options.at_end and state.max_steps and step >= state.max_steps
        if (due or last) and step != self.last_step:
            self._evaluate(args, state, model, processing_class)
        return control

    # -- work ------------------------------------------------------------------------------------------
    def _evaluate(self, args, state, model, processing_class) -> dict[str, Any]:
        tokenizer = self.tokenizer if self.tokenizer is not None else processing_class
        if model is None or tokenizer is None:
            raise RuntimeError("LEP evaluation callback needs the model and the tokenizer")
        step = state.global_step
        every_rank = forward_needs_all_ranks(model)
        if every_rank or state.is_world_process_zero:
            record = evaluate_model(model, tokenizer, self.tasks, self.settings, name=f"step-{step}")
            log_rank(f"lep.eval at step {step}: {record['seconds']:.1f} s")
        else:
            record = None
        if not every_rank:
            # the others wait here for rank 0's result: the trainer's logging below may be a collective
            # (Axolotl's callbacks reduce metrics across ranks), so every rank logs the same record
            record = broadcast_from_main(record)
        logs = flat_metrics(record, LOG_PREFIX)
        logs[f"{LOG_PREFIX}seconds"] = record["seconds"]
        if self.trainer is not None:
            # Trainer.log appends to state.log_history and calls on_log of every reporting integration.
            self.trainer.log(dict(logs))
        else:
            state.log_history.append({**logs, "step": step})
        if state.is_world_process_zero:
            self._append_history({"step": step, "epoch": state.epoch, **record})
        self.last_step = step
        return record

    def _append_history(self, entry: dict[str, Any]) -> None:
        path = self.output_dir / HISTORY_FILE
        self.output_dir.mkdir(parents=True, exist_ok=True)
        history: list[dict[str, Any]] = []
        if path.is_file():
            try:
                history = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                history = []
            # A resumed run re-evaluates steps after its checkpoint: keep one entry per step.
            history = [h for h in history if isinstance(h, dict) and h.get("step", -1) < entry["step"]]
        history.append(entry)
        write_text_atomic(path, json.dumps(history, indent=2, ensure_ascii=False, allow_nan=True))


def build_eval_callback(
    options: EvalCallbackOptions | dict[str, Any], tokenizer, output_dir: str | os.PathLike, trainer=None
) -> LEPEvalCallback:
    """The callback for ``add_callbacks_post_trainer``; pass ``trainer`` so results reach W&B/TensorBoard."""
    if not isinstance(options, EvalCallbackOptions):
        options = eval_options(options)
    return LEPEvalCallback(options, tokenizer, output_dir, trainer=trainer)
