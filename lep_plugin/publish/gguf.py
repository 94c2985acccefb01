"""``lep export gguf``: an HF model dir (an LEP output or any other) as one GGUF file for llama.cpp, Ollama
and LM Studio, written by llama.cpp's own converter (:mod:`lep_plugin.publish.convert`).

What an LEP model needs beyond the converter, provided in a staging dir of links to the model's files
(the model dir itself is never changed):

* byte-level vocabularies (Llama-3, Qwen, Tekken): the converter names the pre-tokenizer by a hash of the
  token ids of a test text, which an extended vocabulary changes. LEP keeps the original pre-tokenizer, so
  its name is found by the converter's own identification applied to the *original* tokenizer (lep-merge
  saves it as ``original_tokenizer/``; the plugin's ``lep_vocab.json`` names it; or ``--original-tokenizer``);
* SentencePiece-style vocabularies (Mistral v1, Llama-2, Phi-3, Gemma): the converter reads pieces and
  scores from a ``tokenizer.model``, which a fast-tokenizer dir lacks; one is written from
  ``tokenizer.json`` (:mod:`lep_plugin.publish.sentencepiece`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lep_plugin.common.fs import (
    atomic_file,
    check_no_overlap,
    check_output_file,
    read_json,
)
from lep_plugin.common.tokenizers import MANIFEST, read_manifest, tokenizer_style
from lep_plugin.errors import LEPError
from lep_plugin.publish.checks import OutType
from lep_plugin.publish.llama_cpp import find_llama_cpp
from lep_plugin.publish.sentencepiece import sentencepiece_model

ORIGINAL_TOKENIZER = "original_tokenizer"  # the tokenizer before LEP, saved into LEP outputs
MERGE_REPORT = "lep_merge.json"
SP_MODEL = "tokenizer.model"
# the parts of tokenizer.json that decide how text is split before the vocabulary is applied
PIPELINE_KEYS = ("normalizer", "pre_tokenizer")


class GGUFOptions(BaseModel):
    """Settings of ``lep export gguf`` (besides the model dir)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output: Path = Field(description="GGUF file to write (atomically)")
    outtype: OutType = Field(
        default="f16",
        description="tensor type: f32, f16, bf16 or q8_0 (other quantisations: llama.cpp's llama-quantize)",
    )
    llama_cpp: Path | None = Field(
        default=None,
        description=(
            "llama.cpp checkout whose converter to run (default: $LLAMA_CPP_DIR, else the one in the "
            "llama-cpp-python sdist, fetched once into ~/.cache/lep-plugin)"
        ),
    )
    original_tokenizer: Path | None = Field(
        default=None,
        description=(
            "tokenizer of the model before LEP (default: MODEL_DIR/original_tokenizer, "
            "or the old tokenizer its lep_vocab.json names)"
        ),
    )
    force: bool = Field(default=False, description="replace an existing output file")


@dataclass
class ExportPlan:
    """What the export adds to the converter's view of the model dir, and why."""

    model_dir: Path
    lep: bool
    style: str | None
    original_tokenizer: Path | None = None
    sentencepiece_model: bytes | None = None
    notes: list[str] = field(default_factory=list)


def _is_lep(model_dir: Path) -> bool:
    return (model_dir / MANIFEST).is_file() or (model_dir / MERGE_REPORT).is_file()


def _pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: spec.get(k) for k in PIPELINE_KEYS}


def _tokenizer_spec(directory: Path) -> dict[str, Any] | None:
    path = directory / "tokenizer.json"
    return read_json(path, "tokenizer") if path.is_file() else None


def find_original_tokenizer(model_dir: Path, given: Path | None = None) -> Path | None:
    """The tokenizer the model had before LEP: ``given``, the copy saved in the model dir, or the old
    tokenizer named by its ``lep_vocab.json`` when that still exists."""
    candidates = [given] if given is not None else []
    candidates.append(model_dir / ORIGINAL_TOKENIZER)
    manifest = read_manifest(model_dir)
    if manifest and manifest.get("old_tokenizer"):
        candidates.append(Path(manifest["old_tokenizer"]))
    for candidate in candidates:
        if candidate is not None and (Path(candidate) / "tokenizer.json").is_file():
            return Path(candidate)
    if given is not None:
        raise LEPError(f"original tokenizer {given} has no tokenizer.json")
    return None


def _existing_sentencepiece_matches(model_dir: Path, spec: dict[str, Any]) -> bool:
    """Whether the dir's own ``tokenizer.model`` holds exactly the pieces of ``tokenizer.json`` in id order."""
    path = model_dir / SP_MODEL
    if not path.is_file():
        return False
    try:
        from sentencepiece import SentencePieceProcessor

        sp = SentencePieceProcessor(model_file=str(path))
    except Exception:  # a broken or foreign file: replaced
        return False
    vocab = {i: t for t, i in spec["model"]["vocab"].items()} if spec["model"]["type"] == "BPE" else {}
    vocab |= {t["id"]: t["content"] for t in spec.get("added_tokens", [])}
    return sp.get_piece_size() == len(vocab) and all(sp.id_to_piece(i) == vocab.get(i) for i in range(len(vocab)))


