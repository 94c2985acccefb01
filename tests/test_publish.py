"""Publishing: the model card that lep-merge and the plugin write, and `lep export gguf` through llama.cpp's
own converter (fetched once into the cache), read back with the `gguf` package: tokens in id order,
special ids and f32 tensors equal the HF model's; the byte-level LEP model keeps its original
pre-tokenizer name; bad input is one line and exit 2 with nothing written."""

from __future__ import annotations

import json
import re
import shutil
import stat
import sys
from pathlib import Path

import pytest
from _publish_helpers import (
    check_tensors,
    check_tokenizer,
    fake_eval_json,
    field,
    lep_exit_code,
    read_gguf,
)
from builders import merge_args

from lep_plugin.cli.merge import main as merge_main
from lep_plugin.publish.card import MARKER, carried_metadata, hub_id, write_card
from lep_plugin.publish.gguf import (
    ORIGINAL_TOKENIZER,
    find_original_tokenizer,
    unmerged_pieces,
)
from lep_plugin.publish.llama_cpp import find_llama_cpp

INSTRUCT_README = "---\nlicense: apache-2.0\nlanguage:\n- en\n- fr\n---\n\n# An instruct model\n"
INSTRUCT_ID = "example-org/Tiny-Mistral-Instruct"


@pytest.fixture(scope="module")
def llama_cpp():
    """llama.cpp's converter: $LLAMA_CPP_DIR, or the llama-cpp-python sdist fetched once into the cache."""
    return find_llama_cpp()


@pytest.fixture(scope="module")
def merged(tmp_path_factory, mistral_trio):
    """lep-merge (conversion) of the Mistral trio with an instruct model card and an eval JSON."""
    root = tmp_path_factory.mktemp("publish-merge")
    instruct = shutil.copytree(mistral_trio.instruct, root / "instruct")
    (instruct / "README.md").write_text(INSTRUCT_README, encoding="utf-8")
    eval_json = fake_eval_json(root / "eval.json", ["instruct", "lep"])
    out = root / "mistral-lep"
    args = [
        "--base",
        str(mistral_trio.base),
        "--instruct",
        str(instruct),
        "--adapted",
        str(mistral_trio.adapted),
        "--adapted-tokenizer",
        str(mistral_trio.new_tokenizer),
        "--output",
        str(out),
        "--eval-json",
        str(eval_json),
        "--base-model-id",
        INSTRUCT_ID,
    ]
    merge_main(args)
    return out


@pytest.fixture(scope="module")
def tekken_lep(tmp_path_factory, tiny_llama, tekken_tokenizer, ru_corpus_small):
    """tiny Llama with the 131k byte-level Tekken vocabulary after `lep vocab build --method extend` and
    `lep vocab convert` (its lep_vocab.json names the original tokenizer)."""
    from lep_plugin.vocab.build import build_vocabulary
    from lep_plugin.vocab.convert import convert_checkpoint
    from lep_plugin.vocab.options import VocabOptions

    root = tmp_path_factory.mktemp("publish-tekken")
    tok = build_vocabulary(
        tekken_tokenizer,
        [ru_corpus_small],
        VocabOptions(method="extend", vocab_size=3000, max_chars=300_000),
        root / "tok",
    )
    convert_checkpoint(tiny_llama, tok, root / "model")
    return root / "model"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ----------------------------------------------------------------------------------------------- the card


def _card(model_dir: Path):
    from huggingface_hub import ModelCard

    return ModelCard.load(model_dir / "README.md")


def _title(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("# "))


