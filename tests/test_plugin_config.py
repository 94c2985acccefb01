"""The ``lep:`` block through Axolotl's own config loading, in-process (no model is ever loaded here):
bad YAML is one clear error naming the key, before anything expensive happens."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from _plugin_helpers import tiny_config, training_data, write_config
from pydantic import ValidationError

from lep_plugin.errors import LEPError
from lep_plugin.plugin.args import parse_lep_block
from lep_plugin.propagation.options import FROM_TRAINING_RUN, MergeOptions, PropagateOptions

PLUGIN = "lep_plugin.LEPPlugin"


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_data):
    return training_data(tmp_path_factory.mktemp("cfgdata"), docs=20, vocab_docs=200)


def _schema_validate(cfg: dict):
    """Axolotl's validation with the plugin's args merged into the schema (register() not run)."""
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    PluginManager.get_instance().register(PLUGIN)
    return validate_config(DictDefault(cfg))


def _load_cfg(tmp_path: Path, cfg: dict):
    """``axolotl train``'s config step: plugins registered (register() runs), validated, normalised."""
    from axolotl.cli.config import load_cfg

    return load_cfg(str(write_config(tmp_path / "c.yml", cfg)))


def _cfg(tmp_path, model, data, **lep):
    cfg = tiny_config(tmp_path, model, data)
    if lep:
        cfg["lep"] = lep
    return cfg


def test_schema_rejects_unknown_key_naming_it(tmp_path, tiny_mistral, data):
    cfg = _cfg(tmp_path, tiny_mistral, data)
    cfg["lep"]["vocab"]["vocab_sise"] = 100
    with pytest.raises(Exception, match="vocab_sise"):
        _schema_validate(cfg)
    with pytest.raises(LEPError, match=r"lep\.vocab\.vocab_sise: unknown key"):
        _load_cfg(tmp_path, cfg)


def test_schema_keeps_a_good_block(tmp_path, tiny_mistral, data):
    cfg = _schema_validate(_cfg(tmp_path, tiny_mistral, data))
    assert cfg.lep["vocab"]["method"] == "extend" and cfg.lep["train"] == "embeddings"


@pytest.mark.parametrize(
    "lep, message",
    [
        ({"vocab": {"method": "extend", "vocab_size": 100}, "train": "embeddings"}, r"lep\.vocab: .*needs `corpus:`"),
        ({"vocab": {"method": "bpe", "corpus": ["x.jsonl"]}}, "needs `vocab_size:`"),
        ({"vocab": {"method": "optimize", "corpus": ["x.jsonl"], "vocab_size": 10}}, "needs `keep:`"),
        ({"vocab": {"tokenizer": "d", "method": "bpe"}}, "not both"),
        ({"vocab": {}}, "set `method:`"),
        ({"train": "new_rows"}, "needs a vocabulary change"),
        ({"train": "everything"}, r"lep\.train: Input should be 'embeddings', 'new_rows' or 'off'"),
    ],
)
def test_bad_blocks_are_one_clear_line(lep, message):
    with pytest.raises(LEPError, match=message) as err:
        parse_lep_block({"lep": lep})
    assert "\n" not in str(err.value)


def test_missing_corpus_fails_before_any_model(tmp_path, tiny_mistral, data):
    cfg = _cfg(tmp_path, tiny_mistral, data)
    cfg["lep"]["vocab"]["corpus"] = [str(tmp_path / "nowhere" / "*.jsonl")]
    with pytest.raises(LEPError, match="matches no file"):
        _load_cfg(tmp_path, cfg)
    assert not (tmp_path / "out").exists()


