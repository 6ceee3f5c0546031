"""Tests of the TensorFlow-free Keras reader (``keydnn.frontends.keras.reader``).

Model files are generated at test time by ``tests/fixtures/make_fixtures.py``
(Keras 3 ``.keras``/``.h5`` and tf_keras ``.h5``) and compared with the live
models that wrote them. Malformed-input tests build their files with
``zipfile``/``h5py`` only, so they run even where TensorFlow is missing.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py
import numpy as np
import pytest
from keydnn.frontends.keras.reader import normalize_layer_config, read_keras_file, read_live_model
from keydnn.frontends.keras.spec import LayerSpec, ModelSpec

from keydnn.errors import KerasInteropError

FIXTURES_SCRIPT = Path(__file__).parent / "fixtures" / "make_fixtures.py"
FILE_FORMATS = ("keras3-zip", "keras3-h5", "keras2-h5")
MODEL_NAMES = ("seed", "optional_params", "unusual_weights", "functional")


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #


def _load_fixtures_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("keydnn_test_make_fixtures", FIXTURES_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def built(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[dict[str, Path], dict[str, Any]]]:
    """name -> (paths by format, live model by format), generated once per session."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf_keras")
    fixtures = _load_fixtures_module()
    out = tmp_path_factory.mktemp("keras_models")
    result = {}
    for name, build_fn in fixtures.make_models().items():
        result[name] = fixtures.build_and_save(build_fn, out, name)
    return result


def _live_layers(model: Any) -> list[tuple[int, Any]]:
    return [
        (i, layer) for i, layer in enumerate(model.layers) if type(layer).__name__ != "InputLayer"
    ]


def _canonical_live_names(layer: Any) -> tuple[str, ...]:
    names = []
    for variable in layer.weights:
        short = str(variable.name).split("/")[-1].split(":")[0]
        if type(layer).__name__ == "DepthwiseConv2D" and short == "depthwise_kernel":
            short = "kernel"
        names.append(short)
    return tuple(names)


def _assert_matches_live(spec: ModelSpec, model: Any) -> None:
    """Structure, names, normalized configs and bit-exact weights vs the live model."""
    assert spec.model_class == type(model).__name__
    assert spec.input_shape == tuple(model.input_shape)
    assert spec.input_dtype == "float32"
    live = _live_layers(model)
    assert [(lyr.index, lyr.class_name, lyr.name) for lyr in spec.layers] == [
        (i, type(layer).__name__, layer.name) for i, layer in live
    ]
    for layer_spec, (_, layer) in zip(spec.layers, live, strict=True):
        assert isinstance(layer_spec.config, dict)
        assert isinstance(layer_spec.config["dtype"], str), layer_spec.config["dtype"]
        if "activation" in layer_spec.config:
            assert isinstance(layer_spec.config["activation"], str)
        assert layer_spec.weight_names == _canonical_live_names(layer), layer.name
        values = layer.get_weights()
        assert len(layer_spec.weights) == len(values)
        for (name, array), expected in zip(layer_spec.weights, values, strict=True):
            assert array.dtype == expected.dtype, (layer.name, name)
            assert array.shape == expected.shape, (layer.name, name)
            assert np.array_equal(array, expected), (layer.name, name)
            assert not array.flags.writeable


# --------------------------------------------------------------------------- #
# Files and live models vs. the models that wrote them
# --------------------------------------------------------------------------- #


@pytest.mark.keras
@pytest.mark.parametrize("fmt", FILE_FORMATS)
@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_file_matches_live_model(built: dict, model_name: str, fmt: str) -> None:
    paths, models = built[model_name]
    spec = read_keras_file(paths[fmt])
    assert spec.source_format == fmt
    assert spec.keras_version is not None
    assert spec.keras_version.startswith("2." if fmt == "keras2-h5" else "3.")
    _assert_matches_live(spec, models[fmt])


@pytest.mark.keras
@pytest.mark.parametrize("fmt", ["keras3-zip", "keras2-h5"])
@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_live_model_reader(built: dict, model_name: str, fmt: str) -> None:
    _, models = built[model_name]
    spec = read_live_model(models[fmt])
    assert spec.source_format == ("live-keras3" if fmt == "keras3-zip" else "live-tf_keras")
    assert spec.keras_version is not None
    assert spec.keras_version.startswith("3." if fmt == "keras3-zip" else "2.")
    _assert_matches_live(spec, models[fmt])


