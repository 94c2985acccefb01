"""``lep-merge``: LEP step 4 from checkpoints on disk to a chat-ready model dir.

inputs → :func:`plan_merge` (everything checked, nothing heavy loaded) → :func:`run_merge` (fits, one
matrix at a time; output written atomically). Only the embedding/lm_head matrices are ever in memory:
every other tensor of the instruct model is copied shard by shard.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from lep_plugin.errors import LEPError
from lep_plugin.io.atomic import atomic_output_dir, check_output_dir
from lep_plugin.io.checkpoints import (
    Checkpoint,
    EmbeddingNames,
    embedding_names,
    is_tied,
    load_config,
    open_checkpoint,
    resolve_model_dir,
    resolve_name,
    write_weights,
)
from lep_plugin.math import propagation as prop
from lep_plugin.math.operator import trained_rows

MergeMethod = Literal["swap", "overlap", "conversion", "all"]
REPORT = "lep_merge.json"
# adapted rows beyond its tokenizer are accepted as padding (Qwen pads 151,665 ids to 151,936 rows)
MAX_PADDING_ROWS = 1024


class MergeOptions(BaseModel):
    """Settings of ``lep-merge`` (CLI flags, YAML keys and the library call are the same fields)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: Path = Field(description="original base model (HF dir, Axolotl output/checkpoint dir, DeepSpeed dir)")
    instruct: Path = Field(description="original instruct model (HF dir): its layers, added tokens and chat template are kept")
    adapted: Path = Field(description="adapted base model with the new vocabulary and trained embeddings (any input kind)")
    output: Path = Field(description="output model dir (written atomically)")
    method: MergeMethod = Field(default="conversion", description="how P is fitted; 'all' writes one model per method")
    adapted_tokenizer: Path | None = Field(default=None, description="new tokenizer dir, if not inside the adapted dir")
    weighting: Literal["mean", "position"] = Field(default="mean", description="vocabulary operator weights (conversion)")
    block_rows: int = Field(default=8192, ge=16, description="rows per block of the streamed fit")
    sample_text: Path | None = Field(default=None, description="text/.jsonl file to measure characters per token before/after")
    force: bool = Field(default=False, description="replace an existing output dir")
    dry_run: bool = Field(default=False, description="print the plan and write nothing")


@dataclass
class Matrix:
    """One matrix to propagate: the tensor names in each checkpoint (role "input" or "output")."""

    role: str
    base: str
    instruct: str
    adapted: str
    base_shape: tuple[int, ...]
    instruct_shape: tuple[int, ...]
    adapted_shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class Plan:
    options: MergeOptions
    base: Checkpoint
    instruct: Checkpoint
    adapted: Checkpoint
    instruct_dir: Path
    adapted_tokenizer_dir: Path
    matrices: list[Matrix]
    old_tok: Any
    instruct_tok: Any
    new_tok: Any
    added: list[tuple[str, int, int | None]]  # (content, instruct id, new id or None: appended)
    out_rows: int
    methods: list[str]
    tied: bool
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = ["lep-merge plan"]
        for what, ck in (("base", self.base), ("instruct", self.instruct), ("adapted", self.adapted)):
            lines.append(f"  {what:9s} {ck.describe()}")
        lines.append(f"  tokenizer {self.adapted_tokenizer_dir} ({len(self.new_tok)} tokens; old vocabulary {len(self.old_tok)})")
        lines.append(f"  methods   {', '.join(self.methods)}   tied embeddings: {self.tied}")
        for m in self.matrices:
            lines.append(
                f"  change    {m.instruct} {list(m.instruct_shape)} -> [{self.out_rows}, {m.instruct_shape[1]}] {str(m.dtype).removeprefix('torch.')}"
                f"  (base {m.base}, adapted {m.adapted} {list(m.adapted_shape)})"
            )
        appended = [c for c, _, n in self.added if n is None]
        lines.append(f"  added tokens kept with instruct rows: {len(self.added)} ({len(appended)} appended to the vocabulary)")
        size = self.output_bytes() * len(self.methods)
        lines.append(f"  output    {self.options.output}  ~{size / 1e9:.2f} GB")
        lines.append(f"  memory    ~{self.memory_estimate() / 1e9:.2f} GB peak (estimate)")
        lines.extend(f"  note      {n}" for n in self.notes)
        return "\n".join(lines)

    def output_bytes(self) -> int:
        size = self.instruct.nbytes()
        for m in self.matrices:
            item = torch.empty(0, dtype=m.dtype).element_size()
            size += (self.out_rows - m.instruct_shape[0]) * m.instruct_shape[1] * item
        return size

    def memory_estimate(self) -> int:
        """Largest resident set: old base + instruct matrices (fit), or adapted + result (apply), plus two
        result matrices kept for writing, plus float64 work blocks."""
        biggest = 0
        for m in self.matrices:
            d = m.instruct_shape[1]
            item = torch.empty(0, dtype=m.dtype).element_size()
            fit = (m.base_shape[0] + m.instruct_shape[0]) * d * item
            apply = (m.adapted_shape[0] + self.out_rows) * d * item
            biggest = max(biggest, fit, apply)
            block = 6 * self.options.block_rows * d * 8
        return biggest + block + 3 * d * d * 8


