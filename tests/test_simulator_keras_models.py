"""Attention, Keras-operation and U-Net models on Numba's CUDA simulator: built and run by Keras here, saved as ``.keras``
and ``.h5``, converted with ``device="cuda"`` and run by a child process with ``NUMBA_ENABLE_CUDASIM=1`` that
never imports TensorFlow (see tests/cuda/test_cuda_simulator.py for why a child). Shapes are small: the
simulator runs every CUDA thread as a Python thread."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from parity_helpers import k3_sources
from test_attention import _encoder
from test_keras_ops import _conv_ops_model, _ops_model
from test_transposed_resize import unet

pytestmark = [pytest.mark.keras, pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
                                                    reason="this process would be the simulator run")]

ROOT = Path(__file__).resolve().parent.parent

_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import keydnn
    from keydnn.ir import run_reference
    sys.setswitchinterval(1e-4)
    data = np.load(sys.argv[1])
    xs = [data[f"x{i}"] for i in range(int(data["n_in"]))]
    wants = [data[f"y{i}"] for i in range(int(data["n_out"]))]
    for path in sys.argv[2:]:
        model = keydnn.from_keras(path, device="cuda", allow_non_linear_activation=True)
        got = model(*xs)
        got = list(got) if isinstance(got, (list, tuple)) else [got]
        for g, w in zip(got, wants, strict=True):
            np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-4, err_msg=f"CUDA vs Keras: {path}")
        print("ok", path)
    assert not [m for m in ("tensorflow", "keras", "tf_keras") if m in sys.modules], "imported TensorFlow/Keras"
""")


def _run_on_simulator(tmp_path: Path, name: str, build, inputs=None, scale: bool = True, timeout: int = 900):
    sources = k3_sources(tmp_path, name, build, scale=scale)
    live = sources[0][2]
    xs = inputs if inputs is not None else [np.random.default_rng(1).normal(size=(2,) + tuple(t.shape)[1:])
                                            .astype("f4") for t in live.inputs]
    want = live(xs if len(xs) > 1 else xs[0], training=False)
    wants = [np.asarray(w) for w in (want if isinstance(want, (list, tuple)) else [want])]
    data = tmp_path / f"{name}.npz"
    np.savez(data, n_in=len(xs), n_out=len(wants), **{f"x{i}": x for i, x in enumerate(xs)},
             **{f"y{i}": y for i, y in enumerate(wants)})
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(data), str(sources[1][1]), str(sources[2][1])],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert proc.stdout.count("ok ") == 2, proc.stdout


def test_encoder_with_causal_mask_on_the_simulator(tmp_path):
    _run_on_simulator(tmp_path, "encoder", lambda k: _encoder(k, t=6, d=8))


def test_unet_on_the_simulator(tmp_path):
    _run_on_simulator(tmp_path, "unet", lambda k: unet(k, size=8, width=2))


def test_keras_operations_on_the_simulator(tmp_path):
    _run_on_simulator(tmp_path, "ops", _ops_model)
    _run_on_simulator(tmp_path, "conv_ops", _conv_ops_model)


@pytest.mark.slow
def test_mobilenet_v3_small_on_the_simulator(tmp_path):
    def build(k):
        return k.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=4,
                                               classifier_activation=None, alpha=0.75, minimalistic=False)
    x = [np.random.default_rng(3).random((1, 32, 32, 3)).astype("f4") * 255]
    _run_on_simulator(tmp_path, "mnv3", build, inputs=x, timeout=1800)


def test_convnext_blocks_on_the_simulator(tmp_path):
    """ConvNeXtTiny itself (28M weights) takes the simulator over half an hour even at 32x32, so its
    simulator check runs Keras's own ConvNeXt blocks (depthwise 7x7, LayerNormalization, MLP, Keras's
    LayerScale) on a small stem; the full model is checked on numba-cpu (test_keras_applications)."""
    def build(k):
        from keras.src.applications.convnext import ConvNeXtBlock

        x = k.Input((8, 8, 3))
        h = k.layers.Conv2D(8, 2, strides=2)(x)
        h = k.layers.LayerNormalization(epsilon=1e-6)(h)
        for i in range(2):
            h = ConvNeXtBlock(projection_dim=8, layer_scale_init_value=1e-6, name=f"block{i}")(h)
        return k.Model(x, k.layers.Dense(3)(k.layers.GlobalAveragePooling2D()(h)))
    _run_on_simulator(tmp_path, "convnext_blocks", build)
