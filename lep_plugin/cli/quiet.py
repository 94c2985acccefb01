"""Third-party log lines that are not our users' business, kept off the screen of ``lep`` and ``lep-merge``
unless ``-v``/``--verbose`` asks for them.

Each is a warning about the machine or the libraries, never about the user's models or data, and shows on
every command: torchao's optional CUDA kernels failing to load on a CPU machine, torch's notice about torchao
registering enums with pytree, bitsandbytes' optional 4-bit CPU kernel (LEP never uses 4-bit layers),
DeepSpeed saying it found no GPU, and transformers failing to make a chat template from the Tekken file that
``mistral-common`` ships (LEP writes every chat template itself). Errors of these libraries always show.

One comes through Python's ``warnings``, not a logger: on a CPU with AVX-512 BF16, importing bitsandbytes
0.50 asks the ``kernels`` package for a faster 4-bit GEMV from the Hub, and offline ``kernels`` warns
"Skipping publisher trust check for 'kernels-community/…'" before failing to fetch it. bitsandbytes then
keeps its own native CPU GEMV for that one inference op (packed 4-bit weights); 4-bit *training* (QLoRA's
forward and backward) dequantizes and multiplies with torch on every CPU, so nothing a user runs changes.
"""

from __future__ import annotations

import logging
import re
import warnings
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

# the same kind of noise sent through Python's warnings (module docstring): message prefixes
WARNING_NOISE = ("Skipping publisher trust check for 'kernels-community/",)


def _set_warning_action(action: str) -> None:
    """Make ``action`` ("ignore" or "default") the first ``warnings`` filter for each :data:`WARNING_NOISE`
    message, through the public ``filterwarnings`` only (idempotent: nothing is added when it already is)."""
    for text in WARNING_NOISE:
        pattern = re.escape(text)
        first = next((f[0] for f in warnings.filters if f[1] is not None and f[1].pattern == pattern), None)
        if first != action:
            warnings.filterwarnings(action, message=pattern)


def quiet_third_party() -> None:
    """Keep the :data:`NOISE` off the screen (idempotent)."""
    for noise, drop in _FILTERS.items():
        logger = logging.getLogger(noise.logger)
        if drop not in logger.filters:
            logger.addFilter(drop)
        if not noise.text:  # a whole library's warnings: its child loggers too, which the filter does not see
            logger.setLevel(logging.ERROR)
    _set_warning_action("ignore")


def show_third_party() -> None:
    """Undo :func:`quiet_third_party` (``-v``)."""
    for noise, drop in _FILTERS.items():
        logger = logging.getLogger(noise.logger)
        logger.removeFilter(drop)
        if not noise.text:
            logger.setLevel(logging.NOTSET)
    _set_warning_action("default")


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
