"""Pretrain the tiny base that ships in lep_plugin/data/tiny-base (issue 27): the recipe of
``lep_plugin.demo.pretrain``, resumable, with a progress bar and a held-out log every few minutes.

    python benchmarks/pretrain_base.py --output out/pretrain [--steps 1500] [--threads 2] [--ship]

Run again with the same --output to resume from its last state. ``--ship`` copies the result into the
package (``lep_plugin/data/tiny-base``), where the demo, the claim benchmark and ``lep tiny`` load it.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

import torch

from lep_plugin.demo.paths import TINY_BASE
from lep_plugin.demo.pipeline import SHARED
from lep_plugin.demo.pretrain import PretrainOptions, pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("out/pretrain"))
    parser.add_argument("--steps", type=int, default=PretrainOptions().steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-circuit", action="store_true", help="plain training, no hand-written copy heads")
    parser.add_argument("--ship", action="store_true", help="copy the result into lep_plugin/data/tiny-base")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = PretrainOptions(steps=args.steps, seed=args.seed, **({"circuit": None} if args.no_circuit else {}))
    command = "python benchmarks/pretrain_base.py " + shlex.join(sys.argv[1:])
    base = pretrain(args.output, options, SHARED if SHARED.is_dir() else None, command)
    print(f"tiny base: {base}")
    if args.ship:
        shutil.rmtree(TINY_BASE, ignore_errors=True)
        shutil.copytree(base, TINY_BASE)
        print(f"shipped to {TINY_BASE}")


if __name__ == "__main__":
    main()
