"""``lep``: vocabulary, evaluation, data and demo helpers. Subcommand groups live in their own modules
and are imported only when used, so ``lep --help`` stays fast."""

from __future__ import annotations

import importlib
import importlib.util

import click

from lep_plugin.cli.options import run_cli
from lep_plugin.cli.quiet import verbose_option

# name -> "module:attribute" of a click command or group
SUBCOMMANDS = {
    "vocab": "lep_plugin.cli.vocab:vocab",
    "eval": "lep_plugin.cli.eval:eval_command",
    "data": "lep_plugin.cli.data:data",
    "demo": "lep_plugin.cli.demo:demo",
    "check": "lep_plugin.cli.check:check",
    "tiny": "lep_plugin.cli.tiny:tiny",
    "export": "lep_plugin.cli.export:export",
    "propagate": "lep_plugin.cli.propagate:propagate",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(n for n in SUBCOMMANDS if self._spec_exists(n))

    @staticmethod
    def _spec_exists(name: str) -> bool:
        module = SUBCOMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS or not self._spec_exists(name):
            return None
        module, attr = SUBCOMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, help="LEP helpers: build/convert/report vocabularies, evaluate, make data, run the demo.")
@click.version_option(package_name="lep-plugin")
@verbose_option
def cli() -> None:
    pass


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, argv)


if __name__ == "__main__":
    main()
