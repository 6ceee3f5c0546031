"""Issue 8: `convert --verify` locates the first diverging layer of Functional models too.

Every call of every Keras layer (each call of a shared layer, the layers inside
nested models) is compared with keydnn's unoptimized graph, in topological
order. A conversion bug is simulated by perturbing one weight as the frontend
adds it (as tests/test_cli_tools.py does for a Sequential model); the report
must name that layer (and, for a shared layer, its first call), the command must
exit 1 and write no artifact. Models come from a ``.keras`` file, a Keras 3
``.h5`` and a tf_keras ``.h5``.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import keydnn
from keydnn.cli import cli
from keydnn.verify import LayerDiff, VerifyReport, _KerasCall, _owner

FILE_FORMS = ("keras3-zip", "keras3-h5", "keras2-h5")


def _residual(k):
    """conv-bn-relu-conv-bn main branch + 1x1 projection shortcut, add, relu, head."""
    L = k.layers
    x = k.Input(shape=(8, 8, 3), name="image")
    y = L.Conv2D(6, 3, padding="same", name="conv_a")(x)
    y = L.BatchNormalization(name="bn_a")(y)
    y = L.ReLU(name="relu_a")(y)
    y = L.Conv2D(6, 3, padding="same", name="conv_b")(y)
    y = L.BatchNormalization(name="bn_b")(y)
    shortcut = L.Conv2D(6, 1, name="proj")(x)
    y = L.ReLU(name="relu_out")(L.Add(name="add")([y, shortcut]))
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return k.Model(x, L.Dense(4, name="head")(y), name="residual")


def _two_in_two_out(k):
    """An image branch (one Conv2D applied twice) and a feature branch; a class head and a spatial head."""
    L = k.layers
    image = k.Input(shape=(8, 8, 3), name="image")
    meta = k.Input(shape=(4,), name="meta")
    conv = L.Conv2D(3, 3, padding="same", name="conv")
    t = conv(L.ReLU(name="relu")(conv(image)))
    g = L.GlobalAveragePooling2D(name="gap")(t)
    m = L.Dense(3, name="meta_fc")(meta)
    classes = L.Dense(2, name="classes")(L.Concatenate(name="concat")([g, m]))
    mask = L.Conv2D(1, 1, name="mask")(t)
    return k.Model([image, meta], [classes, mask], name="two_in_two_out")


def _nested(k):
    """A Functional block (residual add) called twice inside a Functional model."""
    L = k.layers
    bx = k.Input(shape=(8, 8, 4), name="block_in")
    block = k.Model(bx, L.Add(name="b_add")([L.Conv2D(4, 3, padding="same", name="b_conv")(bx), bx]), name="block")
    x = k.Input(shape=(8, 8, 3), name="image")
    y = block(block(L.Conv2D(4, 1, name="stem")(x)))
    return k.Model(x, L.Dense(2, name="head")(L.GlobalAveragePooling2D(name="gap")(y)), name="nested")


MODELS = {"residual": _residual, "two_in_two_out": _two_in_two_out, "nested": _nested}


def _files(keras_sources, case: str) -> dict[str, Any]:
    return {form: src for form, src, _ in keras_sources(f"verify_{case}", MODELS[case]) if form in FILE_FORMS}


def _perturb(monkeypatch, layer_name: str) -> None:
    """A subtle conversion bug: ``layer_name``'s kernel is off by 0.05 in everything keydnn builds."""
    from keydnn.frontends.keras import registry

    original = registry.LayerContext.add_constant

    def perturbed(self, suffix, array):
        if self.layer.name == layer_name and suffix == "kernel":
            array = np.asarray(array) + 0.05
        return original(self, suffix, array)

    monkeypatch.setattr(registry.LayerContext, "add_constant", perturbed)


def _convert_verify(src: Any, dst) -> Any:
    return CliRunner().invoke(cli, ["convert", "--src", str(src), "--dst", str(dst), "--verify"])


