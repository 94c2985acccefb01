"""``axolotl train`` with the plugin and an adapter (issue 20), real launches on a tiny Mistral:

- ``qlora``: ``adapter: qlora`` + ``load_in_4bit`` (bitsandbytes 4-bit layers, on this CPU), ``lep.body:
  frozen``, 8-bit AdamW: only the full-precision embedding copies train, the LoRA stays zero (the body is
  the base's), the new rows are T-initialised from the unquantised base rows;
- ``lora``: ``adapter: lora`` + ``lep.body: lora``: a LoRA continued pretraining (embeddings + body LoRA)
  that ``lep-merge`` carries into the instruct model, which then chats; resumed from its checkpoint-2 (a
  third, 2-step launch) it ends bit for bit where the uninterrupted run ends.

The ``lep:`` rules for adapters are checked through Axolotl's schema (no launch).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _plugin_helpers import (
    load_weights,
    private_files,
    run_train,
    tiny_config,
    training_data,
    write_config,
)
from builders import build_instruct, generate_from_chat
from safetensors.torch import load_file

from lep_plugin.errors import LEPError
from lep_plugin.plugin.args import parse_lep_block
from lep_plugin.propagation.options import MergeOptions
from lep_plugin.propagation.run import run_merge

PLUGIN = "lep_plugin.LEPPlugin"
# Axolotl auto-enables its Triton LoRA kernels, which need CUDA: off for these CPU runs
NO_KERNELS = {
    "lora_mlp_kernel": False,
    "lora_qkv_kernel": False,
    "lora_o_kernel": False,
    "lora_embedding_kernel": False,
}
ADAPTER = {
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "lora_target_linear": True,
    "lora_modules_to_save": ["embed_tokens", "lm_head"],
    **NO_KERNELS,
}
# the QLoRA run leaves the kernels unset, as the README's recipe does: the plugin turns them off on CPU
QLORA_ADAPTER = {k: v for k, v in ADAPTER.items() if k not in NO_KERNELS}
RUNS = {
    "qlora": ({"adapter": "qlora", "load_in_4bit": True, "optimizer": "adamw_bnb_8bit", **QLORA_ADAPTER}, "frozen"),
    "lora": ({"adapter": "lora", **ADAPTER}, "lora"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_mistral, shared_data):
    """Both launches (one dataset, one vocabulary cache) and the instruct model to merge into."""
    root = tmp_path_factory.mktemp("lora-train")
    dataset = training_data(root / "data")
    out = {"instruct": build_instruct(tiny_mistral, root / "instruct")}
    for name, (settings, body) in RUNS.items():
        cfg = tiny_config(root, tiny_mistral, dataset, max_steps=4, save_steps=2, **settings)
        cfg["output_dir"] = str(root / f"out-{name}")
        cfg["lep"]["body"] = body
        log = run_train(write_config(root / f"{name}.yml", cfg))
        out[name] = (Path(cfg["output_dir"]), log)
    # the LoRA donor resumed from its checkpoint-2 (a third, 2-step launch)
    resumed = root / "out-lora-resumed"
    shutil.copytree(out["lora"][0] / "checkpoint-2", resumed / "checkpoint-2")
    cfg = tiny_config(root, tiny_mistral, dataset, max_steps=4, save_steps=2, **RUNS["lora"][0])
    cfg.update(output_dir=str(resumed), resume_from_checkpoint=str(resumed / "checkpoint-2"))
    cfg["lep"]["body"] = "lora"
    out["resumed"] = (resumed, run_train(write_config(root / "resumed.yml", cfg)))
    return out


def _adapter(output: Path) -> dict[str, torch.Tensor]:
    return {
        k.removeprefix("base_model.model."): v for k, v in load_file(str(output / "adapter_model.safetensors")).items()
    }


@pytest.mark.e2e
def test_qlora_trains_only_full_precision_embeddings(runs, tiny_mistral):
    from transformers import AutoModelForCausalLM

    from lep_plugin.common.tokenizers import load_tokenizer
    from lep_plugin.vocab.convert import convert_embeddings

    output, log = runs["qlora"]
    assert "modules_to_save.default.weight only; everything else frozen" in log and "body LoRA" not in log
    assert f"no CUDA: {', '.join(NO_KERNELS)} set to false" in log
    assert json.loads((output / "config.json").read_text())["quantization_config"]["load_in_4bit"] is True
    state = _adapter(output)
    lora_b = [v for k, v in state.items() if ".lora_B." in k]
    assert lora_b and all(not v.any() for v in lora_b), "the frozen body's LoRA moved"
    # T-init from the unquantised base rows: the wrapper's original copy is exactly `lep vocab convert`'s
    base = AutoModelForCausalLM.from_pretrained(str(tiny_mistral), dtype=torch.float32)
    convert_embeddings(base, load_tokenizer(output), load_tokenizer(tiny_mistral))
    for name, expected in (
        ("model.embed_tokens", base.get_input_embeddings().weight),
        ("lm_head", base.get_output_embeddings().weight),
    ):
        assert state[f"{name}.weight"].dtype == torch.float32
        assert torch.equal(state[f"{name}.original_module.weight"], expected.detach()), name
        assert not torch.equal(state[f"{name}.weight"], expected.detach()), f"{name} did not train"


@pytest.mark.e2e
def test_qlora_donor_merges_with_the_instruct_body_unchanged(runs, tiny_mistral, tmp_path):
    """A frozen body's adapter (every lora_B zero) carries nothing, whatever --lora-scale says: the plan
    and the card say so, and the scale given is a warning."""
    output, _ = runs["qlora"]
    merged, said = tmp_path / "merged", []
    run_merge(MergeOptions(instruct=runs["instruct"], adapted=output, output=merged, lora_scale=0.5), echo=said.append)
    got, instruct = load_weights(merged), load_weights(runs["instruct"])
    body = [n for n in instruct if "embed_tokens" not in n and "lm_head" not in n]
    assert body and all(torch.equal(got[n], instruct[n]) for n in body)
    plan = said[0]
    assert "  carry " not in plan and "lora_B are zero (a frozen body): nothing to carry" in plan
    assert "warning: lora_scale 0.5 has no effect: the adapter's body LoRA is zero" in plan
    assert "body_lora" not in json.loads((merged / "lep_merge.json").read_text())
    assert "Body LoRA carried" not in (merged / "README.md").read_text()


@pytest.mark.e2e
def test_lora_donor_from_train_to_a_chatting_instruct_model(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from lep_plugin.common.tokenizers import load_tokenizer

    output, log = runs["lora"]
    assert "the body LoRA (" in log
    assert any(v.any() for k, v in _adapter(output).items() if ".lora_B." in k), "the body LoRA did not train"
    assert (output / "checkpoint-2" / "adapter_model.safetensors").is_file()
    # what the run leaves is readable as the umask says (safetensors writes its files 0600)
    assert private_files(output) == []
    # the adapter's base is checked by its weights: a copy of the right base elsewhere is accepted
    named = json.loads((output / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(named).is_absolute()
    copied_base = shutil.copytree(named, tmp_path / "base-copy")
    merged = tmp_path / "merged"
    run_merge(
        MergeOptions(base=copied_base, instruct=runs["instruct"], adapted=output, output=merged, lora_scale=0.5),
        echo=lambda _: None,
    )
    assert private_files(merged) == []
    report = json.loads((merged / "lep_merge.json").read_text())["body_lora"]
    assert report["lora_scale"] == 0.5 and report["pairs"] == 14  # 7 linear layers × 2 layers
    got, instruct = load_weights(merged), load_weights(runs["instruct"])
    assert not torch.equal(
        got["model.layers.0.self_attn.q_proj.weight"], instruct["model.layers.0.self_attn.q_proj.weight"]
    )
    model, tok = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32), load_tokenizer(merged)
    prompt, answer = generate_from_chat(model, tok, "Повтори: привет, мир", max_new_tokens=8)
    assert answer.shape[1] > prompt.shape[1] and int(answer.max()) < model.config.vocab_size


@pytest.mark.e2e
def test_lora_donor_resumes_to_the_same_weights(runs):
    """Resumed from checkpoint-2, the LoRA donor's checkpoint-4 is the uninterrupted run's, bit for bit."""
    straight = load_file(str(runs["lora"][0] / "checkpoint-4" / "adapter_model.safetensors"))
    resumed = load_file(str(runs["resumed"][0] / "checkpoint-4" / "adapter_model.safetensors"))
    assert set(straight) == set(resumed) and all(torch.equal(straight[k], resumed[k]) for k in straight)


# ---- the `lep:` rules for adapters (no launch) ----------------------------------------


def _schema_validate(cfg: dict):
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    PluginManager.get_instance().register(PLUGIN)
    return validate_config(DictDefault(cfg))


@pytest.mark.parametrize(
    "settings, body, message",
    [
        (
            {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True},
            "frozen",
            "add `lora_modules_to_save: [embed_tokens, lm_head]`",
        ),
        (
            {
                **ADAPTER,
                "adapter": "lora",
                "lora_target_modules": ["q_proj", "embed_tokens"],
                "lora_target_linear": None,
            },
            "frozen",
            "puts a LoRA on embed_tokens",
        ),
        ({"load_in_4bit": True}, "frozen", "add `adapter: qlora`"),
        ({}, "lora", "`lep.body: lora` trains a body LoRA: set `adapter: lora`"),
        ({"lora_modules_to_save": ["embed_tokens", "lm_head"]}, "frozen", "has no effect without `adapter:`"),
    ],
)
def test_adapter_rules(tmp_path, tiny_mistral, settings, body, message):
    cfg = tiny_config(tmp_path, tiny_mistral, tmp_path / "train.jsonl", **settings)
    cfg["lep"]["body"] = body
    with pytest.raises(LEPError) as err:  # what register() says, before Axolotl's own validation
        parse_lep_block(cfg)
    assert message in str(err.value)


@pytest.mark.parametrize("run", sorted(RUNS))
def test_adapter_settings_pass(tmp_path, tiny_mistral, run):
    settings, body = RUNS[run]
    cfg = tiny_config(tmp_path, tiny_mistral, tmp_path / "train.jsonl", **settings)
    cfg["lep"]["body"] = body
    validated = _schema_validate(cfg)
    assert validated.adapter == settings["adapter"] and validated.lep["body"] == body


# ---- what `lep check` says of the adapter modes, and the CUDA-only kernels (no launch) ------------------


@pytest.mark.parametrize("train", ["embeddings", "new_rows"])
@pytest.mark.parametrize("adapter, body", [(None, "frozen"), ("qlora", "frozen"), ("lora", "frozen"), ("lora", "lora")])
def test_lep_check_names_what_trains(tmp_path, tiny_mistral, train, adapter, body):
    from lep_plugin.plugin.adapters import trained_parts
    from lep_plugin.plugin.check import check_config

    settings = {} if adapter is None else {**QLORA_ADAPTER, "adapter": adapter}
    if adapter == "qlora":
        settings["load_in_4bit"] = True
    cfg = tiny_config(tmp_path, tiny_mistral, tmp_path / "train.jsonl", **settings)
    cfg["lep"].update(train=train, body=body)
    cfg["weight_decay"] = 0.0 if train == "new_rows" else cfg["weight_decay"]
    (tmp_path / "vocab-corpus.jsonl").write_text('{"text": "привет"}\n', encoding="utf-8")
    lines = check_config(write_config(tmp_path / "c.yml", cfg))
    trains = next(line for line in lines if line.startswith("trains: "))
    assert trains == f"trains: {trained_parts(train, body, adapter)} (lep.train: {train})"
    assert ("body LoRA" in trains) == (body == "lora")
    assert ("new tokens" in trains) == (train == "new_rows")
    kernels = [line for line in lines if "fused LoRA kernels" in line]
    assert len(kernels) == (0 if adapter is None or torch.cuda.is_available() else 1)
    if adapter is not None and not torch.cuda.is_available():
        cfg["lora_qkv_kernel"] = True  # asked for by the user: refused, with the keys to set
        with pytest.raises(LEPError, match="lora_qkv_kernel: Axolotl's fused LoRA kernels need CUDA"):
            check_config(write_config(tmp_path / "c.yml", cfg))


def test_the_plugin_records_the_base_by_an_absolute_path(tmp_path, tiny_mistral, monkeypatch):
    """A relative `base_model:` is made absolute before Axolotl reads it: the adapter's config and the
    manifest name a dir that lep-merge finds from anywhere."""
    from lep_plugin.plugin.plugin import LEPPlugin

    shutil.copytree(tiny_mistral, tmp_path / "models" / "base")
    monkeypatch.chdir(tmp_path)
    cfg = {"base_model": "models/base", "lep": {"train": "embeddings"}}
    LEPPlugin().register(cfg)
    assert cfg["base_model"] == str(tmp_path / "models" / "base")