def test_merge_writes_the_model_card(merged):
    card = _card(merged)
    data = card.data
    assert data.base_model == INSTRUCT_ID and data.base_model_relation == "finetune"  # --base-model-id
    assert data.license == "apache-2.0" and data.language == ["en", "fr"]  # carried over from the instruct card
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation" and "lep" in data.tags
    text = card.text
    assert _title(text) == "# Tiny-Mistral-Instruct with an LEP vocabulary (en, fr, conversion)"
    assert "TODO" not in card.content
    report = json.loads((merged / "lep_merge.json").read_text())
    for role, fits in report["fits"].items():
        assert f"{role} {fits['residual_on_conversion']:.4f}" in text  # the fit residuals
    swap = ", ".join(f"{role} {fits['swap_residual_on_conversion']:.4f}" for role, fits in report["fits"].items())
    assert "How to read the residual" in text and f"swap (no correction, P = identity): {swap}." in text
    assert "0.0000 means base and instruct have the same embeddings" in text
    assert "`conversion`" in text and "`bpe`" in text  # propagation and vocabulary methods
    manifest = json.loads((merged / "lep_vocab.json").read_text())
    assert f"{manifest['old_vocab_size']:,} → {manifest['new_vocab_size']:,} tokens" in text
    assert re.search(
        r"characters per token on the vocabulary's training corpus .*\| "
        r"\d\.\d{3} → \d\.\d{3} \(\d\.\d\d× fewer tokens\)",
        text,
    )
    assert "## Evaluation" in text and "| lep |" in text and "| instruct |" in text  # the lep eval table
    assert (merged / ORIGINAL_TOKENIZER / "tokenizer.json").is_file()
    assert find_original_tokenizer(merged) == merged / ORIGINAL_TOKENIZER


def test_card_snippet_chats_with_the_model(merged):
    code = re.search(r"```python\n(.*?)```", _card(merged).text, re.DOTALL).group(1)
    code = re.sub(r'model_id = "[^"]*"', f"model_id = {str(merged)!r}", code).replace(
        "max_new_tokens=256", "max_new_tokens=4"
    )
    printed = []
    exec(compile(code, "card-snippet", "exec"), {"print": printed.append})  # noqa: S102 - our own card's code
    assert len(printed) == 1 and isinstance(printed[0], str)


def test_eval_json_is_checked_before_any_work(tmp_path, mistral_trio, capsys):
    bad = tmp_path / "eval.json"
    bad.write_text('{"results": [{"model": "x"}]}')
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as done:
        merge_main(
            [
                *merge_args(mistral_trio, out),
                "--eval-json",
                str(bad),
            ]
        )
    assert done.value.code == 2 and "not a `lep eval --json` file" in _one_error_line(capsys)
    assert not out.exists()
    # an eval file of an earlier version (no strict copy scores) is named as such, not as a missing key
    bad.write_text('{"results": [{"model": "x", "texts": {"ru": {"sentence_copy": 0.5}}}]}')
    with pytest.raises(SystemExit) as done:
        merge_main(["--base", str(mistral_trio.base), "--instruct", str(mistral_trio.instruct), "--adapted",
                    str(mistral_trio.adapted), "--output", str(out), "--eval-json", str(bad)])  # fmt: skip
    assert done.value.code == 2 and "older `lep eval`" in _one_error_line(capsys)
    assert not out.exists()


