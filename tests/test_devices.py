"""Device and dtype of every conversion, initialisation and propagation result, proven on a CPU.

No GPU here, so the check is done the other way round: inside ``with torch.device("meta")`` every tensor
created *without* an explicit device lands on the meta device. A function that builds a helper tensor on
torch's default device instead of the weights' device (the CUDA bug of a CPU-built operator mixed with
GPU weights) then mixes meta with CPU tensors and fails – or returns a meta result. Passing this is the
same property as "weights on cuda:0, result on cuda:0", through the same code.
"""

from __future__ import annotations

import pytest
import torch
from builders import merge_args

from lep_plugin.common.devices import resolve_device
from lep_plugin.errors import LEPError
from lep_plugin.math import propagation as prop
from lep_plugin.math.operator import apply_operator, build_operator
from lep_plugin.vocab.operator import initial_rows


def _operator_and_weights(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    old = torch.randn(60, 16, generator=g).to(dtype)
    old[5] = 0  # an untrained row: left out of every average
    pieces = [[1, 2], [5], [], [4, 5, 6]] + [[i] for i in range(50)]  # a pure-fallback row, a one-hot row...
    return build_operator(pieces, 60), old


def test_results_follow_the_weights_device_not_the_default_device():
    op, old = _operator_and_weights()
    instruct = old * 1.5 + 0.01
    expected = {
        "T·old": apply_operator(op, old),
        "initial_rows": initial_rows(op, old, 55),
        "blocks": torch.cat([a for a, _ in prop.operator_blocks(op, old, instruct, block_rows=7)]),
    }
    eq = prop.accumulate(prop.operator_blocks(op, old, instruct, block_rows=7), 16)
    solution = prop.solve(eq)
    expected["P"] = solution.p
    expected["adapted·P"] = prop.apply_correction(old, solution.p, block_rows=9)
    with torch.device("meta"):
        got = {
            "T·old": apply_operator(op, old),
            "initial_rows": initial_rows(op, old, 55),
            "blocks": torch.cat([a for a, _ in prop.operator_blocks(op, old, instruct, block_rows=7)]),
        }
        eq_meta = prop.accumulate(prop.operator_blocks(op, old, instruct, block_rows=7), 16, device="cpu")
        got["P"] = prop.solve(eq_meta).p
        got["adapted·P"] = prop.apply_correction(old, got["P"], block_rows=9)
        got["residual"] = prop.relative_residual(eq_meta, got["P"])
    for name in expected:
        assert got[name].device.type == "cpu", name
        assert torch.equal(got[name], expected[name]), name
    assert got["residual"] == pytest.approx(prop.relative_residual(eq, solution.p))


def test_bf16_weights_give_bf16_results():
    op, old32 = _operator_and_weights()
    old = old32.to(torch.bfloat16)
    rows = apply_operator(op, old)
    assert rows.dtype == torch.bfloat16
    # computed in float32 from the bf16 values, rounded once at the end
    assert torch.equal(rows, apply_operator(op, old.float()).to(torch.bfloat16))
    assert initial_rows(op, old, 55).dtype == torch.bfloat16
    p = torch.eye(16, dtype=torch.float64) + 0.01 * torch.randn(
        16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    out = prop.apply_correction(old, p)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), (old.double() @ p).float(), atol=2e-2, rtol=1e-2)


def test_meta_weights_give_the_shape_only():
    """A rank that holds no weights (FSDP's memory-efficient loading builds the model on meta) converts
    to the right shape and dtype without touching values."""
    op, _ = _operator_and_weights()
    meta = torch.empty(60, 16, dtype=torch.bfloat16, device="meta")
    for rows in (apply_operator(op, meta), initial_rows(op, meta, 55)):
        assert rows.is_meta and rows.shape == (op.shape[0], 16) and rows.dtype == torch.bfloat16


def test_model_on_meta_converts_to_the_new_vocabulary(mistral_trio):
    from transformers import AutoConfig, AutoModelForCausalLM

    from lep_plugin.common.tokenizers import load_tokenizer
    from lep_plugin.vocab.convert import convert_embeddings

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(mistral_trio.base))
    new_tok = load_tokenizer(mistral_trio.new_tokenizer)
    rows = convert_embeddings(model, new_tok, load_tokenizer(mistral_trio.base))
    for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        assert matrix.is_meta and matrix.shape[0] == rows == len(new_tok)
    assert model.config.vocab_size == rows


def test_resolve_device_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for choice, message in (
        ("cuda", "sees no CUDA GPU"),
        ("cuda:1", "sees no CUDA GPU"),
        ("gpu", "expected auto, cpu"),
    ):
        with pytest.raises(LEPError, match=message):
            resolve_device(choice)


def test_lep_merge_device_cpu_is_the_default_here(mistral_trio, tmp_path):
    from lep_plugin.checkpoints.safetensors import SafetensorsCheckpoint
    from lep_plugin.cli.merge import main

    outputs = {}
    for device in ("auto", "cpu"):
        outputs[device] = tmp_path / device
        main(
            [
                *merge_args(mistral_trio, outputs[device]),
                "--device",
                device,
            ]
        )
    a, b = SafetensorsCheckpoint(outputs["auto"]), SafetensorsCheckpoint(outputs["cpu"])
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(a.get(name), b.get(name))
    import json

    for device in ("auto", "cpu"):  # auto found no GPU here
        assert json.loads((outputs[device] / "lep_merge.json").read_text())["device"] == "cpu"