def test_new_rows_without_vocabulary_change(tmp_path, tiny_mistral, data):
    cfg = dict(_cfg(tmp_path, tiny_mistral, data, train="new_rows"), weight_decay=0.0)
    with pytest.raises(Exception, match="needs a vocabulary change"):
        _schema_validate(cfg)
    with pytest.raises(LEPError, match="needs a vocabulary change"):
        _load_cfg(tmp_path, cfg)


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"unfrozen_parameters": ["model.layers.0.*"]}, "remove `unfrozen_parameters:`"),
        ({"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True}, "add `lora_modules_to_save:"),
    ],
)
def test_conflicting_settings_are_errors(tmp_path, tiny_mistral, data, setting, message):
    cfg = dict(_cfg(tmp_path, tiny_mistral, data), **setting)
    with pytest.raises(Exception, match=message):
        _schema_validate(cfg)
    with pytest.raises(LEPError, match=message):
        _load_cfg(tmp_path, cfg)
    # with `train: off` the user's own setting is respected
    cfg["lep"]["train"] = "off"
    assert _schema_validate(cfg).lep["train"] == "off"


def test_every_conflict_is_reported_in_one_run(tmp_path, tiny_mistral, data):
    cfg = dict(_cfg(tmp_path, tiny_mistral, data), weight_decay=0.1, unfrozen_parameters=["model.layers.0.*"])
    cfg["lep"]["train"] = "new_rows"
    for check in (_schema_validate, lambda c: _load_cfg(tmp_path, c)):
        with pytest.raises(Exception) as err:
            check(cfg)
        message = str(err.value)
        assert "2 settings conflict" in message
        assert "remove `unfrozen_parameters:`" in message and "needs `weight_decay: 0`" in message


def test_new_rows_with_weight_decay_is_an_error():
    lep = {"vocab": {"tokenizer": "d"}, "train": "new_rows"}
    with pytest.raises(LEPError, match="needs `weight_decay: 0`"):
        parse_lep_block({"lep": lep, "weight_decay": 0.1})
    assert parse_lep_block({"lep": lep, "weight_decay": 0.0}).train == "new_rows"


def test_new_rows_under_fsdp_needs_version_2():
    lep = {"vocab": {"tokenizer": "d"}, "train": "new_rows"}
    for fsdp in ({"fsdp_config": {"fsdp_version": 1}}, {"fsdp": ["full_shard"], "fsdp_config": {}}):
        with pytest.raises(LEPError, match="needs `fsdp_version: 2`"):
            parse_lep_block({"lep": lep, "weight_decay": 0.0, **fsdp})
    for fsdp in (
        {"fsdp_version": 2, "fsdp_config": {"reshard_after_forward": True}},
        {"fsdp_config": {"fsdp_version": 2}},
    ):
        assert parse_lep_block({"lep": lep, "weight_decay": 0.0, **fsdp}).train == "new_rows"
    assert (
        parse_lep_block({"lep": dict(lep, train="embeddings"), "fsdp_config": {"fsdp_version": 1}}).train
        == "embeddings"
    )


def test_ready_tokenizer_must_keep_special_tokens(tmp_path, tiny_llama, mistral_tokenizer, data):
    # the Tekken-based model has chat markers ([INST], ...) that the Mistral v1 tokenizer lacks
    cfg = _cfg(tmp_path, tiny_llama, data, vocab={"tokenizer": str(mistral_tokenizer)})
    with pytest.raises(LEPError, match=r"lep\.vocab\.tokenizer .* lacks \d+ special token"):
        _load_cfg(tmp_path, cfg)
    assert not (tmp_path / "out").exists()


def test_ready_tokenizer_is_used_from_a_content_addressed_copy(tmp_path, tiny_mistral, tekken_tokenizer, data):
    cfg = _load_cfg(tmp_path, _cfg(tmp_path, tiny_mistral, data, vocab={"tokenizer": str(tekken_tokenizer)}))
    used = Path(cfg.tokenizer_config)
    assert used.name.startswith("lep-vocab-") and used.parent == tmp_path / "prepared"
    assert (used / "lep_vocab.json").is_file()
    assert (used / "tokenizer.json").read_bytes() == (Path(tekken_tokenizer) / "tokenizer.json").read_bytes()


def test_built_vocabulary_is_content_addressed(tmp_path, tiny_mistral, data):
    base = _cfg(tmp_path, tiny_mistral, data)
    base["lep"]["vocab"].update(method="bpe", vocab_size=1000)
    first = Path(_load_cfg(tmp_path, base).tokenizer_config)
    again = Path(_load_cfg(tmp_path, base).tokenizer_config)
    base["lep"]["vocab"]["vocab_size"] = 1200
    other = Path(_load_cfg(tmp_path, base).tokenizer_config)
    assert first == again != other
    assert yaml.safe_load((tmp_path / "c.yml").read_text())["lep"]["vocab"]["vocab_size"] == 1200
    assert {p.name for p in (tmp_path / "prepared").glob("lep-vocab-*") if p.is_dir()} == {first.name, other.name}


def test_parsed_block_cannot_be_changed_by_a_later_hook():
    """The plugin keeps the parsed block across hooks (register → model hooks → post_train); a hook that
    tried to change it, at the top or in the nested vocabulary section, fails instead of diverging."""
    config = parse_lep_block({"lep": {"vocab": {"method": "extend", "corpus": "ru.jsonl", "vocab_size": 100}}})
    for target, field, value in ((config, "train", "off"), (config.vocab, "vocab_size", 5)):
        with pytest.raises(ValidationError) as err:
            setattr(target, field, value)
        assert err.value.errors()[0]["type"] == "frozen_instance"
    assert config.train == "embeddings" and config.vocab.vocab_size == 100
    assert config.vocab.corpus == ["ru.jsonl"]  # one file given as a string is a list of one


@pytest.mark.parametrize(
    "example",
    sorted(
        p.name
        for p in (Path(__file__).resolve().parents[1] / "examples" / "yaml").glob("*.yml")
        if not p.name.startswith("calibration")
    ),
)
def test_examples_pass_axolotl_validation(example):
    """Every shipped YAML is accepted by Axolotl's schema with the plugin's block (no model, no hub)."""
    from _plugin_helpers import EXAMPLES

    cfg = yaml.safe_load((EXAMPLES / example).read_text(encoding="utf-8"))
    lep = parse_lep_block(cfg)
    assert lep is not None and lep.vocab is not None and lep.train == "embeddings"
    validated = _schema_validate(cfg)
    assert validated.lep["vocab"]["method"] == cfg["lep"]["vocab"]["method"]
    # one YAML to the model to publish: every recipe propagates, evaluates and writes a GGUF when it ends
    assert lep.propagate.eval is not None and lep.propagate.gguf == ["q8_0"]
    assert validated.lep["propagate"]["instruct"] == lep.propagate.instruct
    if example != "tiny-cpu.yml":
        assert validated.weight_decay == 0.1 and validated.adam_beta2 == 0.95 and validated.adam_epsilon == 1e-5
        gpus = 1 if example.endswith("-24gb.yml") else 8  # the one-GPU recipe (4-bit body) accumulates more
        assert validated.micro_batch_size * validated.gradient_accumulation_steps * gpus == 256
        assert validated.sequence_len == 1024 and validated.warmup_steps == 100
        assert validated.learning_rate == (2e-4 if example.startswith("llama3") else 1e-4)
        assert gpus == 1 or (EXAMPLES / Path(cfg["deepspeed"]).name).is_file()


@pytest.mark.parametrize(
    "example",
    sorted(p.name for p in (Path(__file__).resolve().parents[1] / "examples" / "yaml").glob("calibration-*.yml")),
)
def test_calibration_examples_pass_axolotl_validation(example):
    """The calibration LoRA recipes (LEP step 5) are plain Axolotl configs that its schema accepts."""
    from _plugin_helpers import EXAMPLES

    cfg = yaml.safe_load((EXAMPLES / example).read_text(encoding="utf-8"))
    validated = _schema_validate(cfg)
    assert validated.adapter == "lora" and parse_lep_block(cfg) is None
    if example != "calibration-tiny-cpu.yml":
        expected = {"calibration-self-8b.yml": (8, 1, 2.5e-5), "calibration-saiga-8b.yml": (32, 16, 5e-5)}[example]
        assert (validated.lora_r, validated.lora_alpha, validated.learning_rate) == expected


def test_the_propagate_block_takes_lep_merges_settings():
    """``lep.propagate`` is lep-merge's options less those the training run gives, plus eval and GGUF."""
    block = {"instruct": "org/name", "output": "out/x", "gguf": "q8_0", "license": "apache-2.0", "method": "all"}
    options = parse_lep_block({"lep": {"propagate": block}}).propagate
    assert options.gguf == ["q8_0"] and options.eval is None and options.method == "all"
    assert set(MergeOptions.model_fields) - set(PropagateOptions.model_fields) == set(FROM_TRAINING_RUN)
    merge = options.merge_options(base=Path("b"), adapted=Path("a"), instruct=Path("i"))
    assert (merge.base, merge.adapted, merge.instruct) == (Path("b"), Path("a"), Path("i"))
    assert merge.base_model_id == "org/name" and merge.license == "apache-2.0"  # a Hub id names the card's base
    for wrong, said in (
        ({"outpt": "o"}, "lep.propagate.outpt"),
        ({"gguf": ["q4_k"]}, "lep.propagate.gguf.0"),
        ({"eval": {"samples": 2}}, "lep.propagate.eval.texts"),
    ):
        with pytest.raises(LEPError, match=said.replace(".", r"\.")):
            parse_lep_block({"lep": {"propagate": {"instruct": "x", "output": "o", **wrong}}})
