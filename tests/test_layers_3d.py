"""3-D layers (issue 18, item 5, and Conv3DTranspose of item 4): parity with Keras from every source form and
both data formats, a small 3-D CNN end to end (CLI and ``from_keras``), the generated code and the per-op
kernels against the reference interpreter op by op, and bad configs refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from parity_helpers import TOL, all_sources, check_parity, inputs_for

import keydnn
from keydnn.backends.numba_cpu import compile_graph
from keydnn.ir import Graph, run_reference
from keydnn.ir.ops import Activation, AvgPool3d, Conv3d, Crop3d, MaxPool3d, Pad3d, Relu, Upsample3d
from keydnn.ir.passes import run_pipeline
from keydnn.ir.types import TensorType, Value
from keydnn.ir.graph import Node

CL, CF = "channels_last", "channels_first"


def _seq(shape_cl, *layers, fmt=CL):
    """A Sequential over an input of ``shape_cl`` (D, H, W, C), moved to (C, D, H, W) for channels_first; each
    ``layers`` entry is ``make(L, data_format)``."""
    shape = shape_cl if fmt == CL else (shape_cl[-1], *shape_cl[:-1])

    def build(k):
        return k.Sequential([k.layers.Input(shape=shape), *(make(k.layers, fmt) for make in layers)])
    return build


CASES = {
    "conv3d": ((6, 7, 5, 3), (
        lambda L, f: L.Conv3D(3, 3, dilation_rate=(1, 2, 2), padding="same", data_format=f),
        lambda L, f: L.Conv3D(4, (3, 2, 3), strides=(1, 2, 1), padding="same", data_format=f),
        lambda L, f: L.Conv3D(4, 2, dilation_rate=(2, 1, 2), data_format=f),
        lambda L, f: L.Conv3D(3, (1, 2, 2), strides=2, padding="same", use_bias=False, data_format=f),
        lambda L, f: L.Conv3D(2, 1, activation="relu", data_format=f))),
    "conv3d_groups": ((5, 6, 6, 4), (
        lambda L, f: L.Conv3D(6, 2, groups=2, padding="same", data_format=f),
        lambda L, f: L.Conv3D(3, (2, 3, 1), groups=3, data_format=f))),
    "conv3d_transpose": ((3, 4, 5, 3), (
        lambda L, f: L.Conv3DTranspose(4, 3, strides=2, padding="same", data_format=f),
        lambda L, f: L.Conv3DTranspose(3, (2, 3, 2), strides=(1, 2, 2), data_format=f),
        lambda L, f: L.Conv3DTranspose(2, 3, strides=(2, 1, 2), output_padding=(1, 0, 1), use_bias=False,
                                       data_format=f),
        lambda L, f: L.Conv3DTranspose(2, 2, padding="same", data_format=f),
        lambda L, f: L.Conv3DTranspose(2, (2, 3, 2), dilation_rate=(2, 1, 2), data_format=f),
        lambda L, f: L.Conv3DTranspose(3, 3, dilation_rate=2, padding="same", data_format=f))),
    "pools": ((7, 12, 16, 3), (
        lambda L, f: L.MaxPooling3D((2, 3, 2), strides=(1, 2, 3), padding="same", data_format=f),
        lambda L, f: L.AveragePooling3D((3, 2, 2), strides=(2, 1, 2), padding="same", data_format=f),
        lambda L, f: L.MaxPooling3D(2, data_format=f),
        lambda L, f: L.AveragePooling3D((1, 2, 1), data_format=f))),
    "pad_crop_upsample": ((3, 4, 5, 2), (
        lambda L, f: L.ZeroPadding3D(1, data_format=f),
        lambda L, f: L.UpSampling3D((2, 1, 3), data_format=f),
        lambda L, f: L.Cropping3D(((1, 2), (0, 1), (3, 1)), data_format=f),
        lambda L, f: L.ZeroPadding3D(((0, 2), (1, 0), (2, 1)), data_format=f),
        lambda L, f: L.Cropping3D((1, 2, 0), data_format=f),
        lambda L, f: L.UpSampling3D(2, data_format=f),
        lambda L, f: L.ZeroPadding3D((2, 0, 1), data_format=f))),
    "global_keepdims": ((4, 5, 3, 3), (
        lambda L, f: L.GlobalAveragePooling3D(keepdims=True, data_format=f),
        lambda L, f: L.Conv3D(4, 1, data_format=f),
        lambda L, f: L.GlobalMaxPooling3D(keepdims=True, data_format=f),
        lambda L, f: L.GlobalAveragePooling3D(data_format=f))),
    "global_max": ((4, 5, 3, 3), (
        lambda L, f: L.Conv3D(4, 2, data_format=f),
        lambda L, f: L.GlobalMaxPooling3D(data_format=f),
        lambda L, f: L.Dense(3))),
}
#: Cheap enough to run in the quick subset in both data formats; the rest run channels_first as `slow`.
QUICK_CF = ("pad_crop_upsample", "global_max")


def _params():
    for case in sorted(CASES):
        yield pytest.param(case, CL, id=f"{case}-{CL}")
        marks = () if case in QUICK_CF else (pytest.mark.slow,)
        yield pytest.param(case, CF, id=f"{case}-{CF}", marks=marks)


def check_parity_via_twin(sources, build_cl, **options) -> None:
    """keydnn (and its reference) on channels_first models == Keras's channels_last twin (same layers and
    weights), transposed. TensorFlow runs channels_first convolutions through XLA only where its oneDNN
    kernels are off, and there XLA miscomputed a chain of channels_first Conv3D layers (see KERAS_FILES.md),
    so Keras's output comes from the layout TensorFlow runs natively on every CPU."""
    from keydnn.keras_runner import keras_outputs

    for form, src, live in sources:
        keras = live.__class__.__module__.split(".")[0]
        twin = build_cl(__import__("tf_keras") if keras == "tf_keras" else __import__("keras"))
        twin.set_weights(live.get_weights())
        xs = inputs_for(live)
        want = keras_outputs(twin, [np.ascontiguousarray(xs[0].transpose(0, 2, 3, 4, 1))])[0]  # XLA if TF refuses
        if want.ndim == 5:
            want = want.transpose(0, 4, 1, 2, 3)
        model = keydnn.from_keras(src, **options)
        np.testing.assert_allclose(model(*xs), want, err_msg=f"keydnn vs Keras from {form}", **TOL)
        feed = {model.graph.inputs[0].name: xs[0]}
        np.testing.assert_allclose(run_reference(model.graph, feed)[0], want, err_msg=f"reference, {form}", **TOL)


