"""Session fixtures shared by all tests. Built once per session into a temporary dir (no hub access).

Everything the fixtures build comes from ``tests/builders.py`` (models, tokenizers, corpora, trios, family
layouts); ``tests/_plugin_helpers.py`` holds the Axolotl configs and runs.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from _plugin_helpers import make_zero3_checkpoint, worker_threads  # noqa: E402
from _schedule import LongestFirstScheduling, sort_items_longest_first  # noqa: E402
from _shared import built_once  # noqa: E402
from builders import (  # noqa: E402 - after the offline environment above
    RU_HELDOUT,
    RU_TRAIN,
    SHARED_DATA,
    FamilyCache,
    LayoutCache,
    Trio,
    build_mistral_tokenizer,
    build_tekken_tokenizer,
    build_tiny_model,
    build_trio,
    write_corpus_slice,
)

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test`: two workers on two cores, one thread each
    os.environ["OMP_NUM_THREADS"] = str(worker_threads())  # the subprocesses (axolotl train, lep) inherit it
    torch.set_num_threads(worker_threads())


def pytest_xdist_make_scheduler(config, log):
    return LongestFirstScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    sort_items_longest_first(items)


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the test suite reads ../shared/data beside the project")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mistral_tokenizer(tmp_path_factory):
    return built_once(tmp_path_factory, "mistral-tokenizer", lambda d: build_mistral_tokenizer(d / "mistral"))


@pytest.fixture(scope="session")
def tekken_tokenizer(tmp_path_factory):
    return built_once(tmp_path_factory, "tekken-tokenizer", lambda d: build_tekken_tokenizer(d / "tekken"))


@pytest.fixture(scope="session")
def family_layouts(tmp_path_factory, mistral_tokenizer, tekken_tokenizer):
    """Tokenizers in the layouts of the families people adapt (Llama-3, Qwen, Gemma, Phi-3, Mistral v1/v3,
    Tekken), built on first use: ``family_layouts.get("llama3")``, or cut: ``.get("qwen", 8000)``."""

    return LayoutCache(tmp_path_factory.mktemp("layouts"), {"mistral": mistral_tokenizer, "tekken": tekken_tokenizer})


@pytest.fixture(scope="session")
def tiny_families(tmp_path_factory, family_layouts):
    """Tiny random base + instruct models of each family, built on first use: ``tiny_families.get("qwen2")``."""

    return FamilyCache(tmp_path_factory.mktemp("families"), family_layouts)


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory, mistral_tokenizer):
    """Tiny random MistralForCausalLM (d=64, 2 layers, untied) with the real Mistral-7B tokenizer."""
    return built_once(
        tmp_path_factory, "tiny-mistral", lambda d: build_tiny_model("mistral", mistral_tokenizer, d / "tiny-mistral")
    )


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tekken_tokenizer):
    """Tiny random LlamaForCausalLM (d=64, 2 layers, untied) with the 131k byte-level Tekken tokenizer."""
    return built_once(
        tmp_path_factory, "tiny-llama", lambda d: build_tiny_model("llama", tekken_tokenizer, d / "tiny-llama")
    )


@pytest.fixture(scope="session")
def tiny_llama_tied(tmp_path_factory, mistral_tokenizer):
    """Tiny random LlamaForCausalLM with tied embeddings and the Mistral tokenizer."""
    return built_once(
        tmp_path_factory,
        "tiny-llama-tied",
        lambda d: build_tiny_model("llama", mistral_tokenizer, d / "tiny-llama-tied", tie=True),
    )


@pytest.fixture(scope="session")
def ru_corpus_small(tmp_path_factory, shared_data):
    """The first 400 documents (~1.4M chars) of ru/train.jsonl, for vocabulary builds in seconds."""
    return built_once(
        tmp_path_factory, "ru-corpus-small", lambda d: write_corpus_slice(RU_TRAIN, d / "ru-small.jsonl", 400)
    )


@pytest.fixture(scope="session")
def ru_heldout(shared_data):
    return RU_HELDOUT


@pytest.fixture(scope="session")
def zero3_checkpoint(tmp_path_factory, tiny_mistral, mistral_trio):
    """A real ZeRO-3 checkpoint of tiny Mistral trained by ``axolotl train`` with the plugin (`train:
    new_rows`, extend vocabulary) that propagates into the trio's instruct model when it ends; here so that
    the plugin, lep-merge and propagation tests share one run."""
    return built_once(
        tmp_path_factory, "zero3", lambda d: make_zero3_checkpoint(d, tiny_mistral, mistral_trio.instruct)
    )


@pytest.fixture(scope="session")
def mistral_trio(tmp_path_factory, tiny_mistral, ru_corpus_small) -> Trio:
    """Base / instruct / adapted tiny Mistral models for lep-merge (see ``builders.build_trio``)."""
    return built_once(tmp_path_factory, "trio-mistral", lambda d: build_trio(d, tiny_mistral, ru_corpus_small))


@pytest.fixture(scope="session")
def tied_trio(tmp_path_factory, tiny_llama_tied, ru_corpus_small, mistral_trio) -> Trio:
    """The same with a tied Llama; same old tokenizer as ``mistral_trio``, so its vocabulary is reused."""
    return built_once(
        tmp_path_factory,
        "trio-tied",
        lambda d: build_trio(d, tiny_llama_tied, ru_corpus_small, mistral_trio.new_tokenizer),
    )