@pytest.mark.keras
def test_seed_model_structure(built: dict) -> None:
    paths, _ = built["seed"]
    for fmt in FILE_FORMATS:
        spec = read_keras_file(paths[fmt])
        assert spec.model_class == "Sequential"
        assert spec.is_sequential
        assert spec.input_shape == (None, 1, 28, 28)
        assert [lyr.class_name for lyr in spec.layers] == [
            "Conv2D", "ReLU", "MaxPooling2D", "Conv2D", "ReLU",
            "GlobalAveragePooling2D", "Flatten", "Dense", "Softmax",
        ]  # fmt: skip
        assert [lyr.index for lyr in spec.layers] == list(range(9))
        conv = spec.layers[0]
        assert conv.config["data_format"] == "channels_first"
        assert conv.config["padding"] == "same"
        assert conv.config["activation"] == "linear"
        assert conv.config["kernel_size"] == [3, 3]  # lists, never tuples
        assert conv.config["dtype"] == "float32"
        assert conv.weight_names == ("kernel", "bias")
        assert conv.weight("kernel").shape == (3, 3, 1, 8)
        assert spec.layers[-1].config["axis"] == -1
        # random, non-trivial weights made it into the file
        assert np.abs(conv.weight("bias")).sum() > 0


@pytest.mark.keras
def test_keras3_sources_agree(built: dict) -> None:
    """.keras, Keras 3 .h5 and the live Keras 3 model normalize to the same configs."""
    for model_name in MODEL_NAMES:
        paths, models = built[model_name]
        specs = [
            read_keras_file(paths["keras3-zip"]),
            read_keras_file(paths["keras3-h5"]),
            read_live_model(models["keras3-zip"]),
        ]
        assert len({len(s.layers) for s in specs}) == 1
        for layers in zip(*(s.layers for s in specs), strict=True):
            assert layers[0].config == layers[1].config == layers[2].config, layers[0].name
            assert layers[0].module == layers[2].module == "keras.layers"
        assert specs[0].layers == specs[2].layers  # LayerSpec equality compares arrays too


@pytest.mark.keras
def test_weight_names_agree_across_all_sources(built: dict) -> None:
    for model_name in MODEL_NAMES:
        paths, models = built[model_name]
        specs = [read_keras_file(paths[f]) for f in FILE_FORMATS]
        specs += [read_live_model(models["keras3-zip"]), read_live_model(models["keras2-h5"])]
        reference = [(lyr.class_name, lyr.weight_names) for lyr in specs[0].layers]
        for spec in specs[1:]:
            assert [(lyr.class_name, lyr.weight_names) for lyr in spec.layers] == reference, (
                spec.source_format
            )


@pytest.mark.keras
def test_optional_weights_follow_config(built: dict) -> None:
    """center=False / scale=False / use_bias=False shift positional indices correctly."""
    paths, models = built["optional_params"]
    specs = [read_keras_file(paths[f]) for f in FILE_FORMATS]
    specs.append(read_live_model(models["keras3-zip"]))
    for spec in specs:
        by_class = [(lyr.class_name, lyr.weight_names) for lyr in spec.layers]
        assert by_class == [
            ("Conv2D", ("kernel",)),
            ("BatchNormalization", ("gamma", "moving_mean", "moving_variance")),
            ("BatchNormalization", ("beta", "moving_mean", "moving_variance")),
            ("BatchNormalization", ("gamma", "beta", "moving_mean", "moving_variance")),
            ("Flatten", ()),
            ("Dense", ("kernel",)),
            ("Dense", ("kernel", "bias")),
        ], spec.source_format
        assert spec.layers[1].config["center"] is False
        assert spec.layers[5].config["use_bias"] is False
        assert spec.layers[5].config["activation"] == "sigmoid"
        # the (positive) moving variance really is the variance, not the mean
        assert (spec.layers[1].weight("moving_variance") >= 0.5).all()


