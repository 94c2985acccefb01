"""How `make test` shares the suite between its pytest-xdist workers: longest work first.

A work unit is a test module (its module fixtures are built once, in one worker), except in the modules of
:data:`SPLIT_BY_PARAMETER`, whose fixtures build per parameter on first use: there each parameter value
(a tokenizer layout) is a unit of its own, so two workers share the module. Units go out longest first
(the longest-processing-time rule), by the seconds each took alone on 2 cores (:data:`UNIT_SECONDS`, from
``--durations=0``); an unlisted unit counts as short. xdist's default order (most tests first) left the
slowest modules, which have few tests, to the end on one worker.
"""

from __future__ import annotations

import re

from xdist.scheduler import LoadScopeScheduling

# modules whose fixtures build per parameter: one unit per value of the last test parameter
SPLIT_BY_PARAMETER = ("tests/test_vocab.py",)
LAST_PARAMETER = re.compile(r"\[(?:.*-)?([^\]-]+)\]$")

# seconds a unit took (setup + calls), measured with one thread per worker; refresh when a module grows
UNIT_SECONDS: dict[str, float] = {}


def unit_of(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    if module in SPLIT_BY_PARAMETER:
        match = LAST_PARAMETER.search(nodeid)
        if match:
            return f"{module}[{match.group(1)}]"
    return module


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
