"""The plugin under FSDP2 (torch's ``fully_shard``) on two CPU ranks (gloo, a CPU device mesh), outside
Axolotl: Axolotl builds its FSDP device mesh for CUDA only, so ``axolotl train`` with FSDP cannot start on
a CPU (the GPU check, benchmarks/gpu_check.py, runs it there). tests/_fsdp_job.py calls the plugin's hooks
in Axolotl's order, shards the model as accelerate does after the Trainer is built, trains a few AdamW
steps and saves the full state dict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _plugin_helpers import load_weights, train_env, training_data, worker_port
from builders import generate_from_chat

from lep_plugin.cli.merge import main as merge_main
from lep_plugin.common.tokenizers import load_tokenizer

JOB = Path(__file__).parent / "_fsdp_job.py"
EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")

pytestmark = pytest.mark.e2e


def _run_job(work: Path, base: Path, data: Path, train: str, port: int, control: bool = False) -> Path:
    cfg = {
        "base_model": str(base),
        "dataset_prepared_path": str(work / "prepared"),
        "lep": {
            "vocab": {"method": "extend", "corpus": [str(data.parent / "vocab-corpus.jsonl")], "vocab_size": 2000},
            "train": train,
        },
        "datasets": [{"path": str(data), "ds_type": "json", "type": "completion"}],
        "learning_rate": 0.01,
        "max_steps": 3,
        "weight_decay": 0.0,
        "control_without_callbacks": control,
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "cfg.json").write_text(json.dumps(cfg), encoding="utf-8")
    out = work / "out"
    env = {**train_env(), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        f"--master_port={worker_port(port)}",  # this xdist worker's own port
        str(JOB),
        str(work / "cfg.json"),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    (work / "job.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out


def test_fsdp2_new_rows_mask_and_full_save(tmp_path, tiny_mistral, mistral_trio):
    """`train: new_rows` under fully_shard: the old rows stay exactly the base's (the tensor hooks alone,
    lost when FSDP2 replaces the parameters, would not keep them), the new rows and nothing else train,
    and the full embeddings rank 0 saves merge into a chat-ready model."""
    data = training_data(tmp_path / "data", docs=20)
    base = load_weights(tiny_mistral)
    out = _run_job(tmp_path / "new-rows", tiny_mistral, data, "new_rows", 29710)
    trained = load_weights(out)
    assert set(trained) == set(base)
    for name, tensor in base.items():
        if name in EMBEDDINGS:
            rows = tensor.shape[0]
            assert trained[name].shape[0] > rows  # the extended vocabulary, whole (not a rank's shard)
            assert torch.equal(trained[name][:rows], tensor), f"{name}: an old row moved"
        else:
            assert torch.equal(trained[name], tensor), f"{name} changed although frozen"
    from transformers import AutoModelForCausalLM

    from lep_plugin.vocab.convert import convert_embeddings

    start = AutoModelForCausalLM.from_pretrained(str(tiny_mistral))  # the T-initialised starting point
    convert_embeddings(start, load_tokenizer(out), load_tokenizer(tiny_mistral))
    rows = base[EMBEDDINGS[1]].shape[0]
    assert not torch.equal(trained[EMBEDDINGS[1]][rows:], start.lm_head.weight[rows:].detach())  # new rows trained
    control = load_weights(_run_job(tmp_path / "control", tiny_mistral, data, "new_rows", 29720, control=True))
    assert not torch.equal(control[EMBEDDINGS[1]][:rows], base[EMBEDDINGS[1]])  # without the mask: old rows move

    merged = tmp_path / "merged"
    merge_main(
        [
            "--base",
            str(tiny_mistral),
            "--instruct",
            str(mistral_trio.instruct),
            "--adapted",
            str(out),
            "--output",
            str(merged),
            "--method",
            "conversion",
        ]
    )
    model = AutoModelForCausalLM.from_pretrained(str(merged))
    ids, generated = generate_from_chat(model, load_tokenizer(merged), "Привет", max_new_tokens=4)
    assert generated.shape[1] > ids.shape[1]


def test_fsdp2_embeddings_train_and_nothing_else(tmp_path, tiny_mistral):
    data = training_data(tmp_path / "data", docs=20)
    out = _run_job(tmp_path / "embeddings", tiny_mistral, data, "embeddings", 29730)
    base, trained = load_weights(tiny_mistral), load_weights(out)
    for name, tensor in base.items():
        if name in EMBEDDINGS:
            assert not torch.equal(trained[name][: tensor.shape[0]], tensor), name  # old rows train too
        else:
            assert torch.equal(trained[name], tensor), f"{name} changed although frozen"
    assert os.path.isfile(out / "tokenizer.json")
