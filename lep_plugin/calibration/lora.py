"""The calibration LoRA (LEP step 5) on a tiny model, from the shipped CPU recipe: copy chats, ``axolotl
train``, ``axolotl merge-lora`` — as a user runs them (used by the benchmarks that judge the method)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

from lep_plugin.common.processes import run_logged

TINY_RECIPE = Path(__file__).resolve().parents[2] / "examples" / "yaml" / "calibration-tiny-cpu.yml"


def calibrate(
    lep_model: Path, texts: list[str], work: Path, steps: int, seed: int | None = None, recipe: Path = TINY_RECIPE
) -> Path:
    """Step 5 of the method with the shipped tiny recipe: copy chats from training texts (``lep data
    copy-task``), a LoRA (plus embeddings) trained by ``axolotl train`` with ``recipe``, merged by
    ``axolotl merge-lora``."""
    work.mkdir(parents=True, exist_ok=True)
    copies = work / "copy.jsonl"
    run_logged(
        [
            sys.executable,
            "-m",
            "lep_plugin.cli.lep",
            "data",
            "copy-task",
            *[a for t in texts for a in ("--text", t)],
            "--samples",
            str(steps * 2),
            "--output",
            str(copies),
            "--force",
            *(["--seed", str(seed)] if seed is not None else []),
        ],
        work / "copy-task.log",
        print,
    )
    cfg = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    cfg.update(
        base_model=str(lep_model),
        dataset_prepared_path=str(work / "prepared"),
        output_dir=str(work / "adapter"),
        max_steps=steps,
    )
    if seed is not None:
        cfg["seed"] = seed
    cfg["datasets"][0]["path"] = str(copies)
    config = work / "calibration.yml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    axolotl = str(Path(sys.executable).parent / "axolotl")
    run_logged([axolotl, "train", str(config)], work / "train.log", print)
    run_logged(
        [axolotl, "merge-lora", str(config), "--lora-model-dir", str(work / "adapter")], work / "merge-lora.log", print
    )
    merged = work / "extend-conversion-calibrated"
    if merged.exists():
        shutil.rmtree(merged)
    (work / "adapter" / "merged").rename(merged)  # a name that says what it is in the eval table
    return merged
