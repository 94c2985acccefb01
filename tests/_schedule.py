"""How `make test` shares the suite between its pytest-xdist workers: longest work first.

A work unit is a test module (its module fixtures are built once, in one worker), except in the modules of
:data:`SPLIT_BY_LAYOUT`, whose fixtures build per tokenizer layout on first use: there each layout is a
unit of its own, so two workers share the module. Units go out longest first
(the longest-processing-time rule), by the seconds each took alone on 2 cores (:data:`UNIT_SECONDS`, from
``--durations=0``); an unlisted unit counts as short. xdist's default order (most tests first) left the
slowest modules, which have few tests, to the end on one worker.
"""

from __future__ import annotations

from builders import ALL_LAYOUTS
from xdist.scheduler import LoadScopeScheduling

# modules whose fixtures build per tokenizer layout: one unit per layout (a test id ends with it, e.g.
# `[bpe-mistral-v3]`); a test without one runs in the unit of the layout it uses
SPLIT_BY_LAYOUT = {"tests/test_vocab.py": "mistral"}

# seconds a unit took (setup + calls; shared fixtures count where first built), one thread per worker,
# from `make test` with `--durations=0` on 2026-12-07 (AMD EPYC, 2 cores); refresh when a module grows
UNIT_SECONDS: dict[str, float] = {
    "tests/test_multirank.py": 612,
    "tests/test_families.py": 432,
    "tests/test_lora_train.py": 177,
    "tests/test_propagate.py": 163,
    "tests/test_plugin_train.py": 157,
    "tests/test_merge_deepspeed.py": 102,
    "tests/test_vocab.py[tekken]": 94,
    "tests/test_publish.py": 94,
    "tests/test_fsdp.py": 89,
    "tests/test_vocab.py[mistral]": 78,
    "tests/test_first_hour.py": 75,
    "tests/test_vocab.py[qwen]": 72,
    "tests/test_vocab.py[llama3]": 70,
    "tests/test_plugin_hooks.py": 59,
    "tests/test_quiet_and_tiny.py": 55,
    "tests/test_merge_cli.py": 49,
    "tests/test_calibration.py": 47,
    "tests/test_merge_bad_input.py": 47,
    "tests/test_convert.py": 46,
    "tests/test_eval.py": 33,
    "tests/test_vocab.py[gemma]": 33,
    "tests/test_vocab.py[mistral-v3]": 32,
    "tests/test_vocab.py[phi3]": 32,
    "tests/test_lora_donor.py": 26,
    "tests/test_gguf_unknown_tokenizer.py": 24,
    "tests/test_precision.py": 24,
    "tests/test_plugin_config.py": 19,
    "tests/test_demo.py": 14,
    "tests/test_merge_base_check.py": 12,
    "tests/test_vocab_errors.py": 9,
}


def unit_of(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    if module not in SPLIT_BY_LAYOUT:
        return module
    ids = nodeid.rsplit("[", 1)[1].rstrip("]") if nodeid.endswith("]") else ""
    ends = [layout for layout in ALL_LAYOUTS if ids == layout or ids.endswith("-" + layout)]
    return f"{module}[{max(ends, key=len) if ends else SPLIT_BY_LAYOUT[module]}]"


class LongestFirstScheduling(LoadScopeScheduling):
    """xdist's scope scheduling over :func:`unit_of`, units in decreasing expected time."""

    def _split_scope(self, nodeid: str) -> str:
        return unit_of(nodeid)

    def schedule(self) -> None:
        self.config.option.loadscopereorder = False  # the order is ours: set in sort_items_longest_first
        super().schedule()


def sort_items_longest_first(items: list) -> None:
    """Reorder the collected tests so units come longest first, tests in their own order inside a unit
    (every worker collects the same order, as xdist requires)."""
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(unit_of(item.nodeid), index)
    items.sort(key=lambda item: (-UNIT_SECONDS.get(unit_of(item.nodeid), 0.0), first_seen[unit_of(item.nodeid)]))
