"""Functional Keras models: DAGs, merge layers, shared layers, nested models, several inputs and outputs.

Every model is converted from all five source forms (live Keras 3, ``.keras``,
Keras 3 ``.h5``, live tf_keras, Keras 2 ``.h5``) and compared with Keras
(rtol = atol = 1e-4): the frontend IR and the optimized IR through the
reference interpreter, and the converted model itself (the Numba CPU
backend). IR text is snapshotted in ``tests/goldens/functional`` (regenerate
with ``KEYDNN_UPDATE_GOLDENS=1``) and must not depend on the source form.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import keydnn
from keydnn.errors import IRError, KerasInteropError
from keydnn.frontends.keras.wiring import parse_calls
from keydnn.frontends.keras.spec import LayerSpec
from keydnn.ir import Graph, Node, TensorType, Value, run_reference, verify
from keydnn.ir.ops import Add, Avg, Concat, Max, Min, Mul, ShapeError, Sub
from keydnn.ir.passes import PassManager
from passes.builders import GraphBuilder, assert_same_numerics, count
from passes.golden import assert_golden
from passes.harness import check_pass

GOLDENS = Path(__file__).resolve().parent / "goldens" / "functional"
TOL = dict(rtol=1e-4, atol=1e-4)
K2_FORMS = ("live-tf_keras", "keras2-h5")


# --------------------------------------------------------------------------- #
# Models (explicit names everywhere: the goldens must not depend on Keras's name counters)
# --------------------------------------------------------------------------- #


def _residual(k):
    """A channels_last residual CNN: conv-bn-relu-conv-bn + 1x1 projection shortcut, add, relu, head."""
    L = k.layers
    x = k.Input(shape=(8, 8, 3), name="image")
    y = L.Conv2D(8, 3, padding="same", name="conv_a")(x)
    y = L.BatchNormalization(name="bn_a")(y)
    y = L.ReLU(name="relu_a")(y)
    y = L.Conv2D(8, 3, padding="same", name="conv_b")(y)
    y = L.BatchNormalization(name="bn_b")(y)
    shortcut = L.Conv2D(8, 1, name="proj")(x)
    y = L.Add(name="add")([y, shortcut])
    y = L.ReLU(name="relu_out")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return k.Model(x, L.Dense(4, name="head")(y), name="residual")


def _inception(k):
    """Parallel 1x1 / 1x1-3x3 / pool-1x1 branches concatenated on channels, then flatten -> dense."""
    L = k.layers
    x = k.Input(shape=(6, 6, 4), name="image")
    b1 = L.Conv2D(3, 1, name="b1_1x1")(x)
    b2 = L.Conv2D(2, 1, name="b2_1x1")(x)
    b2 = L.ReLU(name="b2_relu")(b2)
    b2 = L.Conv2D(4, 3, padding="same", name="b2_3x3")(b2)
    b3 = L.MaxPooling2D(3, strides=1, padding="same", name="b3_pool")(x)
    b3 = L.Conv2D(2, 1, name="b3_1x1")(b3)
    y = L.Concatenate(axis=-1, name="concat")([b1, b2, b3])
    y = L.ReLU(name="relu")(y)
    y = L.MaxPooling2D(2, name="pool")(y)
    y = L.Flatten(name="flatten")(y)
    return k.Model(x, L.Dense(5, name="head")(y), name="inception")


def _two_inputs(k):
    """An image and a feature vector, merged with Multiply, Subtract and Concatenate."""
    L = k.layers
    image = k.Input(shape=(8, 8, 3), name="image")
    meta = k.Input(shape=(5,), name="meta")
    a = L.Conv2D(6, 3, strides=2, name="conv")(image)
    a = L.GlobalAveragePooling2D(name="gap")(a)
    b = L.Dense(6, name="meta_fc")(meta)
    gated = L.Multiply(name="gate")([a, b])
    diff = L.Subtract(name="diff")([a, b])
    y = L.Concatenate(name="concat")([gated, diff, meta])
    return k.Model([image, meta], L.Dense(3, name="head")(y), name="two_inputs")


def _two_outputs(k):
    """A shared trunk with a class head and a spatial (NHWC) head: two outputs."""
    L = k.layers
    x = k.Input(shape=(8, 8, 3), name="image")
    t = L.Conv2D(6, 3, padding="same", name="trunk")(x)
    t = L.ReLU(name="trunk_relu")(t)
    c = L.GlobalAveragePooling2D(name="gap")(t)
    c = L.Dense(4, name="classes")(c)
    c = L.Softmax(name="probs")(c)
    s = L.Conv2D(2, 1, name="mask")(t)
    s = L.Average(name="avg")([s, L.Conv2D(2, 3, padding="same", name="mask3")(t)])
    return k.Model(x, [c, s], name="two_outputs")


def _shared(k):
    """One Dense used on two inputs, one Conv2D applied twice in a chain: one weight set, two nodes each."""
    L = k.layers
    a = k.Input(shape=(6,), name="a")
    b = k.Input(shape=(6,), name="b")
    image = k.Input(shape=(6, 6, 4), name="image")
    fc = L.Dense(4, name="fc")
    fa, fb = fc(a), fc(b)
    v = L.Concatenate(name="vec")([L.Maximum(name="max")([fa, fb]), L.Minimum(name="min")([fa, fb])])
    conv = L.Conv2D(4, 3, padding="same", name="conv")
    y = conv(image)
    y = L.ReLU(name="relu")(y)
    y = conv(y)
    y = L.Add(name="res")([y, image])
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return k.Model([a, b, image], [v, L.Dense(2, name="head")(y)], name="shared")


def _nested(k):
    """A Sequential (conv-bn-relu-conv) and a Functional block (with a residual add) inside a Functional model."""
    L = k.layers
    stem = k.Sequential([
        k.Input(shape=(8, 8, 3)),
        L.Conv2D(6, 3, padding="same", name="s_conv"),
        L.BatchNormalization(name="s_bn"),
        L.ReLU(name="s_relu"),
        L.Conv2D(6, 1, name="s_proj"),
    ], name="stem")
    bx = k.Input(shape=(8, 8, 6), name="block_in")
    by = L.Conv2D(6, 3, padding="same", name="b_conv")(bx)
    by = L.Add(name="b_add")([by, bx])
    block = k.Model(bx, by, name="block")
    x = k.Input(shape=(8, 8, 3), name="image")
    y = block(stem(x))
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return k.Model(x, L.Dense(3, name="head")(y), name="nested")


def _squeeze_excite(k):
    """Channel gating: Multiply of an NHWC map by an (N, C) vector (Keras broadcasts it as (N, 1, 1, C))."""
    L = k.layers
    x = k.Input(shape=(8, 8, 4), name="image")
    c = L.ReLU(name="relu")(L.Conv2D(8, 3, padding="same", name="conv")(x))
    s = L.GlobalAveragePooling2D(name="squeeze")(c)
    s = L.ReLU(name="fc1_relu")(L.Dense(2, name="fc1")(s))
    s = L.Activation("sigmoid", name="gate")(L.Dense(8, name="fc2")(s))
    y = L.Multiply(name="excite")([c, s])
    y = L.Maximum(name="max")([y, L.Conv2D(8, 1, name="proj")(x)])
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return k.Model(x, L.Dense(3, name="head")(y), name="squeeze_excite")


CASES: dict[str, Callable[[Any], Any]] = {
    "residual": _residual, "inception": _inception, "two_inputs": _two_inputs, "two_outputs": _two_outputs,
    "shared": _shared, "nested": _nested, "squeeze_excite": _squeeze_excite,
}
#: keydnn input names: the Keras input layers' names, in the model's input order.
INPUT_NAMES = {"two_inputs": ["image", "meta"], "shared": ["a", "b", "image"]}


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def _inputs(live: Any, seed: int = 3, batch: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(batch,) + tuple(t.shape)[1:]).astype("f4") for t in live.inputs]


def _keras(live: Any, xs: list[np.ndarray]) -> list[np.ndarray]:
    ys = live(xs if len(xs) > 1 else xs[0], training=False)
    ys = ys if isinstance(ys, (list, tuple)) else [ys]
    return [np.asarray(y) for y in ys]


def _as_list(y: Any) -> list[np.ndarray]:
    return [np.asarray(v) for v in (y if isinstance(y, list) else [y])]


def _close(got: list[np.ndarray], want: list[np.ndarray], what: str) -> None:
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, w, err_msg=f"{what}, output {i}", **TOL)


def _text(graph: Graph) -> str:
    return "".join(line for line in str(graph).splitlines(True) if "meta source_format" not in line)


def _unhashed(text: str) -> str:
    return re.sub(r"sha256:[0-9a-f]+", "sha256:*", text)


# --------------------------------------------------------------------------- #
# Parity with Keras from every source form, and goldens
# --------------------------------------------------------------------------- #


@pytest.mark.keras
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_and_goldens_from_every_source_form(case, keras_sources):
    texts: dict[str, tuple[str, str]] = {}
    models: dict[str, tuple[Any, list[np.ndarray], list[np.ndarray]]] = {}
    for form, src, live in keras_sources(f"functional_{case}", CASES[case]):
        frontend = keydnn.from_keras(src, passes="")
        model = keydnn.from_keras(src)
        assert type(model) is keydnn.Model
        assert model.input_names == INPUT_NAMES.get(case, ["image"])
        xs = _inputs(live)
        want = _keras(live, xs)
        _close(run_reference(frontend.graph, *xs), want, f"{case} frontend IR from {form}")
        _close(run_reference(model.graph, *xs), want, f"{case} optimized IR from {form}")
        texts[form] = (_text(frontend.graph), _text(model.graph))
        models[form] = (model, xs, want)
    golden = texts["keras3-h5"]
    for form, pair in texts.items():
        if form in K2_FORMS:  # tf_keras orders (so randomizes) weights differently: same IR up to checksums
            assert tuple(map(_unhashed, pair)) == tuple(map(_unhashed, golden)), f"{case}: IR from {form} differs"
        else:
            assert pair == golden, f"{case}: IR from {form} differs from the IR of the Keras 3 .h5 file"
    assert_golden(golden[0], GOLDENS / f"{case}.frontend.txt")
    assert_golden(golden[1], GOLDENS / f"{case}.pipeline.txt")
    for form, (model, xs, want) in models.items():  # the backend itself (needs kernels for the merge ops)
        _close(_as_list(model(*xs)), want, f"{case} keydnn.Model from {form}")


@pytest.mark.keras
def test_residual_block_in_channels_last_gains_no_transposes_inside(keras_sources):
    (_, path, _), = [s for s in keras_sources("functional_residual", _residual) if s[0] == "keras3-zip"]
    graph = keydnn.from_keras(path).graph
    transposes = [n for n in graph.nodes if n.op.kind == "transpose"]
    assert [n.inputs for n in transposes] == [("image",)], str(graph)  # only the input boundary
    assert count(graph, "batch_norm") == 0 and count(graph, "add") == 1
    add = next(n for n in graph.nodes if n.op.kind == "add")
    types = graph.value_types()
    assert all(types[i].layout == "NCHW" for i in add.inputs)


@pytest.mark.keras
def test_spatial_second_output_is_returned_in_the_keras_layout(keras_sources):
    (_, path, live), = [s for s in keras_sources("functional_two_outputs", _two_outputs) if s[0] == "keras3-zip"]
    graph = keydnn.from_keras(path).graph
    assert [t.layout for t in graph.output_types()] == ["NC", "NHWC"]
    # one transpose in, one out; the two mask branches meet in the average without any
    assert count(graph, "transpose") == 2, str(graph)


# --------------------------------------------------------------------------- #
# Done when: a ResNet-style .keras converts without TensorFlow and matches Keras
# --------------------------------------------------------------------------- #


_NO_TF_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import keydnn
    from keydnn.ir import run_reference
    path, x_path, out = sys.argv[1:4]
    x = np.load(x_path)
    model = keydnn.from_keras(path)
    np.save(out + ".reference.npy", run_reference(model.graph, x)[0])
    leaked = sorted(m for m in ("tensorflow", "keras", "tf_keras") if m in sys.modules)
    open(out + ".modules", "w").write(",".join(leaked))
    np.save(out + ".model.npy", model(x))
""")


