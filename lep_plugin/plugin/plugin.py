"""``lep_plugin.LEPPlugin``: LEP steps 1–3 (new vocabulary, T-initialised embeddings, embedding-only
training) inside a normal ``axolotl train`` run. Thin: the work is in the sibling modules.

Hook order relied on (Axolotl 0.19, same names in 0.21):

1. ``register(cfg)`` – raw YAML dict, *before* config validation and before datasets are tokenized:
   parse ``lep:``, make launched ranks without a GPU real CPU ranks and start gloo for DeepSpeed on
   CPU (plugin.distributed), build/reuse the vocabulary, point
   ``cfg.tokenizer_config`` at it (Axolotl's validation keeps that key, so the tokenizer Axolotl loads for
   the datasets and the trainer is the new one).
2. ``load_datasets`` (returns None: only fixes a CPU multi-process device_map), then Axolotl loads and
   tokenizes the datasets (with the new tokenizer).
3. ``pre_model_load`` → model built from the base checkpoint → ``post_model_build(cfg, model)``: the old
   rows are still there (Axolotl's own ``_resize_token_embeddings`` runs right after this hook), so the
   embeddings are converted here with T; Axolotl then finds enough rows and only re-ties weights.
4. adapters → ``post_lora_load`` → ``post_model_load(cfg, model)``: freeze everything but the embeddings
   (with ``adapter: lora|qlora``: their ``modules_to_save`` copies, plus the body LoRA for ``lep.body: lora``;
   plugin.adapters).
   Axolotl's ``unfrozen_parameters`` step comes after this hook; the plugin refuses that setting
   (args.yaml_conflicts), so nothing undoes the freezing.
5. trainer built → ``add_callbacks_post_trainer`` (manifest into each checkpoint, per-rank run info, the
   ``lep.eval`` callback of lep_plugin.plugin.eval_callback, DeepSpeed's step under no_grad on gloo ranks,
   the ``new_rows`` mask of FSDP2's sharded gradients) → ``post_trainer_create``
   (freezing re-asserted on the trainer's model, before the optimizer is created inside ``train()``).
6. ``post_train`` – called twice (after ``trainer.train`` and after the final save): copies the manifest
   into ``output_dir``; idempotent.
7. ``post_train_unload`` – once, after Axolotl deleted the model and trainer and ended the process group:
   ``lep.propagate`` (merge, evaluation, GGUF; lep_plugin.propagation.pipeline) on rank 0, the other ranks
   leave. Its settings were checked in ``register()``, before anything was written.

Model hooks also run for ``axolotl inference`` / ``merge-lora``: a base model that already carries an
LEP vocabulary (its dir has ``lep_vocab.json``) is neither re-vocabularised nor converted again.
"""

from __future__ import annotations

import functools
import gc
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

from lep_plugin.checkpoints.fingerprint import base_record
from lep_plugin.checkpoints.model_config import embedding_parameters
from lep_plugin.common.distributed import (
    full_rows,
    full_tensor,
    gathered,
    is_main,
    log_rank,
    rank,
    world_size,
)
from lep_plugin.common.fs import as_if_created_tree, write_json
from lep_plugin.common.tokenizers import MANIFEST, load_tokenizer, read_manifest
from lep_plugin.errors import LEPError, LEPExit, settings_named
from lep_plugin.plugin.adapters import (
    body_lora_trains,
    check_embeddings_are_copies,
    is_peft_model,
    lora_kernels_for_cpu,
    unfreeze_body_lora,
)
from lep_plugin.plugin.args import LEPConfig, parse_lep_block
from lep_plugin.plugin.distributed import (
    NoGradStepCallback,
    cpu_device_map,
    cpu_ranks_for_accelerate,
    init_gloo_for_cpu_deepspeed,
    leave_training_state,
)
from lep_plugin.plugin.eval_callback import build_eval_callback, eval_options
from lep_plugin.plugin.freezing import ShardedRowMaskCallback, freeze_all_but_embeddings, mask_old_rows, new_token_rows
from lep_plugin.plugin.vocabulary import VocabPlan, plan_vocabulary
from lep_plugin.propagation.pipeline import PropagateJob, checked_job, run_propagate
from lep_plugin.publish.outputs import finish_training_output
from lep_plugin.vocab.convert import convert_embeddings
from lep_plugin.vocab.report import few_new_tokens_warning