# --------------------------------------------------------------------------- #
# Without TensorFlow: how frontend nodes map back to Keras calls
# --------------------------------------------------------------------------- #


def test_frontend_nodes_map_back_to_their_keras_call():
    calls = {c.node: c for c in (
        _KerasCall(1, "fc", "fc", "Dense", 0, 2, np.zeros(1)),
        _KerasCall(1, "fc", "fc.1", "Dense", 1, 2, np.zeros(1)),
        _KerasCall(2, "fc_1", "fc_1", "Dense", 0, 1, np.zeros(1)),
        _KerasCall(3, "block/conv", "block.1/conv", "Conv2D", 0, 1, np.zeros(1)),
    )}

    def owner(name: str, source: str) -> str | None:
        found = _owner(SimpleNamespace(name=name, source=source), calls)
        return None if found is None else found.node

    assert owner("fc", "fc") == "fc" and owner("fc.relu", "fc") == "fc"
    assert owner("fc.1", "fc") == "fc.1" and owner("fc.1.relu", "fc") == "fc.1"
    assert owner("fc_1", "fc_1") == "fc_1" and owner("fc_1", "fc") == "fc"  # a renamed node of `fc`
    assert owner("block.1/conv.pad2d", "block/conv") == "block.1/conv"
    assert owner("block/conv", "block/conv") is None and owner("other", "other") is None


def test_report_names_the_call_of_a_shared_layer_and_the_keydnn_node():
    report = VerifyReport(False, 0.3, 0.1, 1e-4, 1e-5, 8, layers=[
        LayerDiff(2, "conv", "Conv2D", 0.0, True, 0, 1, "conv"),
        LayerDiff(5, "fc", "Dense", 0.2, False, 1, 2, "fc.1"),
        LayerDiff(7, "block/b_conv", "Conv2D", 0.3, False, 0, 1, "block.1/b_conv"),
    ])
    text = report.text()
    assert "first diverging layer: 5 'fc' (Dense), call 2 of 2 (keydnn node 'fc.1'), max abs difference 0.2" in text
    assert "    7 block.1/b_conv" in text
    assert report.as_dict()["first_divergence"]["node"] == "fc.1"
    assert LayerDiff(3, "conv2d_1", "Conv2D", 1.0, False).describe() == "3 'conv2d_1' (Conv2D)"


# --------------------------------------------------------------------------- #
# With Keras: the Python report, then the command line from every file form
# --------------------------------------------------------------------------- #


@pytest.mark.keras
@pytest.mark.parametrize("form", ["live-keras3", "live-tf_keras"])
def test_every_call_is_compared_and_only_the_broken_branch_diverges(keras_sources, monkeypatch, form):
    from keydnn.verify import sample_inputs, verify_against_keras

    (live,) = [m for f, _, m in keras_sources("verify_two_in_two_out", _two_in_two_out) if f == form]
    _perturb(monkeypatch, "meta_fc")
    model = keydnn.from_keras(live)
    frontend = keydnn.from_keras(live, passes="").graph
    xs = sample_inputs(model.input_types)
    report, expected = verify_against_keras(model, live, xs, frontend_graph=frontend)
    assert not report.ok and len(expected) == 2
    status = {d.node: d.ok for d in report.layers}
    assert status == {"conv": True, "relu": True, "conv.1": True, "gap": True, "meta_fc": False, "concat": False,
                      "classes": False, "mask": True}, report.text()
    bad = report.first_divergence
    assert (bad.name, bad.keras_class, bad.index) == ("meta_fc", "Dense", live.layers.index(live.get_layer("meta_fc")))
    assert [(d.call, d.calls) for d in report.layers if d.name == "conv"] == [(0, 2), (1, 2)]


