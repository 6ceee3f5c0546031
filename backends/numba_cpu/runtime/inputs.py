"""Checks of the inputs of one call of the code-generating executable: the batch and the variant key (the
per-sample shapes, which inputs are batched), token ids range-checked against their tables, and which outputs
of a call with batch-1 inputs beside batch-N ones depend on batch-1 inputs only.

Apart from ``executable`` so that the executable module holds compiling and running; these depend only on the
graph's declared inputs and the arrays of the call.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from keydnn.ir.graph import Graph

__all__ = ["batch_key", "store_ids", "constant_outputs"]


def batch_key(graph: Graph, arrays: list[np.ndarray]) -> tuple[int, tuple]:
    """Batch size and variant key; checks every input against its declared type."""
    leads = [a.shape[0] if a.ndim else 0 for a in arrays]
    n = max(leads) if leads else 1
    for v, a in zip(graph.inputs, arrays):
        if not v.type.matches(a.shape):
            raise ValueError(f"input %{v.name} has shape {a.shape}, graph expects {v.type}")
        if a.shape[0] not in (1, n):
            raise ValueError(f"input %{v.name} has batch {a.shape[0]}, other inputs {n}")
    batched = tuple(lead == n for lead in leads)
    return n, (tuple(a.shape[1:] for a in arrays), batched)


def store_ids(graph: Graph, inputs: Sequence, checks, ids: frozenset, id_dtype: np.dtype,
              dtype: np.dtype) -> list:
    """Token ids checked against the tables they index (a clear error, never a read outside a table) and
    integer inputs stored as ``id_dtype`` in an array of the graph's ``dtype`` (``cg_emit_seq``)."""
    out = list(inputs)
    for pos, vocab, layer in checks:
        a = np.asarray(out[pos])
        idx = a if a.dtype.kind in "iub" else np.trunc(a)
        if idx.size and not (idx.min() >= 0 and idx.max() < vocab):
            bad = idx[~((idx >= 0) & (idx < vocab))].flat[0]
            raise ValueError(f"embedding {layer!r}: index {bad} is outside the table [0, {vocab})")
    for pos in ids:
        a = np.asarray(out[pos])
        if a.dtype.kind not in "iub":
            if a.size and not np.array_equal(a, np.trunc(a)):
                raise ValueError(f"input %{graph.inputs[pos].name} holds integer ids; got non-integral "
                                 f"values of dtype {a.dtype}")
        info = np.iinfo(id_dtype)
        if a.size and a.dtype != id_dtype and (a.min() < info.min or a.max() > info.max):
            raise ValueError(f"input %{graph.inputs[pos].name}: ids outside the {id_dtype} range")
        out[pos] = np.ascontiguousarray(a, dtype=id_dtype).view(dtype)
    return out


def constant_outputs(graph: Graph, batched: tuple[bool, ...]) -> tuple[bool, ...]:
    """Per graph output: whether it depends on batch-1 inputs only (every row of it is then the same)."""
    rows = dict(zip((v.name for v in graph.inputs), batched))
    for node in graph.nodes:
        rows[node.outputs[0].name] = any(rows.get(i, False) for i in node.inputs)
    return tuple(not rows[name] for name in graph.outputs)
