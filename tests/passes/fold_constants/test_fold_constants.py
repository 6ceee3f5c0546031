"""fold-constants: constant subgraphs, transpose / reshape chains and scale_shift chains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from keydnn.errors import IRError
from keydnn.ir import Node, Value, run_reference, verify
from keydnn.ir.ops import Dense, ExpandDims, Flatten, Relu, Reshape, ScaleShift, Squeeze, Transpose
from keydnn.ir.passes import PassManager
from keydnn.ir.passes.fold_constants import FoldConstants

from ..builders import GraphBuilder, assert_same_numerics, count
from ..golden import assert_golden
from ..harness import check_pass

HERE = Path(__file__).resolve().parent
PASS = "fold-constants"


def test_transpose_chain_becomes_one_transpose():
    b = GraphBuilder("transposes")
    x = b.input("x", ("N", 2, 3, 4))
    h = b.add(Transpose(perm=(0, 2, 3, 1)), x, name="t1")
    h = b.add(Transpose(perm=(0, 1, 3, 2)), h, name="t2")
    h = b.add(Transpose(perm=(0, 3, 2, 1)), h, name="t3")
    g = b.build(b.add(Relu(), h, name="relu"))
    out = check_pass(g, PASS, HERE / "transpose_chain.txt")
    assert count(out, "transpose") == 1


def test_transposes_that_cancel_disappear_with_eliminate_identity():
    b = GraphBuilder("transposes_cancel")
    x = b.input("x", ("N", 2, 3, 4))
    h = b.add(Transpose(perm=(0, 2, 3, 1)), x, name="t1")
    h = b.add(Transpose(perm=(0, 3, 1, 2)), h, name="t2")
    g = b.build(b.add(Relu(), h, name="relu"))
    out = check_pass(g, "fold-constants,eliminate-identity", None)
    assert [n.op.kind for n in out.nodes] == ["relu"]


def test_squeeze_then_expand_dims_cancels():
    """Between two 1-D layers (channels-first), the squeeze / expand_dims pair is an identity reshape."""
    b = GraphBuilder("squeeze_expand")
    x = b.input("x", ("N", 3, 1, 8), "NCHW")
    h = b.add(Squeeze(axis=2, layout="NCW"), x, name="sq")
    h = b.add(ExpandDims(axis=2, layout="NCHW"), h, name="ex")
    g = b.build(b.add(Relu(), h, name="relu"))
    out = check_pass(g, "fold-constants,eliminate-identity", HERE / "squeeze_expand.txt")
    assert [n.op.kind for n in out.nodes] == ["relu"]


def test_reshape_chain_and_flatten_of_reshape():
    b = GraphBuilder("reshapes")
    x = b.input("x", ("N", 4, 6))
    h = b.add(Reshape(shape=(24,)), x, name="r1")
    h = b.add(Reshape(shape=(2, 12)), h, name="r2")
    h = b.add(ExpandDims(axis=1), h, name="ex")
    r = b.add(Reshape(shape=(3, 8)), h, name="r3")
    f = b.add(Flatten(), h, name="flat")
    g = b.build(r, f)
    out = check_pass(g, PASS, HERE / "reshape_chain.txt")
    assert {n.inputs[0] for n in out.nodes} == {"x"}


@pytest.mark.parametrize("first,second", [
    ((1, (3,), (3,)), (1, (3,), (3,))),          # per-channel, same axis
    ((1, (3,), (3,)), (None, (), ())),           # then a scalar Rescaling
    ((None, (), ()), (-1, (5,), (1,))),          # scalar then per-channel on the last axis
    ((1, (3,), ()), (None, (1, 4, 5), (3, 1, 1))),  # per-channel then broadcast form
    ((None, (1, 4, 1), ()), (3, (5,), (5,))),    # two different axes: broadcast form
])
def test_scale_shift_chains_merge(first, second):
    b = GraphBuilder("scale_shift_chain")
    x = b.input("x", ("N", 3, 4, 5))
    h = x
    for i, (axis, s_shape, t_shape) in enumerate((first, second)):
        h = b.add(ScaleShift(axis=axis), h, b.rand(f"s{i}.scale", s_shape), b.rand(f"s{i}.shift", t_shape),
                  name=f"s{i}")
    g = b.build(b.add(Relu(), h, name="relu"))
    out = check_pass(g, PASS, None)
    assert count(out, "scale_shift") == 1


def test_scale_shift_chain_golden():
    b = GraphBuilder("rescale_then_normalize")
    x = b.input("x", ("N", 3, 4, 4), "NCHW")
    h = b.add(ScaleShift(axis=None), x, b.const("rescale.scale", np.array(1 / 255)),
              b.const("rescale.shift", np.array(0.0)), name="rescale")
    h = b.add(ScaleShift(axis=1), h, b.rand("norm.scale", (3,)), b.rand("norm.shift", (3,)), name="norm")
    g = b.build(b.add(Relu(), h, name="relu"))
    out = check_pass(g, PASS, HERE / "scale_shift_chain.txt")
    assert next(n for n in out.nodes if n.op.kind == "scale_shift").op.axis == 1


def test_computed_weight_becomes_a_constant():
    """A dense weight given by transpose(W) is invalid IR until folded into a constant."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 5)).astype("f4")
    b = GraphBuilder("computed_weight")
    x = b.input("x", ("N", 5), "NC")
    wt = b.add(Transpose(perm=(1, 0)), b.const("w", w), name="w_t")
    g = b.build(b.add(Dense(), x, wt, name="fc"), check=False)
    with pytest.raises(IRError, match="must be a constant"):
        verify(g)
    out = FoldConstants().run(g).graph
    verify(out, require_types=True)
    assert [n.op.kind for n in out.nodes] == ["dense"] and set(out.weights) == {"w_t"}
    assert_golden(str(out), HERE / "computed_weight.txt")
    assert_same_numerics(g, out)
    assert not FoldConstants().run(out).changed


def test_constant_result_used_as_activation_is_not_folded():
    b = GraphBuilder("const_activation")
    x = b.input("x", ("N", 5), "NC")
    g = b.build(b.dense(x, 3, name="fc"))
    node = Node(name="r", op=Relu(), inputs=("fc.kernel",), outputs=(Value(name="r"),))
    g2 = g.replace(nodes=g.nodes + (node,), outputs=("fc", "r"))
    assert FoldConstants().run(g2).graph is g2


def test_graph_without_foldable_nodes_is_unchanged():
    b = GraphBuilder("nothing")
    x = b.input("x", ("N", 5), "NC")
    g = b.build(b.add(Relu(), b.dense(x, 3, name="fc"), name="relu"))
    result = PassManager(PASS).run(g)
    assert result.graph is g and not result.records[0].changed
    assert run_reference(g, np.ones((1, 5), "f4"))[0].shape == (1, 3)