@pytest.mark.keras
@pytest.mark.parametrize("case,fmt", list(_params()))
def test_parity_every_source_form(case, fmt, tmp_path):
    """Every layer and config of CASES, from live Keras 3, .keras, Keras 3 .h5, live tf_keras and Keras 2 .h5."""
    shape, layers = CASES[case]
    sources = all_sources(tmp_path, f"{case}_{fmt}", _seq(shape, *layers, fmt=fmt))
    if fmt == CL:
        check_parity(sources, allow_non_linear_activation=True)
    else:
        check_parity_via_twin(sources, _seq(shape, *layers, fmt=CL), allow_non_linear_activation=True)


def cnn3d(k, fmt=CL):
    """A small 3-D CNN: Conv3D -> pool -> Conv3DTranspose -> UpSampling3D -> crop/pad -> global pool -> Dense."""
    L = k.layers
    shape = (8, 8, 8, 2) if fmt == CL else (2, 8, 8, 8)
    return k.Sequential([
        k.Input(shape), L.Conv3D(6, 3, padding="same", activation="relu", data_format=fmt),
        L.MaxPooling3D(2, data_format=fmt),
        L.Conv3DTranspose(4, 3, strides=2, padding="same", activation="relu", data_format=fmt),
        L.UpSampling3D((1, 2, 1), data_format=fmt), L.Cropping3D(((1, 0), (2, 1), (0, 1)), data_format=fmt),
        L.ZeroPadding3D((1, 0, 1), data_format=fmt), L.AveragePooling3D(2, padding="same", data_format=fmt),
        L.GlobalAveragePooling3D(data_format=fmt), L.Dense(5, activation="softmax")])


