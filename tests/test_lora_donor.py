"""lep-merge of a LoRA donor (issue 20): a PEFT adapter dir (whole embeddings as ``modules_to_save`` + a
body LoRA) as ``--adapted``. The embeddings are propagated exactly as a full model's; the body LoRA goes onto
the instruct layers as W + s·scaling·B·A with PEFT's scaling (α/r, α/√r for rsLoRA).

The adapters are real PEFT output (``get_peft_model`` + ``save_pretrained``) on the merge tests' tiny
trios, an untied Mistral and a tied Llama; the ``axolotl train`` run of a LoRA donor is in
test_lora_train.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _plugin_helpers import load_weights
from builders import merge_args

from lep_plugin.cli.merge import main
from lep_plugin.propagation.options import MergeOptions
from lep_plugin.propagation.run import run_merge

TARGETS = ["q_proj", "v_proj", "down_proj"]
TOL = 1e-5


def make_donor(trio, out: Path, rslora: bool = False, seed: int = 3, **lora) -> Path:
    """A LoRA donor as PEFT saves it: the trio's adapted model (new vocabulary, trained embeddings) with
    its embeddings as ``modules_to_save`` and a random (trained-looking) body LoRA, base = the trio's base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(trio.adapted), dtype=torch.float32)
    settings = {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": TARGETS,
        "modules_to_save": ["embed_tokens", "lm_head"],
    } | lora
    peft_model = get_peft_model(model, LoraConfig(use_rslora=rslora, **settings))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=g))
    peft_model.peft_config["default"].base_model_name_or_path = str(trio.base)
    peft_model.save_pretrained(str(out))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (trio.adapted / f).is_file():
            shutil.copy(trio.adapted / f, out / f)
    return out


def lora_deltas(donor: Path) -> dict[str, torch.Tensor]:
    """scaling·B·A per target weight, by hand from the saved adapter and its config (PEFT's formula)."""
    from safetensors.torch import load_file

    config = json.loads((donor / "adapter_config.json").read_text())
    state = load_file(str(donor / "adapter_model.safetensors"))
    deltas = {}
    for key, a in state.items():
        if ".lora_A." in key:
            b = state[key.replace(".lora_A.", ".lora_B.")]
            r = a.shape[0]
            scaling = config["lora_alpha"] / (r**0.5 if config["use_rslora"] else r)
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            deltas[module + ".weight"] = scaling * (b.double() @ a.double())
    return deltas


def merge(trio, adapted: Path, out: Path, **options) -> Path:
    run_merge(
        MergeOptions(base=trio.base, instruct=trio.instruct, adapted=adapted, output=out, **options),
        echo=lambda _: None,
    )
    return out


@pytest.fixture(scope="module")
def donors(mistral_trio, tied_trio, tmp_path_factory):
    root = tmp_path_factory.mktemp("donors")
    return {
        "mistral": make_donor(mistral_trio, root / "mistral"),
        "mistral-rslora": make_donor(mistral_trio, root / "mistral-rslora", rslora=True),
        "tied": make_donor(tied_trio, root / "tied"),
    }


@pytest.fixture(scope="module")
def reference(mistral_trio, tied_trio, tmp_path_factory):
    """The embeddings-only merges of the full adapted models (the donors' embeddings are theirs)."""
    root = tmp_path_factory.mktemp("reference")
    return {
        "mistral": merge(mistral_trio, mistral_trio.adapted, root / "mistral"),
        "tied": merge(tied_trio, tied_trio.adapted, root / "tied"),
    }


@pytest.mark.parametrize("key, scale", [("mistral", 1.0), ("mistral-rslora", 0.5), ("tied", 1.0)])
def test_lora_donor_equals_hand_composition(key, scale, donors, reference, mistral_trio, tied_trio, tmp_path):
    trio = tied_trio if key == "tied" else mistral_trio
    out = merge(trio, donors[key], tmp_path / "out", lora_scale=scale)
    got, ref, instruct = load_weights(out), load_weights(reference[key.split("-")[0]]), load_weights(trio.instruct)
    deltas = lora_deltas(donors[key])
    assert set(deltas) and set(deltas) <= set(got) and set(got) == set(ref)
    for name, tensor in got.items():
        expected = instruct[name].double() + scale * deltas[name] if name in deltas else ref[name].double()
        assert torch.allclose(tensor.double(), expected, atol=TOL, rtol=0), name
    report = json.loads((out / "lep_merge.json").read_text())
    assert report["body_lora"]["pairs"] == len(deltas) and report["body_lora"]["lora_scale"] == scale
    assert report["body_lora"]["rslora"] == key.endswith("rslora")
    assert "body LoRA" in (out / "README.md").read_text()