def test_user_readme_is_kept_unless_forced(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# my notes\n")
    assert not write_card(tmp_path, f"{MARKER}\nnew") and readme.read_text() == "# my notes\n"
    assert write_card(tmp_path, f"{MARKER}\nnew", force=True) and readme.read_text() == f"{MARKER}\nnew"
    assert write_card(tmp_path, f"{MARKER}\nagain")  # our own card is updated
    readme.write_text(
        "---\ntags:\n- generated_from_trainer\n---\n<!-- This model card has been generated automatically "
        "according to the information the Trainer had access to. -->\n"
    )
    assert write_card(tmp_path, f"{MARKER}\nover the trainer's")  # the HF Trainer's card is not the user's


def test_plugin_output_card_is_idempotent_and_keeps_user_readme(tmp_path, mistral_trio, mistral_tokenizer):
    from lep_plugin.plugin.vocabulary import VocabPlan
    from lep_plugin.publish.outputs import finish_training_output

    out = tmp_path / "outputs" / "lep-run"
    out.mkdir(parents=True)
    (out / "trainer_state.json").write_text(
        json.dumps(
            {"global_step": 60, "epoch": 1.0, "train_batch_size": 2, "log_history": [{"loss": 9.5}, {"loss": 4.25}]}
        )
    )
    plan = VocabPlan(
        old_tokenizer=mistral_tokenizer,
        new_tokenizer=mistral_trio.new_tokenizer,
        fingerprint="f",
        built=False,
        already_converted=False,
    )
    cfg = {"output_dir": str(out), "base_model": "mistralai/Mistral-7B-v0.1"}
    said = []
    assert finish_training_output(cfg, plan, echo=said.append)
    assert said == []  # a Hub id: nothing to warn about
    first = (out / "README.md").read_text()
    assert finish_training_output(cfg, plan)  # post_train runs twice
    assert (out / "README.md").read_text() == first
    card = _card(out)
    assert card.data.base_model == "mistralai/Mistral-7B-v0.1" and "lep" in card.data.tags
    assert card.data.language == ["ru"]  # the vocabulary's corpus: the base has no card
    assert _title(card.text) == "# Mistral-7B-v0.1 with an LEP vocabulary (ru)"
    assert "60 steps" in card.text and "9.500 → 4.250" in card.text
    assert f"lep-merge --base mistralai/Mistral-7B-v0.1 --instruct INSTRUCT_MODEL --adapted {out} " in card.text
    assert (out / ORIGINAL_TOKENIZER / "tokenizer.json").is_file()
    (out / "README.md").write_text("# mine\n")
    assert not finish_training_output(cfg, plan, echo=lambda _: None)
    assert (out / "README.md").read_text() == "# mine\n"


def test_hub_id_and_carried_metadata(tmp_path):
    snapshot = tmp_path / "hub" / "models--meta-llama--Meta-Llama-3-8B-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert hub_id(snapshot) == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert hub_id("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"  # not a local path: a Hub id
    plain = tmp_path / "my-instruct"
    plain.mkdir()
    (plain / "config.json").write_text(
        json.dumps({"_name_or_path": "mistralai/Mistral-7B-Instruct-v0.1", "license": "mit"})
    )
    assert hub_id(plain) == "mistralai/Mistral-7B-Instruct-v0.1"
    assert carried_metadata(plain) == {"license": "mit"}
    (plain / "README.md").write_text(INSTRUCT_README)
    assert carried_metadata(plain) == {"license": "apache-2.0", "language": ["en", "fr"]}


def test_card_without_a_hub_id_says_todo_and_takes_the_corpus_language(tmp_path, mistral_trio, capsys):
    from lep_plugin.plugin.vocabulary import VocabPlan
    from lep_plugin.publish.card import card_languages
    from lep_plugin.publish.outputs import finish_training_output

    manifest = json.loads((mistral_trio.new_tokenizer / "lep_vocab.json").read_text())
    assert card_languages(None, {}, manifest) == ["ru"]
    assert card_languages(None, {"language": "en"}, manifest) == ["en"]  # the original card's, when it has one
    assert card_languages(["kk"], {"language": ["en"]}, manifest) == ["kk"]  # --language wins
    out = tmp_path / "run"
    out.mkdir()
    plan = VocabPlan(
        old_tokenizer=mistral_trio.base,
        new_tokenizer=mistral_trio.new_tokenizer,
        fingerprint="f",
        built=False,
        already_converted=False,
    )
    said = []
    assert finish_training_output(
        {"output_dir": str(out), "base_model": str(mistral_trio.base)}, plan, echo=said.append
    )
    assert len(said) == 1 and said[0].startswith(
        f"WARNING: the Hub id of the base model {mistral_trio.base} is unknown"
    )
    card = _card(out)
    assert card.data.base_model is None and "# TODO: base_model:" in (out / "README.md").read_text().split("---")[1]
    assert f"> **TODO** before uploading: add `base_model: <Hub id of `{mistral_trio.base}`>`" in card.text
    main_args = [
        *merge_args(mistral_trio, tmp_path / "merged"),
        "--dry-run",
    ]
    merge_main(main_args)
    assert f"WARNING: the Hub id of the instruct model {mistral_trio.instruct} is unknown" in capsys.readouterr().out
    merge_main(main_args + ["--base-model-id", INSTRUCT_ID])
    assert "Hub id" not in capsys.readouterr().out


def test_outputs_are_readable_by_others(merged, tekken_lep):
    """Every file and dir that lep-merge (weights, card, lep_merge.json, tokenizer), `lep vocab build` and
    `lep vocab convert` write has the mode a plain open()/mkdir() gives (0644/0755 under umask 022), not
    tempfile's 0600/0700."""
    from lep_plugin.common.fs import current_umask

    umask = current_umask()
    for root in (merged, tekken_lep, tekken_lep.parent / "tok"):
        for path in [root, *root.rglob("*")]:
            expected = (0o777 if path.is_dir() else 0o666) & ~umask
            assert stat.S_IMODE(path.stat().st_mode) == expected, (path, oct(path.stat().st_mode))


# ------------------------------------------------------------------------------------------------- GGUF


def test_sentencepiece_model_segments_like_the_hf_tokenizer(mistral_tokenizer, mistral_trio, shared_data):
    """The tokenizer.model written for the converter: SentencePiece's algorithm (llama.cpp's) on its pieces
    and merge-order scores gives the HF tokenizer's ids, for the original SentencePiece vocabulary and for an
    LEP vocabulary built from it (whose merges `lep vocab build` completes: no piece is left unmerged)."""
    import sentencepiece
    from transformers import AutoTokenizer

    from lep_plugin.publish.sentencepiece import sentencepiece_model

    texts = [
        json.loads(line)["text"]
        for lang in ("ru", "en")
        for line in (shared_data / lang / "heldout.jsonl").read_text().splitlines()[:60]
    ]
    for tok_dir in (mistral_tokenizer, mistral_trio.new_tokenizer):
        spec = json.loads((tok_dir / "tokenizer.json").read_text())
        tok = AutoTokenizer.from_pretrained(str(tok_dir))
        sp = sentencepiece.SentencePieceProcessor(model_proto=sentencepiece_model(spec, "<s>", "</s>"))
        assert [sp.encode(t) for t in texts] == [tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok_dir
        assert unmerged_pieces(spec) == 0


def test_unigram_sentencepiece_vocabulary_is_refused_in_one_line():
    from lep_plugin.errors import LEPError
    from lep_plugin.publish.sentencepiece import sentencepiece_model

    with pytest.raises(LEPError, match="Unigram vocabulary cannot run in llama.cpp"):
        sentencepiece_model({"model": {"type": "Unigram", "vocab": [["<unk>", 0.0]]}})


@pytest.mark.e2e
def test_export_sentencepiece_lep_model(merged, tmp_path, llama_cpp, capsys):
    out = tmp_path / "mistral-lep.gguf"
    assert lep_exit_code(["export", "gguf", str(merged), "--output", str(out), "--outtype", "f32"]) == 0
    printed = capsys.readouterr().out
    assert "tokenizer.model written from tokenizer.json" in printed and f"wrote {out}" in printed
    reader = read_gguf(out)
    meta = check_tokenizer(reader, merged)
    assert meta["model"] == "llama" and meta["pre"] == "default"
    assert check_tensors(reader, merged) == 21
    assert not list(merged.glob("tokenizer.model"))  # the model dir is not changed
    assert lep_exit_code(["export", "gguf", str(merged), "--output", str(out)]) == 2  # exists, no --force
    assert "already exists" in _one_error_line(capsys)


@pytest.mark.e2e
def test_export_byte_level_lep_model_keeps_the_original_pre_tokenizer(
    tekken_lep, tekken_tokenizer, tmp_path, llama_cpp, capsys
):
    out = tmp_path / "tekken-lep.gguf"
    assert lep_exit_code(["export", "gguf", str(tekken_lep), "--output", str(out), "--outtype", "f32"]) == 0
    assert "pre-tokenizer name taken from the original tokenizer" in capsys.readouterr().out
    reader = read_gguf(out)
    meta = check_tokenizer(reader, tekken_lep)
    assert meta["model"] == "gpt2" and meta["pre"] == "tekken"  # what the converter says of the original Tekken
    assert meta["tokens"] > 131_072
    assert check_tensors(reader, tekken_lep) == 21


@pytest.mark.e2e
def test_export_plain_model_with_a_note(tiny_mistral, tmp_path, llama_cpp, capsys):
    out = tmp_path / "plain.gguf"
    assert lep_exit_code(["export", "gguf", str(tiny_mistral), "--output", str(out), "--outtype", "q8_0"]) == 0
    assert "is not an LEP output" in capsys.readouterr().out
    assert field(read_gguf(out), "tokenizer.ggml.tokens")[:3] == ["<unk>", "<s>", "</s>"]


def test_byte_level_lep_model_without_original_tokenizer(tekken_lep, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    for item in tekken_lep.iterdir():
        (model / item.name).symlink_to(item)
    manifest = json.loads((tekken_lep / "lep_vocab.json").read_text())
    (model / "lep_vocab.json").unlink()
    (model / "lep_vocab.json").write_text(json.dumps(manifest | {"old_tokenizer": str(tmp_path / "gone")}))
    out = tmp_path / "x.gguf"
    assert lep_exit_code(["export", "gguf", str(model), "--output", str(out), "--llama-cpp", str(tmp_path)]) == 2
    assert "original tokenizer is unknown" in _one_error_line(capsys) and not out.exists()


def test_converter_not_found_or_not_fetched(tiny_mistral, tmp_path, monkeypatch, capsys):
    out = tmp_path / "x.gguf"
    assert (
        lep_exit_code(
            ["export", "gguf", str(tiny_mistral), "--output", str(out), "--llama-cpp", str(tmp_path / "none")]
        )
        == 2
    )
    assert "is not a llama.cpp checkout" in _one_error_line(capsys)
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("LEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # PyPI unreachable
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    assert lep_exit_code(["export", "gguf", str(tiny_mistral), "--output", str(out)]) == 2
    assert "cannot fetch llama.cpp's converter" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no output, no temp file


def test_unknown_architecture_and_bad_model_dirs(tmp_path, llama_cpp, capsys):
    model = tmp_path / "strange"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["StrangeForCausalLM"], "model_type": "strange"}))
    out = tmp_path / "strange.gguf"
    assert lep_exit_code(["export", "gguf", str(model), "--output", str(out), "--llama-cpp", str(llama_cpp.root)]) == 2
    assert "does not know the architecture StrangeForCausalLM" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["strange"]  # nothing half-written
    assert lep_exit_code(["export", "gguf", str(tmp_path / "missing"), "--output", str(out)]) == 2
    assert "is not a directory" in _one_error_line(capsys)
    (model / "config.json").unlink()
    assert lep_exit_code(["export", "gguf", str(model), "--output", str(out)]) == 2
    assert "has no config.json" in _one_error_line(capsys)
    assert lep_exit_code(["export", "gguf", str(model), "--output", str(model / "x.gguf")]) == 2
    assert "overlaps" in _one_error_line(capsys)


def test_export_help_lists_outtypes():
    from click.testing import CliRunner

    from lep_plugin.cli.lep import cli

    result = CliRunner().invoke(cli, ["export", "gguf", "--help"])
    assert result.exit_code == 0 and "f32|f16|bf16|q8_0" in result.output and "--llama-cpp" in result.output


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_card_says_which_models_copy_at_or_below_chance(tmp_path):
    """A model whose strict copy score is not above its own chance level is named under the card's table."""
    from lep_plugin.evaluation.report import at_or_below_chance
    from lep_plugin.publish.card import _eval_section

    records = json.loads(fake_eval_json(tmp_path / "eval.json", ["instruct", "lep"]).read_text())["results"]
    for k, record in enumerate(records):  # ru: instruct 0.5 vs chance 0.55 (below), lep 0.6 vs 0.55 (above)
        record["texts"]["ru"]["chance"] = {"sentence_strict": 0.55}
        record["texts"]["en"]["chance"] = {"sentence_strict": 0.1 + 0.2 * k}  # en 0.25: lep at 0.3 is below
    assert at_or_below_chance(records) == ["instruct on ru (0.500 ≤ chance 0.550)", "lep on en (0.250 ≤ chance 0.300)"]
    section = _eval_section(records)
    assert "**At or below chance**" in section and "instruct on ru" in section and "lep on ru" not in section
    for record in records:
        record["texts"]["en"]["chance"] = {"sentence_strict": 0.1}
        record["texts"]["ru"]["chance"] = {"sentence_strict": 0.1}
    assert at_or_below_chance(records) == [] and "At or below chance" not in _eval_section(records)
