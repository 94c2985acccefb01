"""The pretrained tiny base that ships with the package (issue 27): it is the file its manifest names, it
copies in context on held-out Russian in its own vocabulary, and the recipe that made it is deterministic,
resumable and keeps its hand-written copy circuit while the rest trains."""

from __future__ import annotations

import json

import pytest
import torch

from lep_plugin.common.corpus import iter_texts
from lep_plugin.demo.circuit import CircuitLayout, circuit_snapshot
from lep_plugin.demo.models import repeat_losses_of
from lep_plugin.demo.paths import DEMO_DATA, TINY_BASE
from lep_plugin.demo.pretrain import MANIFEST, PretrainOptions, new_model, sha256_file, token_chunks, train_loop


@pytest.fixture(scope="module")
def tiny_base_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY_BASE))


def test_the_shipped_base_is_its_manifests_and_copies_held_out_russian(shared_data, tiny_base_tokenizer):
    from transformers import AutoModelForCausalLM

    manifest = json.loads((TINY_BASE / MANIFEST).read_text(encoding="utf-8"))
    assert sha256_file(TINY_BASE / "model.safetensors") == manifest["sha256"]["model.safetensors"]
    assert (TINY_BASE / "model.safetensors").stat().st_size <= 20 * 2**20
    assert manifest["command"].startswith("python benchmarks/pretrain_base.py") and manifest["steps"] > 0
    model = AutoModelForCausalLM.from_pretrained(str(TINY_BASE), dtype=torch.float32).eval()
    losses = repeat_losses_of(model, tiny_base_tokenizer, iter_texts([shared_data / "ru" / "heldout.jsonl"]))
    # the second time a held-out passage comes, the base predicts it far better: it copies in context
    assert losses["ratio"] <= 0.6, losses
    # and the manifest's figure is this measurement (same texts, same function)
    assert losses["ratio"] == pytest.approx(manifest["final"]["ru_repeat_loss_ratio"], abs=2e-3)


SMALL = PretrainOptions(
    steps=6,
    batch=2,
    seq=32,
    hidden=96,
    intermediate=128,
    heads=2,
    head_dim=32,
    circuit=CircuitLayout(token_dims=16, kernel_pairs=8),
    eval_minutes=1e6,
    checkpoint_minutes=1e6,
    eval_chars=300,
)


def _chunks(tok):
    texts = list(iter_texts([DEMO_DATA / "ru.jsonl"]))[:3]
    return {
        "en": token_chunks(tok, list(iter_texts([DEMO_DATA / "en.jsonl"]))[:3], SMALL, 0),
        "ru": token_chunks(tok, texts, SMALL, 1),
    }


def test_the_written_circuit_copies_before_any_training(tiny_base_tokenizer):
    """The hand-written heads alone (random everything else) predict a passage's second occurrence."""
    model, facts = new_model(tiny_base_tokenizer, PretrainOptions())
    assert facts["previous_token_margin"] > 0.1 and facts["token_before_margin"] > 0.1
    losses = repeat_losses_of(model.eval(), tiny_base_tokenizer, iter_texts([DEMO_DATA / "ru.jsonl"]), docs=4)
    assert losses["ratio"] < 0.2, losses


def test_pretraining_is_deterministic_resumable_and_keeps_the_circuit(tmp_path, tiny_base_tokenizer):
    tok, chunks = tiny_base_tokenizer, _chunks(tiny_base_tokenizer)
    heldout = {
        "ru": list(iter_texts([DEMO_DATA / "ru.jsonl"]))[-2:],
        "en": list(iter_texts([DEMO_DATA / "en.jsonl"]))[-2:],
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels for both runs; restored below
    try:
        _compare_runs(tmp_path, tok, chunks, heldout)
    finally:
        torch.set_num_threads(threads)


def _compare_runs(tmp_path, tok, chunks, heldout):
    straight, _ = new_model(tok, SMALL)
    before = circuit_snapshot(straight)
    train_loop(straight, tok, chunks, heldout, SMALL, tmp_path / "a", lambda m: None)
    resumed, _ = new_model(tok, SMALL)
    train_loop(resumed, tok, chunks, heldout, SMALL, tmp_path / "b", lambda m: None, stop_after=3)
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=True)["step"] == 3
    resumed, _ = new_model(tok, SMALL)  # a new process would start from a fresh model and the saved state
    history, _ = train_loop(resumed, tok, chunks, heldout, SMALL, tmp_path / "b", lambda m: None)
    assert history[-1]["step"] == SMALL.steps
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # the circuit's blocks did not move while everything else trained
    assert all(torch.equal(p.detach()[index], value) for p, index, value in before)
    assert not torch.equal(
        a["model.layers.1.mlp.down_proj.weight"],
        new_model(tok, SMALL)[0].state_dict()["model.layers.1.mlp.down_proj.weight"],
    )