@pytest.mark.keras
@pytest.mark.parametrize("case", ["residual", "two_in_two_out"])
def test_convert_verify_passes_and_records_vectors(keras_sources, tmp_path, case):
    for form, src in _files(keras_sources, case).items():
        dst = tmp_path / f"{case}.{form}.json"
        res = _convert_verify(src, dst)
        assert res.exit_code == 0, f"{form}: {res.output}"
        assert "OK: max |keydnn - keras|" in res.output and "diverging" not in res.output
        loaded = keydnn.load(dst)
        n_in, n_out = (2, 2) if case == "two_in_two_out" else (1, 1)
        assert len(loaded.verification["inputs"]) == n_in and len(loaded.verification["outputs"]) == n_out
        res = CliRunner().invoke(cli, ["verify", str(dst)])
        assert res.exit_code == 0 and res.output.startswith("OK"), res.output


#: (model, perturbed Keras layer, what the report must say first)
BROKEN = [
    ("residual", "proj", "first diverging layer: 6 'proj' (Conv2D), max abs"),
    ("residual", "conv_b", "first diverging layer: 4 'conv_b' (Conv2D), max abs"),
    ("two_in_two_out", "meta_fc", "first diverging layer: 5 'meta_fc' (Dense), max abs"),
    ("two_in_two_out", "conv", "first diverging layer: 1 'conv' (Conv2D), call 1 of 2, max abs"),
    ("nested", "block/b_conv", "first diverging layer: 2 'block/b_conv' (Conv2D), max abs"),
]


@pytest.mark.keras
@pytest.mark.parametrize("case,layer,first", BROKEN, ids=[f"{c}-{layer}" for c, layer, _ in BROKEN])
def test_a_perturbed_layer_is_named_and_nothing_is_written(keras_sources, tmp_path, monkeypatch, case, layer, first):
    files = _files(keras_sources, case)
    _perturb(monkeypatch, layer)
    for form, src in files.items():
        dst = tmp_path / f"{case}.{form}.json"
        res = _convert_verify(src, dst)
        assert res.exit_code == 1, f"{form}: {res.output}"
        assert "MISMATCH" in res.output and first in res.output, f"{form}: {res.output}"
        assert "per-layer max abs difference:" in res.output
        assert f"keydnn: error: verification failed; {dst} was not written" in res.output
        assert "Traceback" not in res.output and not dst.exists()


@pytest.mark.keras
def test_the_second_call_of_a_nested_model_is_reported_by_its_node(keras_sources, monkeypatch):
    """Both calls of ``block`` share the perturbed kernel; the table lists each call by its keydnn node."""
    src = _files(keras_sources, "nested")["keras3-zip"]
    _perturb(monkeypatch, "block/b_conv")
    res = _convert_verify(src, src.parent / "never.json")
    assert res.exit_code == 1
    rows = [m.group(1) for m in re.finditer(r"^ +\d+ (\S+)", res.output, re.MULTILINE)]
    assert rows == ["stem", "block/b_conv", "block/b_add", "block.1/b_conv", "block.1/b_add", "gap", "head"], res.output


@pytest.mark.keras
def test_a_difference_no_layer_explains_is_blamed_on_the_passes_or_the_backend(keras_sources):
    from keydnn.verify import sample_inputs, verify_against_keras

    (live,) = [m for f, _, m in keras_sources("verify_residual", _residual) if f == "live-keras3"]
    model = keydnn.from_keras(live)
    xs = sample_inputs(model.input_types)

    def drifting(*args):  # as if a pass or a kernel were wrong: the unoptimized graph is right
        out = model(*args)
        return [np.asarray(y) + 1e-3 for y in (out if isinstance(out, list) else [out])]

    report, _ = verify_against_keras(drifting, live, xs, frontend_graph=keydnn.from_keras(live, passes="").graph)
    assert not report.ok and report.max_abs == pytest.approx(1e-3, rel=1e-2)
    assert report.first_divergence is None and len(report.layers) == 10
    assert "no layer diverges in keydnn's unoptimized graph" in report.text()
