"""The propagation methods (LEP step 4; arXiv:2412.21140, §3.4) as a registry.

A method (an entry of :data:`METHODS`, with its own summary) fits the d×d correction P on one least-squares
*system* ``min ‖A·P − B‖`` of old-vocabulary rows (:mod:`lep_plugin.propagation.systems`), or uses P = I.
Every system a run needs is fitted once per matrix, so ``--method all`` compares each P on each system. The
registry itself imports no tensor code: the CLI's choices come from it before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PropagationMethod:
    """One way to carry the trained embeddings into the instruct model."""

    name: str
    system: str | None  # the least-squares system (a key of SYSTEMS) its P is fitted on; None: P = I
    summary: str  # one line, shown in --help, the settings reference and the model card
    reference: str = "arXiv:2412.21140, §3.4"


METHODS: dict[str, PropagationMethod] = {
    m.name: m
    for m in (
        PropagationMethod("swap", None, "the trained embeddings used as they are (P = identity)"),
        PropagationMethod("overlap", "overlap", "P fitted by least squares on the tokens both vocabularies share"),
        PropagationMethod(
            "conversion",
            "conversion",
            "P fitted by least squares on both old embedding matrices mapped into the new vocabulary by the "
            "averaging operator T (the paper's default)",
        ),
    )
}


def methods_of(choice: str) -> list[str]:
    """The methods a ``--method`` choice writes."""
    return list(METHODS) if choice == "all" else [choice]


def systems_for(methods: list[str], compare_all: bool) -> list[str]:
    """The systems to fit: each method's own, or every system when the run compares methods."""
    if compare_all:
        return list(dict.fromkeys(m.system for m in METHODS.values() if m.system is not None))
    return [METHODS[m].system for m in methods if METHODS[m].system is not None]
