"""Build small IR graphs in Python for pass tests, and check two graphs compute the same thing.

The builder infers every node's type as it goes (so tests read like the
Keras model they stand for), draws weights from a seeded generator, and
knows Keras's 'same' padding rule.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from keydnn.ir import Graph, Node, TensorType, Value, run_reference, verify
from keydnn.ir.ops import BatchNorm, Conv2d, Dense, OpBase

__all__ = ["GraphBuilder", "same_pads", "random_inputs", "assert_same_numerics", "count", "kinds", "ATOL"]

ATOL = 1e-5


def same_pads(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow 'same' padding (extra pixel after)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class GraphBuilder:
    """Append-only graph construction with inferred types and seeded random weights."""

    def __init__(self, name: str = "g", *, dtype: str = "float32", seed: int = 0) -> None:
        self.name = name
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)
        self.inputs: list[Value] = []
        self.nodes: list[Node] = []
        self.weights: dict[str, np.ndarray] = {}
        self.types: dict[str, TensorType] = {}

    # -- values ------------------------------------------------------------------
    def input(self, name: str, shape: Sequence, layout: str = "ANY") -> str:
        typ = TensorType(shape=tuple(shape), dtype=self.dtype, layout=layout)
        self.inputs.append(Value(name=name, type=typ))
        self.types[name] = typ
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        arr = np.asarray(array, dtype=self.dtype)
        self.weights[name] = arr
        self.types[name] = TensorType(shape=arr.shape, dtype=self.dtype)
        return name

    def rand(self, name: str, shape: Sequence[int], scale: float = 1.0, low: float | None = None) -> str:
        if low is not None:
            return self.const(name, self.rng.uniform(low, low + scale, size=tuple(shape)))
        return self.const(name, self.rng.normal(0.0, scale, size=tuple(shape)))

    def shape(self, value: str) -> tuple:
        return self.types[value].shape

    def add(self, op: OpBase, *inputs: str, name: str | None = None) -> str:
        name = name or f"{op.kind}{len(self.nodes)}"
        typ = op.infer([self.types[i] for i in inputs])
        self.nodes.append(Node(name=name, op=op, inputs=tuple(inputs), outputs=(Value(name=name, type=typ),)))
        self.types[name] = typ
        return name

    # -- layers ------------------------------------------------------------------
    def conv(self, x: str, out_ch: int, k: int | tuple[int, int], *, stride: int = 1, padding: str = "valid",
             groups: int = 1, layout: str = "NHWC", bias: bool = True, dilation: int = 1,
             name: str | None = None, activation: OpBase | None = None) -> str:
        kh, kw = (k, k) if isinstance(k, int) else k
        n, *rest = self.shape(x)
        c, h, w = (rest[2], rest[0], rest[1]) if layout == "NHWC" else rest
        pads = (0, 0, 0, 0)
        if padding == "same":
            pads = (*same_pads(h, kh, stride, dilation), *same_pads(w, kw, stride, dilation))
        name = name or f"conv{len(self.nodes)}"
        fan_in = c // groups * kh * kw
        wname = self.rand(f"{name}.kernel", (out_ch, c // groups, kh, kw), scale=1 / math.sqrt(fan_in))
        operands = [wname]
        if bias:
            operands.append(self.rand(f"{name}.bias", (out_ch,), scale=0.1))
        op = Conv2d(strides=(stride, stride), dilations=(dilation, dilation), pads=pads, groups=groups,
                    layout=layout, activation=activation)
        return self.add(op, x, *operands, name=name)

    def dense(self, x: str, units: int, *, bias: bool = True, name: str | None = None,
              activation: OpBase | None = None) -> str:
        name = name or f"dense{len(self.nodes)}"
        fan_in = self.shape(x)[-1]
        operands = [self.rand(f"{name}.kernel", (fan_in, units), scale=1 / math.sqrt(fan_in))]
        if bias:
            operands.append(self.rand(f"{name}.bias", (units,), scale=0.1))
        return self.add(Dense(activation=activation), x, *operands, name=name)

    def bn(self, x: str, axis: int = -1, *, center: bool = True, scale: bool = True, epsilon: float = 1e-3,
           name: str | None = None) -> str:
        """BatchNormalization with Keras's weights; gamma/beta materialized as ones/zeros when off."""
        name = name or f"bn{len(self.nodes)}"
        c = self.shape(x)[axis]
        mean = self.rand(f"{name}.moving_mean", (c,), scale=0.5)
        var = self.rand(f"{name}.moving_variance", (c,), scale=1.0, low=0.5)
        if scale:
            gamma = self.rand(f"{name}.gamma", (c,), scale=1.0, low=0.5)
        else:
            gamma = self.const(f"{name}.gamma", np.ones(c))
        beta = self.rand(f"{name}.beta", (c,), scale=0.3) if center else self.const(f"{name}.beta", np.zeros(c))
        return self.add(BatchNorm(epsilon=epsilon, axis=axis), x, mean, var, gamma, beta, name=name)

    def build(self, *outputs: str, check: bool = True) -> Graph:
        g = Graph.build(name=self.name, inputs=tuple(self.inputs), outputs=tuple(outputs),
                        nodes=tuple(self.nodes), weights=self.weights)
        if check:
            verify(g, require_types=True)
        return g


def random_inputs(graph: Graph, seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for v in graph.inputs:
        assert v.type is not None
        shape = tuple(batch if isinstance(d, str) else d for d in v.type.shape)
        arrays[v.name] = rng.normal(size=shape).astype(v.type.dtype)
    return arrays


def assert_same_numerics(before: Graph, after: Graph, *, seed: int = 0, batch: int = 2, atol: float = ATOL,
                         feed: Callable[[str, np.ndarray], np.ndarray] | None = None) -> None:
    """``run_reference(before) == run_reference(after)`` on random inputs.

    ``feed(name, array)`` turns an input of ``before`` into what ``after``
    takes (e.g. an NHWC batch into NCHW when the input layout was changed).
    """
    xs = random_inputs(before, seed, batch)
    ys = {k: feed(k, v) for k, v in xs.items()} if feed is not None else xs
    want = run_reference(before, xs)
    got = run_reference(after, ys)
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert w.shape == g.shape, (w.shape, g.shape)
        np.testing.assert_allclose(g, w, atol=atol, rtol=0)


def kinds(graph: Graph) -> list[str]:
    return [n.op.kind for n in graph.nodes]


def count(graph: Graph, kind: str) -> int:
    return sum(1 for n in graph.nodes if n.op.kind == kind)
