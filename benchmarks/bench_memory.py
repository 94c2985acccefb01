"""Memory of LEP's embedding training with a bf16 or 4-bit body (issue 20): the bytes of weights, trainable
parameters, gradients and optimizer states, for

- ``bf16``:        bf16 body + bf16 embeddings trained, AdamW (``lep.train: embeddings``, no adapter);
- ``4bit``:        NF4 body (``adapter: qlora``, ``load_in_4bit``; its LoRA frozen) + the embeddings as PEFT
                   ``modules_to_save`` copies, AdamW;
- ``4bit-8bit``:   the same with bitsandbytes' 8-bit AdamW (``optimizer: adamw_bnb_8bit``);
- ``4bit-lora``:   the same plus a trained body LoRA (``lep.body: lora``), 8-bit AdamW.

A 2-layer model of the chosen shapes is **measured** (built, quantised by bitsandbytes as Axolotl does, one
real training step, then every tensor counted: parameters and buffers, 4-bit quantisation state, ``.grad``,
optimizer state); the same formulas that the measurement checks then give the **32-layer** figures by
arithmetic. Activations are not counted (they depend on batch and sequence length, not on the method).

    python benchmarks/bench_memory.py                       # measured at d=1024 (fast, CPU), 8B by arithmetic
    python benchmarks/bench_memory.py --measure-shape llama3-8b   # measure 2 layers of the real 8B shapes (~10 GB RAM)
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("bf16", "4bit", "4bit-8bit", "4bit-lora")
NF4_BLOCK, NF4_BLOCK2 = 64, 256  # bitsandbytes' 4-bit block size and the double-quantisation block
ADAM8_BLOCK, ADAM8_MIN = 256, 4096  # 8-bit optimizer state block, and the smallest tensor given 8-bit state
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    vocab: int  # rows of the embedding matrices after the vocabulary change
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    lora_r: int = 16

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linears(self) -> list[tuple[int, int]]:
        """(out, in) of the 7 linear layers of one transformer block."""
        d, kv, f = self.hidden, self.kv_heads * self.head_dim, self.intermediate
        return [(d, d), (kv, d), (kv, d), (d, d), (f, d), (f, d), (d, f)]


# Llama-3-8B with the paper's extended vocabulary (128,256 -> 174,816)
LLAMA3_8B = Shape(vocab=174_816, hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8)
SMALL = Shape(vocab=40_000, hidden=1024, layers=2, intermediate=3584, heads=8, kv_heads=2)


def nf4_bytes(numel: int) -> float:
    """A bitsandbytes NF4 weight with double quantisation: 4 bits, an 8-bit absmax per 64 values, an fp32
    absmax per 256 of those (plus a 256-entry fp32 code table per tensor)."""
    blocks = -(-numel // NF4_BLOCK)
    return numel / 2 + blocks + 4 * -(-blocks // NF4_BLOCK2) + 4 * 256 + 4


def adam8_bytes(numel: int) -> float:
    """bitsandbytes 8-bit AdamW state of one tensor: two uint8 states and an fp32 absmax per 256-block;
    tensors under 4,096 values keep 32-bit states."""
    if numel < ADAM8_MIN:
        return 8 * numel
    return 2 * numel + 2 * 4 * -(-numel // ADAM8_BLOCK)


def estimate(shape: Shape, mode: str) -> dict[str, float]:
    """Bytes of weights, gradients and optimizer state, and the trainable parameter count, by arithmetic."""
    linears = [o * i for o, i in shape.linears()] * shape.layers
    norms = (2 * shape.layers + 1) * shape.hidden
    embedding = shape.vocab * shape.hidden  # one matrix (untied: two)
    lora = shape.lora_r * sum(o + i for o, i in shape.linears()) * shape.layers
    if mode == "bf16":
        weights = 2 * (sum(linears) + norms + 2 * embedding)
        trainable = [2 * embedding]
    else:  # PEFT keeps the frozen original of each embedding beside its trained copy; LoRA weights are fp32
        weights = sum(nf4_bytes(n) for n in linears) + 2 * norms + 2 * 4 * embedding + 4 * lora
        trainable = [embedding, embedding]
    lora_pieces = [shape.lora_r * n for o, i in shape.linears() for n in (i, o)] * shape.layers
    grads = 2 * sum(trainable)
    if mode == "4bit-lora":
        grads += 4 * lora
    if mode in ("bf16", "4bit"):
        states = 2 * 2 * sum(trainable)  # torch AdamW: two states in the parameter's dtype (bf16)
    else:
        states = sum(adam8_bytes(n) for n in trainable) + (
            sum(adam8_bytes(n) for n in lora_pieces) if mode == "4bit-lora" else 0
        )
    params = sum(trainable) + (lora if mode == "4bit-lora" else 0)
    return {"weights": weights, "trainable_params": params, "gradients": grads, "optimizer": states}


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _quant_state_bytes(state) -> int:
    if state is None:
        return 0
    total = sum(_tensor_bytes(t) for t in (state.absmax, state.code) if t is not None)
    return total + (_quant_state_bytes(state.state2) if getattr(state, "nested", False) else 0)


def measure_weights(model) -> int:
    """Every parameter and buffer once (shared storage counted once), with the 4-bit quantisation state."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += _tensor_bytes(t) + _quant_state_bytes(getattr(t, "quant_state", None))
    return total


