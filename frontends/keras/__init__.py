"""Keras frontend: read Sequential and Functional models (files without TensorFlow, or live objects) and lower
them to IR."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
from typing import Any

from keydnn.frontends.keras import convert_core as _convert_core  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_merge as _convert_merge  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_identity as _convert_identity  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_activation as _convert_activation  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_norm as _convert_norm  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_conv as _convert_conv  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_spatial as _convert_spatial  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_shape as _convert_shape  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_recurrent as _convert_recurrent  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_rnn_wrappers as _convert_rnn_wrappers  # noqa: F401  (registers)
from keydnn.frontends.keras import convert_sequence as _convert_sequence  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_conv_recurrent as _convert_conv_recurrent  # noqa: F401  (registers)
from keydnn.frontends.keras import convert_layernorm as _convert_layernorm  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_attention as _convert_attention  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_einsum as _convert_einsum  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_transposed as _convert_transposed  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_preprocessing as _convert_preprocessing  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_applications as _convert_applications  # noqa: F401  (registers converters)
from keydnn.frontends.keras import convert_tfop as _convert_tfop  # noqa: F401  (registers converters)
from keydnn.frontends.keras.lower import FrontendResult, lower_model
from keydnn.frontends.keras.registry import CONVERTERS, ConversionOptions, LayerContext, register_converter

__all__ = [
    "CONVERTERS", "ConversionOptions", "FrontendResult", "LayerContext", "register_converter",
    "load_spec", "convert", "keras_major", "lower_model",
]


def load_spec(model_or_path: Any, *, isolate: bool | None = None):
    """Read a path (``.keras`` / ``.h5``) or a live model into a ``ModelSpec``.

    ``isolate`` reads a file in a child process (``reader.read_keras_file``; None: the environment
    variable ``KEYDNN_ISOLATE_READER`` decides, default in process).
    """
    from keydnn.frontends.keras.reader import read_keras_file, read_live_model
    from keydnn.frontends.keras.spec import ModelSpec

    if isinstance(model_or_path, ModelSpec):
        return model_or_path
    if isinstance(model_or_path, (str, os.PathLike)):
        return dataclasses.replace(read_keras_file(model_or_path, isolate=isolate),
                                   source_path=os.fspath(model_or_path))
    return read_live_model(model_or_path)


def keras_major(spec) -> int:
    """Keras 2 and 3 disagree on some activations (hard_sigmoid); tell which wrote the model."""
    version = (spec.keras_version or "").split(".")[0]
    if version.isdigit():
        return int(version)
    return 2 if spec.source_format in ("keras2-h5", "live-tf_keras") else 3


def convert(model_or_path: Any, options: ConversionOptions, *, isolate: bool | None = None) -> FrontendResult:
    spec = load_spec(model_or_path, isolate=isolate)
    major = keras_major(spec)
    options = ConversionOptions(dtype=options.dtype, allow_non_linear_activation=options.allow_non_linear_activation,
                                strict=options.strict, keras_major=major)
    result = lower_model(spec, options)
    result.source.update(source_file_info(spec.source_path))
    return result


def source_file_info(path: str | None) -> dict[str, Any]:
    """What the artifact records about the conversion: the source file's name and SHA-256 (for a file),
    and the time, ISO 8601 UTC (``SOURCE_DATE_EPOCH``, when set, pins it: reproducible builds)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch.isdigit()
            else datetime.datetime.now(datetime.timezone.utc))
    info: dict[str, Any] = {"converted_at": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
    if path is not None:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        info.update(path_name=os.path.basename(path), sha256=digest.hexdigest())
    return info
