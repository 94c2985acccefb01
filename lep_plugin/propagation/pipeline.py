"""``lep.propagate``: the merge, evaluation and GGUF export a training YAML asks for, run once its trained
weights are on disk – by the plugin when ``axolotl train`` has ended (rank 0, after Axolotl released the
training model) or by ``lep propagate lep.yml`` (after a failure, or on a finished run).

One merge path: ``lep-merge``'s :func:`~lep_plugin.propagation.run.run_merge`, reading the run's output with
the readers it has (HF dir, adapter dir, DeepSpeed checkpoint), with the evaluation and the export as stages
inside its atomic output dir: whatever fails, the training output is untouched and no partial model is left.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lep_plugin.common.fs import check_no_overlap, check_output_dir
from lep_plugin.errors import LEPError, settings_named
from lep_plugin.propagation.options import MergeOptions, PropagateOptions

EVAL_JSON = "eval.json"
EVAL_PLOT = "eval.png"


@dataclass(frozen=True)
class PropagateJob:
    """A ``lep.propagate`` block with the training run's paths resolved."""

    options: PropagateOptions
    merge: MergeOptions  # base = the run's base_model, adapted = its output_dir
    config_path: str | None  # the YAML, for the command that finishes the job

    @property
    def finish_command(self) -> str:
        return f"lep propagate {self.config_path or '<your YAML>'}"


def local_dir(source: str, what: str, revision: str | None = None) -> Path:
    """``source`` (a dir or a Hub id) as a dir on this machine; nothing is downloaded."""
    # lazy: the checkpoint readers load torch; the YAML checks before them answer without it
    from lep_plugin.checkpoints.fingerprint import local_model_dir

    found = local_model_dir(source, revision)
    if found is None:
        raise LEPError(
            f"{what} {source} is neither a dir nor a Hub id in the local Hugging Face cache "
            "(download it first, e.g. `huggingface-cli download ORG/NAME`)"
        )
    return found


def propagate_job(cfg: Mapping[str, Any], options: PropagateOptions, config_path: str | None = None) -> PropagateJob:
    """The job of a training YAML (raw or as Axolotl normalised it) and its ``lep.propagate`` block."""
    if not cfg.get("base_model") or not cfg.get("output_dir"):
        raise LEPError("`lep.propagate` needs the YAML's `base_model:` and `output_dir:`")
    base = local_dir(str(cfg["base_model"]), "base_model", cfg.get("revision_of_model"))
    instruct = local_dir(options.instruct, "lep.propagate.instruct")
    merge = options.merge_options(base=base, adapted=Path(str(cfg["output_dir"])), instruct=instruct)
    return PropagateJob(options, merge, None if config_path is None else str(config_path))


def converter_line(fetch: bool) -> str:
    """Where llama.cpp's converter comes from; ``fetch``: get it now (``register()``: a run that cannot get
    it fails before training, not after), else only say whether it is on this machine (``lep check``)."""
    # lazy: the converter's lookup is needed only for a block that asks for GGUF
    from lep_plugin.publish.llama_cpp import ENV_DIR, find_llama_cpp

    try:
        return f"GGUF converter: {find_llama_cpp(fetch=fetch).origin}"
    except LEPError:
        if fetch or os.environ.get(ENV_DIR):  # a checkout the user named is wrong: say so now
            raise
        return "GGUF converter: not on this machine yet; the run fetches it before training (pip download)"


def check_job(job: PropagateJob, fetch_converter: bool = False) -> list[str]:
    """What is checked before training starts (plugin ``register()``, ``lep check``), so that six hours of
    training do not end on a typo: the instruct model has the base's architecture and hidden size; the
    output is free (unless ``force``) and neither inside nor around the training output or an input.
    Returns the lines that say what will run."""
    # lazy: the architecture check lives with the merge plan (torch)
    from lep_plugin.checkpoints.model_config import load_config
    from lep_plugin.propagation.plan import check_base_and_instruct  # lazy: as above

    merge = job.merge
    base, instruct = load_config(merge.base, "base_model"), load_config(merge.instruct, "lep.propagate.instruct")
    check_base_and_instruct(base, instruct)
    check_no_overlap(
        merge.output, {"training output_dir": merge.adapted, "base_model": merge.base, "instruct": merge.instruct}
    )
    check_output_dir(merge.output, merge.force)
    then = [f"eval on {len(job.options.eval.texts)} text(s)"] if job.options.eval else []
    then += [f"GGUF {', '.join(job.options.gguf)}"] if job.options.gguf else []
    lines = [
        f"propagate: {merge.method} into {merge.output} from instruct {merge.instruct} ({instruct.model_type}) "
        "when training ends" + (f", then {' and '.join(then)}" if then else ""),
    ]
    return lines + ([converter_line(fetch_converter)] if job.options.gguf else [])


