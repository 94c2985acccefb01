"""``lep check CONFIG.yml``: an Axolotl YAML checked for LEP before a long run."""

from __future__ import annotations

from pathlib import Path

import click

from lep_plugin.plugin.check import check_config


@click.command(
    help="Check an Axolotl YAML for LEP before training: plugin loaded, `lep:` block valid, corpus "
    "readable, where the vocabulary will be, what will be trained, and for `lep.propagate` the instruct model "
    "(found, same architecture) and a free output."
)
@click.argument("config", type=click.Path(path_type=Path))
def check(config: Path) -> None:

    for line in check_config(config):
        click.echo(line)
    click.echo(f"lep check: {config} is ready for `axolotl train`")
