"""Runs a pipeline of passes with verification, IR printing and timing.

A pipeline is spelled as a comma-separated string over the pass registry —
the same on the command line (``--passes``) and in Python — or given as pass
instances. After each pass the manager checks the pass's ``ensures``, and (by
default) runs the verifier, so a broken rewrite is caught at the pass that
made it, with that pass named in the error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from keydnn.errors import IRError, PassError
from keydnn.ir.graph import Graph
from keydnn.ir.passes.base import PASS_REGISTRY, PROPERTIES, Pass
from keydnn.ir.verify import verify

__all__ = ["PassManager", "PassRecord", "PipelineResult", "parse_pipeline", "DEFAULT_PIPELINE"]

logger = logging.getLogger(__name__)

#: The pipeline ``from_keras`` and ``keydnn convert`` run unless told otherwise.
#: Layout first (so batch_norm axes and conv layouts are channels-first), then squeezes of 1-D
#: layers sunk so that conv2d meets its batch_norm / activation, then folding, then fusing (a
#: conv whose batch_norm was folded can take the relu), then cleanup. Identities are removed
#: before fold-constants so that the transposes they separated can merge. Every pass is
#: idempotent, so is the pipeline, and a channels_first graph is left to the folding passes.
DEFAULT_PIPELINE = (
    "infer-shapes,eliminate-identity,canonicalize-layout,sink-squeeze,fold-batchnorm,eliminate-identity,"
    "fold-constants,fuse-activation,fuse-masked-softmax,eliminate-identity,eliminate-dead-code,infer-shapes"
)


def _split_top_level(spec: str) -> list[str]:
    """Split on commas outside ``{...}`` option blocks."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(spec[start:i])
            start = i + 1
    items.append(spec[start:])
    return [s.strip() for s in items if s.strip()]


def _parse_options(text: str, item: str) -> dict[str, object]:
    """``key=value`` pairs separated by spaces or commas; keys may be kebab-case."""
    options: dict[str, object] = {}
    for pair in text.replace(",", " ").split():
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise PassError(f"pass options in {item!r} must be key=value, got {pair!r}")
        parsed: object = {"true": True, "false": False}.get(value.lower(), value)
        if isinstance(parsed, str) and parsed.lstrip("-").isdigit():
            parsed = int(parsed)
        options[key.replace("-", "_")] = parsed
    return options


def parse_pipeline(spec: str | Sequence[str | Pass]) -> list[Pass]:
    """Turn ``"a,b{opt=value},c"`` (or a list of names / pass instances) into pass instances.

    Options in braces go to the pass's constructor, e.g.
    ``canonicalize-layout{input-layout=channels_first}``.
    """
    items: Iterable[str | Pass]
    if isinstance(spec, str):
        items = _split_top_level(spec)
    else:
        items = spec
    passes: list[Pass] = []
    for item in items:
        if isinstance(item, Pass):
            passes.append(item)
            continue
        name, options = item.strip(), {}
        if name.endswith("}") and "{" in name:
            name, _, body = name[:-1].partition("{")
            name = name.strip()
            options = _parse_options(body, item)
        cls = PASS_REGISTRY.get(name)
        if cls is None:
            known = ", ".join(sorted(PASS_REGISTRY))
            raise PassError(f"unknown pass {name!r}; registered passes: {known}")
        try:
            passes.append(cls(**options))
        except TypeError as exc:
            raise PassError(f"pass {name!r} does not take options {sorted(options)}: {exc}") from exc
    return passes


@dataclass(frozen=True)
class PassRecord:
    """What one pass did: whether it changed the graph, and how long it took."""

    name: str
    changed: bool
    seconds: float


@dataclass
class PipelineResult:
    graph: Graph
    records: list[PassRecord] = field(default_factory=list)

    def timing_table(self) -> str:
        rows = [f"{r.name:<28} {r.seconds * 1e3:9.3f} ms  {'changed' if r.changed else '-'}" for r in self.records]
        return "\n".join(rows)


class PassManager:
    """An editable, ordered list of passes and how to check them."""

    def __init__(
        self,
        passes: str | Sequence[str | Pass] = DEFAULT_PIPELINE,
        *,
        verify: bool = True,
        print_after: str | Iterable[str] | None = None,
        printer: Callable[[str, Graph], None] | None = None,
    ) -> None:
        self.passes: list[Pass] = parse_pipeline(passes)
        self.verify = verify
        if isinstance(print_after, str):
            print_after = [print_after]
        self.print_after: set[str] = set(print_after or ())
        self.printer = printer or _print_ir

    # -- editing ------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def add(self, p: str | Pass, *, before: str | None = None, after: str | None = None) -> "PassManager":
        """Insert a pass (by name or instance), at the end or next to a named pass."""
        (new,) = parse_pipeline([p])
        if before is not None:
            self.passes.insert(self._index(before), new)
        elif after is not None:
            self.passes.insert(self._index(after) + 1, new)
        else:
            self.passes.append(new)
        return self

    def remove(self, name: str) -> "PassManager":
        self.passes = [p for p in self.passes if p.name != name]
        return self

    def _index(self, name: str) -> int:
        for i, p in enumerate(self.passes):
            if p.name == name:
                return i
        raise PassError(f"pass {name!r} is not in the pipeline {self.names}")

    def __repr__(self) -> str:
        return f"PassManager({','.join(self.names)!r})"

    # -- running ------------------------------------------------------------
    def run(self, graph: Graph) -> PipelineResult:
        result = PipelineResult(graph=graph)
        self._maybe_print("input", graph)
        for position, p in enumerate(self.passes, start=1):
            where = f"pass {position} {p.name!r} of pipeline {','.join(self.names)!r}"
            for prop in p.requires:
                if not PROPERTIES[prop](graph):
                    raise PassError(f"{where} requires a {prop} graph; run the pass that ensures it first")
            start = time.perf_counter()
            try:
                out = p.run(graph)
            except (PassError, IRError):
                raise
            except Exception as exc:  # a pass bug must still name the pass
                raise PassError(f"{where} failed: {exc}") from exc
            seconds = time.perf_counter() - start
            for prop in p.ensures:
                if not PROPERTIES[prop](out.graph):
                    raise PassError(f"{where} did not ensure {prop}")
            if self.verify:
                try:
                    verify(out.graph)
                except IRError as exc:
                    raise PassError(f"{where} produced invalid IR: {exc}") from exc
            logger.debug("%s: changed=%s in %.3f ms", p.name, out.changed, seconds * 1e3)
            result.records.append(PassRecord(p.name, out.changed, seconds))
            graph = out.graph
            self._maybe_print(p.name, graph)
        result.graph = graph
        return result

    def _maybe_print(self, name: str, graph: Graph) -> None:
        if "all" in self.print_after or name in self.print_after:
            self.printer(name, graph)


def _print_ir(name: str, graph: Graph) -> None:
    """Default printer for ``print_after``: a header line, then the IR text."""
    print(f"// ----- IR after {name} -----\n{graph}", end="")
