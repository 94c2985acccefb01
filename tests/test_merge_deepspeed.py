"""Real DeepSpeed ZeRO checkpoints (CPU, gloo) as lep-merge inputs: the embedding and lm_head are read
from the fp32 partitions exactly as DeepSpeed's own ``zero_to_fp32`` rebuilds them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _plugin_helpers import worker_port
from builders import generate_from_chat, merge_args

from lep_plugin.checkpoints.deepspeed import DeepSpeedCheckpoint
from lep_plugin.checkpoints.discover import open_checkpoint
from lep_plugin.checkpoints.safetensors import SafetensorsCheckpoint
from lep_plugin.cli.merge import main
from lep_plugin.common.tokenizers import load_tokenizer

JOB = Path(__file__).parent / "_merge_deepspeed_job.py"
NAMES = ("model.embed_tokens.weight", "lm_head.weight")


def _train(model_dir: Path, out: Path, stage: int, world: int, port: int) -> Path:
    port = worker_port(port)  # this xdist worker's own port
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "MASTER_PORT": str(port)}
    if world == 1:
        cmd = [sys.executable, str(JOB), str(model_dir), str(out), str(stage)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={world}",
            f"--master_port={port}",
            str(JOB),
            str(model_dir),
            str(out),
            str(stage),
        ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # what a Trainer checkpoint-N dir holds beside the DeepSpeed tag dir
    for f in model_dir.iterdir():
        if f.suffix in (".json", ".jinja") and "safetensors" not in f.name:
            shutil.copy(f, out / f.name)
    return out


@pytest.mark.e2e
@pytest.mark.parametrize("stage,world", [(1, 1), (2, 2), (3, 2)])
def test_zero_checkpoint_as_adapted_model(mistral_trio, tmp_path, stage, world):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ds_dir = _train(mistral_trio.adapted, tmp_path / "ds", stage, world, 29600 + 10 * stage + world)
    reader = open_checkpoint(ds_dir, "adapted")
    assert isinstance(reader, DeepSpeedCheckpoint) and reader.stage == stage and reader.world == world
    reference = get_fp32_state_dict_from_zero_checkpoint(str(ds_dir))
    for name in NAMES:
        assert torch.equal(reader.get(name), reference[name]), name
    # frozen parameters come back too (fragments in the model states, or ZeRO-1's module state)
    frozen = "model.layers.0.self_attn.q_proj.weight"
    start = SafetensorsCheckpoint(mistral_trio.adapted)
    assert torch.equal(reader.get(frozen), reference.get(frozen, start.get(frozen)))
    # trained: the fp32 master embedding moved away from the starting checkpoint
    assert not torch.equal(reader.get(NAMES[0]), start.get(NAMES[0]))

    out = tmp_path / "out"
    main(
        [
            *merge_args(mistral_trio, out, adapted=ds_dir),
            "--method",
            "swap",
        ]
    )
    written = SafetensorsCheckpoint(out)
    tok, instruct_tok = load_tokenizer(out), load_tokenizer(mistral_trio.instruct)
    added = {tok.convert_tokens_to_ids(t.content) for t in instruct_tok.added_tokens_decoder.values()}
    for name in NAMES:
        result = written.get(name)
        rows = reference[name].shape[0]
        keep = torch.tensor([i not in added for i in range(rows)])
        assert torch.equal(result[:rows][keep], reference[name][keep].to(result.dtype))


@pytest.mark.e2e
def test_zero3_checkpoint_from_axolotl_train(zero3_checkpoint, mistral_trio, tmp_path):
    """lep-merge reads the DeepSpeed dir ``axolotl train`` leaves (plugin, ZeRO-3, extend vocabulary):
    the same conversion as from the run's final HF save of the same step, and a model that chats."""
    run = zero3_checkpoint
    assert isinstance(open_checkpoint(run.checkpoint, "adapted"), DeepSpeedCheckpoint)
    outputs = {}
    for kind, adapted in (("deepspeed", run.checkpoint), ("hf", run.output)):
        outputs[kind] = tmp_path / kind
        main(
            [
                "--base",
                str(run.base_model),
                "--instruct",
                str(mistral_trio.instruct),
                "--adapted",
                str(adapted),
                "--output",
                str(outputs[kind]),
                "--method",
                "conversion",
            ]
        )
    from_ds, from_hf = SafetensorsCheckpoint(outputs["deepspeed"]), SafetensorsCheckpoint(outputs["hf"])
    base = SafetensorsCheckpoint(run.base_model)
    for name in NAMES:
        assert from_ds.get(name).shape[0] > base.get(name).shape[0]  # new vocabulary
        torch.testing.assert_close(from_ds.get(name), from_hf.get(name), rtol=1e-5, atol=1e-6)

    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(outputs["deepspeed"])
    model = AutoModelForCausalLM.from_pretrained(str(outputs["deepspeed"]))
    ids, generated = generate_from_chat(model, tok, "Привет", max_new_tokens=5)
    assert generated.shape[1] > ids.shape[1]
