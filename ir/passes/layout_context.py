"""The bookkeeping of ``canonicalize-layout``: value forms, cached transposes, fresh names.

The rules (``layout_rules``) decide what each op needs; this context answers
"give me value v in axis order p" by returning an existing tensor or
inserting one transpose (cached per source and permutation), and builds the
new node list with types inferred as it goes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from keydnn.errors import PassError
from keydnn.ir.graph import Graph, Node
from keydnn.ir.ops import OpBase, ShapeError, Transpose
from keydnn.ir.passes.layout_rules import (
    CHANNELS_FIRST_OF, CHANNELS_LAST, FLATTEN_PASS_THROUGH, Form, Perm, cf_perm, compose, inverse, is_identity,
    layout_for,
)
from keydnn.ir.passes.rewrite import fresh_name, used_names
from keydnn.ir.types import TensorType, Value

__all__ = ["LayoutContext", "InputLayout", "needs_canonicalization"]

InputLayout = Literal["keras", "channels_first"]


def _input_layout(graph: Graph, name: str, typ: TensorType | None) -> str:
    """A graph input's logical layout: its declared one, or NHWC/NWC read off a channels_last user."""
    if typ is None or typ.layout != "ANY":
        return typ.layout if typ is not None else "ANY"
    for node in graph.users().get(name, []):
        layout = getattr(node.op, "layout", None)
        if node.op.kind == "expand_dims" and layout == "NHWC" and typ.rank == 3:
            return "NWC"
        if layout == "NHWC" and typ.rank == 4 and node.op.kind not in ("transpose", "reshape"):
            return "NHWC"
        if layout == "NDHWC" and typ.rank == 5:
            return "NDHWC"
    return "ANY"


def needs_canonicalization(graph: Graph) -> bool:
    """Whether anything in ``graph`` is channels_last (a channels_first graph is left as it is)."""
    if any(_input_layout(graph, v.name, v.type) in CHANNELS_LAST for v in graph.inputs):
        return True
    for node in graph.nodes:
        if getattr(node.op, "layout", None) in CHANNELS_LAST:
            return True
        if any(o.type is not None and o.type.layout in CHANNELS_LAST for o in node.outputs):
            return True
    return False


