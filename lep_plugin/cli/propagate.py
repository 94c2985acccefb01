"""``lep propagate CONFIG.yml``: the ``lep.propagate`` block of a training YAML run on the run's output –
what the plugin runs when ``axolotl train`` ends, for a run whose propagation stopped or a finished run."""

from __future__ import annotations

from pathlib import Path

import click

from lep_plugin.common.fs import read_yaml_mapping
from lep_plugin.errors import LEPError
from lep_plugin.plugin.args import parse_lep_block
from lep_plugin.propagation.pipeline import checked_job, run_propagate


@click.command(
    help="Run the `lep.propagate` block of an Axolotl YAML on its trained output: lep-merge into the instruct "
    "model, then the evaluation and GGUF files it asks for (run from where `axolotl train` ran)."
)
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="replace an existing output (as `force: true` in the block)")
def propagate(config: Path, force: bool) -> None:
    cfg = read_yaml_mapping(config)
    lep = parse_lep_block(cfg)
    if lep is None or lep.propagate is None:
        raise LEPError(f"{config} has no `lep.propagate:` block (instruct, output, ...): nothing to propagate")
    options = lep.propagate.model_copy(update={"force": True}) if force else lep.propagate
    job, _ = checked_job(cfg, options, str(config))
    run_propagate(job, echo=click.echo)
