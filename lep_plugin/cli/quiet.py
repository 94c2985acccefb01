"""Third-party log lines that are not our users' business, kept off the screen of ``lep`` and ``lep-merge``
unless ``-v``/``--verbose`` asks for them.

Each is a warning about the machine or the libraries, never about the user's models or data, and shows on
every command: torchao's optional CUDA kernels failing to load on a CPU machine, torch's notice about torchao
registering enums with pytree, bitsandbytes' optional 4-bit CPU kernel (LEP never uses 4-bit layers),
DeepSpeed saying it found no GPU, and transformers failing to make a chat template from the Tekken file that
``mistral-common`` ships (LEP writes every chat template itself). Errors of these libraries always show.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class Noise:
    """Records below ERROR of ``logger`` (and its children) whose message contains ``text`` ("" = any)."""

    logger: str
    text: str = ""


NOISE = (
    Noise("torchao"),
    Noise("torch.utils._pytree"),
    Noise("bitsandbytes.backends.cpu.ops"),
    Noise("DeepSpeed", "Setting accelerator to CPU"),
    Noise("transformers.integrations.mistral.tokenizer", "Failed to generate chat template"),
)


class _DropNoise(logging.Filter):
    """A filter, not a level: DeepSpeed resets its logger's level when it is imported, after ours is set."""

    def __init__(self, noise: Noise):
        super().__init__()
        self.noise = noise

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or self.noise.text not in record.getMessage()


_FILTERS = {noise: _DropNoise(noise) for noise in NOISE}


def quiet_third_party() -> None:
    """Keep the :data:`NOISE` off the screen (idempotent)."""
    for noise, drop in _FILTERS.items():
        logger = logging.getLogger(noise.logger)
        if drop not in logger.filters:
            logger.addFilter(drop)
        if not noise.text:  # a whole library's warnings: its child loggers too, which the filter does not see
            logger.setLevel(logging.ERROR)


def show_third_party() -> None:
    """Undo :func:`quiet_third_party` (``-v``)."""
    for noise, drop in _FILTERS.items():
        logger = logging.getLogger(noise.logger)
        logger.removeFilter(drop)
        if not noise.text:
            logger.setLevel(logging.NOTSET)


def _on_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        show_third_party()


def verbose_option(command):
    """``-v``/``--verbose`` on a command or group: parsed first, before any subcommand imports a library."""
    return click.option(
        "-v",
        "--verbose",
        "show_noise",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_on_verbose,
        help="also show third-party warnings that are not about your models or data (torchao, DeepSpeed, ...)",
    )(command)