def test_scaling_is_peft_own(donors, mistral_trio):
    """The hand formula above is what PEFT itself merges (``merge_and_unload``), rsLoRA included."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    for key in ("mistral", "mistral-rslora"):
        model = AutoModelForCausalLM.from_pretrained(str(mistral_trio.adapted), dtype=torch.float64)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        merged = PeftModel.from_pretrained(model, str(donors[key])).merge_and_unload()
        for name, delta in lora_deltas(donors[key]).items():
            got = dict(merged.named_parameters())[name].detach() - before[name]
            assert torch.allclose(got, delta, atol=1e-10), (key, name)


def test_lora_scale_zero_is_the_embeddings_only_merge(donors, reference, mistral_trio, tmp_path):
    out = merge(mistral_trio, donors["mistral"], tmp_path / "out", lora_scale=0.0)
    got, ref = load_weights(out), load_weights(reference["mistral"])
    assert set(got) == set(ref) and all(torch.equal(got[n], ref[n]) for n in ref)


def test_lora_output_adapter(donors, mistral_trio, tmp_path):
    """``--lora-output adapter``: the body stays the instruct model's, and PEFT applying the written
    adapter to the output model gives the merged model of the same scale."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = merge(mistral_trio, donors["mistral"], tmp_path / "merged", lora_scale=0.5)
    out = merge(mistral_trio, donors["mistral"], tmp_path / "out", lora_scale=0.5, lora_output="adapter")
    instruct, body = load_weights(mistral_trio.instruct), load_weights(out)
    assert all(torch.equal(body[n], instruct[n]) for n in lora_deltas(donors["mistral"]))
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    applied = PeftModel.from_pretrained(model, str(out / "body_lora")).merge_and_unload().state_dict()
    expected = load_weights(merged)
    for name, tensor in expected.items():
        assert torch.allclose(applied[name], tensor, atol=TOL, rtol=0), name


def test_checkpoint_dir_and_base_from_adapter_config(donors, reference, mistral_trio, tmp_path, capsys):
    """An Axolotl output whose adapter is in its last checkpoint-N; --base read from adapter_config.json."""
    output = tmp_path / "axolotl-out"
    shutil.copytree(donors["mistral"], output / "checkpoint-7")
    shutil.copytree(donors["mistral"], output / "checkpoint-3")
    main(
        [
            "--instruct",
            str(mistral_trio.instruct),
            "--adapted",
            str(output),
            "--lora-scale",
            "0",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    got, ref = load_weights(tmp_path / "out"), load_weights(reference["mistral"])
    assert all(torch.equal(got[n], ref[n]) for n in ref)
    assert "checkpoint-7" in json.loads((tmp_path / "out" / "lep_merge.json").read_text())["body_lora"]["adapter"]


def _fails(capsys, tmp_path: Path, trio, adapted: Path, message: str) -> None:
    out = tmp_path / "out"
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        main(
            [
                *merge_args(trio, out, adapted=adapted),
            ]
        )
    assert err.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def _edit_config(donor: Path, tmp_path: Path, **changes) -> Path:
    copy = shutil.copytree(donor, tmp_path / "donor")
    config = json.loads((copy / "adapter_config.json").read_text()) | changes
    (copy / "adapter_config.json").write_text(json.dumps(config))
    return copy


def test_adapter_of_another_base(donors, mistral_trio, tied_trio, tmp_path, capsys):
    other = _edit_config(donors["mistral"], tmp_path, base_model_name_or_path=str(mistral_trio.instruct))
    _fails(capsys, tmp_path, mistral_trio, other, "an adapter of another base model")
    shutil.rmtree(other)
    # named by a Hub id (not comparable with a dir), with the LoRA of a narrower model (d=32, not 64)
    from safetensors.torch import load_file, save_file

    narrow = _edit_config(donors["mistral"], tmp_path, base_model_name_or_path="org/other-model")
    state = load_file(str(narrow / "adapter_model.safetensors"))
    state = {
        k: v[:, :32].contiguous() if ".lora_A." in k else v[:32].contiguous() if ".lora_B." in k else v
        for k, v in state.items()
    }
    save_file(state, str(narrow / "adapter_model.safetensors"))
    _fails(capsys, tmp_path, mistral_trio, narrow, "an adapter of another base model")


def test_lora_on_embeddings_without_modules_to_save(mistral_trio, tmp_path, capsys):
    donor = make_donor(
        mistral_trio, tmp_path / "donor", target_modules=["q_proj", "embed_tokens"], modules_to_save=None
    )
    _fails(capsys, tmp_path, mistral_trio, donor, "puts a LoRA on an embedding")


def test_adapter_missing_weights(donors, mistral_trio, tmp_path, capsys):
    donor = shutil.copytree(donors["mistral"], tmp_path / "donor")
    (donor / "adapter_model.safetensors").unlink()
    _fails(capsys, tmp_path, mistral_trio, donor, "missing weights")


def test_dora_is_refused(donors, mistral_trio, tmp_path, capsys):
    _fails(capsys, tmp_path, mistral_trio, _edit_config(donors["mistral"], tmp_path, use_dora=True), "DoRA adapter")


def test_tied_model_with_two_different_embedding_copies(donors, tied_trio, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    donor = shutil.copytree(donors["tied"], tmp_path / "donor")
    state = load_file(str(donor / "adapter_model.safetensors"))
    state["base_model.model.lm_head.weight"] = state["base_model.model.lm_head.weight"] + 0.01
    save_file(state, str(donor / "adapter_model.safetensors"))
    _fails(capsys, tmp_path, tied_trio, donor, "two different copies")
