"""A user's first hour: what went wrong silently or read badly, each with the behaviour that replaced it.

A YAML without the plugin line (Axolotl drops `lep:` and trains everything) is caught by `lep check` and
refused by lep-merge; errors are one line in the words of where the setting came from, with "did you
mean"; the settings reference is the models'; third-party start-up noise is gone; a vocabulary that adds
almost nothing is flagged.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _plugin_helpers import (
    REPO,
    VENV_BIN,
    tiny_config,
    train_env,
    training_data,
    write_config,
)
from builders import copy_model, merge_args
from safetensors.torch import load_file, save_file

from lep_plugin.cli.lep import main as lep
from lep_plugin.cli.merge import main as lep_merge
from lep_plugin.common.fs import write_json
from lep_plugin.common.tokenizers import read_manifest
from lep_plugin.errors import LEPError

README = REPO / "README.md"


def _one_error_line(capsys, call, *args) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        call(list(args))
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _usage_error(capsys, *args) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        lep(list(args))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------------------ the silent wrong run


@pytest.fixture(scope="module")
def run_without_plugin(tmp_path_factory, tiny_mistral, shared_data):
    """What a user gets from a YAML with the `lep:` block but no `plugins:` line: Axolotl trains every
    weight with the old vocabulary and exits 0 (its behaviour: keys no loaded plugin declares are dropped)."""
    work = tmp_path_factory.mktemp("no-plugin")
    cfg = tiny_config(
        work, tiny_mistral, training_data(work / "data", docs=20, vocab_docs=50), max_steps=2, save_steps=2
    )
    cfg.pop("plugins")
    config = write_config(work / "no-plugin.yml", cfg)
    proc = subprocess.run(
        [str(VENV_BIN / "axolotl"), "train", str(config)],
        cwd=work,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "[lep rank" not in proc.stdout + proc.stderr  # the plugin never ran
    return config, Path(cfg["output_dir"])


@pytest.mark.e2e
def test_lep_check_and_lep_merge_catch_a_yaml_without_the_plugin(run_without_plugin, mistral_trio, tmp_path, capsys):
    config, output = run_without_plugin
    line = _one_error_line(capsys, lep, "check", str(config))
    assert "does not load the plugin: add `plugins: [lep_plugin.LEPPlugin]`" in line
    line = _one_error_line(
        capsys,
        lep_merge,
        *merge_args(mistral_trio, tmp_path / "merged", adapted=output),
    )
    assert "has the base model's vocabulary (32,000 tokens)" in line and "plugins: [lep_plugin.LEPPlugin]" in line
    assert not (tmp_path / "merged").exists()
    # told otherwise, it merges
    lep_merge(
        [
            *merge_args(mistral_trio, tmp_path / "merged", adapted=output),
            "--no-check-adapted",
            "--method",
            "swap",
        ]
    )
    assert (tmp_path / "merged" / "config.json").is_file()


def _with_changed_layer(adapted: Path, out: Path) -> Path:
    copy_model(adapted, out)
    shard = next(p for p in sorted(out.glob("*.safetensors")) if any("layers.0" in k for k in load_file(str(p))))
    tensors = load_file(str(shard))
    name = next(k for k in tensors if "layers.0" in k)
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, str(shard), metadata={"format": "pt"})
    return out


def test_lep_merge_refuses_an_adapted_model_whose_layers_were_trained(mistral_trio, tmp_path, capsys):
    adapted = _with_changed_layer(mistral_trio.adapted, tmp_path / "adapted")
    line = _one_error_line(
        capsys,
        lep_merge,
        *merge_args(mistral_trio, tmp_path / "out", adapted=adapted),
    )
    assert "transformer tensor model.layers.0." in line and "differs from the base model's" in line
    # a plugin record without the base's fingerprint (an earlier version's) does not skip the comparison:
    # only a fingerprint of the base the run started from does (tests/test_merge_bad_input.py)
    write_json(
        adapted / "lep_vocab.json",
        {**(read_manifest(mistral_trio.new_tokenizer) or {}), "plugin": {"train": "embeddings"}},
    )
    line = _one_error_line(
        capsys,
        lep_merge,
        *merge_args(mistral_trio, tmp_path / "out", adapted=adapted),
    )
    assert "transformer tensor model.layers.0." in line and "did not start from this base model" in line
    assert not (tmp_path / "out").exists()


def test_lep_check_reports_what_a_good_yaml_will_do(tmp_path, tiny_mistral, shared_data, capsys):
    cfg = tiny_config(tmp_path, tiny_mistral, training_data(tmp_path / "data", docs=10, vocab_docs=20))
    config = write_config(tmp_path / "good.yml", cfg)
    capsys.readouterr()
    lep(["check", str(config)])
    out = capsys.readouterr().out
    assert f"old tokenizer: {tiny_mistral}" in out
    assert "vocabulary: extend vocabulary (vocab_size 2,000) from 1 corpus file(s)" in out
    assert (
        f"vocabulary dir: {tmp_path / 'prepared'}/lep-vocab-" in out
        and "(will be built at the start of the run)" in out
    )
    assert "trains: the input embedding and lm_head matrices; every other weight frozen" in out
    assert out.strip().endswith("is ready for `axolotl train`")
    assert not (tmp_path / "prepared").exists()  # a check writes nothing
    cfg["lep"]["vocab"]["corpus"] = [str(tmp_path / "missing-*.jsonl")]
    line = _one_error_line(capsys, lep, "check", str(write_config(tmp_path / "bad.yml", cfg)))
    assert "matches no file" in line


# --------------------------------------------------------------------------------- errors as one line


def test_typo_in_the_lep_block_says_what_was_meant():
    from lep_plugin.plugin.args import parse_lep_block

    with pytest.raises(
        LEPError, match=r"lep\.vocab\.vocab_sise: unknown key \(a typo\?\) – did you mean lep\.vocab\.vocab_size\?"
    ):
        parse_lep_block({"lep": {"vocab": {"method": "extend", "corpus": "x", "vocab_sise": 10}}})
    with pytest.raises(LEPError, match=r"lep\.trian: unknown key \(a typo\?\) – did you mean lep\.train\?"):
        parse_lep_block({"lep": {"trian": "embeddings"}})


@pytest.mark.e2e
def test_a_plugin_error_inside_axolotl_train_is_one_line_without_our_traceback(tmp_path, tiny_mistral):
    cfg = tiny_config(tmp_path, tiny_mistral, training_data(tmp_path / "data", docs=10, vocab_docs=20))
    cfg["lep"]["vocab"]["vocab_sise"] = cfg["lep"]["vocab"].pop("vocab_size")
    config = write_config(tmp_path / "typo.yml", cfg)
    proc = subprocess.run(
        [str(VENV_BIN / "axolotl"), "train", str(config)],
        cwd=tmp_path,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: invalid `lep:` block: lep.vocab.vocab_sise: unknown key (a typo?) – did you mean lep.vocab.vocab_size?"
    ]
    # no traceback through Axolotl or the plugin: the only one left is the launcher's report of the exit code
    assert "lep_plugin/" not in output and "LEPError" not in output
    assert "returned non-zero exit status 2" in output


def test_cli_errors_name_flags_and_list_choices(tiny_mistral, tmp_path, capsys):
    assert "Missing option '--text'" in _usage_error(capsys, "eval", str(tiny_mistral))
    err = _usage_error(
        capsys, "vocab", "build", "--tokenizer", str(tiny_mistral), "--corpus", "x", "--output", str(tmp_path / "o")
    )
    assert "Missing option '--method'. Choose from" in err and "optimize" in err
    err = _usage_error(
        capsys, "vocab", "convert", "--model", "m", "--tokenizer", "t", "--output", "o", "--weighting", "avg"
    )
    assert "'avg' is not one of 'mean', 'position'" in err
    line = _one_error_line(capsys, lep, "vocab", "import", "--source", "tekken.json", "--output", str(tmp_path / "t"))
    assert (
        "does not ship tekken.json (it ships: " in line
        and "tekken_240718.json" in line
        and "tokenizer.model.v1" in line
    )
    capsys.readouterr()
    lep(["eval", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "repeat for several languages. [required]" in help_text


def test_a_corpus_error_names_the_setting_where_it_was_set(mistral_tokenizer, tmp_path, capsys):
    corpus = tmp_path / "ru.jsonl"
    corpus.write_text('{"content": "Привет, мир"}\n', encoding="utf-8")
    line = _one_error_line(
        capsys,
        lep,
        "vocab",
        "build",
        "--tokenizer",
        str(mistral_tokenizer),
        "--corpus",
        str(corpus),
        "--output",
        str(tmp_path / "v"),
        "--method",
        "bpe",
        "--vocab-size",
        "500",
    )
    assert "no string field 'text' (set --text-field)" in line
    from lep_plugin.plugin.plugin import LEPPlugin

    cfg = {
        "base_model": str(mistral_tokenizer),
        "dataset_prepared_path": str(tmp_path / "prep"),
        "lep": {"vocab": {"method": "bpe", "corpus": [str(corpus)], "vocab_size": 500}},
    }
    with pytest.raises(LEPError, match=r"no string field 'text' \(set lep\.vocab\.text_field\)"):
        LEPPlugin().register(cfg)


# ----------------------------------------------------------------------------- reference, noise, sizes


def test_readme_settings_reference_is_made_from_the_models():
    from lep_plugin.cli.reference import with_reference

    readme = README.read_text(encoding="utf-8")
    assert readme == with_reference(readme), "run `python -m lep_plugin.cli.reference README.md`"
    for key in (
        "lep.vocab.max_chars",
        "lep.vocab.keep",
        "lep.vocab.text_field",
        "lep.vocab.min_frequency",
        "lep.vocab.cache_dir",
        "lep.eval.every_n_steps",
        "`check_adapted`",
        "`block_rows`",
    ):
        assert f"| `{key.strip('`')}` |" in readme, key
    assert "lep-vocab-<hash" in readme  # where the vocabulary cache lives


def test_lep_commands_print_no_third_party_noise(mistral_tokenizer, ru_heldout):
    proc = subprocess.run(
        [
            str(VENV_BIN / "lep"),
            "vocab",
            "report",
            "--tokenizer",
            str(mistral_tokenizer),
            "--text",
            str(ru_heldout),
            "--max-chars",
            "2000",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=train_env(),
    )
    assert proc.returncode == 0, proc.stderr
    for noise in ("Failed to load", "_pytree", "Enum subclass", "gemm_4bit"):
        assert noise not in proc.stderr, proc.stderr


def test_a_vocabulary_that_adds_almost_nothing_is_flagged(mistral_tokenizer, ru_corpus_small, tmp_path, capsys):
    capsys.readouterr()
    lep(
        [
            "vocab",
            "build",
            "--tokenizer",
            str(mistral_tokenizer),
            "--corpus",
            str(ru_corpus_small),
            "--output",
            str(tmp_path / "v"),
            "--method",
            "extend",
            "--vocab-size",
            "300",
            "--max-chars",
            "200000",
        ]
    )
    err = capsys.readouterr().err
    manifest = read_manifest(tmp_path / "v")
    assert manifest["new_tokens"] < 320
    assert f"warning: --vocab-size 300 added only {manifest['new_tokens']} new token(s) to the old 32,000" in err
    lep(
        [
            "vocab",
            "build",
            "--tokenizer",
            str(mistral_tokenizer),
            "--corpus",
            str(ru_corpus_small),
            "--output",
            str(tmp_path / "w"),
            "--method",
            "extend",
            "--vocab-size",
            "3000",
            "--max-chars",
            "200000",
        ]
    )
    assert "warning" not in capsys.readouterr().err


USAGE_ERRORS = {  # command -> its arguments with a usage error (an output that exists, a missing file)
    "lep_plugin.cli.merge": ["--base", "{d}", "--instruct", "{d}", "--adapted", "{d}", "--output", "{taken}"],
    "lep_plugin.cli.lep check": ["{d}/missing.yml"],
    "lep_plugin.cli.lep vocab build": [
        "--tokenizer", "{d}", "--corpus", "x.jsonl", "--method", "extend", "--vocab-size", "100", "--output", "{taken}"
    ],
    "lep_plugin.cli.lep vocab convert": ["--model", "{d}", "--tokenizer", "{d}", "--output", "{taken}"],
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(USAGE_ERRORS))
def test_a_usage_error_answers_before_torch_loads(command, tmp_path):
    """Path and argument errors come before the heavy imports (torch, transformers: seconds), so a typo
    answers at once: the process ends with its one error line and torch was never imported."""
    import subprocess
    import sys

    (tmp_path / "taken").mkdir()
    module, *sub = command.split()
    args = sub + [a.format(d=tmp_path / "in", taken=tmp_path / "taken") for a in USAGE_ERRORS[command]]
    (tmp_path / "in").mkdir()
    probe = (
        "import sys\n"
        f"from {module} import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as done:\n"
        "    print('exit', done.code, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "exit 2 False", (result.stdout, result.stderr[-2000:])
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
