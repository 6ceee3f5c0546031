"""What a pass is: a named, documented graph-to-graph rewrite.

A pass is a small class with a kebab-case ``name``, a docstring stating what
it guarantees, optional ``requires``/``ensures`` properties that the pass
manager checks, and ``run(graph) -> PassResult``. Passes build new graphs;
they never mutate their input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, TypeVar

from keydnn.ir.graph import Graph
from keydnn.ir.ops import kinds_with

__all__ = ["Pass", "PassResult", "PASS_REGISTRY", "register_pass", "PROPERTIES", "DATA_MOVEMENT_KINDS"]


@dataclass(frozen=True)
class PassResult:
    """The pass's output graph, and whether it differs from the input."""

    graph: Graph
    changed: bool


def _typed(graph: Graph) -> bool:
    """Every value has a type, except what an opaque placeholder makes unknowable."""
    blocked = {o.name for n in graph.find_opaque() for o in n.outputs if o.type is None}
    for node in graph.nodes:
        if any(i in blocked for i in node.inputs):
            blocked.update(o.name for o in node.outputs)
            continue
        if any(o.type is None for o in node.outputs) and node.op.kind != "opaque":
            return False
    return all(v.type is not None for v in graph.inputs)


#: Ops whose ``layout`` attribute only names the layout of their result (they compute nothing).
DATA_MOVEMENT_KINDS: frozenset[str] = kinds_with("layout_is_result_only")


def _channels_first(graph: Graph) -> bool:
    """No op computes in a channels_last layout (data movement aside: its layout only names a result)."""
    return not any(
        getattr(n.op, "layout", None) in ("NHWC", "NWC") and n.op.kind not in DATA_MOVEMENT_KINDS
        for n in graph.nodes
    )


def _no_batch_norm(graph: Graph) -> bool:
    """No batch_norm node remains (backends only run its folded forms)."""
    return not any(n.op.kind == "batch_norm" for n in graph.nodes)


#: Graph properties that passes may require or ensure, with their checks.
PROPERTIES: dict[str, Callable[[Graph], bool]] = {
    "typed": _typed,
    "channels-first": _channels_first,
    "no-batch-norm": _no_batch_norm,
}


class Pass:
    """Base class: subclasses set ``name`` and implement ``run``."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    ensures: ClassVar[tuple[str, ...]] = ()

    def run(self, graph: Graph) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


#: name -> pass class. ``register_pass`` adds to it; pipelines are spelled over it.
PASS_REGISTRY: dict[str, type[Pass]] = {}

P = TypeVar("P", bound=type[Pass])


def register_pass(cls: P) -> P:
    """Class decorator: make a pass available to pipeline strings (``--passes``)."""
    if not cls.name or cls.name != cls.name.lower() or " " in cls.name or "_" in cls.name:
        raise ValueError(f"pass name {cls.name!r} must be non-empty kebab-case")
    existing = PASS_REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"a pass named {cls.name!r} is already registered ({existing.__qualname__})")
    PASS_REGISTRY[cls.name] = cls
    return cls
