"""Every config field of every seed layer, given values of the wrong type: refused by name, never a TypeError.

The random fuzzers (test_fuzz_keras.py) found converters that computed with a
config value before checking its type (a list hashed as a dict key, an
integer beyond 64 bits handed to ``np.isfinite``, ``sorted`` over a list mixing
lists and ints). This test walks the same ground exhaustively and cheaply: the
seed models are read once and the hostile values are put into the in-memory
``ModelSpec``, one field at a time, so each case costs one lowering (~1 ms;
the passes after it are the random fuzzers' business).

The converters check their values themselves (``frontends/keras/values.py``);
the driver's net (``lower._converter_fault``) only catches what they miss, so
a refusal from the net fails here too: each field must say what it accepts.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest

import keydnn
from keydnn.errors import KerasInteropError
from keydnn.frontends.keras import CONVERTERS, ConversionOptions, convert, register_converter
from keydnn.frontends.keras.lower import CONVERTER_FAULT_MESSAGE
from keydnn.frontends.keras.reader import read_keras_file
from keydnn.frontends.keras.spec import ModelSpec
from keydnn.frontends.keras.values import finite_float, is_one_of

from . import seeds

#: Values of the wrong type or size for any field: containers where scalars belong (and the reverse),
#: integers no float holds, NaN, nesting that breaks sorting and hashing.
WRONG_TYPES: tuple[object, ...] = (
    None, True, "x", -1, 2**64, 10**400, -(10**400), float("nan"), [], {"a": 1}, [3, 3, 3], [2, 1, [0, 0]],
    [10**400], [[1, 1], [1, [1]]], ["a", 1],
)


OPTIONS = ConversionOptions(allow_non_linear_activation=True)


def _with_value(spec: ModelSpec, index: int, field: str, value: object) -> ModelSpec:
    layer = spec.layers[index]
    layers = list(spec.layers)
    layers[index] = dataclasses.replace(layer, config={**layer.config, field: value})
    return dataclasses.replace(spec, layers=tuple(layers))


@pytest.mark.parametrize("model", sorted(seeds.MODELS))
def test_every_field_refuses_values_of_the_wrong_type(tmp_path: Path, model: str) -> None:
    spec = read_keras_file(seeds.write_keras_seed(tmp_path / "m.keras", "keras3-zip", model=model))
    cases = 0
    for index, layer in enumerate(spec.layers):
        for field in sorted(set(layer.config) - {"name"} | {"data_format"}):
            for value in WRONG_TYPES:
                cases += 1
                where = f"{layer.name}.{field}={value!r:.40}"
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        convert(_with_value(spec, index, field, value), OPTIONS)
                except KerasInteropError as exc:
                    assert CONVERTER_FAULT_MESSAGE not in str(exc), f"{where}: only the driver's net caught it: {exc}"
                    # this layer, or a later one the value made impossible (strides 2**64 is valid; the next
                    # pooling window no longer fits)
                    assert any((p.layer_index or 0) >= layer.index for p in exc.problems), f"{where}: {exc}"
                except Exception as exc:  # noqa: BLE001 -- the point of the test
                    pytest.fail(f"{where}: {type(exc).__name__} escaped: {exc}")
    assert cases > 300


def test_a_converter_fault_is_a_problem_naming_layer_and_field(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The net under the converters: an exception they did not foresee names the layer and the field last read."""
    entry = CONVERTERS["Softmax"]

    def broken(ctx) -> None:  # type: ignore[no-untyped-def]
        ctx.cfg("axis")
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setitem(CONVERTERS, "Softmax", entry)
    register_converter("Softmax", constraints=entry.constraints, replace=True)(broken)
    path = seeds.write_keras_seed(tmp_path / "m.keras", "keras3-zip")
    with pytest.raises(KerasInteropError) as info:
        keydnn.from_keras(path)
    (problem,) = info.value.problems
    assert problem.layer_name == "softmax" and problem.field == "axis" and problem.value == -1
    assert problem.supported == entry.constraints
    assert CONVERTER_FAULT_MESSAGE in str(info.value) and "TypeError" in str(info.value)
    with pytest.warns(UserWarning, match="softmax"):  # non-strict: a placeholder, like any unsupported layer
        model = keydnn.from_keras(path, strict=False)
    assert model.graph.find_opaque()


@pytest.mark.parametrize("value,expected", [
    (1, 1.0), (-2.5, -2.5), (2**64, float(2**64)), (10**400, None), (float("nan"), None), (float("inf"), None),
    (True, None), ("1", None), ([1], None), (None, None),
])
def test_finite_float(value: object, expected: float | None) -> None:
    assert finite_float(value) == expected


@pytest.mark.parametrize("value,allowed,expected", [
    ("same", ("valid", "same"), True), ([3, 3], ("valid", "same"), False), ({"a": 1}, {"channels_last": 1}, False),
    (1, (True, False), False), (0, (False, True), False), (True, (True, False), True), (None, ("a", None), True),
    ("None", ("a", None), False), (float("nan"), (1.0,), False),
])
def test_is_one_of(value: object, allowed: tuple, expected: bool) -> None:
    assert is_one_of(value, allowed) is expected