class LayoutContext:
    """The state of one walk: forms of the old values, and the new graph being built."""

    def __init__(self, graph: Graph, input_layout: InputLayout) -> None:
        self.graph = graph
        self.types = graph.value_types()
        self.const_names = {c.name for c in graph.constants}
        self.weights: dict[str, np.ndarray] = dict(graph.weights)
        self.new_weights: dict[str, np.ndarray] = {}
        self.outputs = set(graph.outputs)
        self.users = graph.users()
        self.reserved = used_names(graph)
        self.used: set[str] = set(self.const_names)
        self.node_names: set[str] = set()
        self.nodes: list[Node] = []
        self.new_types: dict[str, TensorType | None] = {c.name: c.type for c in graph.constants}
        self.forms: dict[str, Form] = {}
        self._transposes: dict[tuple[str, Perm], str] = {}
        self._consts: dict[tuple, str] = {}
        self._layouts: dict[str, str] = {}
        self.inputs: list[Value] = []
        for v in graph.inputs:
            self.used.add(v.name)
            layout = _input_layout(graph, v.name, v.type)
            self._layouts[v.name] = layout
            if input_layout == "channels_first" and layout in CHANNELS_LAST and v.type is not None:
                p = cf_perm(v.type.rank)
                typ = v.type.with_shape(tuple(v.type.shape[i] for i in p), CHANNELS_FIRST_OF[layout])
                self.inputs.append(Value(name=v.name, type=typ))
                self.forms[v.name] = Form(v.name, p)
            else:
                self.inputs.append(v)
                self.forms[v.name] = Form(v.name, tuple(range(v.type.rank)) if v.type is not None else None)
            self.new_types[v.name] = self.inputs[-1].type

    # -- queries used by the rules ---------------------------------------------
    def form(self, value: str) -> Form:
        if value in self.const_names:
            return Form(value)
        return self.forms[value]

    def is_constant(self, value: str) -> bool:
        return value in self.const_names or value in self.new_weights

    def logical_type(self, value: str) -> TensorType | None:
        return self.types.get(value)

    def logical_layout(self, value: str) -> str:
        if value in self._layouts:
            return self._layouts[value]
        typ = self.types.get(value)
        return typ.layout if typ is not None else "ANY"

    def flatten_feeds_dense(self, node: Node) -> bool:
        """Whether every use of this flatten's result reaches a dense's input through elementwise ops only."""
        stack, found = [node.outputs[0].name], False
        while stack:
            value = stack.pop()
            users = self.users.get(value, [])
            if value in self.outputs or not users:
                return False
            for user in users:
                if user.op.kind == "dense" and user.inputs[0] == value and value not in user.inputs[1:]:
                    found = True
                elif user.op.kind in FLATTEN_PASS_THROUGH and user.inputs == (value,):
                    stack.append(user.outputs[0].name)
                else:
                    return False
        return found

    def available(self, value: str, want: Perm) -> bool:
        """Whether ``value`` in axis order ``want`` is at hand (its own form, or an existing transpose)."""
        if value in self.const_names:
            return False
        f = self.forms[value]
        if f.rows is not None or f.perm is None or len(f.perm) != len(want):
            return False
        r = compose(inverse(f.perm), tuple(want))
        return is_identity(r) or (f.src, r) in self._transposes

    # -- building the new graph --------------------------------------------------
    def define(self, value: str, form: Form) -> None:
        self.forms[value] = form

    def _claim(self, value: str, fallback: str) -> str:
        """The value's own name if still free in the new graph, else a fresh ``fallback``."""
        if value not in self.used:
            self.used.add(value)
            return value
        return self._fresh(fallback)

    def _fresh(self, base: str) -> str:
        taken = self.used | self.reserved
        name = fresh_name(base, taken)
        self.used.add(name)
        return name

    def constant(self, base: str, array: np.ndarray, key: tuple | None = None) -> str:
        """A new constant (deduplicated by ``key`` when given)."""
        if key is not None and key in self._consts:
            return self._consts[key]
        name = self._fresh(base)
        self.new_weights[name] = np.ascontiguousarray(array)
        self.weights[name] = self.new_weights[name]
        self.new_types[name] = TensorType(shape=array.shape, dtype=str(array.dtype))
        if key is not None:
            self._consts[key] = name
        return name

    def get(self, value: str, want: Perm | None) -> str:
        """Name of a tensor holding ``logical(value).transpose(want)`` (None: logical order)."""
        if value in self.const_names:
            return value
        f = self.forms[value]
        if f.rows is not None:
            raise PassError(f"canonicalize-layout: value %{value} is a folded flatten and has no logical form")
        if f.perm is None:
            if not is_identity(want):
                raise PassError(f"canonicalize-layout: value %{value} has unknown rank")
            return f.src
        want = tuple(range(len(f.perm))) if want is None else tuple(want)
        r = compose(inverse(f.perm), want)
        if is_identity(r):
            return f.src
        key = (f.src, r)
        if key not in self._transposes:
            layout = layout_for(self.logical_layout(value), want)
            tag = layout.lower() if layout != "ANY" else "t" + "".join(map(str, want))
            name = self._claim(value, f"{value}.{tag}") if is_identity(want) else self._fresh(f"{value}.{tag}")
            op = Transpose(perm=r, layout=layout)  # type: ignore[arg-type]
            self._append(Node(name=name, op=op, inputs=(f.src,), outputs=(Value(name=name, type=None),)))
            self._transposes[key] = name
        return self._transposes[key]

    def output(self, value: str) -> str:
        """The name a graph output gets: its logical form, never a bare graph input under another name.

        (Like eliminate-identity, an input returned as an output keeps an
        identity node, so the output's name survives.)
        """
        name = self.get(value, None)
        if name == value or name not in {v.name for v in self.inputs}:
            return name
        typ = self.new_types.get(name)
        perm = tuple(range(typ.rank)) if typ is not None else ()
        op = Transpose(perm=perm, layout=self.logical_layout(value))  # type: ignore[arg-type]
        out = self._claim(value, f"{value}.out")
        self._append(Node(name=out, op=op, inputs=(name,), outputs=(Value(name=out, type=None),)))
        return out

    def emit(self, node: Node, op: OpBase, inputs: list[str], *, perm: Perm | None,
             rows: tuple[int, ...] | None = None, tag: str = "") -> str:
        """Append the rewritten ``node``; its result is ``node``'s value in form ``perm`` / ``rows``."""
        value = node.outputs[0].name
        natural = rows is None and is_identity(perm)
        if natural or value not in self.outputs:
            suffix = tag or layout_for(self.logical_layout(value), perm).lower()
            name = self._claim(value, f"{value}.{suffix}")
        else:
            name = self._fresh(f"{value}.{layout_for(self.logical_layout(value), perm).lower()}")
        node_name = node.name if name == value else name
        if node_name in self.node_names:
            node_name = self._fresh(node_name)
        source = node.source if node_name == node.name else (node.source or node.name)
        new = Node(name=node_name, op=op, inputs=tuple(inputs), outputs=(Value(name=name, type=None),), source=source)
        self._append(new)
        if perm is None and rows is None:
            typ = self.new_types.get(name)
            perm = tuple(range(typ.rank)) if typ is not None else None
        self.forms[value] = Form(name, perm, rows, tag)
        return name

    def _append(self, node: Node) -> None:
        in_types = [self.new_types.get(i) for i in node.inputs]
        typ = None
        if all(t is not None for t in in_types):
            try:
                typ = node.op.infer(in_types)  # type: ignore[arg-type]
            except ShapeError as exc:
                if node.op.kind != "opaque":  # a placeholder of unknown shape stays untyped, as infer-shapes keeps it
                    raise PassError(f"canonicalize-layout: rewritten node {node.name} ({node.op.kind}): {exc}") from exc
        node = node.model_copy(update={"outputs": (Value(name=node.outputs[0].name, type=typ),)})
        self.new_types[node.outputs[0].name] = typ
        self.node_names.add(node.name)
        self.nodes.append(node)
