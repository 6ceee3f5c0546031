"""IR core: types, validated ops, graph JSON round trip, printer, verifier, pass manager."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from keydnn.errors import IRError, PassError
from keydnn.ir import Graph, Node, TensorType, Value, run_reference, verify
from keydnn.ir.ops import Activation, Conv2d, Dense, Flatten, GlobalAvgPool2d, MaxPool2d, Relu, Reshape, Softmax, Transpose
from keydnn.ir.passes import PASS_REGISTRY, Pass, PassManager, PassResult, parse_pipeline, register_pass, run_pipeline


def _node(name, op, *inputs):
    return Node(name=name, op=op, inputs=inputs, outputs=(Value(name=name),))


def small_graph(seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    weights = {
        "c.w": rng.normal(size=(4, 2, 3, 3)).astype("f4"),
        "c.b": rng.normal(size=4).astype("f4"),
        "d.w": rng.normal(size=(4, 3)).astype("f4"),
    }
    nodes = (
        _node("c", Conv2d(pads=(1, 1, 0, 1), strides=(2, 1)), "x", "c.w", "c.b"),
        _node("r", Relu(max_value=6.0), "c"),
        _node("p", MaxPool2d(kernel=(2, 2), strides=(1, 2)), "r"),
        _node("g", GlobalAvgPool2d(), "p"),
        _node("f", Flatten(), "g"),
        _node("d", Dense(), "f", "d.w"),
        _node("lin", Activation(function="linear"), "d"),
        _node("s", Softmax(axis=-1), "lin"),
    )
    x = Value(name="x", type=TensorType(shape=("N", 2, 9, 8), layout="NCHW"))
    return Graph.build(name="small", inputs=(x,), outputs=("s",), nodes=nodes, weights=weights)


def test_tensor_type_text_and_validation():
    t = TensorType(shape=("N", 3, 4), dtype="float32", layout="ANY")
    assert str(t) == "f32[N,3,4]"
    assert str(TensorType(shape=("N", 2), layout="NC")) == "f32[N,2] NC"
    assert t.matches((7, 3, 4)) and not t.matches((7, 3, 5)) and not t.matches((3, 4))
    with pytest.raises(ValidationError):
        TensorType(shape=(-1, 2))
    with pytest.raises(ValidationError):
        TensorType(shape=(2,), dtype="int8")


@pytest.mark.parametrize("bad", [
    lambda: Conv2d(strides=(0, 1)),
    lambda: Conv2d(pads=(-1, 0, 0, 0)),
    lambda: Conv2d(groups=0),
    lambda: MaxPool2d(kernel=(2, 2), strides=(2, 2), pads=(2, 0, 0, 0)),
    lambda: Relu(max_value=-1.0),
    lambda: Transpose(perm=(0, 0, 1)),
    lambda: Reshape(shape=(-1, -1)),
    lambda: Activation(function="not-a-function"),
    lambda: Conv2d(unknown=1),
])
def test_op_attributes_are_validated(bad):
    with pytest.raises(ValidationError):
        bad()


def test_infer_shapes_types_every_value_and_json_round_trip():
    g = run_pipeline(small_graph(), "infer-shapes")
    types = g.value_types()
    assert str(types["c"]) == "f32[N,4,5,7] NCHW"
    assert str(types["p"]) == "f32[N,4,4,3] NCHW"
    assert str(types["s"]) == "f32[N,3] NC"
    again = Graph.model_validate_json(g.model_dump_json()).with_weights(g.weights)
    assert again == g
    assert str(again) == str(g)


def test_with_weights_checks_checksums():
    g = small_graph()
    tampered = dict(g.weights)
    tampered["c.b"] = tampered["c.b"] + 1
    with pytest.raises(ValueError, match="SHA-256"):
        Graph.model_validate_json(g.model_dump_json()).with_weights(tampered)


def test_printer_is_deterministic_and_hides_weight_values():
    a, b = str(small_graph(0)), str(small_graph(0))
    assert a == b
    assert str(small_graph(1)) != a  # the checksums differ
    assert "0x" not in a and "array" not in a
    assert "%c = conv2d(%x, %c.w, %c.b) {strides=[2,1], dilations=[1,1], pads=[1,1,0,1], groups=1, layout=NCHW}" in a


def test_verifier_reports_ssa_and_type_violations():
    g = run_pipeline(small_graph(), "infer-shapes")
    nodes = list(g.nodes)
    nodes[1], nodes[2] = nodes[2], nodes[1]  # use before definition
    with pytest.raises(IRError, match="used before it is defined"):
        verify(g.replace(nodes=tuple(nodes)))
    bad_type = g.nodes[0].model_copy(update={"outputs": (Value(name="c", type=TensorType(shape=("N", 4, 5, 9))),)})
    with pytest.raises(IRError, match="disagrees with shape rule"):
        verify(g.replace(nodes=(bad_type,) + g.nodes[1:]))
    dup = g.nodes[:2] + (g.nodes[1],) + g.nodes[2:]
    with pytest.raises(IRError, match="defined more than once"):
        verify(g.replace(nodes=dup))
    const_as_act = _node("oops", Relu(), "c.w")
    with pytest.raises(IRError, match="must not be a constant"):
        verify(g.replace(nodes=g.nodes + (const_as_act,)))


def test_default_passes_preserve_numerics_and_remove_identities():
    g = small_graph()
    out = PassManager().run(g)
    kinds = [n.op.kind for n in out.graph.nodes]
    assert "activation" not in kinds and "flatten" not in kinds
    assert [r.name for r in out.records] == PassManager().names
    x = np.random.default_rng(3).normal(size=(2, 2, 9, 8)).astype("f4")
    np.testing.assert_allclose(run_reference(out.graph, x)[0], run_reference(run_pipeline(g, "infer-shapes"), x)[0],
                               rtol=1e-6, atol=1e-6)
    # Passes never mutate their input.
    assert str(g) == str(small_graph())


def test_dead_code_drops_unused_nodes_and_constants():
    g = small_graph()
    extra = _node("unused", Relu(), "c")
    g = g.replace(nodes=g.nodes + (extra,))
    out = run_pipeline(g, "infer-shapes,eliminate-dead-code")
    assert "unused" not in [n.name for n in out.nodes]
    g2 = g.replace(outputs=("r",))
    out2 = run_pipeline(g2, "infer-shapes,eliminate-dead-code")
    assert set(out2.weights) == {"c.w", "c.b"}


def test_pipeline_spec_errors_and_editing():
    with pytest.raises(PassError, match="unknown pass 'nope'.*registered passes"):
        parse_pipeline("infer-shapes,nope")
    pm = PassManager("infer-shapes")
    pm.add("eliminate-dead-code").add("eliminate-identity", before="eliminate-dead-code")
    assert pm.names == ["infer-shapes", "eliminate-identity", "eliminate-dead-code"]
    pm.remove("eliminate-identity")
    assert pm.names == ["infer-shapes", "eliminate-dead-code"]


def test_print_after_and_timing():
    seen: list[str] = []
    result = PassManager("infer-shapes,eliminate-identity", print_after="all",
                         printer=lambda name, g: seen.append(name)).run(small_graph())
    assert seen == ["input", "infer-shapes", "eliminate-identity"]
    assert all(r.seconds >= 0 for r in result.records)
    assert "infer-shapes" in result.timing_table()


def test_verify_after_each_pass_names_the_broken_pass():
    class Breaker(Pass):
        """Deliberately breaks SSA form."""

        name = "test-breaker"

        def run(self, graph):
            return PassResult(graph.replace(nodes=graph.nodes[::-1]), True)

    with pytest.raises(PassError, match="pass 2 'test-breaker'.*invalid IR"):
        PassManager(["infer-shapes", Breaker()]).run(small_graph())


def test_user_pass_registration():
    @register_pass
    class CountNodes(Pass):
        """Changes nothing; records how many nodes it saw."""

        name = "test-count-nodes"
        seen = 0

        def run(self, graph):
            type(self).seen = len(graph.nodes)
            return PassResult(graph, False)

    try:
        run_pipeline(small_graph(), "infer-shapes,test-count-nodes")
        assert CountNodes.seen == 8
        with pytest.raises(ValueError, match="kebab-case"):
            register_pass(type("Bad", (Pass,), {"name": "Bad_Name"}))
    finally:
        PASS_REGISTRY.pop("test-count-nodes", None)


def test_shape_errors_name_the_node():
    g = small_graph()
    bad = g.replace(inputs=(Value(name="x", type=TensorType(shape=("N", 3, 9, 8), layout="NCHW")),))
    with pytest.raises(PassError, match="node c.*3 channels"):
        run_pipeline(bad, "infer-shapes")


@pytest.mark.parametrize("pads,strides,kernel,dil", [((0, 1, 1, 0), (2, 2), (3, 3), (1, 1)), ((1, 1, 1, 1), (1, 1), (3, 3), (2, 2))])
def test_reference_conv_matches_direct_loops(pads, strides, kernel, dil):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 2, 7, 6))
    w = rng.normal(size=(3, 2) + kernel)
    op = Conv2d(pads=pads, strides=strides, dilations=dil)
    from keydnn.ir.reference import REFERENCE_KERNELS

    y = REFERENCE_KERNELS["conv2d"](op, [x, w])
    xp = np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:]))
    for o in range(3):
        for i in range(y.shape[2]):
            for j in range(y.shape[3]):
                acc = 0.0
                for c in range(2):
                    for a in range(kernel[0]):
                        for b in range(kernel[1]):
                            acc += xp[0, c, i * strides[0] + a * dil[0], j * strides[1] + b * dil[1]] * w[o, c, a, b]
                assert abs(acc - y[0, o, i, j]) < 1e-9