# -------------------------------------------------------------------------------------------- plan


def _tokenizer_dir(*candidates: Path | None) -> Path:
    for c in candidates:
        if c is not None and (Path(c) / "tokenizer.json").is_file():
            return Path(c)
    return Path(candidates[-1] or candidates[0])


def _hidden(config) -> int | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "hidden_size", None)


def _check_same_model(base_cfg, instruct_cfg) -> None:
    if base_cfg.model_type != instruct_cfg.model_type:
        raise LEPError(
            f"base and instruct are different architectures ({base_cfg.model_type} vs {instruct_cfg.model_type})"
        )
    if _hidden(base_cfg) != _hidden(instruct_cfg):
        raise LEPError(f"base and instruct have different hidden sizes ({_hidden(base_cfg)} vs {_hidden(instruct_cfg)})")


def _stored(ck: Checkpoint, names: EmbeddingNames, role: str, what: str) -> str:
    want = names.input if role == "input" or names.output is None else names.output
    return resolve_name(ck, want, what)


def plan_merge(options: MergeOptions) -> Plan:
    """Check all inputs and decide what will be written; reads headers, configs and tokenizers only."""
    from lep_plugin.io.tokenizers import load_tokenizer

    inputs = {"base": options.base, "instruct": options.instruct, "adapted": options.adapted}
    out = options.output.resolve()
    for what, path in inputs.items():
        if not Path(path).is_dir():
            raise LEPError(f"{what} {path} is not a directory")
        if out == Path(path).resolve() or Path(path).resolve().is_relative_to(out) or out.is_relative_to(Path(path).resolve()):
            raise LEPError(f"output {options.output} overlaps the {what} input {path}; choose another output dir")
    if not options.dry_run:
        check_output_dir(options.output, options.force)

    instruct_dir = resolve_model_dir(options.instruct, "instruct")
    instruct = open_checkpoint(instruct_dir, "instruct", prefer_deepspeed=False)
    if instruct.kind == "deepspeed":
        raise LEPError(f"instruct {options.instruct} is a DeepSpeed checkpoint without HF weights; the instruct model must be an HF model dir")
    instruct_cfg = load_config(instruct_dir, "instruct")
    base_dir = resolve_model_dir(options.base, "base")
    base = open_checkpoint(base_dir, "base")
    base_cfg = load_config(base_dir, "base") if (base_dir / "config.json").is_file() else load_config(options.base, "base")
    _check_same_model(base_cfg, instruct_cfg)
    adapted_dir = resolve_model_dir(options.adapted, "adapted")
    adapted = open_checkpoint(adapted_dir, "adapted")
    adapted_cfg_dir = next((d for d in (adapted_dir, Path(options.adapted)) if (d / "config.json").is_file()), None)
    adapted_cfg = load_config(adapted_cfg_dir, "adapted") if adapted_cfg_dir else base_cfg
    if adapted_cfg.model_type != base_cfg.model_type:
        raise LEPError(f"adapted is a {adapted_cfg.model_type} model but base is {base_cfg.model_type}")

    names = {k: embedding_names(c) for k, c in (("base", base_cfg), ("instruct", instruct_cfg), ("adapted", adapted_cfg))}
    tied = names["instruct"].tied
    checkpoints = {"base": base, "instruct": instruct, "adapted": adapted}

    # tokenizers: old (base, else instruct), instruct (added tokens, chat template), new (adapted)
    instruct_tok = load_tokenizer(_tokenizer_dir(instruct_dir, options.instruct))
    base_tok_dir = _tokenizer_dir(base_dir, options.base, None)
    old_tok = load_tokenizer(base_tok_dir) if (base_tok_dir / "tokenizer.json").is_file() else instruct_tok
    old_core = old_tok.backend_tokenizer.get_vocab(with_added_tokens=False)
    if old_core != instruct_tok.backend_tokenizer.get_vocab(with_added_tokens=False):
        raise LEPError("base and instruct have different old vocabularies (their tokenizers differ beyond added tokens)")
    new_tok_dir = _tokenizer_dir(options.adapted_tokenizer, adapted_dir, options.adapted)
    new_tok = load_tokenizer(new_tok_dir)

    matrices = []
    for role in ("input",) if tied else ("input", "output"):
        stored = {k: _stored(checkpoints[k], names[k], role, k) for k in checkpoints}
        shapes = {k: tuple(checkpoints[k].shape(stored[k])) for k in checkpoints}
        for k, s in shapes.items():
            if len(s) != 2:
                raise LEPError(f"{k} tensor {stored[k]} is not a matrix (shape {list(s)})")
        d = shapes["instruct"][1]
        if shapes["base"][1] != d or shapes["adapted"][1] != d:
            raise LEPError(
                f"hidden sizes differ: base {shapes['base'][1]}, instruct {d}, adapted {shapes['adapted'][1]} ({role} embeddings)"
            )
        if shapes["base"][0] < len(old_tok) or shapes["instruct"][0] < len(old_tok):
            raise LEPError(f"base/instruct {role} embeddings have fewer rows than the old tokenizer's {len(old_tok)} tokens")
        rows = shapes["adapted"][0]
        if rows < len(new_tok) or rows - len(new_tok) > MAX_PADDING_ROWS:
            raise LEPError(
                f"adapted {role} embeddings have {rows} rows but its tokenizer ({new_tok_dir}) has {len(new_tok)} tokens"
            )
        matrices.append(Matrix(role, stored["base"], stored["instruct"], stored["adapted"], shapes["base"], shapes["instruct"], shapes["adapted"], instruct.dtype(stored["instruct"])))
    if len({m.adapted_shape[0] for m in matrices}) != 1:
        raise LEPError("adapted input and output embeddings have different numbers of rows")

    # the instruct model's added tokens (chat markers, bos/eos) keep their instruct rows
    new_vocab = new_tok.get_vocab()
    added = []
    for token_id, token in sorted(instruct_tok.added_tokens_decoder.items()):
        added.append((token.content, token_id, new_vocab.get(token.content)))
    appended = sum(1 for _, _, n in added if n is None)
    out_rows = max(matrices[0].adapted_shape[0], len(new_tok) + appended)
    methods = ["swap", "overlap", "conversion"] if options.method == "all" else [options.method]
    plan = Plan(options, base, instruct, adapted, instruct_dir, new_tok_dir, matrices, old_tok, instruct_tok, new_tok, added, out_rows, methods, tied)
    if base_dir != Path(options.base):
        plan.notes.append(f"base read from {base_dir}")
    if adapted_dir != Path(options.adapted):
        plan.notes.append(f"adapted read from {adapted_dir}")
    return plan