@pytest.mark.keras
@pytest.mark.parametrize("fmt", [CL, CF])
def test_cnn3d_every_source_form(fmt, tmp_path):
    sources = all_sources(tmp_path, f"cnn3d_{fmt}", lambda k: cnn3d(k, fmt))
    if fmt == CL:
        check_parity(sources, allow_non_linear_activation=True)
    else:
        check_parity_via_twin(sources, cnn3d, allow_non_linear_activation=True)
    model = keydnn.from_keras(sources[1][1], allow_non_linear_activation=True)
    kinds = [n.op.kind for n in model.graph.nodes]
    assert kinds.count("transpose") == (1 if fmt == CL else 0), kinds  # channels-first compute throughout
    assert "pad3d" in kinds and "conv3d" in kinds and "reduce" in kinds
    assert {"Conv3d", "MaxPool3d", "Upsample3d", "Crop3d"} <= {type(m).__name__ for m in model.layers}
    conv = next(n for n in model.graph.nodes if n.op.kind == "conv3d")
    assert conv.op.activation is not None  # relu fused into the conv's epilogue
    from keydnn.backends.numba_cpu.runtime.executable import EMITTERS, try_codegen
    assert {n.op.kind for n in model.graph.nodes} - set(EMITTERS) <= {"reduce"}  # reduce's emitter: tensor ops
    if "reduce" in EMITTERS:
        assert try_codegen(model.graph) is not None  # the whole CNN runs as generated code


def unet3d(k):
    """A small 3-D U-Net: Conv3DTranspose upsampling and a skip concatenation of 5-D tensors."""
    L = k.layers
    x = k.Input((8, 8, 8, 2))
    c1 = L.Conv3D(4, 3, padding="same", activation="relu")(x)
    c2 = L.Conv3D(8, 3, padding="same", activation="relu")(L.MaxPooling3D()(c1))
    u1 = L.Conv3DTranspose(4, 2, strides=2, padding="same")(c2)
    c3 = L.Conv3D(4, 3, padding="same", activation="relu")(L.Concatenate()([u1, c1]))
    return k.Model(x, L.Conv3D(1, 1, activation="sigmoid")(c3))


@pytest.mark.keras
def test_unet3d_every_source_form(tmp_path):
    sources = all_sources(tmp_path, "unet3d", unet3d)
    check_parity(sources, allow_non_linear_activation=True)
    kinds = [n.op.kind for n in keydnn.from_keras(sources[2][1], allow_non_linear_activation=True).graph.nodes]
    assert kinds.count("transpose") == 2 and kinds.count("concat") == 1, kinds  # channels-first inside


@pytest.mark.keras
def test_cnn3d_cli_convert_and_load(tmp_path):
    """`keydnn convert` of the .keras and Keras 2 .h5 files; the artifact reloads and matches Keras."""
    from keydnn.keras_runner import keras_outputs

    sources = all_sources(tmp_path, "cnn3d_cli", cnn3d)
    for form, src, live in (sources[1], sources[4]):
        dst = tmp_path / f"{form}.json"
        proc = subprocess.run([sys.executable, "-m", "keydnn", "convert", "--src", str(src), "--dst", str(dst),
                               "--allow-non-linear-activation"], capture_output=True, text=True,
                              env={**os.environ, "KEYDNN_DEBUG": ""})
        assert proc.returncode == 0, proc.stderr
        xs = inputs_for(live, batch=4)
        want = keras_outputs(live, xs)[0]
        for mode in ("codegen", "ops"):
            got = keydnn.load(dst)(xs[0]) if mode == "codegen" else _ops_model(dst)(xs[0])
            np.testing.assert_allclose(got, want, err_msg=f"{form} {mode}", **TOL)


