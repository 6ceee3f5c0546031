"""Layout canonicalization on real Keras models (issue 3, "done when").

A channels_last CNN with BatchNorm, Dropout, DepthwiseConv2D, SeparableConv2D,
strided 'same' convs, Flatten -> Dense and Softmax converts with no hand work,
matches Keras within 1e-4 from every source form, and its canonicalized IR has
exactly one transpose (the input's), none with ``input_layout="channels_first"``
(the model then takes NCHW input), from Python and from the CLI.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import keydnn
from conftest import keras_predict
from keydnn.cli import cli

pytestmark = pytest.mark.keras

TOL = dict(rtol=1e-4, atol=1e-4)


def _cnn(k: Any) -> Any:
    L = k.layers
    return k.Sequential([
        L.Input(shape=(32, 32, 3)),
        L.Conv2D(16, 3, strides=2, padding="same", use_bias=False), L.BatchNormalization(), L.ReLU(),
        L.DepthwiseConv2D(3, padding="same"), L.BatchNormalization(), L.ReLU(6.0),
        L.SeparableConv2D(32, 3, strides=2, padding="same"), L.BatchNormalization(), L.ReLU(),
        L.Dropout(0.25),
        L.Conv2D(32, 3, strides=2, padding="same"), L.BatchNormalization(), L.ReLU(),
        L.Flatten(), L.Dropout(0.5), L.Dense(10), L.Softmax(),
    ])


def _spatial_output(k: Any) -> Any:
    """A channels_last model whose output is an image (a segmentation-style head)."""
    L = k.layers
    return k.Sequential([
        L.Input(shape=(12, 10, 3)), L.Conv2D(8, 3, padding="same"), L.BatchNormalization(), L.ReLU(),
        L.MaxPooling2D(), L.DepthwiseConv2D(3, padding="same"), L.UpSampling2D(), L.ZeroPadding2D(1),
        L.Conv2D(4, 3), L.Softmax(),
    ])


def _sequence(k: Any) -> Any:
    """A channels_last 1-D model: its expand_dims / squeeze pairs must not add transposes."""
    L = k.layers
    return k.Sequential([
        L.Input(shape=(20, 3)), L.Conv1D(8, 3, padding="causal"), L.BatchNormalization(), L.ReLU(),
        L.MaxPooling1D(2), L.Conv1D(8, 3, strides=2, padding="same"), L.GlobalAveragePooling1D(), L.Dense(4),
    ])


def _transposes(graph) -> int:
    return sum(node.op.kind == "transpose" for node in graph.nodes)


def _x(shape: tuple, batch: int = 4) -> np.ndarray:
    return np.random.default_rng(3).normal(size=(batch,) + shape).astype("f4")


@pytest.mark.slow
def test_channels_last_cnn_converts_with_one_transpose_from_every_form(keras_sources):
    for form, src, live in keras_sources("layout_cnn", _cnn):
        x = _x((32, 32, 3))
        expected = keras_predict(live, x)
        model = keydnn.from_keras(src)
        np.testing.assert_allclose(model(x), expected, err_msg=form, **TOL)
        graph = model.graph
        assert _transposes(graph) == 1, f"{form}:\n{graph}"
        first = graph.nodes[0]
        assert first.op.kind == "transpose" and first.inputs == (graph.inputs[0].name,)
        kinds = [node.op.kind for node in graph.nodes]
        assert "batch_norm" not in kinds and "scale_shift" not in kinds, f"{form}: batch norms not folded"
        layouts = {getattr(node.op, "layout", "NCHW") for node in graph.nodes[1:]}
        assert layouts == {"NCHW"}, f"{form}: channels_last compute left"


def test_input_layout_channels_first_removes_the_input_transpose(keras_sources):
    for form, src, live in keras_sources("layout_cnn", _cnn):
        x = _x((32, 32, 3))
        expected = keras_predict(live, x)
        model = keydnn.from_keras(src, input_layout="channels_first")
        assert _transposes(model.graph) == 0, f"{form}:\n{model.graph}"
        assert model.input_types[0].shape[1:] == (3, 32, 32) and model.input_types[0].layout == "NCHW"
        np.testing.assert_allclose(model(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), expected, err_msg=form, **TOL)
        with pytest.raises(ValueError, match="expected"):
            model(x)  # NHWC data is refused, not silently misread


def test_input_layout_through_the_cli(keras_sources, tmp_path):
    (_, _, live), (_, path, _), *_ = keras_sources("layout_cnn", _cnn)
    dst = tmp_path / "cnn_nchw.json"
    result = CliRunner().invoke(cli, ["convert", "--src", str(path), "--dst", str(dst),
                                      "--input-layout", "channels_first"])
    assert result.exit_code == 0, result.output
    model = keydnn.load(dst)
    assert _transposes(model.graph) == 0
    x = _x((32, 32, 3))
    np.testing.assert_allclose(model(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), keras_predict(live, x), **TOL)


@pytest.mark.parametrize("input_layout", ["keras", "channels_first"])
def test_spatial_output_keeps_at_most_the_two_boundary_transposes(keras_sources, input_layout):
    for form, src, live in keras_sources("layout_spatial_output", _spatial_output):
        x = _x((12, 10, 3))
        expected = keras_predict(live, x)  # NHWC, as Keras returns it
        model = keydnn.from_keras(src, input_layout=input_layout)
        graph = model.graph
        limit = 2 if input_layout == "keras" else 1
        assert _transposes(graph) <= limit, f"{form}:\n{graph}"
        assert graph.nodes[-1].op.kind == "transpose"  # back to the Keras layout at the output
        assert model.output_types[0].layout == "NHWC" and model.output_types[0].shape[1:] == (12, 10, 4)
        feed = x if input_layout == "keras" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        np.testing.assert_allclose(model(feed), expected, err_msg=form, **TOL)


def test_channels_last_sequence_model_has_only_the_input_transpose(keras_sources):
    for form, src, live in keras_sources("layout_sequence", _sequence):
        x = _x((20, 3))
        expected = keras_predict(live, x)
        model = keydnn.from_keras(src)
        assert _transposes(model.graph) == 1, f"{form}:\n{model.graph}"
        np.testing.assert_allclose(model(x), expected, err_msg=form, **TOL)
        nchw = keydnn.from_keras(src, input_layout="channels_first")
        assert _transposes(nchw.graph) == 0, f"{form}:\n{nchw.graph}"
        np.testing.assert_allclose(nchw(np.ascontiguousarray(x.transpose(0, 2, 1))), expected, err_msg=form, **TOL)
