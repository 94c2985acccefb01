"""lep-merge end to end on tiny models: every method against the dense float64 reference, the chat-ready
output, byte-exact shard copies, YAML configs, the Axolotl entry point, --dry-run and --force."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from builders import CHAT_MARKER, generate_from_chat, merge_args

from lep_plugin.checkpoints.safetensors import SafetensorsCheckpoint
from lep_plugin.cli.merge import main
from lep_plugin.common.tokenizers import chars_per_token_change, load_tokenizer
from lep_plugin.math.operator import apply_operator, trained_rows
from lep_plugin.math.propagation import dense_reference, shared_token_ids
from lep_plugin.publish import card
from lep_plugin.vocab.operator import vocabulary_operator

VENV_BIN = Path(sys.executable).parent


def _matrices(model_dir: Path) -> dict[str, torch.Tensor]:
    ck = SafetensorsCheckpoint(model_dir)
    return {n: ck.get(n) for n in ("model.embed_tokens.weight", "lm_head.weight") if n in ck.names()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _expected(trio, method: str, name: str) -> torch.Tensor:
    """The propagated matrix computed the reference way: full matrices, dense float64 lstsq."""
    base, instruct, adapted = (_matrices(p)[name].double() for p in (trio.base, trio.instruct, trio.adapted))
    old_tok, new_tok = load_tokenizer(trio.base), load_tokenizer(trio.new_tokenizer)
    v_old = len(old_tok)
    trained = trained_rows(base[:v_old])
    if method == "swap":
        return adapted
    if method == "overlap":
        _, old_ids = shared_token_ids(new_tok.get_vocab(), old_tok.get_vocab())
        old_ids = old_ids[trained[old_ids]]
        p = dense_reference(base[old_ids], instruct[old_ids])
    else:
        op = vocabulary_operator(new_tok, old_tok, "mean", adapted.shape[0], v_old)
        p = dense_reference(apply_operator(op, base[:v_old], trained), apply_operator(op, instruct[:v_old], trained))
    return adapted @ p


def _check_output(out: Path, trio, method: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = _matrices(out)
    instruct = _matrices(trio.instruct)
    instruct_tok = load_tokenizer(trio.instruct)
    tok = AutoTokenizer.from_pretrained(str(out))
    for name, matrix in result.items():
        expected = _expected(trio, method, name).float()
        rows = expected.shape[0]
        assert matrix.shape[0] == len(tok) == rows + 1  # the chat marker was appended
        added = {instruct_tok.convert_ids_to_tokens(i) for i in instruct_tok.added_tokens_decoder}
        keep = torch.ones(rows, dtype=torch.bool)
        for content in added:
            new_id, old_id = tok.convert_tokens_to_ids(content), instruct_tok.convert_tokens_to_ids(content)
            assert torch.equal(matrix[new_id], instruct[name][old_id]), content  # chat markers keep instruct rows
            if new_id < rows:
                keep[new_id] = False
        assert torch.allclose(matrix[:rows][keep], expected[keep], rtol=1e-5, atol=1e-6)
    # configs agree with the tokenizer
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(tok)
    assert config["bos_token_id"] == tok.bos_token_id and config["eos_token_id"] == tok.eos_token_id
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.eos_token_id, tok.convert_tokens_to_ids(CHAT_MARKER)]
    assert tok.chat_template == instruct_tok.chat_template
    # chat-ready: loads with the Auto classes and generates from the chat template
    model = AutoModelForCausalLM.from_pretrained(str(out))
    ids, generated = generate_from_chat(model, tok, "Привет, как дела?", max_new_tokens=5)
    assert generated.shape[1] > ids.shape[1]


def test_conversion_matches_dense_reference_and_chats(mistral_trio, tmp_path, capsys):
    out = tmp_path / "out"
    main(
        [
            *merge_args(mistral_trio, out),
            "--block-rows",
            "1000",
        ]
    )
    _check_output(out, mistral_trio, "conversion")
    # shards without embeddings are byte-exact copies; the index lists every tensor
    report = json.loads((out / "lep_merge.json").read_text())
    assert report["shards_copied"] and report["shards_rewritten"]
    for shard in report["shards_copied"]:
        assert _sha(out / shard) == _sha(mistral_trio.instruct / shard)
    source = json.loads((mistral_trio.instruct / "model.safetensors.index.json").read_text())["weight_map"]
    written = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert written == source
    captured = capsys.readouterr().out
    assert "conversion" in captured and "relative residual" in captured
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_all_methods_with_residual_comparison(mistral_trio, ru_heldout, tmp_path, capsys, monkeypatch):
    out = tmp_path / "all"
    capsys.readouterr()
    measured = []  # characters per token: one measurement per merge, for the summary and every card

    def counted(*args):
        measured.append(chars_per_token_change(*args))
        return measured[-1]

    monkeypatch.setattr(card, "chars_per_token_change", counted)
    main(
        [
            *merge_args(mistral_trio, out),
            "--method",
            "all",
            "--sample-text",
            str(ru_heldout),
        ]
    )
    report = json.loads((out / "lep_merge.json").read_text())
    # the summary tells the methods apart (6 significant digits) and recommends one from the fits
    summary = capsys.readouterr().out
    conversion = report["fits"]["input"]["conversion"]["residual_on_conversion"]
    assert f"conversion fit {conversion:.6g}" in summary and len(f"{conversion:.6g}") > 6
    scores = {
        m: sum(report["fits"][r][m]["residual_on_conversion"] for r in ("input", "output")) for m in report["methods"]
    }
    best = min(scores, key=scores.get)
    assert report["recommendation"].startswith(f"recommendation: {best} – the lowest residual on the conversion system")
    assert report["recommendation"] in summary
    for method in ("swap", "overlap", "conversion"):
        _check_output(out / method, mistral_trio, method)
    assert len(measured) == 1
    cpt = measured[0]
    assert report["chars_per_token"] == cpt and f"characters per token: {cpt['old']:.2f} -> {cpt['new']:.2f}" in summary
    for method in ("swap", "overlap", "conversion"):
        row = (
            f"| characters per token on `{ru_heldout.name}` | "
            f"{cpt['old']:.3f} → {cpt['new']:.3f} ({cpt['gain']:.2f}× fewer"
        )
        assert row in (out / method / "README.md").read_text(encoding="utf-8")
    for role in ("input", "output"):
        fits = report["fits"][role]
        # each fitted P is the best on its own system
        assert fits["conversion"]["residual_on_conversion"] <= fits["swap"]["residual_on_conversion"]
        assert fits["conversion"]["residual_on_conversion"] <= fits["overlap"]["residual_on_conversion"] + 1e-12
        assert fits["overlap"]["residual_on_overlap"] <= fits["conversion"]["residual_on_overlap"] + 1e-12


def test_tied_model_yaml_config_and_force(tied_trio, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "tied"
    config = tmp_path / "merge.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "base_model": "ignored by lep-merge",
                "lep_merge": {
                    "base": str(tied_trio.base),
                    "instruct": str(tied_trio.instruct),
                    "adapted": str(tied_trio.adapted),
                    "output": str(out),
                    "method": "overlap",
                },
            }
        )
    )
    main([str(config)])
    _check_output(out, tied_trio, "overlap")
    assert set(_matrices(out)) == {"model.embed_tokens.weight"}
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    # an existing output is refused without --force (nothing touched), replaced with it
    before = _sha(out / "config.json")
    with pytest.raises(SystemExit) as err:
        main([str(config), "--method", "swap"])
    assert err.value.code == 2 and _sha(out / "config.json") == before
    main([str(config), "--method", "swap", "--force"])
    assert json.loads((out / "lep_merge.json").read_text())["method"] == "swap"


def test_dry_run_writes_nothing(mistral_trio, tmp_path, capsys):
    out = tmp_path / "dry"
    main(
        [
            *merge_args(mistral_trio, out),
            "--dry-run",
        ]
    )
    text = capsys.readouterr().out
    assert "model.embed_tokens.weight" in text and "lm_head.weight" in text and "memory" in text
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_axolotl_cli_entry_point(mistral_trio, tmp_path):
    """`axolotl lep-merge CONFIG.yml` finds the command through the installed entry point."""
    out = tmp_path / "via-axolotl"
    config = tmp_path / "merge.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "base": str(mistral_trio.base),
                "instruct": str(mistral_trio.instruct),
                "adapted": str(mistral_trio.adapted),
                "output": str(out),
                "method": "swap",
            }
        )
    )
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "AXOLOTL_DO_NOT_TRACK": "1",
    }
    proc = subprocess.run(
        [str(VENV_BIN / "axolotl"), "lep-merge", str(config)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_output(out, mistral_trio, "swap")
    # and its errors follow the one-line convention
    proc = subprocess.run(
        [str(VENV_BIN / "axolotl"), "lep-merge", str(config)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 2 and "error: output" in proc.stderr and "already exists" in proc.stderr


def test_axolotl_output_dir_uses_its_last_checkpoint(mistral_trio, tmp_path, capsys):
    """An Axolotl/Trainer output dir without final weights: its highest checkpoint-N is read."""
    import shutil

    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(mistral_trio.adapted, run / "checkpoint-10")
    shutil.copytree(mistral_trio.adapted, run / "checkpoint-9")
    stale = run / "checkpoint-9" / "model.safetensors"  # an older checkpoint: different embeddings
    state = load_file(str(stale))
    save_file({k: torch.zeros_like(v) for k, v in state.items()}, str(stale), metadata={"format": "pt"})
    for f in (mistral_trio.adapted).iterdir():
        if f.suffix in (".json", ".jinja"):
            shutil.copy(f, run / f.name)  # the run dir keeps the tokenizer and config
    out = tmp_path / "out"
    main(
        [
            *merge_args(mistral_trio, out, adapted=run),
            "--method",
            "swap",
        ]
    )
    assert "checkpoint-10" in capsys.readouterr().out
    _check_output(out, mistral_trio, "swap")