def checked_job(
    cfg: Mapping[str, Any], options: PropagateOptions, config_path: str | None, fetch_converter: bool = False
) -> tuple[PropagateJob, list[str]]:
    """:func:`propagate_job` and :func:`check_job` with problems named as ``lep.propagate`` keys: what the
    plugin's ``register()``, ``lep check`` and ``lep propagate`` run before any work."""
    with settings_named("yaml", "lep.propagate"):
        job = propagate_job(cfg, options, config_path)
        return job, check_job(job, fetch_converter)


@dataclass
class _Stages:
    """``lep.propagate``'s evaluation and export, run by ``run_merge`` inside its atomic output; each stage
    says one line with its time."""

    job: PropagateJob
    echo: Callable[[str], None]
    started: float = field(default_factory=time.perf_counter)
    lines: list[str] = field(default_factory=list)

    def say(self, stage: str, what: str) -> None:
        now = time.perf_counter()
        line = f"lep.propagate {stage}: {now - self.started:.1f} s{what}"
        self.started = now
        self.lines.append(line)
        self.echo(line)

    def evaluate(self, root: Path, models: dict[str, Path], names: dict[str, Path]) -> list[dict[str, Any]] | None:
        self.say("merge", f" ({', '.join(models)})")
        settings = self.job.options.eval
        if settings is None:
            return None
        # lazy: the evaluation loads whole models (torch, transformers)
        from lep_plugin.evaluation.compare import compare_models, write_results
        from lep_plugin.evaluation.evaluate import load_tasks  # lazy: as above
        from lep_plugin.evaluation.report import at_or_below_chance, model_names  # lazy: as above

        instruct = self.job.merge.instruct
        labels = model_names([Path(self.job.options.instruct), *names.values()])
        tasks = load_tasks(settings.texts, settings)
        paths = [instruct, *models.values()]
        records = compare_models(list(zip(labels, paths)), tasks, settings, self.job.merge.device, echo=self.echo)
        write_results(records, settings, settings.texts, root / EVAL_JSON, root / EVAL_PLOT)
        self.say("eval", f" ({len(records)} models on {len(tasks)} text(s): {EVAL_JSON}, {EVAL_PLOT})")
        below = at_or_below_chance(records)
        if below:  # a table of non-copiers must not read as a result
            self.echo(f"note: at or below chance in sentence copying: {'; '.join(below)}")
        return records

    def export(self, root: Path, models: dict[str, Path], names: dict[str, Path]) -> None:
        if not self.job.options.gguf:
            return
        # lazy: llama.cpp's converter is found (fetched once) only for a block that asks for GGUF
        from lep_plugin.publish.gguf import GGUFOptions, export_gguf

        for method, model in models.items():
            name = names[method].name
            # converted beside the output (the exporter refuses to write into the dir it reads), then moved in
            with tempfile.TemporaryDirectory(prefix=".lep-gguf-", dir=root.parent) as staging:
                written = []
                for outtype in self.job.options.gguf:
                    file = Path(staging) / f"{name}-{outtype}.gguf"
                    summary = export_gguf(
                        model, GGUFOptions(output=file, outtype=outtype), echo=self._notes, model_name=name
                    )
                    written.append((file, summary))
                for file, _ in written:
                    os.replace(file, model / file.name)
            self.say(
                "gguf", "".join(f" ({f.name}: {s['bytes'] / 1e6:.1f} MB, {s['tokens']} tokens)" for f, s in written)
            )

    def _notes(self, line: str) -> None:
        """The exporter's notes; its progress lines name the staging file, which the stage line replaces."""
        if line.startswith("note:"):
            self.echo(line)


def run_propagate(job: PropagateJob, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Merge, evaluate, export; one line per stage, the last one where the output is."""
    # lazy: the merge itself (torch, transformers)
    from lep_plugin.propagation.run import run_merge

    began = time.perf_counter()
    stages = _Stages(job, echo)
    with settings_named("yaml", "lep.propagate"):  # what it says of a setting names the block's key
        report = run_merge(job.merge, echo=echo, stages=stages)
    echo(f"lep.propagate done in {time.perf_counter() - began:.1f} s: {job.merge.output}")
    return report | {"stages": stages.lines}
