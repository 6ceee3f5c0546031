"""Looking inside a converted model: a Keras-style summary and a per-stage time profile.

``summary`` answers "what did keydnn make of my layers": one row per Keras
layer with the output shape keydnn computes and the parameters it stores.
``profile`` answers "where does a call spend its time": the generated CPU code
counts the cycles of every stage when built with ``KEYDNN_CPU_PROFILE`` (a
separate build, so ordinary runs carry no counters); the table gives each
stage's time and its share of the call.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from keydnn.model import Model

__all__ = ["SummaryText", "summary_rows", "summary_text", "profile_rows", "profile_text"]


class SummaryText(str):
    """The summary's text; ``repr`` is the text itself, so ``model.summary()`` at a prompt shows the table."""

    def __repr__(self) -> str:
        return str(self)


def _shape(typ: Any) -> str:
    if typ is None:
        return "?"
    dims = ", ".join("None" if isinstance(d, str) else str(d) for d in typ.shape)
    layout = f" {typ.layout}" if typ.layout not in ("ANY", "NC") else ""
    return f"({dims}){layout}"


def summary_rows(model: "Model") -> list[dict]:
    """One row per Keras layer: name, class, output shape, parameters keydnn stores for it, its IR nodes."""
    graph = model.graph
    by_source: dict[str, list] = {}
    for node in graph.nodes:
        by_source.setdefault(node.source or node.name, []).append(node)
    weights = graph.weights
    records = model.keras_layers or [{"keras_name": name, "keras_class": nodes[0].op.kind}
                                     for name, nodes in by_source.items()]
    rows = []
    for record in records:
        nodes = by_source.get(record["keras_name"], [])
        consts = {i for n in nodes for i in n.inputs if i in weights}
        rows.append({
            "layer": record["keras_name"], "class": record["keras_class"],
            "output_shape": _shape(nodes[-1].outputs[0].type) if nodes else "-",
            "params": int(sum(weights[c].size for c in consts)),
            "keras_params": record.get("params"),
            "nodes": [n.name for n in nodes],
        })
    return rows


def summary_text(model: "Model") -> SummaryText:
    """The Keras-style table of ``summary_rows`` with totals."""
    rows = summary_rows(model)
    total = int(sum(a.size for a in model.graph.weights.values()))
    nbytes = int(sum(a.nbytes for a in model.graph.weights.values()))
    keras = all(r["keras_params"] is not None for r in rows) and bool(rows)
    heads = ("Layer (type)", "Output Shape") + (("Param #",) if keras else ()) + ("keydnn params", "keydnn nodes")
    table = [(f"{r['layer']} ({r['class']})", r["output_shape"]) + ((f"{r['keras_params']:,}",) if keras else ())
             + (f"{r['params']:,}", ", ".join(r["nodes"]) if r["nodes"] else "(none left: fused, folded or "
                "identity at inference)") for r in rows]
    widths = [max([len(h)] + [len(t[i]) for t in table]) for i, h in enumerate(heads)]
    rule = "-" * (sum(widths) + 3 * (len(widths) - 1))

    def line(cells: tuple) -> str:
        parts = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        parts += [c.rjust(w) for c, w in zip(cells[2:-1], widths[2:-1])]
        return "   ".join(parts + [cells[-1]]).rstrip()

    ins = ", ".join(f"{v.name} {_shape(v.type)}" for v in model.graph.inputs)
    out = [f'Model: "{model.graph.name}" (keydnn.{type(model).__name__} on {model.device}; input {ins})',
           rule, line(heads), rule]
    out += [line(t) for t in table]
    out.append(rule)
    if keras:
        out.append(f"Total params: {sum(r['keras_params'] for r in rows):,} (as Keras counts them)")
    out += [f"keydnn params: {total:,} ({_size(nbytes)}; a BatchNormalization is folded and an activation fused "
            "into the layer before it)",
            "(output shapes in keydnn's compute layout, batch as None)"]
    return SummaryText("\n".join(out))


def _size(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.2f} {unit}" if unit != "B" else f"{nbytes} B"
        nbytes /= 1024  # type: ignore[assignment]
    return f"{nbytes} B"  # pragma: no cover


_PROFILE_LOCK = threading.Lock()


def profile_rows(model: "Model", batch: int = 1, repeat: int = 20, warmup: int = 3) -> list[dict]:
    """Per generated-code stage: time per call (ms) and share of the call, measured over ``repeat`` calls at
    ``batch`` random samples on the calling thread plus the pool's workers.

    The time of a stage is what the calling thread spent in it, working and waiting for the other threads
    to finish it (its counters are read before and after the timed calls); shares are of their sum, and
    the times are that share of the measured wall time per call.
    """
    if model.device.kind != "cpu":
        raise ValueError(f"profile needs a CPU model (the generated code's counters); this one is on {model.device}")
    if batch < 1 or repeat < 1:
        raise ValueError("batch and repeat must be positive")
    from keydnn.backends.numba_cpu.runtime import executable as cg_exec
    from keydnn.verify import sample_inputs

    with _PROFILE_LOCK:  # the profiling build is chosen by a module switch
        saved = cg_exec.PROFILE
        cg_exec.PROFILE = True
        try:
            model._check_runnable()
            from keydnn import progress

            progress.install_compile_reporter()
            with progress.setting(model.progress):
                exe = cg_exec.try_codegen(model.graph)
        finally:
            cg_exec.PROFILE = saved
    if exe is None:
        raise ValueError("this graph runs per op (KEYDNN_CPU_MODE=ops or an op the code generator lacks); "
                         "profile needs the generated code")
    if model.threads is not None:
        exe.set_threads(model.threads)
    xs = [np.ascontiguousarray(x, dtype=t.np_dtype) for x, t in zip(sample_inputs(model.input_types, n=batch, graph=model.graph),
                                                                       model.input_types)]
    for _ in range(warmup):
        exe(*xs)
    before = _counters(exe)
    start = time.perf_counter()
    for _ in range(repeat):
        exe(*xs)
    wall = (time.perf_counter() - start) / repeat
    after = _counters(exe)
    spent = {k: after[k][0] - before.get(k, (0, 0))[0] for k in after}
    busy = {k: after[k][1] - before.get(k, (0, 0))[1] for k in after}
    total = sum(spent.values()) or 1
    return [{"stage": k, "ms": wall * 1e3 * spent[k] / total, "share": spent[k] / total,
             "busy_share": busy[k] / (sum(busy.values()) or 1)} for k in after]


def _counters(exe: Any) -> dict[str, tuple[int, int]]:
    """Per stage (in program order): (calling thread's busy + waiting cycles, all threads' busy cycles)."""
    out: dict[str, tuple[int, int]] = {}
    for desc, busy, wait in exe.stage_profile():
        if not busy:
            continue
        mine, all_busy = out.get(desc, (0, 0))
        out[desc] = (mine + busy[0] + wait[0], all_busy + sum(busy))
    return out


def profile_text(rows: list[dict], *, title: str) -> str:
    """The profile as a table, in program order, with the share of the whole call."""
    width = max([len("stage")] + [len(r["stage"]) for r in rows])
    lines = [title, f"{'stage':<{width}}  {'ms/call':>9}  {'share':>6}"]
    for r in rows:
        lines.append(f"{r['stage']:<{width}}  {r['ms']:>9.3f}  {100 * r['share']:>5.1f}%")
    lines.append(f"{'total':<{width}}  {sum(r['ms'] for r in rows):>9.3f}  100.0%")
    return "\n".join(lines)
