"""Bad input to `lep vocab`: one clear `error:` line, exit code 2, nothing written."""

from __future__ import annotations

import pytest
from builders import build_tiny_model

from lep_plugin.cli.lep import main


def run_failing(argv, capsys, workdir):
    capsys.readouterr()  # drop output of the set-up
    before = set(workdir.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert set(workdir.iterdir()) == before, "a failed command left files behind"
    return err[0]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("Мороз и солнце; день чудесный.\n\nЕщё ты дремлешь, друг прелестный.\n" * 50, encoding="utf-8")
    return path


def build_args(tokenizer, corpus, output, *extra):
    return ["vocab", "build", "--tokenizer", str(tokenizer), "--corpus", str(corpus), "--output", str(output), *extra]


def test_missing_corpus(mistral_tokenizer, tmp_path, capsys):
    msg = run_failing(
        build_args(
            mistral_tokenizer, tmp_path / "nope.jsonl", tmp_path / "out", "--method", "bpe", "--vocab-size", "500"
        ),
        capsys,
        tmp_path,
    )
    assert "does not exist" in msg


def test_empty_corpus(mistral_tokenizer, tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    msg = run_failing(
        build_args(
            mistral_tokenizer, tmp_path / "empty.jsonl", tmp_path / "out", "--method", "bpe", "--vocab-size", "500"
        ),
        capsys,
        tmp_path,
    )
    assert "empty" in msg


def test_non_utf8_corpus(mistral_tokenizer, tmp_path, capsys):
    (tmp_path / "cp1251.txt").write_bytes("Привет, мир".encode("cp1251"))
    msg = run_failing(
        build_args(
            mistral_tokenizer, tmp_path / "cp1251.txt", tmp_path / "out", "--method", "bpe", "--vocab-size", "500"
        ),
        capsys,
        tmp_path,
    )
    assert "not UTF-8" in msg


def test_vocab_smaller_than_kept_special_tokens(tekken_tokenizer, corpus, tmp_path, capsys):
    msg = run_failing(
        build_args(tekken_tokenizer, corpus, tmp_path / "out", "--method", "bpe", "--vocab-size", "900"),
        capsys,
        tmp_path,
    )
    assert "too small" in msg and "1000" in msg


def test_keep_larger_than_old(mistral_tokenizer, corpus, tmp_path, capsys):
    msg = run_failing(
        build_args(
            mistral_tokenizer,
            corpus,
            tmp_path / "out",
            "--method",
            "optimize",
            "--vocab-size",
            "500",
            "--keep",
            "40000",
        ),
        capsys,
        tmp_path,
    )
    assert "keep 40000 is larger" in msg


def test_unknown_tokenizer_model_type(corpus, tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece({"[UNK]": 0, "при": 1, "##вет": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path / "wordpiece")
    msg = run_failing(
        build_args(tmp_path / "wordpiece", corpus, tmp_path / "out", "--method", "bpe", "--vocab-size", "500"),
        capsys,
        tmp_path,
    )
    assert "WordPiece" in msg


def test_existing_output_needs_force(mistral_tokenizer, corpus, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    msg = run_failing(
        build_args(mistral_tokenizer, corpus, tmp_path / "out", "--method", "bpe", "--vocab-size", "500"),
        capsys,
        tmp_path,
    )
    assert "already exists" in msg and (tmp_path / "out" / "keep.txt").read_text() == "precious"
    main(build_args(mistral_tokenizer, corpus, tmp_path / "out", "--method", "bpe", "--vocab-size", "500", "--force"))
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "lep_vocab.json").is_file()


def test_keep_without_optimize_is_a_usage_error(mistral_tokenizer, corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            build_args(
                mistral_tokenizer, corpus, tmp_path / "out", "--method", "bpe", "--vocab-size", "500", "--keep", "10"
            )
        )
    assert exit_info.value.code == 2
    assert "keep is only used by method 'optimize'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_with_fewer_rows_than_tokenizer_ids(mistral_tokenizer, corpus, tmp_path, capsys):
    from transformers import AutoTokenizer

    model = build_tiny_model("mistral", mistral_tokenizer, tmp_path / "model")
    config = (model / "config.json").read_text().replace('"vocab_size": 32000', '"vocab_size": 1000')
    # a model whose embedding matrix is smaller than its tokenizer (a mismatched checkpoint)
    from safetensors.torch import load_file, save_file

    for shard in model.glob("*.safetensors"):
        state = load_file(shard)
        state = {
            k: (v[:1000].clone() if k in ("model.embed_tokens.weight", "lm_head.weight") else v)
            for k, v in state.items()
        }
        save_file(state, shard, metadata={"format": "pt"})
    (model / "config.json").write_text(config)
    assert len(AutoTokenizer.from_pretrained(model)) == 32000
    main(build_args(mistral_tokenizer, corpus, tmp_path / "newtok", "--method", "bpe", "--vocab-size", "600"))
    msg = run_failing(
        [
            "vocab",
            "convert",
            "--model",
            str(model),
            "--tokenizer",
            str(tmp_path / "newtok"),
            "--output",
            str(tmp_path / "conv"),
        ],
        capsys,
        tmp_path,
    )
    assert "1000 embedding rows" in msg
