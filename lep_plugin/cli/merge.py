"""``lep-merge``: carry adapted embeddings into the instruct model (LEP step 4).

    lep-merge --base BASE --instruct INSTRUCT --adapted ADAPTED --method conversion --output OUT
    lep-merge CONFIG.yml [--flags that override it]
    axolotl lep-merge CONFIG.yml            (through Axolotl's ``axolotl.cli_commands`` entry point)

The YAML file holds the same settings as the flags, either at its top level or under a ``lep_merge:``
section; a training YAML's ``lep.propagate`` block is read too (base = ``base_model``, adapted =
``output_dir``; the merge only – ``lep propagate`` also runs its evaluation and GGUF export).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import pydantic
from pydantic import Field, create_model

from lep_plugin.cli.options import options_from_model, run_cli
from lep_plugin.cli.quiet import verbose_option
from lep_plugin.common.fs import read_yaml_mapping
from lep_plugin.errors import LEPError, describe_validation_error, settings_named
from lep_plugin.plugin.args import parse_lep_block
from lep_plugin.propagation.options import MergeOptions, check_merge_paths
from lep_plugin.propagation.pipeline import propagate_job

YAML_SECTION = "lep_merge"

# Every MergeOptions field as an optional flag: required fields may come from the YAML file instead,
# so the full model is validated only after the file and the flags are combined.
_MergeFlags = create_model(
    "MergeFlags",
    __config__=pydantic.ConfigDict(frozen=True),
    **{
        name: (
            info.annotation | None,
            Field(
                default=None,
                description=(info.description or "")
                + (
                    "  [required]"
                    if info.is_required()
                    else f"  [default: {info.default}]"
                    if info.default not in (None, False)
                    else ""
                ),
            ),
        )
        for name, info in MergeOptions.model_fields.items()
    },
)


def read_yaml_settings(path: Path) -> tuple[dict[str, Any], str]:
    """The settings in a YAML file and where they are in it (``lep_merge``, the top level: "", or a training
    YAML's ``lep.propagate`` block with its ``base_model`` and ``output_dir``)."""
    data = read_yaml_mapping(path)
    lep = data.get("lep")
    if YAML_SECTION not in data and isinstance(lep, dict) and lep.get("propagate") is not None:
        config = parse_lep_block(data)
        with settings_named("yaml", "lep.propagate"):
            job = propagate_job(data, config.propagate, str(path))
        return job.merge.model_dump(exclude_defaults=True), "lep.propagate"
    if YAML_SECTION not in data:
        return data, ""
    if not isinstance(data[YAML_SECTION], dict):
        raise LEPError(f"`{YAML_SECTION}:` in {path} must be a mapping of settings")
    return data[YAML_SECTION], YAML_SECTION


def merge_options(config: Path | None, flags: pydantic.BaseModel) -> MergeOptions:
    """MergeOptions from the YAML file (if any) overridden by the flags given on the command line; a
    problem is named as a YAML key when there is a file, as a flag otherwise."""
    values, section = read_yaml_settings(config) if config is not None else ({}, "")
    values = {**values, **flags.model_dump(exclude_none=True)}
    try:
        return MergeOptions(**values)
    except pydantic.ValidationError as err:
        where = f" in {config}" if config is not None else ""
        with settings_named("yaml" if config is not None else "flag", section):
            raise LEPError(f"invalid settings{where}: {describe_validation_error(err, MergeOptions)}") from None


def _run(config: Path | None, options: pydantic.BaseModel) -> None:
    settings = merge_options(config, options)
    check_merge_paths(settings)  # a usage error answers in a second, before torch and transformers load
    # lazy: the merge itself (torch, transformers) loads only for settings that passed the checks above
    from lep_plugin.propagation.run import run_merge

    run_merge(settings, echo=click.echo)


@click.command(name="lep-merge", help=__doc__.split("\n\n")[0])
@click.argument("config", required=False, type=click.Path(path_type=Path))
@options_from_model(_MergeFlags)
@verbose_option
def merge_command(config: Path | None, options) -> None:
    _run(config, options)


@click.command(
    name="lep-merge", help="LEP propagation step: settings from CONFIG (a `lep_merge:` section or top-level keys)."
)
@click.argument("config", required=False, type=click.Path(path_type=Path))
@options_from_model(_MergeFlags)
def axolotl_command(config: Path | None, options) -> None:
    # Axolotl's CLI shows tracebacks for unknown exceptions: keep the one-line error convention.
    try:
        _run(config, options)
    except LEPError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was written", err=True)
        sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    run_cli(merge_command, argv)


if __name__ == "__main__":
    main()