def _ops_model(path):
    """The artifact run on numba-cpu's per-op kernels."""
    model = keydnn.load(path)
    exe = compile_graph(model.graph, mode="ops")
    return lambda x: exe(x)[0]  # the graph holds its boundary transpose


# -- the backends against the reference interpreter, op by op ------------------------------------------------
def _graph(op, xshape, weights=(), seed=0, dtype="float32") -> Graph:
    rng = np.random.default_rng(seed)
    x = Value(name="x", type=TensorType(shape=("N",) + xshape, dtype=dtype, layout="NCDHW"))
    ws = {f"w{i}": (rng.normal(size=s) / np.sqrt(np.prod(s[1:]) if len(s) > 1 else 1)).astype(dtype)
          for i, s in enumerate(weights)}
    node = Node(name="y", op=op, inputs=("x",) + tuple(sorted(ws)), outputs=(Value(name="y"),))
    return run_pipeline(Graph.build(name="g", inputs=(x,), outputs=("y",), nodes=(node,), weights=ws), "infer-shapes")


OPS = {
    "conv3d_strided_padded": (Conv3d(strides=(1, 2, 1), pads=(1, 1, 0, 1, 1, 1)), (3, 6, 7, 8),
                              [(4, 3, 3, 2, 3), (4,)]),
    "conv3d_dilated_groups_tanh": (Conv3d(dilations=(2, 1, 2), groups=2, activation=Activation(function="tanh")),
                                   (4, 7, 5, 9), [(6, 2, 2, 3, 2)]),
    "conv3d_pointwise_relu_wide": (Conv3d(activation=Relu()), (2, 3, 4, 40), [(17, 2, 1, 1, 1), (17,)]),
    "conv3d_strided_depth": (Conv3d(strides=(2, 1, 1), pads=(2, 1, 0, 0, 0, 0)), (2, 5, 3, 3), [(3, 2, 3, 1, 1)]),
    "max_pool3d": (MaxPool3d(kernel=(2, 3, 2), strides=(2, 1, 3), pads=(1, 0, 1, 1, 0, 1)), (3, 5, 6, 7), []),
    "avg_pool3d": (AvgPool3d(kernel=(3, 2, 2), strides=(2, 2, 1), pads=(1, 1, 0, 1, 1, 0)), (3, 5, 6, 7), []),
    "pad3d_stuffing": (Pad3d(factors=(2, 1, 3), pads=(1, 2, 0, 1, 2, 0)), (3, 4, 5, 3), []),
    "pad3d": (Pad3d(pads=(1, 0, 2, 1, 0, 3)), (2, 3, 4, 5), []),
    "crop3d": (Crop3d(crops=(1, 0, 2, 1, 0, 3)), (2, 4, 5, 6), []),
    "upsample3d": (Upsample3d(factors=(2, 1, 3)), (2, 3, 4, 5), []),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", ["codegen", "ops"])
@pytest.mark.parametrize("case", sorted(OPS))
def test_backend_matches_reference(case, mode, dtype):
    op, xshape, weights = OPS[case]
    graph = _graph(op, xshape, weights, dtype=dtype)
    exe = compile_graph(graph, mode=mode)
    assert exe.mode == mode  # the generated code really ran (no silent fallback to per-op kernels)
    x = np.random.default_rng(1).normal(size=(3,) + xshape).astype(dtype)
    got, want = exe(x)[0], run_reference(graph, x)[0]
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(exe(x[:1])[0], want[:1], rtol=tol, atol=tol)  # another batch, same code


def test_channels_last_ops_are_rewritten_channels_first():
    """canonicalize-layout turns NDHWC volume ops into NCDHW ones with only the boundary transposes."""
    rng = np.random.default_rng(0)
    x = Value(name="x", type=TensorType(shape=("N", 4, 5, 6, 3), layout="NDHWC"))
    ws = {"w": rng.normal(size=(2, 3, 2, 2, 2)).astype("f4")}
    nodes = (Node(name="c", op=Conv3d(layout="NDHWC"), inputs=("x", "w"), outputs=(Value(name="c"),)),
             Node(name="p", op=MaxPool3d(kernel=(1, 2, 2), strides=(1, 2, 2), layout="NDHWC"), inputs=("c",),
                  outputs=(Value(name="p"),)),
             Node(name="u", op=Upsample3d(factors=(2, 1, 1), layout="NDHWC"), inputs=("p",), outputs=(Value(name="u"),)))
    g = run_pipeline(Graph.build(name="g", inputs=(x,), outputs=("u",), nodes=nodes, weights=ws), "infer-shapes")
    out = run_pipeline(g, "infer-shapes,canonicalize-layout")
    kinds = [n.op.kind for n in out.nodes]
    assert kinds.count("transpose") == 2, kinds
    assert all(n.op.layout == "NCDHW" for n in out.nodes if n.op.kind != "transpose")
    xv = rng.normal(size=(2, 4, 5, 6, 3)).astype("f4")
    np.testing.assert_allclose(run_reference(out, xv)[0], run_reference(g, xv)[0], rtol=1e-6, atol=1e-6)


def test_ir_text_and_json_round_trip():
    graph = _graph(*OPS["conv3d_strided_padded"])
    text = str(graph)
    assert "conv3d(%x, %w0, %w1) {strides=[1,2,1], dilations=[1,1,1], pads=[1,1,0,1,1,1], groups=1, layout=NCDHW}" \
        in text and "f32[N,4,6,4,8] NCDHW" in text
    again = Graph.model_validate_json(graph.model_dump_json()).with_weights(graph.weights)
    assert again == graph and str(again) == text


# -- refusals --------------------------------------------------------------------------------------------------
def _edited_keras_file(tmp_path, build, edits):
    """A .keras file of ``build`` whose layer configs get ``edits`` (layer class -> {field: value})."""
    import tensorflow as tf

    path = tmp_path / "m.keras"
    build(tf.keras).save(path)
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    for layer in config["config"]["layers"]:
        name = layer["class_name"] + ("#1" if layer["config"].get("name") == "first" else "")
        layer["config"].update(edits.get(name, {}))
    files["config.json"] = json.dumps(config).encode()
    out = tmp_path / "edited.keras"
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out


@pytest.mark.keras
def test_bad_configs_are_refused_by_name(tmp_path):
    def build(k):
        L = k.layers
        return k.Sequential([k.Input((4, 6, 6, 2)), L.Conv3D(2, 1, name="first"), L.Conv3D(2, 2),
                             L.Conv3DTranspose(2, 2), L.MaxPooling3D(1),
                             L.AveragePooling3D(1), L.ZeroPadding3D(1), L.Cropping3D(1), L.UpSampling3D(1),
                             L.GlobalMaxPooling3D(keepdims=True), L.GlobalAveragePooling3D()])

    edits = {"Conv3D": {"strides": [1, 2, 2], "dilation_rate": [2, 1, 1]}, "Conv3D#1": {"groups": 3},
             "Conv3DTranspose": {"output_padding": [3, 0, 0], "future_field": 1},
             "MaxPooling3D": {"padding": "causal"}, "AveragePooling3D": {"data_format": "channels_middle"},
             "ZeroPadding3D": {"padding": [[1, 1], [1]]}, "Cropping3D": {"cropping": -1},
             "UpSampling3D": {"size": [2, 0, 1]}, "GlobalMaxPooling3D": {"keepdims": "yes"}}
    with pytest.raises(keydnn.KerasInteropError) as info:
        keydnn.from_keras(_edited_keras_file(tmp_path, build, edits))
    got = {(p.layer_class, p.field) for p in info.value.problems}
    assert got >= {("Conv3D", "dilation_rate"), ("Conv3D", "groups"), ("Conv3DTranspose", "output_padding"),
                   ("Conv3DTranspose", "future_field"), ("MaxPooling3D", "padding"),
                   ("AveragePooling3D", "data_format"), ("ZeroPadding3D", "padding"), ("Cropping3D", "cropping"),
                   ("UpSampling3D", "size"), ("GlobalMaxPooling3D", "keepdims")}, got


@pytest.mark.keras
def test_non_linear_activation_needs_the_flag(tmp_path):
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.Input((3, 4, 4, 2)), tf.keras.layers.Conv3D(2, 2, activation="relu")])
    with pytest.raises(keydnn.KerasInteropError, match="allow_non_linear_activation"):
        keydnn.from_keras(model)