@pytest.mark.keras
def test_unusual_weight_names(built: dict) -> None:
    paths, _ = built["unusual_weights"]
    for fmt in FILE_FORMATS:
        spec = read_keras_file(paths[fmt])
        names = {lyr.class_name: lyr.weight_names for lyr in spec.layers}
        assert names["DepthwiseConv2D"] == ("kernel", "bias")  # Keras 2 "depthwise_kernel" aliased
        assert names["SeparableConv2D"] == ("depthwise_kernel", "pointwise_kernel", "bias")
        assert names["PReLU"] == ("alpha",)
        assert names["LayerNormalization"] == ("gamma", "beta")
        depthwise = spec.layers[0]
        assert depthwise.weight("kernel").shape == (3, 3, 2, 2)


@pytest.mark.keras
def test_wrapper_layer_weight_names_are_unique(built: dict, tmp_path: Path) -> None:
    """Bidirectional owns two kernels: names stay unique and h5 agrees with live."""
    keras3 = _load_fixtures_module().keras_modules()[0]
    model = keras3.Sequential(
        [keras3.Input((5, 3)), keras3.layers.Bidirectional(keras3.layers.LSTM(2, name="lstm"))]
    )
    model.save(tmp_path / "bi.keras")
    model.save(tmp_path / "bi.h5")
    live = read_live_model(model).layers[0]
    h5 = read_keras_file(tmp_path / "bi.h5").layers[0]
    zipped = read_keras_file(tmp_path / "bi.keras").layers[0]
    assert h5.weight_names == live.weight_names
    for (_, a), (_, b) in zip(h5.weights, live.weights, strict=True):
        assert np.array_equal(a, b)
    assert live.weight_names[0] == "forward_lstm/lstm_cell/kernel"
    for layer in (live, zipped):
        assert len(set(layer.weight_names)) == len(layer.weight_names) == 6
    # .keras stores wrapper weights positionally per sub-object: same arrays, path names
    assert sorted(a.tobytes() for _, a in zipped.weights) == sorted(
        a.tobytes() for _, a in live.weights
    )


@pytest.mark.keras
@pytest.mark.parametrize("fmt", FILE_FORMATS)
def test_functional_file_is_reported_not_refused(built: dict, fmt: str) -> None:
    paths, _ = built["functional"]
    spec = read_keras_file(paths[fmt])
    assert spec.model_class == "Functional"
    assert not spec.is_sequential
    assert spec.input_shape == (None, 4)
    assert [lyr.class_name for lyr in spec.layers] == ["Dense", "Dense"]
    assert [lyr.index for lyr in spec.layers] == [1, 2]  # index 0 is the InputLayer
    assert all(lyr.inbound_nodes for lyr in spec.layers)
    assert spec.input_layers is not None and spec.output_layers is not None


@pytest.mark.keras
@pytest.mark.parametrize("fmt", FILE_FORMATS)
def test_misnamed_file_dispatches_on_content(built: dict, fmt: str, tmp_path: Path) -> None:
    paths, _ = built["seed"]
    wrong = tmp_path / ("model.h5" if fmt == "keras3-zip" else "model.keras")
    wrong.write_bytes(paths[fmt].read_bytes())
    assert read_keras_file(wrong).source_format == fmt


