"""``lep check CONFIG.yml``: what an Axolotl YAML will do with LEP, checked before a long run.

Every problem the plugin would meet at ``register()`` – and the one it cannot see, a ``lep:`` block in a
YAML that does not load the plugin (Axolotl then drops the block without a word and trains every weight
with the old vocabulary) – is found here in seconds, as one line, without loading a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lep_plugin.common.fs import read_yaml_mapping
from lep_plugin.errors import LEPError, settings_named
from lep_plugin.evaluation.settings import EvalSettings
from lep_plugin.plugin.adapters import ADAPTERS, lora_kernels_for_cpu, trained_parts
from lep_plugin.plugin.args import parse_lep_block
from lep_plugin.plugin.vocabulary import locate_vocabulary
from lep_plugin.propagation.pipeline import checked_job

PLUGIN_NAMES = ("lep_plugin.LEPPlugin", "lep_plugin.plugin.plugin.LEPPlugin")


def check_config(path: Path) -> list[str]:
    """One line per finding of a YAML that is ready to train; a problem is a :class:`LEPError`."""

    cfg = read_yaml_mapping(path)
    plugins = cfg.get("plugins") or []
    if "lep" not in cfg:
        raise LEPError(f"{path} has no `lep:` block: nothing for LEP to do")
    if not any(name in plugins for name in PLUGIN_NAMES):
        raise LEPError(
            f"{path} has a `lep:` block but does not load the plugin: add `plugins: [lep_plugin.LEPPlugin]` "
            "(without it Axolotl drops the block silently and trains every weight with the old vocabulary)"
        )
    config = parse_lep_block(cfg)
    propagate = []
    if config.propagate is not None:  # first, as register() does: it reads no corpus
        _, propagate = checked_job(cfg, config.propagate, str(path))
    lines = ["plugin: lep_plugin.LEPPlugin is loaded; the `lep:` block is valid"]
    if config.vocab is not None:
        lines += _vocabulary_lines(cfg, config)
    else:
        lines.append("vocabulary: none (the base model's own vocabulary is trained)")
    lines.append(f"trains: {trained_parts(config.train, config.body, cfg.get('adapter'))} (lep.train: {config.train})")
    kernels = lora_kernels_for_cpu(dict(cfg), _cuda()) if cfg.get("adapter") in ADAPTERS else None
    if kernels:
        lines.append(f"{kernels}: the plugin sets them so on this machine")
    if config.eval is not None:
        lines.append(_eval_line(config.eval))
    return lines + propagate


def _vocabulary_lines(cfg: dict[str, Any], config) -> list[str]:

    with settings_named("yaml", "lep.vocab"):
        located = locate_vocabulary(cfg, config.vocab)
    state = (
        "exists, will be reused"
        if (located.target / "lep_vocab.json").is_file()
        else "will be built at the start of the run"
    )
    return [
        f"old tokenizer: {located.old_dir}",
        f"vocabulary: {located.describe}",
        f"vocabulary dir: {located.target} ({state})",
    ]


def _cuda() -> bool:
    import torch  # only for a YAML with an adapter: the rest of the check answers without loading torch

    return torch.cuda.is_available()


def _eval_line(options: dict[str, Any]) -> str:
    # lazy: the evaluation (torch) loads only for a YAML with `lep.eval:`
    from lep_plugin.evaluation.evaluate import load_tasks
    from lep_plugin.plugin.eval_callback import eval_options  # lazy: transformers' trainer callbacks

    validated = eval_options(options)
    with settings_named("yaml", "lep.eval"):
        tasks = load_tasks(validated.texts, EvalSettings.of(validated))
    return (
        f"evaluation: every {validated.every_n_steps} steps on {', '.join(t.label for t in tasks)} "
        f"({validated.prompt_style} prompts)"
    )