def test_op_validation_and_shape_rules():
    """Bad attributes fail when the op is made; bad operand types fail the shape rule (and so the verifier)."""
    from pydantic import ValidationError

    from keydnn.errors import IRError
    from keydnn.ir.ops import ShapeError
    from keydnn.ir.verify import verify

    for make in (lambda: Pad3d(pads=(0, 0, -1, 0, 0, 0)), lambda: Conv3d(strides=(1, 0, 1)),
                 lambda: MaxPool3d(kernel=(2, 2, 2), strides=(1, 1, 1), pads=(0, 2, 0, 0, 0, 0)),
                 lambda: Upsample3d(factors=(1, 1, 0)), lambda: Conv3d(groups=0)):
        with pytest.raises(ValidationError):
            make()
    vol = TensorType(shape=("N", 3, 4, 5, 6), layout="NCDHW")
    with pytest.raises(ShapeError, match="5-D"):
        Crop3d().infer([TensorType(shape=("N", 3, 4, 5), layout="NCHW")])
    with pytest.raises(ShapeError, match="leave nothing"):
        Crop3d(crops=(2, 2, 0, 0, 0, 0)).infer([vol])
    with pytest.raises(ShapeError, match="channels"):
        Conv3d().infer([vol, TensorType(shape=(2, 4, 1, 1, 1))])
    assert Conv3d(groups=3).infer([vol, TensorType(shape=(6, 1, 2, 2, 2))]).shape == ("N", 6, 3, 4, 5)
    assert AvgPool3d(kernel=(2, 2, 2), strides=(2, 2, 2), layout="NDHWC").infer(
        [TensorType(shape=("N", 4, 5, 6, 3), layout="NDHWC")]).shape == ("N", 2, 2, 3, 3)
    graph = _graph(*OPS["crop3d"])
    bad = graph.replace(nodes=(graph.nodes[0].model_copy(update={"op": Crop3d(crops=(0, 0, 0, 0, 0, 1))}),))
    with pytest.raises(IRError, match=r"node y \(crop3d\): output type .* disagrees with shape rule"):
        verify(bad)


def res3d(k):
    """A 3-D residual block: Conv3D -> BatchNormalization -> ReLU, SpatialDropout3D, Add, then pool + Flatten."""
    L = k.layers
    x = k.Input((6, 6, 6, 4))
    y = L.ReLU()(L.BatchNormalization()(L.Conv3D(4, 3, padding="same", use_bias=False)(x)))
    y = L.SpatialDropout3D(0.2)(L.Add()([x, y]))
    return k.Model(x, L.Flatten()(L.MaxPooling3D(2)(y)))


@pytest.mark.keras
def test_residual_block_folds_batchnorm_into_conv3d(tmp_path):
    sources = all_sources(tmp_path, "res3d", res3d)
    check_parity(sources)
    nodes = keydnn.from_keras(sources[4][1]).graph.nodes
    assert [n.op.kind for n in nodes] == ["transpose", "conv3d", "add", "max_pool3d", "transpose", "flatten"]
    assert nodes[1].op.activation is not None  # batch norm folded into the weights, relu into the epilogue
