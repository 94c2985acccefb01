"""The CLIs keep third-party noise off the screen (torchao, DeepSpeed's accelerator notice, transformers'
Tekken chat-template failure ...) unless `-v` asks for it, and `lep tiny` makes a related pair: its instruct
model is its base moved by 2 % of each tensor's RMS, as published pairs are, not a second random model."""

from __future__ import annotations

import io
import logging
import subprocess

import pytest
from _plugin_helpers import VENV_BIN, load_weights, train_env
from builders import generate_from_chat

from lep_plugin.cli.quiet import NOISE, quiet_third_party, show_third_party
from lep_plugin.demo.families import INSTRUCT_SHIFT

NOISE_TEXT = (
    "Failed to load",
    "_pytree",
    "Enum subclass",
    "gemm_4bit",
    "Setting accelerator to CPU",
    "Failed to generate chat template",
    "Traceback",
)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=600, env=train_env(), check=False
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`lep tiny` as a user runs it (a cut Qwen3 layout: small, the Tekken import is the slow part)."""
    out = tmp_path_factory.mktemp("tiny") / "qwen3"
    return _run("lep", "tiny", "--family", "qwen3", "--bpe-size", "2000", "--output", str(out)), out


def test_help_is_quiet_and_offers_verbose():
    for command in (("lep", "--help"), ("lep-merge", "--help")):
        proc = _run(*command)
        assert proc.returncode == 0 and proc.stderr == "", (command, proc.stderr)
        assert "-v, --verbose" in proc.stdout


def test_lep_tiny_prints_its_summary_and_nothing_else(tiny_run):
    proc, out = tiny_run
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # no chat-template failure, DeepSpeed notice or progress bar
    assert all(noise not in proc.stdout for noise in NOISE_TEXT), proc.stdout
    assert (
        proc.stdout.startswith(f"wrote {out}/base and {out}/instruct") and "instruct = base + 2% noise" in proc.stdout
    )


def test_lep_tiny_instruct_is_its_base_moved_a_little(tiny_run):
    proc, out = tiny_run
    assert proc.returncode == 0, proc.stderr
    base, instruct = load_weights(out / "base"), load_weights(out / "instruct")
    assert base.keys() == instruct.keys()
    moved = {}
    for name, tensor in base.items():
        if tensor.norm() > 0:  # zero-initialised tensors (none in Qwen3) stay zero
            moved[name] = float((instruct[name] - tensor).norm() / tensor.norm())
    # every tensor, projections (RMS 0.02) and norms (ones) alike, ~2 % away; an absolute 0.02 made it 100 %
    assert moved and all(0.5 * INSTRUCT_SHIFT < m < 1.5 * INSTRUCT_SHIFT for m in moved.values()), moved


def test_noise_is_dropped_and_shown_with_verbose():
    """Each rule drops its warning, keeps the library's errors, and `-v` (show_third_party) brings it back;
    the filter survives DeepSpeed resetting its logger's level on import."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    loggers = [logging.getLogger(noise.logger) for noise in NOISE]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        quiet_third_party()
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # what deepspeed.utils.logging does
        for noise, logger in zip(NOISE, loggers):
            logger.warning(f"{noise.text} (noise)")
            logger.error(f"{noise.text} (an error)")
        printed = stream.getvalue()
        assert "(noise)" not in printed and printed.count("(an error)") == len(NOISE), printed
        show_third_party()
        for noise, logger in zip(NOISE, loggers):
            logger.warning(f"{noise.text} (shown)")
        assert stream.getvalue().count("(shown)") == len(NOISE)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        quiet_third_party()  # as the CLIs leave it for later tests in this process


def test_the_kernels_trust_warning_is_dropped_and_shown_with_verbose():
    """On a CPU with AVX-512 BF16, importing bitsandbytes makes the `kernels` package warn (Python warnings,
    not logging) that it skips a Hub trust check offline; CPUs without it never warn. The rule is checked on
    the warning itself, so the test holds whichever path this CPU takes."""
    import warnings

    message = (
        "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging Face "
        "Hub is in offline mode."
    )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_third_party()
            warnings.warn(message, UserWarning, stacklevel=1)
            warnings.warn("Skipping something else", UserWarning, stacklevel=1)  # other warnings still show
            assert [str(w.message) for w in caught] == ["Skipping something else"]
            show_third_party()
            warnings.warn(message, UserWarning, stacklevel=1)
            assert [str(w.message) for w in caught][-1] == message
    finally:
        quiet_third_party()


def test_lep_tiny_default_pair_is_the_pretrained_base_and_a_chat_model(tmp_path):
    """`lep tiny` without --family: the shipped pretrained base (byte for byte) and an instruct model trained
    from it now, which answers in the chat format; one summary line, nothing on stderr."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lep_plugin.demo.paths import TINY_BASE

    out = tmp_path / "pair"
    proc = _run("lep", "tiny", "--output", str(out), "--instruct-seconds", "15")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith(f"wrote {out}/base and {out}/instruct: the pretrained tiny base"), proc.stdout
    assert (out / "base" / "model.safetensors").read_bytes() == (TINY_BASE / "model.safetensors").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(str(out / "instruct"))
    tok = AutoTokenizer.from_pretrained(str(out / "instruct"))
    ids, generated = generate_from_chat(
        model, tok, "Повтори этот текст дословно:\n\nМы пошли домой.", max_new_tokens=12
    )
    assert generated.shape[1] > ids.shape[1]
    again = _run("lep", "tiny", "--output", str(out))
    assert again.returncode != 0 and "exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