def _save_model(shape: Shape, directory: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(str(directory))


def _load(directory: Path, mode: str, r: int):
    """The model as ``axolotl train`` sets it up for ``mode`` (Axolotl's own bnb settings for qlora)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from lep_plugin.plugin.freezing import freeze_all_but_embeddings

    if mode == "bf16":
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.bfloat16)
        freeze_all_but_embeddings(model)
        return model
    from peft import LoraConfig, get_peft_model

    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.bfloat16, quantization_config=bnb)
    lora = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(LINEARS), modules_to_save=["embed_tokens", "lm_head"])
    model = get_peft_model(model, lora)
    for name, param in model.named_parameters():  # the plugin's rule: embeddings, plus the LoRA for lep.body: lora
        param.requires_grad_(".modules_to_save." in name or (mode == "4bit-lora" and ".lora_" in name))
    return model


def measure(shape: Shape, mode: str, workdir: Path) -> dict[str, float]:
    model = _load(workdir, mode, shape.lora_r)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if mode in ("bf16", "4bit"):
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    else:
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(trainable, lr=1e-4)
    ids = torch.randint(0, shape.vocab, (1, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    result = {
        "weights": measure_weights(model),
        "trainable_params": sum(p.numel() for p in trainable),
        "gradients": sum(_tensor_bytes(p.grad) for p in trainable if p.grad is not None),
        "optimizer": sum(
            _tensor_bytes(v)
            for s in optimizer.state.values()
            for v in s.values()
            if isinstance(v, torch.Tensor) and v.numel() > 1
        ),
    }
    del model, optimizer
    gc.collect()
    return result


def _gb(value: float) -> str:
    return f"{value / 1e9:.2f}"


def table(rows: dict[str, dict[str, float]], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| mode | weights GB | trainable params | gradients GB | optimizer GB | total GB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, r in rows.items():
        total = r["weights"] + r["gradients"] + r["optimizer"]
        lines.append(
            f"| {mode} | {_gb(r['weights'])} | {r['trainable_params'] / 1e9:.3f} B | {_gb(r['gradients'])} "
            f"| {_gb(r['optimizer'])} | {_gb(total)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure-shape", choices=("small", "llama3-8b"), default="small")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    measured_shape = replace(SMALL if args.measure_shape == "small" else LLAMA3_8B, layers=2)
    measured, predicted = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        _save_model(measured_shape, Path(tmp))
        for mode in MODES:
            measured[mode] = measure(measured_shape, mode, Path(tmp))
            predicted[mode] = estimate(measured_shape, mode)
    worst = max(abs(measured[m][k] - predicted[m][k]) / max(predicted[m][k], 1) for m in MODES for k in predicted[m])
    full = {mode: estimate(LLAMA3_8B, mode) for mode in MODES}
    print(table(measured, f"measured: 2 layers, vocab {measured_shape.vocab:,}, d {measured_shape.hidden:,}"))
    print(f"\narithmetic vs measured (same 2-layer model): largest relative difference {worst:.2%}\n")
    print(
        table(
            full,
            f"Llama-3-8B by arithmetic: 32 layers, vocab 128,256 -> {LLAMA3_8B.vocab:,}, d 4,096, "
            f"LoRA r {LLAMA3_8B.lora_r}",
        )
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "measured": measured,
                    "predicted_2_layers": predicted,
                    "llama3_8b": full,
                    "worst_relative_difference": worst,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