def _user_errors(hook):
    """A bad setting or input found in a hook is one ``error:`` line and exit code 2, not a traceback
    between Axolotl's and the launcher's (the launcher then only reports the exit code)."""

    @functools.wraps(hook)
    def wrapper(*args, **kwargs):

        try:
            return hook(*args, **kwargs)
        except LEPExit:
            raise
        except LEPError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise LEPExit(str(err)) from None

    return wrapper


def launched_by_axolotl_train() -> bool:
    """Whether this process trains (``axolotl train`` runs ``axolotl.cli.train`` under its launcher, or in
    itself with ``--launcher python``): ``register()`` also runs for ``axolotl inference`` or ``merge-lora``
    of the same YAML, when the ``lep.propagate`` output rightly exists."""
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    if main is not None and main.name == "axolotl.cli.train":
        return True
    return len(sys.argv) > 1 and Path(sys.argv[0]).name == "axolotl" and sys.argv[1] == "train"


def _unwrap(model):
    """The HF model under a DeepSpeed/DDP wrapper or PEFT model."""
    while hasattr(model, "module") and not hasattr(model, "get_input_embeddings"):
        model = model.module
    return model


class ManifestCallback(TrainerCallback):
    """Writes ``lep_vocab.json`` into every checkpoint (the trainer already saves the tokenizer there).
    ``manifest`` is called on the main process only: it reads the base model's files for its fingerprint."""

    def __init__(self, manifest: Callable[[], dict]):
        self.manifest = manifest

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                write_json(checkpoint / MANIFEST, self.manifest())
                as_if_created_tree(checkpoint)  # the trainer's safetensors files are written 0600
        return control


class RunInfoCallback(TrainerCallback):
    """Logs per rank what each process trains on and ends with, so multi-process runs can be checked:
    batches per rank (data sharding) and a checksum of the embedding matrices (same result on all ranks)."""

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if train_dataloader is not None:
            log_rank(f"{len(train_dataloader)} batches per rank of {args.world_size}")
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):

        if model is not None and world_size() > 1:  # one process has nothing to compare with
            params = embedding_parameters(_unwrap(model))
            with gathered(params, modifier_rank=None):
                checksum = sum(float(full_tensor(p.detach()).double().abs().sum()) for p in params)
            log_rank(f"embedding checksum {checksum:.6f}")
        return control