# --------------------------------------------------------------------------------------------- run


def _bar(total: int, desc: str, unit: str = "rows"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False, disable=None, file=sys.stderr)


def _blocks_with_progress(blocks, bar):
    for a, b in blocks:
        bar.update(a.shape[0])
        yield a, b


def _fits(plan: Plan, m: Matrix, operator: torch.Tensor | None, overlap_old: torch.Tensor | None):
    """Normal equations of the overlap and conversion systems for matrix ``m`` (only the needed ones)."""
    base = plan.base.get(m.base)
    instruct = plan.instruct.get(m.instruct)
    d = m.instruct_shape[1]
    trained = trained_rows(base[: len(plan.old_tok)]) if operator is None else trained_rows(base[: operator.shape[1]])
    eqs: dict[str, prop.NormalEquations] = {}
    bs = plan.options.block_rows
    if overlap_old is not None:
        ids = overlap_old[trained[overlap_old]]
        with _bar(ids.numel(), f"overlap fit ({m.role})") as bar:
            eqs["overlap"] = prop.accumulate(_blocks_with_progress(prop.overlap_blocks(base, instruct, ids, bs), bar), d)
    if operator is not None:
        with _bar(operator.shape[0], f"conversion fit ({m.role})") as bar:
            blocks = prop.operator_blocks(operator, base, instruct, trained, bs)
            eqs["conversion"] = prop.accumulate(_blocks_with_progress(blocks, bar), d)
    added_rows = {i: instruct[i].clone() for _, i, _ in plan.added if i < instruct.shape[0]}
    return eqs, added_rows


