"""lep-merge ``conversion`` against its floor and against the reference way, in one run.

Synthetic base / instruct / adapted checkpoints with Llama-3-8B tensor names and shapes (d 4,096,
intermediate 14,336, 8 KV heads; ``--layers`` of them, 2 by default, 32 for the full model) and real
tokenizers: the old vocabulary is Tekken (131,072 byte-level tokens, the closest offline stand-in for
Llama-3's 128,256) and the new one extends it with Russian BPE tokens (as the paper's "Extended").

Timed, each in its own subprocess (peak RSS: the child's own VmHWM):
- floor: ``cp -r`` of the instruct dir + one float64 AᵀA product of the fit's shape (V_new × d);
- the products' own floor in each precision: 2 × (AᵀA by syrk, AᵀΔ, adapted·(P − I)) on random blocks,
  float64 (``--precision exact``) and float32 (the mixed fit ``auto`` runs for a bf16 checkpoint);
- ours: ``run_merge(method="conversion")`` (``--precision auto``; the precision each matrix ran in is printed);
- reference (the authors' way, at Mistral-7B shapes 32,000 × 4,096): three models fully loaded,
  A = T·base and B = T·instruct dense float64, ``torch.linalg.lstsq(driver="gelsy")``; ours is run
  again at the same shapes for the ratio.

    python benchmarks/bench_merge.py [--layers 32] [--workdir /tmp] [--skip-reference]

Disk: about 3 × (2.1 GB + 0.44 GB per layer) at the 8B shapes, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ru" / "train.jsonl"
D, INTER, HEADS, KV_HEADS = 4096, 14336, 32, 8


# ------------------------------------------------------------------------------------- fixtures


def tokenizers(root: Path, style: str) -> tuple[Path, Path]:
    from lep_plugin.vocab.build import build_vocabulary
    from lep_plugin.vocab.mistral import (
        import_mistral_common_tokenizer,
        mistral_common_file,
    )
    from lep_plugin.vocab.options import VocabOptions

    old = root / f"{style}-old"
    new = root / f"{style}-new"
    name = "tekken_240718.json" if style == "tekken" else "tokenizer.model.v1"
    if not old.exists():
        import_mistral_common_tokenizer(mistral_common_file(name), old)
    if not new.exists():
        build_vocabulary(old, [CORPUS], VocabOptions(method="extend", vocab_size=6000, max_chars=2_000_000), new)
    return old, new


def layer_shapes(i: int) -> dict[str, tuple[int, ...]]:
    p = f"model.layers.{i}."
    return {
        p + "self_attn.q_proj.weight": (D, D),
        p + "self_attn.k_proj.weight": (D * KV_HEADS // HEADS, D),
        p + "self_attn.v_proj.weight": (D * KV_HEADS // HEADS, D),
        p + "self_attn.o_proj.weight": (D, D),
        p + "mlp.gate_proj.weight": (INTER, D),
        p + "mlp.up_proj.weight": (INTER, D),
        p + "mlp.down_proj.weight": (D, INTER),
        p + "input_layernorm.weight": (D,),
        p + "post_attention_layernorm.weight": (D,),
    }


def write_model(
    out: Path,
    tok_dir: Path,
    rows: int,
    layers: int,
    seed: int,
    base: Path | None = None,
    noise: float = 0.0,
    embeddings_only_from: Path | None = None,
) -> Path:
    """A Llama-3-8B-shaped checkpoint in three shards (embeddings + first layers | last layers | norm + lm_head).

    ``base`` given: its tensors plus ``noise`` (an instruct model). Random bf16 otherwise."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, LlamaConfig

    out.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    groups = [
        {"model.embed_tokens.weight": (rows, D)}
        | {k: v for i in range(layers // 2) for k, v in layer_shapes(i).items()},
        {k: v for i in range(layers // 2, layers) for k, v in layer_shapes(i).items()},
        {"model.norm.weight": (D,), "lm_head.weight": (rows, D)},
    ]
    weight_map, total = {}, 0
    for n, group in enumerate(groups, 1):
        name = f"model-{n:05d}-of-{len(groups):05d}.safetensors"
        source = load_file(str(base / name)) if base is not None else {}
        tensors = {}
        for key, shape in group.items():
            if key in source:
                t = source[key].float()
                t += noise * torch.randn(shape, generator=g)
            else:
                t = torch.randn(shape, generator=g) * (1.0 if len(shape) == 1 else 0.02)
            tensors[key] = t.to(torch.bfloat16)
            total += tensors[key].numel() * 2
            weight_map[key] = name
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        del tensors, source
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config = LlamaConfig(
        vocab_size=rows,
        hidden_size=D,
        intermediate_size=INTER,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def build(root: Path, style: str, layers: int) -> dict[str, Path]:
    from transformers import AutoTokenizer

    old, new = tokenizers(root, style)
    rows_old, rows_new = len(AutoTokenizer.from_pretrained(str(old))), len(AutoTokenizer.from_pretrained(str(new)))
    base = write_model(root / f"{style}-base", old, rows_old, layers, 0)
    instruct = write_model(root / f"{style}-instruct", old, rows_old, layers, 1, base=base, noise=0.002)
    adapted = write_model(root / f"{style}-adapted", new, rows_new, layers, 2)
    return {"base": base, "instruct": instruct, "adapted": adapted, "rows_new": rows_new, "rows_old": rows_old}


# ------------------------------------------------------------------------------------ child jobs


def job_ours(base: str, instruct: str, adapted: str, output: str) -> None:
    from lep_plugin.propagation.options import MergeOptions
    from lep_plugin.propagation.run import run_merge

    report = run_merge(
        MergeOptions(
            base=Path(base),
            instruct=Path(instruct),
            adapted=Path(adapted),
            output=Path(output),
            method="conversion",
            check_adapted=False,
        ),
        echo=lambda s: None,
    )  # random synthetic body: not an LEP run
    print(json.dumps({"precision": {role: fits["conversion"]["precision"] for role, fits in report["fits"].items()}}))


def job_cp(src: str, dst: str) -> None:
    # timed here, not around the child: the floor must not include this interpreter's start-up
    start = time.perf_counter()
    subprocess.run(["cp", "-r", src, dst], check=True)
    print(json.dumps({"compute_s": time.perf_counter() - start}))


def job_ata(rows: str, dim: str) -> None:
    """One float64 AᵀA of shape (rows × dim): timed over the products only (random blocks made untimed)."""
    rows_, d = int(rows), int(dim)
    acc = torch.zeros(d, d, dtype=torch.float64)
    block = torch.randn(8192, d, dtype=torch.float64)
    spent = 0.0
    for start in range(0, rows_, 8192):
        a = block[: min(8192, rows_ - start)]
        t = time.perf_counter()
        acc.addmm_(a.T, a)
        spent += time.perf_counter() - t
    print(json.dumps({"compute_s": spent}))


def job_products(rows: str, dim: str, matrices: str, precision: str = "exact") -> None:
    """The bare products a conversion fit of ``precision`` must do, per matrix: AᵀA (syrk) and AᵀΔ in the
    fit's dtype (float64 exact, float32 mixed) and the application adapted·(P − I) (float32, as lep-merge
    does for a bf16 checkpoint), on random blocks; products only are timed."""
    from lep_plugin.math.propagation import (
        NormalEquations,
        accumulator_dtype,
        apply_correction,
    )

    rows_, d = int(rows), int(dim)
    a = torch.randn(8192, d, dtype=accumulator_dtype(precision))
    adapted = torch.randn(rows_, d).to(torch.bfloat16)
    p = torch.eye(d, dtype=torch.float64) + 0.01 * torch.randn(d, d, dtype=torch.float64)
    spent = 0.0
    for _ in range(int(matrices)):
        eq = NormalEquations.zeros(d, precision=precision)
        for start in range(0, rows_, 8192):
            block = a[: min(8192, rows_ - start)]
            t = time.perf_counter()
            eq.add(block, block)
            spent += time.perf_counter() - t
        t = time.perf_counter()
        apply_correction(adapted, p)
        spent += time.perf_counter() - t
    print(json.dumps({"compute_s": spent}))


def job_reference(base: str, instruct: str, adapted: str, output: str) -> None:
    """The authors' way: whole state dicts in memory, dense float64 T·old, lstsq gelsy."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from lep_plugin.math.operator import apply_operator, trained_rows
    from lep_plugin.vocab.operator import vocabulary_operator

    def load(d: str) -> dict[str, torch.Tensor]:
        sd = {}
        for f in sorted(Path(d).glob("*.safetensors")):
            sd.update(load_file(str(f)))
        return sd

    b, i, a = load(base), load(instruct), load(adapted)
    old_tok, new_tok = AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(adapted)
    op = vocabulary_operator(
        new_tok, old_tok, "mean", a["model.embed_tokens.weight"].shape[0], b["model.embed_tokens.weight"].shape[0]
    )
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        old_b, old_i = b[name].double(), i[name].double()
        trained = trained_rows(old_b)
        A, B = apply_operator(op, old_b, trained), apply_operator(op, old_i, trained)
        p = torch.linalg.lstsq(A, B, driver="gelsy").solution
        i[name] = (a[name].double() @ p).to(torch.bfloat16)
        del A, B, old_b, old_i
    Path(output).mkdir()
    save_file(i, str(Path(output) / "model.safetensors"), metadata={"format": "pt"})


def job_build(root: str, style: str, layers: str) -> None:
    m = build(Path(root), style, int(layers))
    print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in m.items()}))


JOBS = {
    "ours": job_ours,
    "cp": job_cp,
    "ata": job_ata,
    "products": job_products,
    "reference": job_reference,
    "build": job_build,
}


def peak_rss_gb() -> float:
    """This process's own peak RSS. VmHWM belongs to the address space, which exec replaces; rusage's
    ru_maxrss is not reset by exec on Linux, so a child of a large parent would report the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def run_child(job: str, *args: str) -> dict:
    """Run a job in a fresh interpreter; its wall time and its own peak RSS (reported by the child)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", job, *args], stdout=subprocess.PIPE, env=env, text=True
    )
    out = proc.stdout.read()
    status = proc.wait()
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{job} failed (status {status})")
    result = {"wall_s": wall}
    for line in out.splitlines():
        if line.startswith("{"):
            result |= json.loads(line)
    return result


def built(root: Path, style: str, layers: int) -> dict:
    """The synthetic base / instruct / adapted dirs of one shape (``build`` child)."""
    return {
        k: Path(v) if isinstance(v, str) else v for k, v in run_child("build", str(root), style, str(layers)).items()
    }


def bench_8b(root: Path, layers: int) -> None:
    """Ours at Llama-3-8B shapes against the cp -r + float64 AᵀA floor and the products' own floors."""
    m = built(root, "tekken", layers)
    cp = run_child("cp", str(m["instruct"]), str(root / "cp-copy"))
    shutil.rmtree(root / "cp-copy")
    ata = run_child("ata", str(m["rows_new"]), str(D))
    floor = cp["compute_s"] + ata["compute_s"]
    products = {p: run_child("products", str(m["rows_new"]), str(D), "2", p) for p in ("exact", "mixed")}
    ours = run_child("ours", str(m["base"]), str(m["instruct"]), str(m["adapted"]), str(root / "out"))
    shutil.rmtree(root / "out")
    threads = torch.get_num_threads()
    print(f"8B shapes ({m['rows_old']:,} -> {m['rows_new']:,} x {D}, {layers} layers, {threads} threads)")
    print(f"  floor: cp -r {cp['compute_s']:.1f} s + float64 AtA {ata['compute_s']:.1f} s = {floor:.1f} s")
    # what each precision's fit cannot avoid: AtA (syrk), AtD and adapted.(P - I) for the input and output matrices
    for precision, dtype in (("exact", "float64"), ("mixed", "float32")):
        own = cp["compute_s"] + products[precision]["compute_s"]
        print(
            f"  products' own floor, {precision} ({dtype} fit): 2 x [syrk AtA + AtD + adapted.(P-I)] + cp -r = "
            f"{own:.1f} s = {own / floor:.2f}x the floor; ours is {ours['wall_s'] / own:.2f}x that"
        )
    ran = ", ".join(f"{r} {p}" for r, p in ours["precision"].items())
    print(
        f"  ours ({ran}): {ours['wall_s']:.1f} s, peak RSS {ours['peak_rss_gb']:.2f} GB   "
        f"ratio to floor {ours['wall_s'] / floor:.2f}x (goal <= 2.5x, <= 6 GB)"
    )
    for k in ("base", "instruct", "adapted"):
        shutil.rmtree(m[k])


def bench_reference(root: Path, layers: int) -> None:
    """Ours against the authors' way (three models loaded, dense float64 lstsq) at Mistral-7B shapes."""
    m = built(root, "mistral", layers)
    ours = run_child("ours", str(m["base"]), str(m["instruct"]), str(m["adapted"]), str(root / "out7"))
    ref = run_child("reference", str(m["base"]), str(m["instruct"]), str(m["adapted"]), str(root / "ref7"))
    print(f"Mistral-7B shapes ({m['rows_old']:,} -> {m['rows_new']:,} x {D}, {layers} layers)")
    print(
        f"  reference (full load, dense float64 lstsq gelsy): {ref['wall_s']:.1f} s, "
        f"peak RSS {ref['peak_rss_gb']:.2f} GB"
    )
    print(f"  ours: {ours['wall_s']:.1f} s, peak RSS {ours['peak_rss_gb']:.2f} GB")
    print(
        f"  speed-up {ref['wall_s'] / ours['wall_s']:.2f}x (target >= 5x), "
        f"memory {ref['peak_rss_gb'] / ours['peak_rss_gb']:.2f}x less (target >= 3x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-8b", action="store_true")
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        JOBS[args.child[0]](*args.child[1:])
        if args.child[0] != "build":
            print(json.dumps({"peak_rss_gb": peak_rss_gb()}))
        return
    torch.set_num_threads(os.cpu_count() or 1)
    root = Path(tempfile.mkdtemp(prefix="bench-merge-", dir=args.workdir))
    try:
        if not args.skip_8b:
            bench_8b(root, args.layers)
        if not args.skip_reference:
            bench_reference(root, args.layers)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