class LEPPlugin(BasePlugin):
    """Learned Embedding Propagation: new vocabulary + embedding-only continued pre-training."""

    def __init__(self):
        super().__init__()
        self.config: LEPConfig | None = None
        self.plan: VocabPlan | None = None
        self.eval_options = None
        self.gloo_deepspeed = False
        self.row_mask = None  # `train: new_rows`: the rows that train (for FSDP2's sharded gradients)
        self.propagate: PropagateJob | None = None
        self.said: set[str] = set()

    def get_input_args(self) -> str:
        return "lep_plugin.plugin.args.LEPArgs"

    # 1 ------------------------------------------------------------------------------------------------
    @_user_errors
    def register(self, cfg: dict):
        self.config = parse_lep_block(cfg)
        self.plan = None
        self.eval_options = None
        self.gloo_deepspeed = False
        self.row_mask = None
        self.propagate = None
        if self.config is None:
            return
        if cpu_ranks_for_accelerate():
            log_rank(f"no CUDA: rank {rank()} of {world_size()} runs as a CPU rank (gloo)")
        base = cfg.get("base_model")
        if base and Path(base).is_dir() and not Path(base).is_absolute():
            # recorded as given in the adapter's config and the manifest: lep-merge run elsewhere finds it
            cfg["base_model"] = str(Path(base).resolve())
        if self.config.propagate is not None and launched_by_axolotl_train():
            # before anything is written (the vocabulary)
            self.propagate, lines = checked_job(
                cfg, self.config.propagate, cfg.get("axolotl_config_path"), fetch_converter=True
            )
            for line in lines:
                self._say_once(line)
        kernels = lora_kernels_for_cpu(cfg, torch.cuda.is_available())
        if kernels:
            log_rank(kernels)
        self.gloo_deepspeed = init_gloo_for_cpu_deepspeed(cfg)
        if self.gloo_deepspeed:
            log_rank("no CUDA: initialised a gloo process group for DeepSpeed")
        if self.config.eval is not None:
            self.eval_options = eval_options(self.config.eval)
        if self.config.vocab is None:
            return
        with settings_named("yaml", "lep.vocab"):
            self.plan = plan_vocabulary(cfg, self.config.vocab)
            warning = few_new_tokens_warning(read_manifest(self.plan.new_tokenizer) or {})
        cfg["tokenizer_config"] = str(self.plan.new_tokenizer)
        log_rank(
            f"vocabulary {self.plan.new_tokenizer} ({'built' if self.plan.built else 'reused'}, "
            f"fingerprint {self.plan.fingerprint})"
        )
        if warning:
            log_rank(warning)

    # 2 ------------------------------------------------------------------------------------------------
    def load_datasets(self, cfg, preprocess: bool = False):
        # The first hook that sees the normalised cfg. Axolotl sets `device_map: {"": LOCAL_RANK}` for
        # every multi-process run, which names a CUDA device; without CUDA each rank loads on the CPU.
        if self.config is not None:
            cpu_device_map(cfg)
        return None  # Axolotl loads and tokenizes the datasets itself

    # 3 ------------------------------------------------------------------------------------------------
    @_user_errors
    def post_model_build(self, cfg, model):
        if self.plan is None or self.plan.already_converted:
            return
        if getattr(model, "_lep_vocab", None) == self.plan.fingerprint:
            return

        new_tok = load_tokenizer(self.plan.new_tokenizer)
        old_tok = load_tokenizer(self.plan.old_tokenizer)
        options = self.config.vocab.convert_options()
        if options.pad_to_multiple_of is None and cfg.get("resize_token_embeddings_to_32x"):
            options = options.model_copy(update={"pad_to_multiple_of": 32})
        rows = convert_embeddings(model, new_tok, old_tok, options)
        model._lep_vocab = self.plan.fingerprint
        log_rank(f"embeddings converted to the new vocabulary: {len(old_tok)} -> {len(new_tok)} tokens, {rows} rows")

    # 4 ------------------------------------------------------------------------------------------------
    @_user_errors
    def post_model_load(self, cfg, model):
        self._freeze(model, report=True)

    # 5 ------------------------------------------------------------------------------------------------
    @_user_errors
    def add_callbacks_post_trainer(self, cfg, trainer):
        if self.config is None:
            return []
        callbacks = [RunInfoCallback()]
        if self.gloo_deepspeed and world_size() > 1:
            callbacks.append(NoGradStepCallback(trainer))
        if self.row_mask is not None:
            callbacks.append(ShardedRowMaskCallback(self.row_mask))
        if self.plan is not None:
            callbacks.append(ManifestCallback(functools.partial(self.output_manifest, cfg)))
        if self.eval_options is not None:
            tokenizer = getattr(trainer, "processing_class", None) or getattr(trainer, "tokenizer", None)
            with settings_named("yaml", "lep.eval"):
                callbacks.append(build_eval_callback(self.eval_options, tokenizer, cfg["output_dir"], trainer=trainer))
        return callbacks

    @_user_errors
    def post_trainer_create(self, cfg, trainer):
        self._freeze(trainer.model, report=False)  # re-asserted on the trainer's model; said once already

    # 6 ------------------------------------------------------------------------------------------------
    @_user_errors
    def post_train(self, cfg, model):
        if self.plan is None or not is_main():
            return
        output = Path(cfg["output_dir"])
        if output.is_dir():
            write_json(output / MANIFEST, self.output_manifest(cfg))

            finish_training_output(cfg, self.plan, self._say_once)  # model card and original_tokenizer/
            as_if_created_tree(output)

    @_user_errors
    def post_train_unload(self, cfg):
        if self.propagate is None or not is_main():
            return  # the other ranks leave; rank 0 propagates
        leave_training_state()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Axolotl's handler would exit 0 on Ctrl-C
        gc.collect()  # Axolotl deleted the model and trainer: their memory is free before the merge loads
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        # type(), not isinstance(): a deprecated torch object warns when its __class__ is read
        kept = sum(
            issubclass(type(o), torch.nn.Module) and hasattr(o, "get_input_embeddings") for o in gc.get_objects()
        )
        log_rank(
            "training model released"
            if not kept
            else f"note: {kept} training model object(s) still referenced after Axolotl's cleanup (DeepSpeed ZeRO-3 "
            "keeps this rank's parameter and optimizer partitions); propagation runs beside them"
        )
        try:
            run_propagate(self.propagate, echo=log_rank)
        except Exception as err:  # whatever stopped it, the user needs the way to finish
            if not isinstance(err, (LEPError, OSError)):  # not bad input: a bug's traceback, then the line
                traceback.print_exc()
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            reason = reason if isinstance(err, LEPError) else f"{type(err).__name__}: {reason}"
            raise LEPError(
                f"lep.propagate stopped: {reason}; {cfg['output_dir']} is as training left it and no merged model "
                f"was written; to finish: {self.propagate.finish_command}"
            ) from err

    def output_manifest(self, cfg) -> dict:
        """The vocabulary's manifest plus what this run trained and the fingerprint of the base model it
        started from (read from its files, so the same under ZeRO-3/FSDP): ``lep-merge`` reads them to know,
        without comparing every tensor, that the transformer body is the ``--base`` model's."""
        base = base_record(str(cfg.get("base_model")), cfg.get("revision_of_model"))
        if "unavailable" in base:
            log_rank(
                f"no fingerprint of the base model in the manifest ({base['unavailable']}): "
                "lep-merge will compare every tensor"
            )
        plugin = {"train": self.config.train, "body": self.config.body, "base": base}
        return {**read_manifest(self.plan.new_tokenizer), "plugin": plugin}

    # ------------------------------------------------------------------------------------------------
    def _say_once(self, message: str) -> None:
        """``post_train`` runs twice: what it has to say is said once."""
        if message not in self.said:
            self.said.add(message)
            log_rank(message)

    def _freeze(self, model, report: bool) -> None:
        if self.config is None or self.config.train == "off":
            return

        model = _unwrap(model)
        names = freeze_all_but_embeddings(model)
        if is_peft_model(model):  # `adapter: lora|qlora`: args.adapter_conflicts allowed it
            check_embeddings_are_copies(model, names)
            if body_lora_trains(self.config.body, has_adapter=True):
                names = names + [f"the body LoRA ({len(unfreeze_body_lora(model))} matrices)"]
        if self.config.train == "new_rows":
            rows = full_rows(model.get_input_embeddings().weight)
            mask = new_token_rows(
                load_tokenizer(self.plan.new_tokenizer), load_tokenizer(self.plan.old_tokenizer), rows
            )
            mask_old_rows(model, mask)
            self.row_mask = mask
            message = f"training {int(mask.sum())} new-token rows of {', '.join(names)}; everything else frozen"
        else:
            message = f"training {', '.join(names)} only; everything else frozen"
        if report:
            log_rank(message)