def run_merge(options: MergeOptions, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Plan, fit and write. Returns the summary (also written as ``lep_merge.json`` in the output)."""
    started = time.time()
    plan = plan_merge(options)
    if options.dry_run:
        echo(plan.describe())
        return {"dry_run": True, "plan": plan.describe()}
    echo(plan.describe())
    needs_overlap = any(m in ("overlap",) for m in plan.methods) or options.method == "all"
    needs_conversion = "conversion" in plan.methods or options.method == "all"

    operator = None
    if needs_conversion:
        from lep_plugin.io.vocab_operator import vocabulary_operator

        operator = vocabulary_operator(
            plan.new_tok, plan.old_tok, options.weighting, plan.matrices[0].adapted_shape[0], len(plan.old_tok)
        )
    overlap_old = None
    if needs_overlap:
        _, overlap_old = prop.shared_token_ids(plan.new_tok.get_vocab(), plan.old_tok.get_vocab())
        overlap_old = overlap_old[overlap_old < len(plan.old_tok)]
        if overlap_old.numel() == 0:
            raise LEPError("the old and new vocabularies share no token: the overlap method has nothing to fit")

    report: dict[str, Any] = {
        "methods": plan.methods,
        "inputs": {"base": plan.base.describe(), "instruct": plan.instruct.describe(), "adapted": plan.adapted.describe()},
        "tied": plan.tied,
        "out_rows": plan.out_rows,
        "fits": {},
    }
    with atomic_output_dir(options.output, options.force) as tmp:
        spill = tmp / ".lep-spill"
        spill.mkdir()
        results: dict[str, dict[str, Path]] = {method: {} for method in plan.methods}
        for m in plan.matrices:
            eqs, added_rows = _fits(plan, m, operator, overlap_old)
            solutions = {k: prop.solve(eq) for k, eq in eqs.items()}
            fit_report = {}
            for method in plan.methods:
                p = None if method == "swap" else solutions[method].p
                fit_report[method] = {
                    f"residual_on_{k}": solutions[k].residual if k == method else prop.relative_residual(eq, p)
                    for k, eq in eqs.items()
                }
                if method in solutions:
                    fit_report[method] |= {"solver": solutions[method].solver, "condition": solutions[method].condition}
            report["fits"][m.role] = fit_report
            del eqs
            adapted = plan.adapted.get(m.adapted)
            for method in plan.methods:
                p = None if method == "swap" else solutions[method].p
                with _bar(adapted.shape[0], f"{method}: apply ({m.role})") as bar:
                    out = prop.apply_correction(adapted, p, m.dtype, options.block_rows, bar.update)
                out = _with_added_rows(out, plan, added_rows)
                path = spill / f"{method}-{m.role}.safetensors"
                from safetensors.torch import save_file

                save_file({"t": out}, str(path))
                results[method][m.instruct] = path
                del out
            del adapted
        for method in plan.methods:
            target = tmp if len(plan.methods) == 1 else tmp / method
            target.mkdir(exist_ok=True)
            loaders = {name: _Lazy(path) for name, path in results[method].items()}
            with _bar(plan.instruct.nbytes(), f"{method}: write", "B") as bar:
                written = write_weights(plan.instruct, target, loaders, bar.update)
            _write_tokenizer_and_configs(plan, target)
            method_report = {
                "method": method,
                "fits": {role: fits[method] for role, fits in report["fits"].items()},
                "shards_copied": written["copied"],
                "shards_rewritten": written["rewritten"],
                "tensor_bytes": written["bytes"],
                **{k: v for k, v in report.items() if k in ("inputs", "tied", "out_rows")},
            }
            (target / REPORT).write_text(json.dumps(method_report, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(spill)
        report["chars_per_token"] = _chars_per_token(plan)
        report["output_bytes"] = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        report["seconds"] = round(time.time() - started, 2)
        if len(plan.methods) > 1:
            (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    echo(summary_text(report, options.output))
    return report


class _Lazy:
    """A replacement tensor read from its spill file only when its shard is written."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(str(self.path))["t"]


def _with_added_rows(out: torch.Tensor, plan: Plan, added_rows: dict[int, torch.Tensor]) -> torch.Tensor:
    if out.shape[0] < plan.out_rows:
        out = torch.cat([out, torch.zeros(plan.out_rows - out.shape[0], out.shape[1], dtype=out.dtype)])
    next_id = len(plan.new_tok)
    for content, instruct_id, new_id in plan.added:
        if new_id is None:
            new_id, next_id = next_id, next_id + 1
        if instruct_id in added_rows:
            out[new_id] = added_rows[instruct_id].to(out.dtype)
    return out


def output_tokenizer(plan: Plan):
    """The new tokenizer plus the instruct model's added tokens, special-token map and chat template."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(plan.adapted_tokenizer_dir))
    for content, instruct_id, new_id in plan.added:
        if new_id is None:
            src = plan.instruct_tok.added_tokens_decoder[instruct_id]
            token = AddedToken(content, single_word=src.single_word, lstrip=src.lstrip, rstrip=src.rstrip, normalized=src.normalized, special=src.special)
            tok.add_tokens([token], special_tokens=src.special)
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = getattr(plan.instruct_tok, name, None)
        if value is not None:
            setattr(tok, name, value)
    extra = getattr(plan.instruct_tok, "extra_special_tokens", None) or getattr(plan.instruct_tok, "additional_special_tokens", None)
    if extra:
        try:
            tok.add_special_tokens({"additional_special_tokens": list(extra)}, replace_extra_special_tokens=False)
        except TypeError:
            tok.add_special_tokens({"additional_special_tokens": list(extra)})
    if plan.instruct_tok.chat_template:
        tok.chat_template = plan.instruct_tok.chat_template
    if len(tok) > plan.out_rows:
        raise LEPError(f"output tokenizer has {len(tok)} tokens but the embeddings {plan.out_rows} rows")
    return tok


def _map_ids(value, plan: Plan, tok):
    """An instruct token id (or list of ids) as the same token string's id in the output tokenizer."""
    if isinstance(value, list):
        mapped = [_map_ids(v, plan, tok) for v in value]
        return [v for v in mapped if v is not None]
    if not isinstance(value, int) or value < 0:
        return value
    token = plan.instruct_tok.convert_ids_to_tokens(value)
    if token is None:
        return None
    new_id = tok.convert_tokens_to_ids(token)
    return None if new_id is None or new_id == tok.unk_token_id and token != tok.unk_token else new_id


def _write_tokenizer_and_configs(plan: Plan, target: Path) -> None:
    tok = output_tokenizer(plan)
    tok.save_pretrained(str(target))
    config = json.loads((plan.instruct_dir / "config.json").read_text(encoding="utf-8"))
    _update_config(config, plan, tok)
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    gen_path = plan.instruct_dir / "generation_config.json"
    if gen_path.is_file():
        gen = json.loads(gen_path.read_text(encoding="utf-8"))
        _update_ids(gen, plan, tok)
        (target / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")


def _update_ids(config: dict, plan: Plan, tok) -> None:
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in config and config[key] is not None:
            config[key] = _map_ids(config[key], plan, tok)
    if config.get("pad_token_id") is None and tok.pad_token_id is not None and "pad_token_id" in config:
        config["pad_token_id"] = tok.pad_token_id


def _update_config(config: dict, plan: Plan, tok) -> None:
    for holder in (config, config.get("text_config")):
        if isinstance(holder, dict):
            if "vocab_size" in holder or holder is config:
                holder["vocab_size"] = plan.out_rows
            _update_ids(holder, plan, tok)


def _chars_per_token(plan: Plan) -> dict[str, float] | None:
    path = plan.options.sample_text
    if path is None:
        return None
    if not Path(path).is_file():
        raise LEPError(f"sample text {path} does not exist")
    texts = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            if path.suffix == ".jsonl":
                line = json.loads(line).get("text", "")
            texts.append(line)
            if len(texts) >= 2000:
                break
    chars = sum(len(t) for t in texts)
    old = sum(len(x) for x in plan.instruct_tok(texts, add_special_tokens=False)["input_ids"])
    new = sum(len(x) for x in plan.new_tok(texts, add_special_tokens=False)["input_ids"])
    return {"old": chars / max(old, 1), "new": chars / max(new, 1), "gain": old / max(new, 1)}


def summary_text(report: dict[str, Any], output: Path) -> str:
    lines = [f"lep-merge: wrote {output} ({report['output_bytes'] / 1e9:.2f} GB) in {report['seconds']:.1f} s"]
    for role, fits in report["fits"].items():
        for method, values in fits.items():
            res = ", ".join(f"{k.removeprefix('residual_on_')} fit {v:.4f}" for k, v in values.items() if k.startswith("residual"))
            lines.append(f"  {method:10s} {role:6s} relative residual: {res or 'n/a'}")
    cpt = report.get("chars_per_token")
    if cpt:
        lines.append(f"  characters per token: {cpt['old']:.2f} -> {cpt['new']:.2f} ({cpt['gain']:.2f}x fewer tokens)")
    return "\n".join(lines)