def unmerged_pieces(spec: dict[str, Any]) -> int:
    """Pieces that llama.cpp's SentencePiece algorithm can build from a pair of pieces that the HF tokenizer
    never merges (its merges list lacks the pair). Zero for a vocabulary converted from SentencePiece (HF
    lists every such pair); otherwise llama.cpp may segment some words differently from the HF tokenizer."""
    vocab = spec["model"]["vocab"]
    merges = {tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"].get("merges", [])}
    return sum(
        any(
            token[:k] in vocab and token[k:] in vocab and (token[:k], token[k:]) not in merges
            for k in range(1, len(token))
        )
        for token in vocab
    )


def plan_export(model_dir: Path, original: Path | None = None) -> ExportPlan:
    """Decide what the converter gets besides the model's own files (reads tokenizer files only)."""

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LEPError(f"model dir {model_dir} is not a directory")
    if not (model_dir / "config.json").is_file():
        raise LEPError(f"{model_dir} has no config.json (an HF model dir is required)")
    lep = _is_lep(model_dir)
    spec = _tokenizer_spec(model_dir)
    try:
        style = tokenizer_style(spec) if spec is not None else None
    except LEPError:
        style = None
    plan = ExportPlan(model_dir, lep, style)
    if not lep:
        plan.notes.append(
            f"{model_dir} is not an LEP output (no {MANIFEST} or {MERGE_REPORT}): "
            "converted by llama.cpp's converter as it is"
        )
    if style == "sentencepiece":
        _plan_sentencepiece(plan, spec, sentencepiece_model)
    if style == "byte_level" and lep:
        found = find_original_tokenizer(model_dir, original)
        if found is None:
            raise LEPError(
                f"{model_dir} is an LEP model with a byte-level vocabulary, but its original tokenizer is unknown "
                f"(no {ORIGINAL_TOKENIZER}/ in it): pass --original-tokenizer DIR, the tokenizer before LEP"
            )
        original_spec = _tokenizer_spec(found)
        if _pipeline(original_spec) != _pipeline(spec):
            raise LEPError(
                f"the pre-tokenizer of {model_dir} differs from that of its original tokenizer {found}: "
                "the original's llama.cpp identity cannot be carried over"
            )
        plan.original_tokenizer = found
        plan.notes.append(
            f"byte-level vocabulary: llama.cpp's pre-tokenizer name taken from the original tokenizer {found}"
        )
    return plan


def _plan_sentencepiece(plan: ExportPlan, spec: dict[str, Any], build) -> None:
    """Give the converter a ``tokenizer.model`` with the pieces of ``tokenizer.json``, unless the dir's own
    holds exactly those (or it is not an LEP output and has its own: converted as it is)."""
    model_dir = plan.model_dir
    if _existing_sentencepiece_matches(model_dir, spec) or (not plan.lep and (model_dir / SP_MODEL).is_file()):
        return
    config_path = model_dir / "tokenizer_config.json"
    config = read_json(config_path, "tokenizer config") if config_path.is_file() else {}
    try:
        plan.sentencepiece_model = build(
            spec, _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
        )
    except LEPError as err:
        if plan.lep:
            raise
        plan.notes.append(f"no {SP_MODEL} could be written ({err}); the converter reads tokenizer.json")
        return
    plan.notes.append(
        f"SentencePiece-style vocabulary: {SP_MODEL} written from tokenizer.json for the converter "
        "(pieces scored by merge order)"
    )
    loose = unmerged_pieces(spec)
    if loose:
        plan.notes.append(
            f"{loose} pieces can be built by llama.cpp from a pair the HF tokenizer never merges: llama.cpp may "
            "segment some words differently (same text, other tokens)"
        )


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _stage(plan: ExportPlan, staging: Path) -> None:
    """Links to the model's files (no subdirs), plus the files the plan adds."""
    for item in plan.model_dir.iterdir():
        if item.is_file() and not (item.name == SP_MODEL and plan.sentencepiece_model is not None):
            os.symlink(item.resolve(), staging / item.name)
    if plan.sentencepiece_model is not None:
        (staging / SP_MODEL).write_bytes(plan.sentencepiece_model)


_NOT_SUPPORTED = re.compile(r"Model (\S+) is not supported")
_CHECK_HASH = re.compile(r"chkhsh:\s*([0-9a-f]{64})")
# llama.cpp names a byte-level pre-tokenizer by a hash of the token ids a tokenizer gives a test text,
# listed for published models only: a tokenizer outside that list cannot get a name, whatever LEP does
_UNLISTED = (
    "llama.cpp knows a byte-level pre-tokenizer only by the hash of a published model's tokenizer, so one "
    "outside its list (a tokenizer you built, or a `lep tiny` layout) cannot be exported; export a model "
    "on a published tokenizer, or add the hash{hash} to get_vocab_base_pre() in a llama.cpp checkout "
    "and pass --llama-cpp DIR"
)


def _unknown_pre_tokenizer(plan: ExportPlan, text: str) -> LEPError:
    """The converter found no name for the pre-tokenizer: say whose tokenizer it failed on and what helps."""
    found = _CHECK_HASH.search(text)
    unlisted = _UNLISTED.format(hash=f" {found.group(1)}" if found else "")
    if plan.original_tokenizer is not None:
        return LEPError(
            f"llama.cpp's converter does not know the pre-tokenizer of {plan.model_dir}'s original tokenizer "
            f"{plan.original_tokenizer} either: {unlisted}"
        )
    if not plan.lep:
        return LEPError(
            f"llama.cpp's converter does not know the pre-tokenizer of {plan.model_dir} (not an LEP output: "
            f"no vocabulary change is the cause): {unlisted}"
        )
    return LEPError(
        f"llama.cpp's converter does not recognise the pre-tokenizer of {plan.model_dir}; pass "
        "--original-tokenizer DIR (the tokenizer before LEP)"
    )


def _converter_error(lines: list[str], plan: ExportPlan) -> LEPError:
    text = "\n".join(lines)
    if match := _NOT_SUPPORTED.search(text):
        return LEPError(f"llama.cpp's converter does not know the architecture {match.group(1)} of {plan.model_dir}")
    if "pre-tokenizer was not recognized" in text:
        return _unknown_pre_tokenizer(plan, text)
    last = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
    return LEPError(f"llama.cpp's converter failed on {plan.model_dir}: {last}")


def _run_converter(command: list[str], log: Callable[[str], None] | None) -> tuple[int, list[str]]:
    tail: deque[str] = deque(maxlen=200)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as child:
        try:
            for line in child.stdout:
                tail.append(line.rstrip("\n"))
                if log is not None:
                    log(line.rstrip("\n"))
        except BaseException:
            child.kill()
            raise
    return child.returncode, list(tail)


def export_gguf(
    model_dir: Path,
    options: GGUFOptions,
    echo: Callable[[str], None] = print,
    log: Callable[[str], None] | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Convert ``model_dir`` to ``options.output``; nothing is left behind on failure. Returns a summary
    read back from the written file. ``model_name``: the name the GGUF records (default: the dir's name;
    ``lep.propagate`` converts a model still in its temporary dir)."""
    model_dir = Path(model_dir)
    check_output_file(options.output, options.force)
    check_no_overlap(options.output, {"model": model_dir})
    plan = plan_export(model_dir, options.original_tokenizer)
    llama = find_llama_cpp(options.llama_cpp)
    for note in plan.notes:
        echo(f"note: {note}")
    echo(f"converting {model_dir} to {options.outtype} with llama.cpp's converter ({llama.origin}) ...")
    with tempfile.TemporaryDirectory(prefix="lep-gguf-") as staging, atomic_file(options.output, options.force) as tmp:
        staged = Path(staging) / (model_name or model_dir.name)
        staged.mkdir()
        _stage(plan, staged)
        original = str(plan.original_tokenizer) if plan.original_tokenizer is not None else "-"
        command = [
            sys.executable,
            "-m",
            "lep_plugin.publish.convert",
            str(llama.root),
            original,
            "--",
            str(staged),
            "--outfile",
            str(tmp),
            "--outtype",
            options.outtype,
        ]
        code, lines = _run_converter(command, log)
        if code != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            raise _converter_error(lines, plan)
        summary = describe_gguf(tmp)
    summary |= {"output": str(options.output), "converter": llama.origin, "notes": plan.notes}
    echo(
        f"wrote {options.output} ({summary['bytes'] / 1e6:.1f} MB, {options.outtype}): {summary['architecture']}, "
        f"{summary['tensors']} tensors, {summary['tokens']} tokens, tokenizer {summary['tokenizer']}"
        + (f" (pre-tokenizer {summary['pre_tokenizer']})" if summary.get("pre_tokenizer") else "")
    )
    return summary


def _field(reader, key: str):
    found = reader.get_field(key)
    return None if found is None else found.contents()


def describe_gguf(path: Path) -> dict[str, Any]:
    """Architecture, tokenizer and sizes of a GGUF file, read with the ``gguf`` package."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    return {
        "architecture": _field(reader, "general.architecture"),
        "tokenizer": _field(reader, "tokenizer.ggml.model"),
        "pre_tokenizer": _field(reader, "tokenizer.ggml.pre"),
        "tokens": len(tokens),
        "tensors": len(reader.tensors),
        "bytes": Path(path).stat().st_size,
    }