@pytest.mark.keras
def test_reading_files_does_not_import_tensorflow(built: dict) -> None:
    paths, _ = built["seed"]
    code = textwrap.dedent(
        """
        import sys
        from keydnn.frontends.keras.reader import read_keras_file
        for path in sys.argv[1:]:
            spec = read_keras_file(path)
            assert len(spec.layers) == 9, spec
        loaded = [m for m in ("tensorflow", "keras", "tf_keras") if m in sys.modules]
        print("LOADED", loaded)
        sys.exit(1 if loaded else 0)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run(
        [sys.executable, "-c", code, *(str(paths[f]) for f in FILE_FORMATS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LOADED []" in proc.stdout


def test_read_live_model_rejects_non_models() -> None:
    with pytest.raises(KerasInteropError, match="expected a Keras"):
        read_live_model(object())


# --------------------------------------------------------------------------- #
# Config normalization (pure data, no TensorFlow)
# --------------------------------------------------------------------------- #


def test_normalize_builtin_activation_objects() -> None:
    builtin = {
        "module": "builtins",
        "class_name": "function",
        "config": "relu",
        "registered_name": "function",
    }
    assert normalize_layer_config({"activation": builtin})["activation"] == "relu"
    keras3 = {"module": "keras.activations", "class_name": "function", "config": "gelu"}
    assert normalize_layer_config({"activation": keras3})["activation"] == "gelu"
    legacy = {"class_name": "tanh", "config": {}}
    assert (
        normalize_layer_config({"recurrent_activation": legacy})["recurrent_activation"] == "tanh"
    )
    assert normalize_layer_config({"activation": "swish"})["activation"] == "swish"
    assert normalize_layer_config({"activation": None})["activation"] is None


def test_normalize_keeps_custom_activations() -> None:
    custom = {
        "module": "builtins",
        "class_name": "function",
        "config": "my_act",
        "registered_name": "function",
    }
    lam = {"value": ["4wEAAAAA", None, None]}
    layer = {"module": "keras.layers", "class_name": "LeakyReLU", "config": {"negative_slope": 0.3}}
    foreign = {"module": "mypkg.acts", "class_name": "function", "config": "relu"}
    for value in (custom, lam, layer, foreign):
        assert normalize_layer_config({"activation": value})["activation"] == value


def test_normalize_dtype_policies_and_containers() -> None:
    keras3 = {
        "module": "keras",
        "class_name": "DTypePolicy",
        "config": {"name": "mixed_float16"},
        "registered_name": None,
    }
    keras2 = {
        "module": "keras.mixed_precision",
        "class_name": "Policy",
        "config": {"name": "float32"},
    }
    assert normalize_layer_config({"dtype": keras3})["dtype"] == "mixed_float16"
    assert normalize_layer_config({"dtype": keras2})["dtype"] == "float32"
    raw = {
        "name": "c",
        "kernel_size": (3, 3),
        "nested": {"t": (1, (2, 3))},
        "x": np.float32(1.5),
        "arr": np.arange(2),
    }
    out = normalize_layer_config(raw)
    assert out == {
        "name": "c",
        "kernel_size": [3, 3],
        "nested": {"t": [1, [2, 3]]},
        "x": 1.5,
        "arr": [0, 1],
    }
    assert type(out["x"]) is float
    assert set(out) == set(raw)  # no key dropped


# --------------------------------------------------------------------------- #
# Hand-made files: what the reader must accept and refuse (no TensorFlow)
# --------------------------------------------------------------------------- #


def _dense_model_config() -> dict[str, Any]:
    return {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": "hand",
            "layers": [
                {
                    "module": "keras.layers",
                    "class_name": "InputLayer",
                    "config": {"batch_shape": [None, 3], "dtype": "float32", "name": "in"},
                },
                {
                    "module": "keras.layers",
                    "class_name": "Dense",
                    "config": {
                        "name": "d",
                        "units": 2,
                        "use_bias": True,
                        "activation": "relu",
                        "dtype": {
                            "module": "keras",
                            "class_name": "DTypePolicy",
                            "config": {"name": "float32"},
                        },
                    },
                },
                {
                    "module": "keras.layers",
                    "class_name": "Dense",
                    "config": {
                        "name": "d2",
                        "units": 1,
                        "use_bias": False,
                        "activation": "linear",
                        "dtype": "float32",
                    },
                },
            ],
        },
    }


def _hand_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "layers/dense/vars/0": rng.standard_normal((3, 2)).astype("float32"),
        "layers/dense/vars/1": rng.standard_normal(2).astype("float32"),
        "layers/dense_1/vars/0": rng.standard_normal((2, 1)).astype("float32"),
    }


def _h5_bytes(datasets: dict[str, np.ndarray], extra: Any = None) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        for key, array in datasets.items():
            h5[key] = array
        if extra is not None:
            extra(h5)
    return buffer.getvalue()


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _hand_keras(
    path: Path, config: Any = None, weights: dict[str, np.ndarray] | None = None, extra: Any = None
) -> Path:
    return _write_zip(
        path,
        {
            "metadata.json": json.dumps({"keras_version": "3.15.1"}).encode(),
            "config.json": json.dumps(_dense_model_config() if config is None else config).encode(),
            "model.weights.h5": _h5_bytes(_hand_weights() if weights is None else weights, extra),
        },
    )


def test_hand_made_keras_zip_is_read(tmp_path: Path) -> None:
    spec = read_keras_file(_hand_keras(tmp_path / "m.keras"))
    assert spec.model_class == "Sequential" and spec.name == "hand"
    assert spec.input_shape == (None, 3)
    assert [(lyr.index, lyr.name, lyr.weight_names) for lyr in spec.layers] == [
        (0, "d", ("kernel", "bias")),
        (1, "d2", ("kernel",)),
    ]
    weights = _hand_weights()
    assert np.array_equal(spec.layers[0].weight("kernel"), weights["layers/dense/vars/0"])
    assert np.array_equal(spec.layers[1].weight("kernel"), weights["layers/dense_1/vars/0"])
    assert spec.layers[0].config["dtype"] == "float32"


def _assert_refused(path: Path, *fragments: str) -> KerasInteropError:
    with pytest.raises(KerasInteropError) as info:
        read_keras_file(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_missing_file_and_directory(tmp_path: Path) -> None:
    _assert_refused(tmp_path / "nope.keras", "no such file")
    error = _assert_refused(tmp_path, "is a directory")
    assert error.problems and ".keras" in (error.problems[0].supported or "")


def test_not_a_path() -> None:
    with pytest.raises(KerasInteropError, match="expected a file path"):
        read_keras_file(123)  # type: ignore[arg-type]


def test_text_file_renamed_h5(tmp_path: Path) -> None:
    path = tmp_path / "model.h5"
    path.write_text("this is not a model\n")
    _assert_refused(path, "unrecognized file content", ".keras", ".h5")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.keras"
    path.write_bytes(b"")
    _assert_refused(path, "unrecognized file content")


def test_truncated_keras_zip(tmp_path: Path) -> None:
    data = _hand_keras(tmp_path / "full.keras").read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        path = tmp_path / f"cut{cut}.keras"
        path.write_bytes(data[:cut])
        _assert_refused(path, "zip")


def test_corrupt_zip_member(tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("config.json", json.dumps(_dense_model_config()))
        zf.writestr("model.weights.h5", _h5_bytes(_hand_weights()))
    data = bytearray(path.read_bytes())
    start = data.find(b"\x89HDF")
    data[start + 600 : start + 700] = b"\x00" * 100  # breaks the member CRC
    path.write_bytes(bytes(data))
    with pytest.raises(KerasInteropError, match=str(path).replace("\\", "\\\\")):
        read_keras_file(path)
    # Named as what it is -- a damaged archive member -- not as an unexpected internal error.
    _assert_refused(path, "archive member 'model.weights.h5' is corrupt or unreadable", "CRC")


def test_corrupt_hdf5_structure_is_named_as_corruption(tmp_path: Path) -> None:
    """libhdf5 reports damage from whichever call meets it (RuntimeError, KeyError, OSError...).

    Wherever the damage is, the file is read or refused with a message saying
    what is wrong -- never the reader's generic wrapper for unexpected errors.
    """
    source = _hand_h5(tmp_path / "m.h5", ["d/kernel:0"], {"d/kernel:0": np.ones((3, 2), "float32")}).read_bytes()
    path = tmp_path / "damaged.h5"
    corrupt = 0
    for start in range(0, len(source), 211):
        data = bytearray(source)
        data[start : start + 64] = b"\xff" * 64
        path.write_bytes(bytes(data))
        try:
            read_keras_file(path)
        except KerasInteropError as exc:
            assert "unreadable or malformed model file" not in str(exc), (start, str(exc))
            corrupt += "corrupt" in str(exc)
    assert corrupt > 0


def test_zip_without_config_json(tmp_path: Path) -> None:
    path = _write_zip(tmp_path / "m.keras", {"model.weights.h5": _h5_bytes(_hand_weights())})
    _assert_refused(path, "no config.json")


def test_invalid_config_json(tmp_path: Path) -> None:
    path = _write_zip(
        tmp_path / "m.keras", {"config.json": b"{not json", "model.weights.h5": _h5_bytes({})}
    )
    _assert_refused(path, "config.json is not valid JSON")


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda c: c.pop("class_name"), "no class_name"),
        (lambda c: c["config"].update(layers="x"), "'layers' is not a list"),
        (lambda c: c["config"]["layers"][1].pop("config"), "has no config object"),
        (
            lambda c: c["config"]["layers"][0]["config"].update(batch_shape=[None, "3"]),
            "invalid dimension",
        ),
        (lambda c: c["config"]["layers"][2]["config"].update(name="d"), "duplicate layer names"),
    ],
)
def test_malformed_model_config(tmp_path: Path, mutate: Any, fragment: str) -> None:
    config = _dense_model_config()
    mutate(config)
    _assert_refused(_hand_keras(tmp_path / "m.keras", config=config), fragment)


def test_missing_weights_for_a_layer(tmp_path: Path) -> None:
    weights = _hand_weights()
    del weights["layers/dense/vars/1"]  # Dense with use_bias=True needs 2 variables
    error = _assert_refused(_hand_keras(tmp_path / "m.keras", weights=weights), "'d'", "expected 2")
    assert error.problems[0].layer_name == "d"
    weights = _hand_weights()
    del weights["layers/dense_1/vars/0"]
    _assert_refused(_hand_keras(tmp_path / "m2.keras", weights=weights), "'d2'", "expected 1")


def test_non_positional_vars_refused(tmp_path: Path) -> None:
    weights = _hand_weights()
    weights["layers/dense/vars/kernel"] = weights.pop("layers/dense/vars/0")
    _assert_refused(_hand_keras(tmp_path / "m.keras", weights=weights), "non-positional")


def test_soft_and_external_links_refused(tmp_path: Path) -> None:
    weights = _hand_weights()
    del weights["layers/dense/vars/1"]

    def soft(h5: h5py.File) -> None:
        h5["layers/dense/vars/1"] = h5py.SoftLink("/layers/dense/vars/0")

    _assert_refused(_hand_keras(tmp_path / "soft.keras", weights=weights, extra=soft), "SoftLink")

    def external(h5: h5py.File) -> None:
        h5["layers/dense/vars/1"] = h5py.ExternalLink("/etc/passwd", "/x")

    _assert_refused(
        _hand_keras(tmp_path / "ext.keras", weights=weights, extra=external), "ExternalLink"
    )


def test_npz_weights_refused_clearly(tmp_path: Path) -> None:
    path = _write_zip(
        tmp_path / "m.keras",
        {
            "config.json": json.dumps(_dense_model_config()).encode(),
            "model.weights.npz": b"PK\x05\x06" + b"\x00" * 18,
        },
    )
    _assert_refused(path, "model.weights.npz")


def test_weights_member_not_hdf5(tmp_path: Path) -> None:
    path = _write_zip(
        tmp_path / "m.keras",
        {"config.json": json.dumps(_dense_model_config()).encode(), "model.weights.h5": b"garbage"},
    )
    _assert_refused(path, "not an HDF5 file")


def test_h5_without_model_config(tmp_path: Path) -> None:
    path = tmp_path / "weights_only.h5"
    with h5py.File(path, "w") as h5:
        h5["layers/dense/vars/0"] = np.zeros((2, 2), "float32")
    _assert_refused(path, "no 'model_config' attribute", "weights-only")


def _hand_h5(
    path: Path, weight_names: list[str], datasets: dict[str, np.ndarray], version: str = "2.21.0"
) -> Path:
    config = _dense_model_config()
    config["config"]["layers"][0]["config"]["batch_input_shape"] = config["config"]["layers"][0][
        "config"
    ].pop("batch_shape")
    with h5py.File(path, "w") as h5:
        h5.attrs["model_config"] = json.dumps(config)
        h5.attrs["keras_version"] = version
        weights = h5.create_group("model_weights")
        weights.attrs["layer_names"] = np.array([b"d", b"d2"])
        group = weights.create_group("d")
        group.attrs["weight_names"] = np.array([n.encode() for n in weight_names])
        for key, array in datasets.items():
            group[key] = array
        weights.create_group("d2").attrs["weight_names"] = np.array([b"d2/kernel:0"])
        weights["d2/d2/kernel:0"] = np.ones((2, 1), "float32")
    return path


def test_hand_made_keras2_h5_is_read(tmp_path: Path) -> None:
    kernel = np.arange(6, dtype=">f4").reshape(3, 2)  # big-endian on disk
    path = _hand_h5(
        tmp_path / "m.h5",
        ["d/kernel:0", "d/bias:0"],
        {"d/kernel:0": kernel, "d/bias:0": np.ones(2, "float32")},
    )
    spec = read_keras_file(path)
    assert spec.source_format == "keras2-h5" and spec.keras_version == "2.21.0"
    assert spec.input_shape == (None, 3)
    assert spec.layers[0].weight_names == ("kernel", "bias")
    assert spec.layers[0].weight("kernel").dtype == np.dtype("float32")
    assert np.array_equal(spec.layers[0].weight("kernel"), kernel)


def test_h5_weight_listed_but_missing(tmp_path: Path) -> None:
    path = _hand_h5(
        tmp_path / "m.h5", ["d/kernel:0", "d/bias:0"], {"d/kernel:0": np.ones((3, 2), "float32")}
    )
    _assert_refused(path, "'d/bias:0'", "missing")


def test_h5_layer_without_weights(tmp_path: Path) -> None:
    path = _hand_h5(tmp_path / "m.h5", [], {})
    _assert_refused(path, "'d'", "0 stored weights, expected 2")


def test_h5_non_numeric_dataset(tmp_path: Path) -> None:
    path = _hand_h5(
        tmp_path / "m.h5",
        ["d/kernel:0", "d/bias:0"],
        {"d/kernel:0": np.array([b"a", b"b"]), "d/bias:0": np.ones(2, "float32")},
    )
    _assert_refused(path, "non-numeric")


def test_first_layer_batch_input_shape(tmp_path: Path) -> None:
    """Old Keras 2 Sequential: no InputLayer; the first layer carries the shape."""
    config = _dense_model_config()
    del config["config"]["layers"][0]
    config["config"]["layers"][0]["config"]["batch_input_shape"] = [None, 3]
    spec = read_keras_file(_hand_keras(tmp_path / "m.keras", config=config))
    assert spec.input_shape == (None, 3)
    assert [lyr.index for lyr in spec.layers] == [0, 1]


@pytest.mark.keras
@pytest.mark.parametrize("fmt", FILE_FORMATS)
def test_truncated_real_files_never_leak_other_errors(
    built: dict, fmt: str, tmp_path: Path
) -> None:
    data = built["seed"][0][fmt].read_bytes()
    for fraction in (0.1, 0.5, 0.9, 0.99):
        path = tmp_path / f"t{fraction}"
        path.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(KerasInteropError):
            read_keras_file(path)


def test_spec_is_frozen_hashable_and_compares_arrays() -> None:
    def make(bias: float) -> LayerSpec:
        weights = (("kernel", np.ones((2, 2), "float32")), ("bias", np.full(2, bias, "float32")))
        return LayerSpec(
            index=0, class_name="Dense", name="d", config={"units": 2}, weights=weights
        )

    layer = make(0.5)
    with pytest.raises(AttributeError):
        layer.name = "x"  # type: ignore[misc]
    assert layer == make(0.5)
    assert layer != make(0.25)
    assert hash(layer) == hash(make(0.5))
    model = ModelSpec("Sequential", "m", (None, 2), "float32", (layer,), "keras3-zip", "3.0")
    assert model == ModelSpec(
        "Sequential", "m", (None, 2), "float32", (make(0.5),), "keras3-zip", "3.0"
    )
    assert hash(model) == hash(model)


# --------------------------------------------------------------------------- HDF5 checks before libhdf5


def test_h5_with_a_user_block_passes_the_heap_checks(tmp_path: Path) -> None:
    """Addresses in an HDF5 file are relative to its superblock; with a 512-byte user block in front the
    global heap and string checks must still recognize what libhdf5 wrote (and still catch a bad length)."""
    import struct

    from fuzz import seeds

    src = h5py.File(io.BytesIO(seeds.keras_seed_bytes("keras2-h5")), "r")
    path = tmp_path / "ub.h5"
    with src, h5py.File(path, "w", userblock_size=512) as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for key in src:
            src.copy(src[key], dst, name=key)
    data = bytearray(path.read_bytes())
    assert data[512:520] == b"\x89HDF\r\n\x1a\n"
    assert len(read_keras_file(path).layers) == 9
    heap = data.index(b"GCOL")
    descriptor = data.index(struct.pack("<QI", heap - 512, 1))  # (collection address, object 1), base-relative
    struct.pack_into("<I", data, descriptor - 4, 2**31)
    path.write_bytes(bytes(data))
    with pytest.raises(KerasInteropError, match="claims 2147483648 elements"):
        read_keras_file(path)
