"""Layer-config normalization: Keras 2, Keras 3 and live configs made to look alike.

Converters read one representation whatever wrote the config: lists not
tuples, Python not NumPy values, builtin activations and dtype policies as
their names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["normalize_layer_config", "plain"]


#: Builtin activation function names of Keras 3 and Keras 2 (tf_keras).
_BUILTIN_ACTIVATIONS = frozenset(
    {
        "celu", "elu", "exponential", "gelu", "glu", "hard_shrink",
        "hard_sigmoid", "hard_silu", "hard_swish", "hard_tanh", "leaky_relu",
        "linear", "log_sigmoid", "log_softmax", "mish", "relu", "relu6",
        "selu", "sigmoid", "silu", "soft_shrink", "softmax", "softplus",
        "softsign", "sparse_plus", "sparse_sigmoid", "sparsemax",
        "squareplus", "swish", "tanh", "tanh_shrink", "threshold",
    }
)  # fmt: skip



def plain(value: Any) -> Any:
    """Turn tuples into lists and NumPy values into Python ones, recursively.

    Live ``get_config()`` returns tuples and sometimes NumPy values while JSON
    files hold lists; converters should see one representation.
    """
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_keras_module(module: Any) -> bool:
    if module is None:
        return True
    if not isinstance(module, str):
        return False
    root = module.split(".")[0]
    return root in {"keras", "tf_keras", "tensorflow", "builtins"}


def _normalize_activation(value: Any) -> Any:
    """Builtin activation -> its name; anything else (custom, lambda) unchanged.

    Keras 3 may serialize a builtin as ``{"module": "builtins", "class_name":
    "function", "config": "relu", ...}`` -- the same shape a custom function
    gets, so only names of builtin activations are collapsed; a custom
    function keeps its dict so the converter can refuse it by name.
    """
    if not isinstance(value, Mapping):
        return value
    class_name = value.get("class_name")
    config = value.get("config")
    if not _is_keras_module(value.get("module")):
        return value
    if class_name == "function" and isinstance(config, str) and config in _BUILTIN_ACTIVATIONS:
        return config
    if (
        isinstance(class_name, str)
        and class_name in _BUILTIN_ACTIVATIONS
        and (config is None or config == {} or config == class_name)
    ):
        return class_name
    return value


def _normalize_dtype(value: Any) -> Any:
    """A serialized DTypePolicy/Policy object -> its policy name string."""
    if not isinstance(value, Mapping):
        return value
    class_name = value.get("class_name")
    config = value.get("config")
    if (
        isinstance(class_name, str)
        and "Policy" in class_name
        and isinstance(config, Mapping)
        and isinstance(config.get("name"), str)
    ):
        return config["name"]
    return value


def normalize_layer_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Normalize one layer config so Keras 2 and 3 look alike; keeps every key.

    * tuples -> lists, NumPy scalars/arrays -> Python values;
    * every top-level ``*activation`` key holding a builtin activation -> its
      name string (custom/lambda activations are left as serialized);
    * ``dtype`` holding a policy object -> the policy name.
    """
    out = plain(config)
    for key in list(out):
        if key == "activation" or key.endswith("_activation"):
            out[key] = _normalize_activation(out[key])
    if "dtype" in out:
        out["dtype"] = _normalize_dtype(out["dtype"])
    return out
