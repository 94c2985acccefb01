"""LEP step 5: a calibration LoRA (examples/yaml/calibration-tiny-cpu.yml) on copy instructions made by
`lep data copy-task`, trained with `axolotl train` on a model with a new vocabulary, then
`axolotl merge-lora`: the merged model keeps the new vocabulary and loads."""

from __future__ import annotations

import subprocess

import pytest
import torch
import yaml
from _plugin_helpers import EXAMPLES, VENV_BIN, run_train, train_env, write_config
from builders import generate_from_chat, write_corpus_slice

from lep_plugin.cli.lep import main

pytestmark = pytest.mark.e2e


def test_calibration_lora_and_merge_lora_on_new_vocabulary(tmp_path, tiny_mistral, ru_corpus_small, ru_heldout):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # an LEP model: tiny Mistral converted to an extended Russian vocabulary
    main(
        [
            "vocab",
            "build",
            "--tokenizer",
            str(tiny_mistral),
            "--corpus",
            str(ru_corpus_small),
            "--method",
            "extend",
            "--vocab-size",
            "1500",
            "--output",
            str(tmp_path / "tok"),
        ]
    )
    main(
        [
            "vocab",
            "convert",
            "--model",
            str(tiny_mistral),
            "--tokenizer",
            str(tmp_path / "tok"),
            "--output",
            str(tmp_path / "lep"),
        ]
    )
    heldout = write_corpus_slice(ru_heldout, tmp_path / "heldout.jsonl", 20)
    main(["data", "copy-task", "--text", str(heldout), "--samples", "40", "--output", str(tmp_path / "copy.jsonl")])

    cfg = yaml.safe_load((EXAMPLES / "calibration-tiny-cpu.yml").read_text(encoding="utf-8"))
    cfg.update(
        base_model=str(tmp_path / "lep"),
        dataset_prepared_path=str(tmp_path / "prepared"),
        output_dir=str(tmp_path / "adapter"),
    )
    cfg["datasets"][0]["path"] = str(tmp_path / "copy.jsonl")
    config = write_config(tmp_path / "calibration.yml", cfg)
    run_train(config)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    proc = subprocess.run(
        [str(VENV_BIN / "axolotl"), "merge-lora", str(config), "--lora-model-dir", str(tmp_path / "adapter")],
        cwd=tmp_path,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    merged_dir = tmp_path / "adapter" / "merged"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    lep = AutoModelForCausalLM.from_pretrained(tmp_path / "lep")
    tok = AutoTokenizer.from_pretrained(merged_dir)
    assert len(tok) == len(AutoTokenizer.from_pretrained(tmp_path / "lep")) > 32000
    assert merged.get_input_embeddings().weight.shape == lep.get_input_embeddings().weight.shape
    changed = [n for n, p in merged.state_dict().items() if not torch.equal(p, lep.state_dict()[n])]
    assert any("q_proj" in n for n in changed), "the LoRA was not merged"
    ids, generated = generate_from_chat(merged, tok, "Повтори: привет", max_new_tokens=3)
    assert generated.shape[1] == ids.shape[1] + 3