@pytest.mark.keras
def test_resnet_style_keras_file_converts_without_tensorflow_and_matches_keras(tmp_path):
    import tensorflow as tf

    from fixtures.make_fixtures import randomize_weights, tiny_resnet

    live = tiny_resnet(tf.keras)
    randomize_weights(live, seed=7)
    for layer in live.layers:  # scale kernels by fan-in: an unsaturated softmax, so kernel errors show
        if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)):
            kernel, *rest = layer.get_weights()
            layer.set_weights([kernel / np.sqrt(np.prod(kernel.shape[:-1])), *rest])
    path = tmp_path / "tiny_resnet.keras"
    live.save(path)
    x = np.random.default_rng(11).normal(size=(4, 16, 16, 3)).astype("f4")
    np.save(tmp_path / "x.npy", x)
    want = np.asarray(live(x, training=False))
    assert want.max() < 0.9 and want.min() > 0.01, "softmax saturated: the comparison would be weak"
    out = tmp_path / "y"
    proc = subprocess.run([sys.executable, "-c", _NO_TF_SCRIPT, str(path), str(tmp_path / "x.npy"), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert (tmp_path / "y.modules").exists(), proc.stderr[-3000:]
    assert (tmp_path / "y.modules").read_text() == "", "converting imported TensorFlow/Keras"
    np.testing.assert_allclose(np.load(tmp_path / "y.reference.npy"), want, rtol=1e-4, atol=1e-4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.model.npy"), want, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- #
# keydnn.Model: calling conventions, names, saving (a merge-free model: runs on every backend today)
# --------------------------------------------------------------------------- #


def _two_towers(k):
    L = k.layers
    a = k.Input(shape=(4,), name="left")
    b = k.Input(shape=(3,), name="right")
    return k.Model([a, b], [L.Dense(2, name="la")(a), L.Dense(5, name="rb")(L.ReLU(name="r")(b))], name="towers")


@pytest.mark.keras
def test_model_takes_positional_list_dict_and_keyword_inputs_and_returns_a_list(keras_sources, tmp_path):
    sources = keras_sources("functional_towers", _two_towers)
    for form, src, live in sources:
        model = keydnn.from_keras(src)
        assert isinstance(model, keydnn.Model) and not isinstance(model, keydnn.Sequential)
        assert model.input_names == ["left", "right"] and len(model.output_names) == 2
        xs = _inputs(live)
        want = _keras(live, xs)
        for got in (model(*xs), model(xs), model(tuple(xs)), model({"right": xs[1], "left": xs[0]}),
                    model(left=xs[0], right=xs[1])):
            assert isinstance(got, list)
            _close(got, want, f"towers from {form}")
    with pytest.raises(ValueError, match=r"missing \['right'\]"):
        model({"left": xs[0]})
    with pytest.raises(ValueError, match="takes 2 input"):
        model(xs[0])
    with pytest.raises(ValueError, match=r"input 1 \('right'\) has shape"):
        model(xs[0], xs[0])
    with pytest.raises(ValueError, match="different batch sizes"):
        model(xs[0], xs[1][:1])
    path = model.save(tmp_path / "towers.json")
    loaded = keydnn.load(path)
    assert type(loaded) is keydnn.Model and loaded.input_names == ["left", "right"]
    assert loaded.graph == model.graph
    _close(loaded(*xs), want, "towers after save/load")
    assert "left: f32[N,4] NC" in repr(loaded)


@pytest.mark.keras
def test_functional_artifact_round_trips_graph_and_layer_records(keras_sources, tmp_path):
    (_, path, _), = [s for s in keras_sources("functional_shared", _shared) if s[0] == "keras3-zip"]
    model = keydnn.from_keras(path)
    loaded = keydnn.load(model.save(tmp_path / "shared.json"))
    assert type(loaded) is keydnn.Model
    assert loaded.graph == model.graph and loaded.input_names == ["a", "b", "image"]
    fc = next(r for r in loaded.keras_layers if r["keras_name"] == "fc")
    assert fc["nodes"] == ["fc", "fc.1"]
    names = {m.name: m for m in loaded.layers}
    assert {"conv", "conv.1", "fc", "fc.1"} <= set(names)
    assert names["conv"].node.inputs[1] == names["conv.1"].node.inputs[1]  # one weight set


def test_sequential_is_a_model():
    assert issubclass(keydnn.Sequential, keydnn.Model)


def _stack_of_stacks(k):
    L = k.layers
    inner = k.Sequential([k.Input(shape=(6,)), L.Dense(5, name="d1"), L.ReLU(name="r1")], name="inner")
    return k.Sequential([k.Input(shape=(6,)), inner, L.Dense(3, name="d2")], name="outer")


@pytest.mark.keras
def test_sequential_inside_sequential_is_inlined(keras_sources):
    for form, src, live in keras_sources("functional_stack_of_stacks", _stack_of_stacks):
        model = keydnn.from_keras(src)
        assert type(model) is keydnn.Sequential
        assert [m.name for m in model.layers] == ["inner/d1", "d2"], form  # the relu is fused into inner/d1
        xs = _inputs(live)
        _close([model(xs[0])], _keras(live, xs), f"stack of stacks from {form}")


# --------------------------------------------------------------------------- #
# Frontend: refusals, non-strict placeholders, wiring formats
# --------------------------------------------------------------------------- #


@pytest.mark.keras
def test_subclassed_models_are_refused_with_a_clear_message():
    import tensorflow as tf

    class Tower(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = tf.keras.layers.Dense(2)

        def call(self, x):
            return self.fc(x)

    model = Tower()
    model(np.zeros((1, 3), "f4"))
    with pytest.raises(KerasInteropError, match="subclassed model.*Functional") as info:
        keydnn.from_keras(model)
    assert info.value.problems[0].field == "model_class"


@pytest.mark.keras
def test_strict_lists_every_problem_and_non_strict_keeps_a_placeholder_in_the_graph():
    import tensorflow as tf

    L = tf.keras.layers
    a = tf.keras.Input(shape=(4,), name="a")
    left = L.Dense(3, name="left")(a)
    right = L.Dropout(0.5, name="drop")(a, training=True)  # dropout that stays on at inference
    right = L.Dense(3, activation="tanh", name="right")(right)  # fused activation, not enabled
    model = tf.keras.Model(a, L.Add(name="add")([left, right]))
    with pytest.raises(KerasInteropError) as info:
        keydnn.from_keras(model)
    # 'add' only follows them (its input shapes are unknown): one note, not a problem of its own
    assert [p.layer_name for p in info.value.problems] == ["drop", "right"], str(info.value)
    assert len(info.value.notes) == 1 and "'add'" in info.value.notes[0] and "not checked" in info.value.notes[0]
    assert "training=True" in str(info.value) and "'tanh'" in str(info.value)
    with pytest.warns(UserWarning, match="placeholders"):
        converted = keydnn.from_keras(model, strict=False)
    opaque = {n.name: n for n in converted.graph.find_opaque()}
    assert set(opaque) == {"drop", "right", "add"}
    assert opaque["right"].inputs == ("drop",) and opaque["add"].inputs == ("left", "right")


def test_inbound_nodes_of_keras_2_and_keras_3_read_alike():
    def tensor(name, node=0, index=0):
        return {"class_name": "__keras_tensor__", "config": {"shape": [None, 4], "dtype": "float32",
                                                                "keras_history": [name, node, index]}}

    k3 = [{"args": [[tensor("a"), tensor("b", 1)]], "kwargs": {}}, {"args": [tensor("c")], "kwargs": {"mask": None}}]
    k2 = [[["a", 0, 0, {}], ["b", 1, 0, {}]], [["c", 0, 0, {}]]]
    for raw in (k3, k2):
        layer = LayerSpec(index=1, class_name="Add", name="add", config={}, weights=(), inbound_nodes=raw)
        calls = parse_calls(layer)
        assert [c.refs for c in calls] == [[("a", 0, 0), ("b", 1, 0)], [("c", 0, 0)]]
        assert not any(c.problems for c in calls)
    odd = LayerSpec(index=1, class_name="Dense", name="d", config={}, weights=(),
                    inbound_nodes=[{"args": [tensor("a"), 2.0], "kwargs": {"training": True}}])
    (call,) = parse_calls(odd)
    assert len(call.problems) == 2


# --------------------------------------------------------------------------- #
# IR: merge ops, verifier arity, passes on DAGs
# --------------------------------------------------------------------------- #


def _t(*shape, layout="ANY"):
    return TensorType(shape=shape, layout=layout)


def test_merge_shape_rules_broadcast_equal_ranks():
    assert Add().infer([_t("N", 4, 4, 3), _t("N", 1, 1, 3), _t(1, 4, 1, 1)]).shape == ("N", 4, 4, 3)
    assert Sub().infer([_t("N", 3, layout="NC"), _t("N", 3)]).layout == "NC"
    assert Max().infer([_t("N", 2, layout="NCHW"), _t("N", 2, layout="NHWC")]).layout == "ANY"
    with pytest.raises(ShapeError, match="same rank"):
        Mul().infer([_t("N", 4, 3), _t("N", 3)])
    with pytest.raises(ShapeError, match="neither agree nor broadcast"):
        Avg().infer([_t("N", 4), _t("N", 3)])
    assert Concat(axis=-1).infer([_t("N", 4, 2), _t("N", 4, 3)]).shape == ("N", 4, 5)
    assert Concat(axis=1).infer([_t("N", "D", 2), _t("N", 4, 2)]).shape == ("N", "C", 2)
    with pytest.raises(ShapeError, match="batch axis"):
        Concat(axis=0).infer([_t("N", 4), _t("N", 4)])
    with pytest.raises(ShapeError, match="differ on axis 2"):
        Concat(axis=1).infer([_t("N", 4, 2), _t("N", 4, 3)])
    assert Add.arity() == (2, None) and Sub.arity() == (2, 2) and Concat.arity() == (1, None)
    assert Min.operand_name(5) == "xs" and Sub.operand_name(2) == "?"


def _merge_graph(op, n_inputs: int) -> Graph:
    inputs = tuple(Value(name=f"x{i}", type=_t("N", 3)) for i in range(n_inputs))
    node = Node(name="m", op=op, inputs=tuple(v.name for v in inputs), outputs=(Value(name="m", type=_t("N", 3)),))
    return Graph.build(name="g", inputs=inputs, outputs=("m",), nodes=(node,), weights={})


def test_verifier_checks_variadic_and_fixed_arity():
    verify(_merge_graph(Add(), 4))
    with pytest.raises(IRError, match="takes at least 2 operands, has 1"):
        verify(_merge_graph(Add(), 1))
    with pytest.raises(IRError, match="takes 2..2 operands, has 3"):
        verify(_merge_graph(Sub(), 3))
    g = _merge_graph(Avg(), 3)
    assert Graph.model_validate_json(g.model_dump_json()).model_dump() == g.model_dump()
    xs = [np.full((2, 3), v, "f4") for v in (1.0, 2.0, 6.0)]
    np.testing.assert_allclose(run_reference(g, *xs)[0], 3.0)
    np.testing.assert_allclose(run_reference(g, xs)[0], run_reference(g, {"x0": xs[0], "x1": xs[1], "x2": xs[2]})[0])


def _residual_ir(layout_input: str = "NHWC") -> Graph:
    b = GraphBuilder("residual_ir", seed=1)
    x = b.input("x", ("N", 6, 6, 4), layout=layout_input)
    y = b.conv(x, 4, 3, padding="same", name="c1")
    y = b.bn(y, name="bn1")
    y = b.add(Add(), y, x, name="res")
    y = b.conv(y, 6, 1, name="c2")
    z = b.add(Concat(axis=-1), y, b.conv(y, 2, 3, padding="same", name="c3"), name="cat")
    return b.build(z, y)


def test_canonicalize_layout_meets_branches_without_transposes():
    after = check_pass(_residual_ir(), "canonicalize-layout", GOLDENS / "ir_residual_canonicalize.txt")
    assert count(after, "transpose") == 3  # x in; the two outputs back to NHWC
    cat = next(n for n in after.nodes if n.op.kind == "concat")
    assert cat.op.axis == 1


def test_fold_batchnorm_folds_only_into_a_producer_with_one_consumer():
    b = GraphBuilder("bn_dag", seed=2)
    x = b.input("x", ("N", 4, 6, 6), layout="NCHW")
    c = b.conv(x, 4, 3, padding="same", layout="NCHW", name="c")
    n = b.bn(c, axis=1, name="bn")
    shared = b.add(Add(), n, c, name="sum")  # c feeds both the batch_norm and the add
    d = b.conv(x, 4, 1, layout="NCHW", name="d")
    m = b.bn(d, axis=1, name="bn_d")  # d has one consumer: folded into d
    g = b.build(b.add(Mul(), shared, m, name="out"))
    after = check_pass(g, "fold-batchnorm", GOLDENS / "ir_fold_batchnorm_dag.txt")
    producers = after.producers()
    assert producers["sum"].inputs[1] == "c" and producers["c"].inputs[1] == "c.kernel"  # c untouched
    assert producers[producers["sum"].inputs[0]].op.kind == "scale_shift"
    assert count(after, "batch_norm") == 0 and producers["d"].inputs[1] != "d.kernel"


def test_default_pipeline_on_a_dag_is_numerically_exact_and_idempotent():
    g = _residual_ir()
    after = PassManager().run(g).graph
    assert_same_numerics(g, after)
    assert PassManager().run(after).graph == after


@pytest.mark.keras
def test_inspect_ir_prints_each_branch_with_its_operands(keras_sources):
    from click.testing import CliRunner

    from keydnn.cli import cli

    (_, path, _), = [s for s in keras_sources("functional_inception", _inception) if s[0] == "keras3-zip"]
    result = CliRunner().invoke(cli, ["inspect-ir", str(path)])
    assert result.exit_code == 0, result.output
    assert re.search(r"%concat = concat\(%b1_1x1, %b2_3x3, %b3_1x1\) \{axis=1\} : f32\[N,9,6,6\] NCHW", result.output)
    frontend = CliRunner().invoke(cli, ["inspect-ir", str(path), "--after", "frontend", "--format", "json"])
    graph = json.loads(frontend.output)
    assert [n["op"]["kind"] for n in graph["nodes"]].count("conv2d") == 4
