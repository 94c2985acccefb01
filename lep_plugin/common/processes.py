"""Running the project's own command lines (and Axolotl's) as subprocesses, as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from lep_plugin.errors import LEPError


def cli_env() -> dict[str, str]:
    """This environment, offline, with this interpreter's ``bin/`` first (axolotl launches accelerate by name)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(HF_HUB_OFFLINE="1", AXOLOTL_DO_NOT_TRACK="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    return env


def run_logged(cmd: list[str], log_file: Path, echo: Callable[[str], None]) -> None:
    """Run ``cmd`` with its output into ``log_file``; a failure is one LEPError with the log's tail."""
    echo("  $ " + " ".join(cmd))
    with open(log_file, "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=cli_env(), check=False)
    if proc.returncode != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise LEPError(f"{cmd[0]} failed (exit {proc.returncode}); last lines of {log_file}:\n" + "\n".join(tail))
