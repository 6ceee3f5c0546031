"""Read Keras models into pure-data ``ModelSpec`` objects, without TensorFlow.

Files are parsed with ``zipfile``, ``json`` and ``h5py`` only: converting a
model must not require (or silently import) TensorFlow, and a model file is
untrusted input, so nothing in it is executed, extracted to disk, or followed
outside the file (soft/external HDF5 links and external datasets are refused).

Supported sources:

* ``.keras`` zip (Keras 3 native format; also the same format written by
  tf_keras) -> ``source_format="keras3-zip"``;
* ``.h5`` written by Keras 3 -> ``"keras3-h5"``;
* ``.h5`` written by Keras 2 / tf_keras -> ``"keras2-h5"``;
* a live Keras 3 / tf_keras model object -> ``"live-keras3"`` /
  ``"live-tf_keras"``.

The format is chosen from the file's content (zip vs HDF5 magic), not its
extension. Anything malformed raises ``KerasInteropError`` naming the file.
"""

from __future__ import annotations

import io
import json
import logging
import lzma
import math
import mmap
import os
import re
import sys
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ...errors import KerasInteropError, Problem
from .spec import LayerSpec, ModelSpec

__all__ = [
    "normalize_layer_config", "read_keras_file", "read_keras_file_isolated", "read_live_model", "ReaderProcessError",
    "isolation_from_env",
]

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS = ".keras (Keras 3 zip archive), .h5 (HDF5 saved by Keras 3 or Keras 2/tf_keras)"

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

# Bounds on what a model file can make us allocate or walk. A file comes from a
# stranger, so every size it declares is checked against these before anything
# of that size is allocated; the numbers are far above any Keras model we
# support, and far below what would take a machine down.

#: Largest zip member we read into memory (weights); bigger is refused rather
#: than risking a decompression bomb.
MAX_ZIP_MEMBER_BYTES = 2 * 1024**3
#: A zip member may expand at most this many times its compressed size (Keras
#: stores members uncompressed; zlib's best case is ~1000x, reached only by
#: runs of one byte -- i.e. by bombs) ...
MAX_COMPRESSION_RATIO = 100
#: ... once it is larger than this (small members compress arbitrarily well).
COMPRESSION_CHECK_BYTES = 1024**2
#: Largest config.json / metadata.json / model_config attribute we accept.
MAX_JSON_BYTES = 16 * 1024**2
#: Deepest nesting of lists/objects in a config (Keras writes < 20 levels;
#: bounding it keeps every recursive walk of the config far from the
#: interpreter's recursion limit).
MAX_JSON_DEPTH = 100
#: Most layers a model config may list (the largest Keras models have a few
#: thousand); conversion time and memory grow with it.
MAX_LAYERS = 10_000
#: Largest single weight array we materialize.
MAX_DATASET_BYTES = 2 * 1024**3
#: Largest total of all weight arrays of one model (same bound as an artifact).
MAX_TOTAL_WEIGHT_BYTES = 4 * 1024**3
#: A weight dataset may hold at most this many times the bytes it stores in the
#: file (HDF5 fills unwritten datasets with a fill value and decompresses
#: chunks: either lets a tiny file claim gigabytes) ...
MAX_DATASET_EXPANSION = 64
#: ... once it is larger than this.
DATASET_EXPANSION_CHECK_BYTES = 1024**2
#: Deepest nesting of HDF5 groups walked below a layer's weights group.
MAX_GROUP_DEPTH = 32
#: Most global-heap objects walked when checking an HDF5 file's heaps before libhdf5 reads it (a
#: collection holds at most 65,536 objects; Keras files have a handful of collections).
MAX_GLOBAL_HEAP_OBJECTS = 1_000_000

_CONFIG_JSON = "config.json"
_METADATA_JSON = "metadata.json"
_WEIGHTS_H5 = "model.weights.h5"
_WEIGHTS_NPZ = "model.weights.npz"

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

#: Keras 2 weight names that Keras 3 calls differently; reported under the
#: Keras 3 name so converters need one lookup.
_WEIGHT_ALIASES: dict[tuple[str, str], str] = {
    ("DepthwiseConv2D", "depthwise_kernel"): "kernel",
    ("DepthwiseConv1D", "depthwise_kernel"): "kernel",
}

_KERNEL_BIAS = frozenset(
    {
        "Dense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
        "Conv2DTranspose", "Conv3DTranspose", "DepthwiseConv1D",
        "DepthwiseConv2D",
    }
)  # fmt: skip
_SEPARABLE = frozenset({"SeparableConv1D", "SeparableConv2D"})
_RNN = frozenset({"LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"})


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


def _fail(where: str, message: str, **problem: Any) -> KerasInteropError:
    """Build the error: the summary names the file, the Problem says what is wrong.

    Layer details go into the Problem's fields (not the message text) so the
    error prints each fact once and callers can inspect them.
    """
    return KerasInteropError(f"cannot read {where}", [Problem(message=message, **problem)])


# --------------------------------------------------------------------------- #
# Config normalization
# --------------------------------------------------------------------------- #


def _plain(value: Any) -> Any:
    """Turn tuples into lists and NumPy values into Python ones, recursively.

    Live ``get_config()`` returns tuples and sometimes NumPy values while JSON
    files hold lists; converters should see one representation.
    """
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
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
    out = _plain(config)
    for key in list(out):
        if key == "activation" or key.endswith("_activation"):
            out[key] = _normalize_activation(out[key])
    if "dtype" in out:
        out["dtype"] = _normalize_dtype(out["dtype"])
    return out


# --------------------------------------------------------------------------- #
# Model config parsing (shared by files and live models)
# --------------------------------------------------------------------------- #


@dataclass
class _Entry:
    """One entry of the model config's ``layers`` list."""

    position: int  # position in the config's layers list
    class_name: str
    name: str
    config: dict[str, Any]  # normalized
    module: str | None
    registered_name: str | None
    inbound_nodes: list[Any] | None

    @property
    def is_input(self) -> bool:
        return self.class_name == "InputLayer"


@dataclass
class _ParsedModel:
    model_class: str
    name: str
    entries: list[_Entry]
    functional: bool  # InputLayers count as layers (model.layers includes them)
    input_shape: tuple[int | None, ...]
    input_dtype: str
    input_layers: list[Any] | None
    output_layers: list[Any] | None

    def indexed(self) -> Iterator[tuple[int, _Entry]]:
        """(index in model.layers, entry) for every entry, InputLayers included."""
        index = 0
        for entry in self.entries:
            if entry.is_input and not self.functional:
                yield -1, entry
                continue
            yield index, entry
            index += 1

    def container(self) -> list[_Entry]:
        """Entries in ``model.layers`` order (what the weights file walks)."""
        return [e for i, e in self.indexed() if i >= 0]


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _parse_shape(value: Any, where: str, what: str) -> tuple[int | None, ...]:
    if not isinstance(value, (list, tuple)):
        raise _fail(where, f"{what} is not a list of dimensions", field=what, value=value)
    dims: list[int | None] = []
    for dim in value:
        if dim is None or (isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0):
            dims.append(dim)
        else:
            raise _fail(where, f"{what} has an invalid dimension {dim!r}", field=what, value=value)
    return tuple(dims)


def _parse_entry(raw: Any, position: int, where: str) -> _Entry:
    if not isinstance(raw, Mapping):
        raise _fail(where, f"layer entry {position} is not an object", value=raw)
    class_name = raw.get("class_name")
    config = raw.get("config")
    if not isinstance(class_name, str) or not class_name:
        raise _fail(where, f"layer entry {position} has no class_name", value=class_name)
    if not isinstance(config, Mapping):
        raise _fail(
            where,
            f"layer entry {position} ({class_name}) has no config object",
            layer_class=class_name,
            field="config",
            value=config,
        )
    name = config.get("name", raw.get("name"))
    if not isinstance(name, str) or not name:
        raise _fail(
            where,
            f"layer entry {position} ({class_name}) has no name",
            layer_class=class_name,
            field="name",
            value=name,
        )
    inbound = raw.get("inbound_nodes")
    return _Entry(
        position=position,
        class_name=class_name,
        name=name,
        config=normalize_layer_config(config),
        module=_opt_str(raw.get("module")),
        registered_name=_opt_str(raw.get("registered_name")),
        inbound_nodes=_plain(inbound) if isinstance(inbound, (list, tuple)) else None,
    )


def _parse_model_config(root: Any, where: str) -> _ParsedModel:
    """Parse the ``{"class_name", "config"}`` document describing the model."""
    if not isinstance(root, Mapping):
        raise _fail(where, "model config is not a JSON object", value=type(root).__name__)
    model_class = root.get("class_name")
    if not isinstance(model_class, str) or not model_class:
        raise _fail(where, "model config has no class_name", field="class_name", value=model_class)
    config = root.get("config")
    if isinstance(config, list):  # Keras <= 2.2 Sequential: config is the layer list
        config = {"name": "sequential", "layers": config}
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise _fail(where, "model config's 'config' is not an object", field="config", value=config)
    name = config.get("name")
    name = name if isinstance(name, str) else model_class.lower()

    raw_layers = config.get("layers", [])
    if raw_layers is None:
        raw_layers = []
    if not isinstance(raw_layers, list):
        raise _fail(
            where, "model config's 'layers' is not a list", field="layers", value=raw_layers
        )
    if len(raw_layers) > MAX_LAYERS:
        raise _fail(
            where,
            f"model config lists {len(raw_layers)} layers, more than the limit of {MAX_LAYERS}",
            field="layers",
        )
    entries = [_parse_entry(raw, i, where) for i, raw in enumerate(raw_layers)]
    counts = Counter(e.name for e in entries)
    dup = sorted(n for n, c in counts.items() if c > 1)
    if dup:
        shown = dup[:10] + (["..."] if len(dup) > 10 else [])
        raise _fail(where, f"duplicate layer names {shown}", field="layers", value=shown)

    functional = model_class != "Sequential" and (
        "input_layers" in config or any(e.inbound_nodes is not None for e in entries)
    )
    input_shape, input_dtype = _find_input(config, root, entries, functional, where)
    input_layers = _plain(config["input_layers"]) if "input_layers" in config else None
    output_layers = _plain(config["output_layers"]) if "output_layers" in config else None
    return _ParsedModel(
        model_class=model_class,
        name=name,
        entries=entries,
        functional=functional,
        input_shape=input_shape,
        input_dtype=input_dtype,
        input_layers=input_layers,
        output_layers=output_layers,
    )


def _find_input(
    config: Mapping[str, Any],
    root: Mapping[str, Any],
    entries: list[_Entry],
    functional: bool,
    where: str,
) -> tuple[tuple[int | None, ...], str]:
    """Input batch shape and dtype, from wherever this Keras version put it."""
    dtype: Any = None
    for entry in entries:
        if entry.is_input:
            for key in ("batch_shape", "batch_input_shape"):
                if entry.config.get(key) is not None:
                    dtype = entry.config.get("dtype")
                    return (
                        _parse_shape(entry.config[key], where, f"{entry.name}.{key}"),
                        dtype if isinstance(dtype, str) else "float32",
                    )
            break
    first = next((e for e in entries if not e.is_input), None)
    if first is not None and not functional:
        for key in ("batch_input_shape", "batch_shape"):
            if first.config.get(key) is not None:
                dtype = first.config.get("dtype")
                if not isinstance(dtype, str) or dtype.startswith("mixed_"):
                    dtype = "float32"
                return _parse_shape(first.config[key], where, f"{first.name}.{key}"), dtype
    candidates = [config.get("build_input_shape")]
    build_config = root.get("build_config")
    if isinstance(build_config, Mapping):
        candidates.append(build_config.get("input_shape"))
    for candidate in candidates:
        if isinstance(candidate, (list, tuple)) and all(
            d is None or isinstance(d, int) for d in candidate
        ):
            return _parse_shape(candidate, where, "build_input_shape"), "float32"
    logger.debug("%s: no input shape recorded", where)
    return (), "float32"


# --------------------------------------------------------------------------- #
# Weight naming
# --------------------------------------------------------------------------- #


def _canonical_weight_name(class_name: str, name: str) -> str:
    return _WEIGHT_ALIASES.get((class_name, name), name)


def _short_weight_name(full: str) -> str:
    """``"sequential/conv2d/kernel"`` / ``"conv2d/kernel:0"`` -> ``"kernel"``."""
    last = full.rstrip("/").split("/")[-1]
    return re.sub(r":\d+$", "", last)


def _weight_names_for(layer_name: str, full_names: list[str]) -> list[str]:
    """Short names, or layer-relative paths where short names would collide.

    Wrappers and nested models (``Bidirectional``, a Sequential used as a
    layer) own several ``kernel``s; their names then keep the path below the
    layer (``"forward_lstm/lstm_cell/kernel"``) so every name stays unique.
    """
    shorts = [_short_weight_name(f) for f in full_names]
    counts = Counter(shorts)
    out = []
    for full, short in zip(full_names, shorts, strict=True):
        if counts[short] > 1:
            parts = re.sub(r":\d+$", "", full).split("/")
            head = parts[:-1]
            if layer_name in head:  # drop the model/layer scope above the weight
                parts = parts[len(head) - head[::-1].index(layer_name) :]
            short = "/".join(parts)
        out.append(short)
    return out


def _positional_layout(class_name: str, config: Mapping[str, Any]) -> dict[str, list[str]] | None:
    """Known weight names by relative h5 sub-path ("" = the layer's own vars).

    ``None`` means the class is unknown: positional vars get ``var<i>`` names.
    The names follow Keras 3's variable creation order, which is the order
    ``save_own_variables`` writes them and ``get_weights()`` returns them.
    """
    use_bias = config.get("use_bias", True) is not False
    if class_name in _KERNEL_BIAS:
        return {"": ["kernel"] + (["bias"] if use_bias else [])}
    if class_name in _SEPARABLE:
        return {"": ["depthwise_kernel", "pointwise_kernel"] + (["bias"] if use_bias else [])}
    if class_name == "BatchNormalization":
        names = []
        if config.get("scale", True) is not False:
            names.append("gamma")
        if config.get("center", True) is not False:
            names.append("beta")
        names += ["moving_mean", "moving_variance"]
        if config.get("renorm"):
            names += ["moving_stddev", "renorm_mean", "renorm_stddev"]
        return {"": names}
    if class_name == "LayerNormalization":
        rms = bool(config.get("rms_scaling"))
        names = []
        if config.get("scale", True) is not False or rms:
            names.append("gamma")
        if config.get("center", True) is not False and not rms:
            names.append("beta")
        return {"": names}
    if class_name == "GroupNormalization":
        return {"": (["gamma"] if config.get("scale", True) is not False else [])
                + (["beta"] if config.get("center", True) is not False else [])}
    if class_name == "LayerScale":
        return {"": ["gamma"]}
    if class_name == "EinsumDense":
        return {"": ["kernel"] + (["bias"] if config.get("bias_axes") else [])}
    if class_name == "Attention":
        return {"": (["scale"] if config.get("use_scale") else [])
                + (["concat_score_weight"] if config.get("score_mode") == "concat" else [])}
    if class_name == "AdditiveAttention":
        return {"": ["scale"] if config.get("use_scale", True) is not False else []}
    if class_name == "RMSNormalization":
        return {"": ["scale"]}
    if class_name == "UnitNormalization":
        return {"": []}
    if class_name == "PReLU":
        return {"": ["alpha"]}
    if class_name == "Normalization":
        if config.get("mean") is not None:
            return {"": []}  # mean/variance are constants in the config
        return {"": ["mean", "variance", "count"]}
    if class_name == "Embedding":
        return {"": ["embeddings"]}
    if class_name in _RNN:
        return {"": [], "cell": ["kernel", "recurrent_kernel"] + (["bias"] if use_bias else [])}
    return None


def _expected_count(class_name: str, config: Mapping[str, Any]) -> int | None:
    layout = _positional_layout(class_name, config)
    return None if layout is None else sum(len(v) for v in layout.values())


# --------------------------------------------------------------------------- #
# Safe HDF5 access
# --------------------------------------------------------------------------- #


def _attr_str(obj: Any, key: str) -> str | None:
    value = obj.attrs.get(key)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
        if isinstance(value, bytes):
            return value.decode("utf-8")
    return value if isinstance(value, str) else None


def _attr_str_list(obj: Any, key: str, where: str) -> list[str] | None:
    if key not in obj.attrs:
        return None
    value = obj.attrs[key]
    if isinstance(value, np.ndarray):
        if value.size == 0:
            return []  # Keras writes an empty float64 array for "no names"
        items = value.ravel().tolist()
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    out = []
    for item in items:
        if isinstance(item, bytes):
            item = item.decode("utf-8")
        if not isinstance(item, str):
            raise _fail(where, f"HDF5 attribute {key!r} holds a non-string {item!r}", field=key)
        out.append(item)
    return out


def _resolve(group: Any, relpath: str, where: str, what: str) -> Any | None:
    """Follow ``relpath`` inside ``group`` through hard links only."""
    node = group
    for part in [p for p in relpath.split("/") if p]:
        if not isinstance(node, h5py.Group):
            return None
        link = node.get(part, getlink=True)
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            raise _fail(
                where,
                f"{what}: HDF5 entry {relpath!r} is a {type(link).__name__}; "
                "only plain datasets are read",
            )
        node = node[part]
    return node


class _Budget:
    """Bytes of weights materialized so far for one file, against ``MAX_TOTAL_WEIGHT_BYTES``.

    Each dataset is bounded on its own; without a running total a file could
    list thousands of datasets just under that bound.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self.used = 0

    def take(self, nbytes: int, what: str) -> None:
        if self.used + nbytes > MAX_TOTAL_WEIGHT_BYTES:
            raise _fail(
                self.where,
                f"{what}: weights total more than the {MAX_TOTAL_WEIGHT_BYTES}-byte limit",
            )
        self.used += nbytes


def _read_dataset(node: Any, where: str, what: str, budget: _Budget) -> np.ndarray:
    """Materialize one weight dataset, refusing anything that is not plain data.

    Sizes are checked on the declared shape *and* against the bytes the file
    really stores, before reading: a dataset that was never written (read
    back as fill values) or a compressed run of zeros can otherwise declare
    gigabytes in a file of a few kilobytes.
    """
    if not isinstance(node, h5py.Dataset):
        raise _fail(where, f"{what} is not an HDF5 dataset")
    if node.is_virtual or node.external:
        raise _fail(where, f"{what} refers to data outside the file; refused")
    dtype = node.dtype
    nbytes = math.prod(node.shape or ()) * dtype.itemsize
    if nbytes > MAX_DATASET_BYTES:
        raise _fail(where, f"{what} is {nbytes} bytes, over the {MAX_DATASET_BYTES}-byte limit")
    bfloat16 = _attr_str(node, "dtype") == "bfloat16"
    if not bfloat16 and dtype.kind not in "fiub":
        raise _fail(where, f"{what} has non-numeric dtype {dtype}", value=str(dtype))
    stored = node.id.get_storage_size()
    if nbytes > DATASET_EXPANSION_CHECK_BYTES and nbytes > stored * MAX_DATASET_EXPANSION:
        raise _fail(
            where,
            f"{what} declares {nbytes} bytes but stores only {stored} in the file "
            "(unwritten or over-compressed data); refused",
        )
    budget.take(nbytes, what)
    try:
        array = np.asarray(node[()])
    except (OSError, ValueError, TypeError, RuntimeError) as exc:  # bad chunks, missing filters
        raise _fail(where, f"{what} cannot be read ({exc})") from exc
    if bfloat16:
        try:
            import ml_dtypes  # NumPy extension types; not TensorFlow

            array = array.view(np.uint16).view(ml_dtypes.bfloat16)
        except (ImportError, ValueError, TypeError) as exc:
            raise _fail(where, f"{what} is bfloat16 and cannot be decoded ({exc})") from exc
    elif array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    if not array.flags.owndata:  # node[()] returns a fresh array; copy only views
        array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


# --------------------------------------------------------------------------- #
# Weight stores
# --------------------------------------------------------------------------- #


def _snake_case(name: str, keras2: bool) -> str:
    """Keras's ``to_snake_case``: the name of a layer's group in ``.keras`` files."""
    if keras2:  # tf_keras.src.utils.generic_utils.to_snake_case
        name = re.sub("(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
        name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
        return name if not name.startswith("_") else "private" + name
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


class _ZipWeights:
    """Weights of a ``.keras`` archive: ``layers/<path>/vars/<i>``, positional.

    A layer's group is named after its *class* (``dense``, ``dense_1``, ...
    in ``model.layers`` order), not after the layer; newer Keras also stores
    the layer name as the ``vars`` group's ``name`` attribute, which we prefer.
    """

    def __init__(self, h5: h5py.File, parsed: _ParsedModel, keras2: bool, where: str) -> None:
        self.where = where
        self.budget = _Budget(where)
        self.root: h5py.Group | None = None
        for root_name in ("layers", "_layer_checkpoint_dependencies"):
            node = _resolve(h5, root_name, where, "weights root")
            if isinstance(node, h5py.Group):
                self.root = node
                break
        self.by_name: dict[str, str] = {}
        ambiguous: set[str] = set()
        if self.root is not None:
            for key in self.root:
                vars_group = _resolve(self.root, f"{key}/vars", where, f"group {key!r}")
                if isinstance(vars_group, h5py.Group):
                    layer_name = _attr_str(vars_group, "name")
                    if layer_name is not None:
                        if layer_name in self.by_name:
                            ambiguous.add(layer_name)
                        self.by_name[layer_name] = key
        for layer_name in ambiguous:
            del self.by_name[layer_name]
        used: dict[str, int] = {}
        self.positional: dict[str, str] = {}
        for entry in parsed.container():
            base = _snake_case(entry.class_name, keras2)
            if base in used:
                used[base] += 1
                key = f"{base}_{used[base]}"
            else:
                used[base] = 0
                key = base
            self.positional[entry.name] = key

    def _group_for(self, entry: _Entry) -> h5py.Group | None:
        if self.root is None:
            return None
        key = self.by_name.get(entry.name)
        if key is None:
            key = self.positional.get(entry.name)
            if key is None or key not in self.root:
                return None
            vars_group = _resolve(self.root, f"{key}/vars", self.where, entry.name)
            recorded = _attr_str(vars_group, "name") if isinstance(vars_group, h5py.Group) else None
            if recorded is not None and recorded != entry.name:
                return None  # the class-derived slot belongs to another layer
        node = _resolve(self.root, key, self.where, f"layer {entry.name!r}")
        return node if isinstance(node, h5py.Group) else None

    def read(self, index: int, entry: _Entry) -> list[tuple[str, np.ndarray]]:
        group = self._group_for(entry)
        layout = _positional_layout(entry.class_name, entry.config)
        if group is None:
            return []
        slots = self._collect(group, "")
        out: list[tuple[str, np.ndarray]] = []
        seen_paths: set[str] = set()
        if layout is not None:
            for rel, names in layout.items():
                arrays = slots.get(rel, [])
                seen_paths.add(rel)
                if len(arrays) < len(names):
                    location = f"{rel}/vars" if rel else "vars"
                    raise _fail(
                        self.where,
                        f"{len(arrays)} stored variables under {location!r}, "
                        f"expected {len(names)} ({', '.join(names)})",
                        layer_index=index,
                        layer_name=entry.name,
                        layer_class=entry.class_name,
                    )
                for i, array in enumerate(arrays):
                    name = names[i] if i < len(names) else f"var{i}"
                    out.append(((f"{rel}/{name}" if rel and i >= len(names) else name), array))
                if len(arrays) > len(names):
                    logger.warning(
                        "%s: layer %r (%s) stores %d extra variables; named var<i>",
                        self.where,
                        entry.name,
                        entry.class_name,
                        len(arrays) - len(names),
                    )
        for rel, arrays in slots.items():
            if rel in seen_paths:
                continue
            for i, array in enumerate(arrays):
                out.append((f"{rel}/var{i}" if rel else f"var{i}", array))
        return out

    def _collect(
        self, group: h5py.Group, rel: str, visited: set[Any] | None = None, depth: int = 0
    ) -> dict[str, list[np.ndarray]]:
        """Positional vars of ``group`` and of its nested sub-objects, by sub-path.

        Hard links can make HDF5 groups a cycle, a lattice reaching one group
        along exponentially many paths, or arbitrarily deep; Keras writes a
        tree, so a group reached twice or too deep is refused, not walked.
        """
        visited = set() if visited is None else visited
        if group.id in visited:
            raise _fail(
                self.where, f"HDF5 group {group.name} is linked more than once (or in a cycle); refused"
            )
        if depth >= MAX_GROUP_DEPTH:
            raise _fail(
                self.where, f"HDF5 groups nested deeper than {MAX_GROUP_DEPTH} levels at {group.name}"
            )
        visited.add(group.id)
        out: dict[str, list[np.ndarray]] = {}
        vars_group = _resolve(group, "vars", self.where, f"{group.name}/vars")
        if isinstance(vars_group, h5py.Group):
            keys = list(vars_group.keys())
            positional = all(k.isascii() and k.isdigit() for k in keys)
            if not positional or sorted(int(k) for k in keys) != list(range(len(keys))):
                shown = sorted(keys)[:10] + (["..."] if len(keys) > 10 else [])
                raise _fail(self.where, f"{vars_group.name} has non-positional entries {shown}")
            arrays = []
            for k in sorted(keys, key=int):
                node = _resolve(vars_group, k, self.where, f"{vars_group.name}/{k}")
                arrays.append(_read_dataset(node, self.where, f"{vars_group.name}/{k}", self.budget))
            if arrays or not rel:
                out[rel] = arrays
        for key in group:
            if key == "vars":
                continue
            sub = _resolve(group, key, self.where, f"{group.name}/{key}")
            if isinstance(sub, h5py.Group):
                sub_path = f"{rel}/{key}" if rel else key
                for sub_rel, arrays in self._collect(sub, sub_path, visited, depth + 1).items():
                    if arrays:
                        out[sub_rel] = arrays
        return out


class _H5Weights:
    """Weights of a whole-model ``.h5`` (Keras 2 or 3): ``model_weights/<layer>``.

    Each layer group's ``weight_names`` attribute gives the order and the
    dataset paths relative to the group; listing the group would not.
    """

    def __init__(self, h5: h5py.File, where: str) -> None:
        self.where = where
        self.budget = _Budget(where)
        node = _resolve(h5, "model_weights", where, "model_weights")
        if node is None and "layer_names" in h5.attrs:
            node = h5  # very old files keep the layer groups at the root
        if not isinstance(node, h5py.Group):
            raise _fail(where, "HDF5 file has no 'model_weights' group", field="model_weights")
        self.root = node

    def read(self, index: int, entry: _Entry) -> list[tuple[str, np.ndarray]]:
        def fail(message: str) -> KerasInteropError:
            return _fail(
                self.where,
                message,
                layer_index=index,
                layer_name=entry.name,
                layer_class=entry.class_name,
            )

        group = _resolve(self.root, entry.name, self.where, f"layer {entry.name!r}")
        if group is None:
            return []
        if not isinstance(group, h5py.Group):
            raise fail("weights entry is not an HDF5 group")
        weight_names = _attr_str_list(group, "weight_names", self.where)
        if weight_names is None:
            raise fail("weights group has no 'weight_names' attribute")
        names = _weight_names_for(entry.name, weight_names)
        out = []
        for full, name in zip(weight_names, names, strict=True):
            node = _resolve(group, full, self.where, f"{group.name}/{full}")
            if node is None:
                raise fail(f"weight {full!r} listed in weight_names is missing")
            out.append((name, _read_dataset(node, self.where, f"{group.name}/{full}", self.budget)))
        return out


# --------------------------------------------------------------------------- #
# Building the spec
# --------------------------------------------------------------------------- #


from keydnn.frontends.keras.operations import H5_OPERATION_MODULE, looks_like_operation  # noqa: E402


def _build_spec(
    parsed: _ParsedModel,
    read_weights: Any,
    source_format: str,
    keras_version: str | None,
    where: str,
    layer_names: frozenset[str] | None = None,
) -> ModelSpec:
    """``layer_names``: a Keras 3 ``.h5`` file's ``model.layers`` names; config entries outside it that look
    like operations (``looks_like_operation``) get the operation module the file does not record."""
    layers: list[LayerSpec] = []
    for index, entry in parsed.indexed():
        if entry.is_input:
            continue
        weights = [
            (_canonical_weight_name(entry.class_name, name), array)
            for name, array in read_weights(index, entry)
        ]
        expected = _expected_count(entry.class_name, entry.config)
        if expected is not None and len(weights) < expected:
            raise _fail(
                where,
                f"{len(weights)} stored weights, expected {expected}",
                layer_index=index,
                layer_name=entry.name,
                layer_class=entry.class_name,
            )
        module = entry.module
        if (module is None and layer_names is not None and entry.name not in layer_names
                and looks_like_operation(entry.config)):
            module = H5_OPERATION_MODULE  # Keras 3's .h5 records no module; see keydnn.frontends.keras.operations
        layers.append(
            LayerSpec(
                index=index,
                class_name=entry.class_name,
                name=entry.name,
                config=entry.config,
                weights=tuple(weights),
                module=module,
                registered_name=entry.registered_name,
                inbound_nodes=entry.inbound_nodes,
            )
        )
    return ModelSpec(
        model_class=parsed.model_class,
        name=parsed.name,
        input_shape=parsed.input_shape,
        input_dtype=parsed.input_dtype,
        layers=tuple(layers),
        source_format=source_format,
        keras_version=keras_version,
        input_layers=parsed.input_layers,
        output_layers=parsed.output_layers,
        input_layer_configs=tuple(
            {"name": e.name, "config": e.config} for e in parsed.entries if e.is_input
        ),
    )


def _loads_json(data: bytes | str, where: str, what: str) -> Any:
    """Parse a JSON document of bounded size and nesting (NaN/Infinity are read as floats)."""
    if len(data) > MAX_JSON_BYTES:
        raise _fail(where, f"{what} is {len(data)} bytes, over the {MAX_JSON_BYTES}-byte limit")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _fail(where, f"{what} is not valid JSON ({exc})") from exc
    _check_depth(doc, where, what)
    return doc


def _check_depth(doc: Any, where: str, what: str) -> None:
    """Refuse documents nested deeper than ``MAX_JSON_DEPTH``, without recursing."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise _fail(where, f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


# --------------------------------------------------------------------------- #
# .keras zip
# --------------------------------------------------------------------------- #


def _read_member(zf: zipfile.ZipFile, name: str, limit: int, where: str) -> bytes:
    """Read one member into memory, refusing more than ``limit`` bytes or a bomb-like ratio.

    The declared sizes are checked first (cheap), and the read itself is
    capped, because the declared uncompressed size is the attacker's word.
    """
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise _fail(
            where,
            f"archive member {name!r} is {info.file_size} bytes uncompressed, "
            f"over the {limit}-byte limit",
        )
    if (
        info.file_size > COMPRESSION_CHECK_BYTES
        and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
    ):
        raise _fail(
            where,
            f"archive member {name!r} expands {info.compress_size} bytes to {info.file_size}, "
            f"more than {MAX_COMPRESSION_RATIO} times (a decompression bomb?); refused",
        )
    try:
        with zf.open(info) as member:
            data = member.read(limit + 1)
    except (
        zipfile.BadZipFile,
        zlib.error,
        lzma.LZMAError,
        EOFError,
        NotImplementedError,  # an unsupported compression method
        RuntimeError,  # encrypted member
        ValueError,
        OSError,  # bz2 errors
    ) as exc:
        raise _fail(where, f"archive member {name!r} is corrupt or unreadable ({exc})") from exc
    if len(data) > limit:
        raise _fail(where, f"archive member {name!r} expands past the {limit}-byte limit")
    return data


def _read_keras_zip(path: Path, where: str) -> ModelSpec:
    try:
        zf = zipfile.ZipFile(path)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,  # "zip file version 25.5"
        EOFError,
        ValueError,
        OSError,
    ) as exc:
        raise _fail(
            where, f"corrupt or truncated zip archive ({exc})", supported=SUPPORTED_FORMATS
        ) from exc
    with zf:
        names = set(zf.namelist())
        if _CONFIG_JSON not in names:
            raise _fail(
                where,
                f"zip archive has no {_CONFIG_JSON}; not a .keras model archive "
                f"(members: {sorted(names)[:10]})",
            )
        root = _loads_json(
            _read_member(zf, _CONFIG_JSON, MAX_JSON_BYTES, where), where, _CONFIG_JSON
        )
        keras_version = None
        if _METADATA_JSON in names:
            meta = _loads_json(
                _read_member(zf, _METADATA_JSON, MAX_JSON_BYTES, where), where, _METADATA_JSON
            )
            if isinstance(meta, Mapping):
                keras_version = _opt_str(meta.get("keras_version"))
        parsed = _parse_model_config(root, where)
        if _WEIGHTS_H5 not in names:
            if _WEIGHTS_NPZ in names:
                raise _fail(
                    where,
                    f"weights stored as {_WEIGHTS_NPZ}, which is not supported; "
                    "save with the default h5 weights format",
                )
            if any(not e.is_input for e in parsed.entries):
                raise _fail(where, f"zip archive has no {_WEIGHTS_H5}")
            return _build_spec(parsed, lambda i, e: [], "keras3-zip", keras_version, where)
        data = _read_member(zf, _WEIGHTS_H5, MAX_ZIP_MEMBER_BYTES, where)
    if not data.startswith(_HDF5_MAGIC):
        raise _fail(where, f"{_WEIGHTS_H5} inside the archive is not an HDF5 file")
    _check_global_heaps(data, where, _WEIGHTS_H5)
    try:
        h5 = h5py.File(io.BytesIO(data), "r")
    except (OSError, ValueError) as exc:
        raise _fail(where, f"{_WEIGHTS_H5} inside the archive is unreadable ({exc})") from exc
    with h5:
        keras2 = bool(keras_version and keras_version.startswith("2."))
        store = _ZipWeights(h5, parsed, keras2, where)
        return _build_spec(parsed, store.read, "keras3-zip", keras_version, where)


# --------------------------------------------------------------------------- #
# HDF5 global heaps, checked before libhdf5 sees them
# --------------------------------------------------------------------------- #

_GCOL = b"GCOL"
_SUPERBLOCK_OFFSETS = (0, 512, 1024, 2048, 4096, 8192)


def _hdf5_sizes(buf: Any) -> tuple[int, int, int]:
    """(base address, size of offsets, size of lengths) from the superblock; (0, 8, 8) if it cannot tell."""
    for off in _SUPERBLOCK_OFFSETS:
        if buf[off:off + 8] == _HDF5_MAGIC and len(buf) > off + 14:
            version = buf[off + 8]
            offsets, lengths = (buf[off + 13], buf[off + 14]) if version in (0, 1) else (buf[off + 9], buf[off + 10])
            return off, offsets if offsets in (2, 4, 8) else 8, lengths if lengths in (2, 4, 8) else 8
    return 0, 8, 8


def _check_global_heaps(buf: Any, where: str, what: str) -> None:
    """Refuse HDF5 data whose global heap would make libhdf5 loop forever or allocate gigabytes.

    Variable-length strings (``model_config``, layer and weight names) live in
    global heap collections. libhdf5 (1.14) decodes a collection by walking
    its objects, each ``begin + size`` after the last: a free-space object
    (index 0) of size 0 does not advance, and the walk never ends -- inside
    one C call that holds the GIL, so nothing in the process can stop it.
    Every hang the long fuzz run found was this (see benchmarks/FUZZ.md). An
    object running past its collection's end makes libhdf5 read beyond its
    buffer. And before reading a string, libhdf5 allocates (and zeroes) as
    many bytes as the string's descriptor claims -- up to 4 GiB from a
    12-byte field -- and only then finds that the heap object is smaller.

    So this walks every ``GCOL`` collection the way libhdf5 would, then finds
    the descriptors (length, collection address, object index) that point at
    the objects it walked, and refuses a walk that cannot advance, an object
    past its collection, or a descriptor claiming more than its object holds.
    What libhdf5 writes passes: its collections tile exactly, and a string's
    length is its object's size. ``read_keras_file(..., isolate=True)``
    remains the answer to what no check foresees.
    """
    n = len(buf)
    base, offset_size, length = _hdf5_sizes(buf)
    header = 8 + length  # signature, version, 3 reserved, collection size
    object_header = 8 + length  # index (2), reference count (2), reserved (4), object size
    objects: dict[tuple[int, int], int] = {}  # (collection offset, index) -> object size
    walked = 0
    pos = buf.find(_GCOL)
    while pos != -1:
        size = int.from_bytes(buf[pos + 8:pos + 8 + length], "little") if pos + header <= n else 0
        # Only what libhdf5 would decode: version 1, and a collection that lies inside the file (else its
        # read fails cleanly). Random bytes that happen to spell GCOL almost never pass this.
        if buf[pos + 4:pos + 5] == b"\x01" and header <= size <= n - pos:
            end = pos + size
            p = pos + header
            while p + object_header <= end:
                walked += 1
                if walked > MAX_GLOBAL_HEAP_OBJECTS:
                    raise _fail(where, f"{what} has more than {MAX_GLOBAL_HEAP_OBJECTS} HDF5 global heap objects")
                index = int.from_bytes(buf[p:p + 2], "little")
                obj_size = int.from_bytes(buf[p + 8:p + 8 + length], "little")
                need = object_header + -(-obj_size // 8) * 8 if index else obj_size
                if need < object_header or need > end - p:
                    raise _fail(
                        where,
                        f"corrupt HDF5 global heap in {what}: object {index} at byte {p} has size {obj_size}, "
                        f"which {'does not fit in' if need > end - p else 'cannot be walked past in'} its "
                        f"collection at byte {pos} (libhdf5 would read out of bounds or loop forever)",
                    )
                if index:
                    objects[(pos, index)] = obj_size
                p += need
        pos = buf.find(_GCOL, pos + 1)
    _check_heap_descriptors(buf, objects, base, offset_size, where, what)
    _check_string_attributes(buf, offset_size, length, where, what)


#: Collections whose descriptors are looked for (each costs one scan of the file; Keras files have one or two).
_MAX_DESCRIPTOR_SCANS = 32


def _check_heap_descriptors(buf: Any, objects: dict[tuple[int, int], int], base: int, offset_size: int,
                            where: str, what: str) -> None:
    """Refuse a variable-length descriptor (4-byte length, collection address, 4-byte index) that claims more
    elements than the heap object it points at holds bytes (an element is at least one byte)."""
    collections = sorted({pos for pos, _ in objects})[:_MAX_DESCRIPTOR_SCANS]
    for pos in collections:
        if not 0 <= pos - base < 256**offset_size:
            continue
        address = (pos - base).to_bytes(offset_size, "little")
        q = buf.find(address, 4)
        while q != -1:
            index = int.from_bytes(buf[q + offset_size:q + offset_size + 4], "little")
            size = objects.get((pos, index))
            if size is not None:
                claimed = int.from_bytes(buf[q - 4:q], "little")
                if claimed > size:
                    raise _fail(
                        where,
                        f"corrupt HDF5 variable-length data in {what}: a value at byte {q - 4} claims {claimed} "
                        f"elements, but the heap object it points at (collection at byte {pos}, object {index}) "
                        f"holds {size} bytes (libhdf5 would allocate {claimed} bytes before noticing)",
                    )
            q = buf.find(address, q + 1)


#: The attributes the reader reads (found by name to check their variable-length descriptors).
_READ_ATTRIBUTES = (b"model_config", b"keras_version", b"weight_names", b"name", b"dtype")
#: Occurrences of one attribute name examined (a Keras file has one per layer at most).
_MAX_ATTRIBUTE_SCANS = 100_000


def _check_string_attributes(buf: Any, offset_size: int, length: int, where: str, what: str) -> None:
    """Refuse a variable-length attribute value that claims more elements than the file has bytes.

    libhdf5 allocates and zeroes the claimed length (up to 4 GiB from 4 bytes) before it looks up the
    heap object; ``_check_heap_descriptors`` catches a descriptor that points at a real object, this one
    the rest, for the attributes the reader reads: each is found by name as a compact attribute message
    (versions 1-3), and only a message whose every field is consistent is judged -- a string's length
    is at most the file's size in any file libhdf5 wrote.
    """
    n = len(buf)
    descriptor = 8 + offset_size  # length (4), collection address, object index (4)
    for name in _READ_ATTRIBUTES:
        needle = name + b"\x00"
        at = buf.find(needle, 9)
        scans = 0
        while at != -1 and scans < _MAX_ATTRIBUTE_SCANS:
            scans += 1
            for version, head in ((1, at - 8), (2, at - 8), (3, at - 9)):
                if buf[head] != version or int.from_bytes(buf[head + 2:head + 4], "little") != len(needle):
                    continue
                pad = (lambda k: -(-k // 8) * 8) if version == 1 else (lambda k: k)
                type_size = int.from_bytes(buf[head + 4:head + 6], "little")
                space_size = int.from_bytes(buf[head + 6:head + 8], "little")
                dtype_at = at + pad(len(needle))
                space_at = dtype_at + pad(type_size)
                data_at = space_at + pad(space_size)
                if buf[dtype_at:dtype_at + 1] == b"" or buf[dtype_at] & 0x0F != 9:  # not variable-length
                    continue
                count = _dataspace_count(buf, space_at, length)
                if count is None or data_at + count * descriptor > n:
                    continue
                for k in range(count):
                    claimed = int.from_bytes(buf[data_at + k * descriptor:data_at + k * descriptor + 4], "little")
                    if claimed > n:
                        raise _fail(
                            where,
                            f"corrupt HDF5 attribute {name.decode()!r} in {what}: its value claims {claimed} "
                            f"elements, more than the {n} bytes of the file (libhdf5 would allocate them)",
                        )
            at = buf.find(needle, at + 1)


def _dataspace_count(buf: Any, at: int, length: int) -> int | None:
    """Elements of the dataspace message at ``at`` (versions 1, 2); None where it does not parse."""
    version, rank = buf[at:at + 1], buf[at + 1:at + 2]
    if not version or not rank or rank[0] > 32:
        return None
    if version[0] == 1:
        dims_at, kind = at + 8, (0 if rank[0] == 0 else 1)
    elif version[0] == 2 and buf[at + 3:at + 4]:
        dims_at, kind = at + 4, buf[at + 3]
    else:
        return None
    if kind == 0:
        return 1
    if kind == 2:
        return 0
    count = 1
    for d in range(rank[0]):
        count *= int.from_bytes(buf[dims_at + d * length:dims_at + (d + 1) * length], "little")
    return count if count <= MAX_GLOBAL_HEAP_OBJECTS else None


def _check_global_heaps_in_file(path: Path, where: str) -> None:
    """``_check_global_heaps`` over a file, memory-mapped (nothing the size of the file is allocated)."""
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                return
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:  # cannot be mapped: libhdf5 will report what is wrong with it
        logger.debug("cannot map %s to check its global heaps: %s", path, exc)
        return
    with buf:
        _check_global_heaps(buf, where, "the file")


# --------------------------------------------------------------------------- #
# .h5
# --------------------------------------------------------------------------- #


def _read_h5(path: Path, where: str) -> ModelSpec:
    _check_global_heaps_in_file(path, where)
    try:
        h5 = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise _fail(where, f"corrupt or unreadable HDF5 file ({exc})") from exc
    with h5:
        raw_config = h5.attrs.get("model_config")
        if isinstance(raw_config, np.ndarray) and raw_config.shape == ():
            raw_config = raw_config.item()
        if raw_config is None:
            hint = (
                " (looks like a weights-only file from save_weights)"
                if ("layers" in h5 or "layer_names" in h5.attrs or "model_weights" not in h5)
                else ""
            )
            raise _fail(
                where,
                f"HDF5 file has no 'model_config' attribute{hint}; "
                "save the whole model with model.save()",
                field="model_config",
            )
        if not isinstance(raw_config, (str, bytes)):
            raise _fail(
                where, "'model_config' attribute is not a JSON string", field="model_config"
            )
        root = _loads_json(raw_config, where, "model_config attribute")
        keras_version = _attr_str(h5, "keras_version")
        if keras_version is None and "model_weights" in h5:
            keras_version = _attr_str(h5["model_weights"], "keras_version")
        parsed = _parse_model_config(root, where)
        if keras_version is not None:
            source_format = "keras3-h5" if keras_version.startswith("3") else "keras2-h5"
        else:  # guess: Keras 3 writes batch_shape and DTypePolicy objects
            raw = (
                raw_config.decode("utf-8", "replace")
                if isinstance(raw_config, bytes)
                else raw_config
            )
            source_format = (
                "keras3-h5" if '"batch_shape"' in raw or "DTypePolicy" in raw else "keras2-h5"
            )
        store = _H5Weights(h5, where)
        layer_names = None
        if source_format == "keras3-h5" and "model_weights" in h5:
            layer_names = _attr_str_list(h5["model_weights"], "layer_names", where)
        return _build_spec(parsed, store.read, source_format, keras_version, where,
                           layer_names=None if layer_names is None else frozenset(layer_names))


# --------------------------------------------------------------------------- #
# Public entry points
# --------------------------------------------------------------------------- #


def read_keras_file(
    path: str | os.PathLike[str], *, isolate: bool | None = None, timeout: float | None = None
) -> ModelSpec:
    """Read a ``.keras`` zip or Keras ``.h5`` file into a ``ModelSpec``.

    The format is detected from the first bytes (zip vs HDF5 magic), so a
    misnamed file is still read correctly. Never imports TensorFlow. Every
    failure is a ``KerasInteropError`` naming the file and the problem.

    ``isolate=True`` parses the file in a child process (see
    ``read_keras_file_isolated``): libhdf5 can spin forever or crash on some
    corrupt files, which no in-process check can interrupt. The default comes
    from the environment variable ``KEYDNN_ISOLATE_READER`` ("1" to isolate;
    see ``isolation_from_env``); ``timeout`` (seconds, default
    ``KEYDNN_ISOLATE_TIMEOUT`` or ``ISOLATED_READ_TIMEOUT``) bounds the child.
    """
    if isolate is None:
        isolate = isolation_from_env(default=False)
    if isolate:
        return read_keras_file_isolated(path, timeout=timeout)
    try:
        fs_path = Path(os.fspath(path))
    except TypeError as exc:
        raise KerasInteropError(
            f"expected a file path, got {type(path).__name__}; "
            f"supported formats: {SUPPORTED_FORMATS}",
            [Problem(message="not a path", value=type(path).__name__, supported=SUPPORTED_FORMATS)],
        ) from exc
    where = f"Keras model file '{fs_path}'"
    try:
        return _read_keras_file(fs_path, where)
    except KerasInteropError:
        raise
    except RecursionError as exc:
        raise _fail(where, "model file is nested too deeply to read") from exc
    except Exception as exc:  # safety net: malformed input must not leak KeyError/OSError/...
        logger.debug("unexpected error reading %s", fs_path, exc_info=True)
        origin = _error_origin(exc)
        if origin is not None:  # libhdf5 / zipfile reporting corruption: say so
            raise _fail(where, f"corrupt {origin} ({type(exc).__name__}: {exc})") from exc
        raise _fail(
            where, f"unreadable or malformed model file ({type(exc).__name__}: {exc})"
        ) from exc


def _error_origin(exc: BaseException) -> str | None:
    """What raised ``exc``, when it is a container library rejecting corrupt bytes.

    libhdf5 reports a damaged file from whichever h5py call touches the
    damage, as ``OSError``, ``KeyError``, ``RuntimeError`` or ``ValueError``;
    where the innermost frame is h5py's (or zipfile's, zlib's), the file is
    corrupt and the message says so instead of looking like a keydnn bug.
    """
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    if last is None:
        return None
    parts = Path(last).parts
    if "h5py" in parts:
        return "HDF5 data"
    if Path(last).name in ("zipfile.py", "__init__.py") and "zipfile" in str(last):
        return "zip archive"
    return None


def _read_keras_file(path: Path, where: str) -> ModelSpec:
    if not path.exists():
        raise _fail(where, "no such file", supported=SUPPORTED_FORMATS)
    if path.is_dir():
        raise _fail(
            where,
            "is a directory (TensorFlow SavedModel directories are not supported)",
            supported=SUPPORTED_FORMATS,
        )
    if not path.is_file():  # a FIFO would block the read forever, /dev/zero would never end
        raise _fail(where, "is not a regular file (a device, pipe or socket)", supported=SUPPORTED_FORMATS)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(8)
    except OSError as exc:
        raise _fail(where, f"cannot be read ({exc.strerror or exc})") from exc
    if any(magic.startswith(m) for m in _ZIP_MAGICS):
        return _read_keras_zip(path, where)
    if magic == _HDF5_MAGIC or h5py.is_hdf5(path):
        return _read_h5(path, where)
    raise _fail(
        where,
        "unrecognized file content (neither a zip archive nor HDF5)",
        supported=SUPPORTED_FORMATS,
    )


def _live_flavor(model: Any) -> tuple[str, str | None]:
    """("live-keras3" | "live-tf_keras", version) from the object's own modules."""
    roots = [c.__module__.split(".")[0] for c in type(model).__mro__]
    for root in roots:
        if root == "tf_keras":
            return "live-tf_keras", getattr(sys.modules.get("tf_keras"), "__version__", None)
    for root in roots:
        if root == "keras":
            version = getattr(sys.modules.get("keras"), "__version__", None)
            if isinstance(version, str) and version.startswith("2."):
                return "live-tf_keras", version
            return "live-keras3", version
    raise KerasInteropError(
        "expected a Keras 3 or tf_keras model, got "
        f"{type(model).__module__}.{type(model).__name__}",
        [
            Problem(
                message="not a Keras model",
                value=type(model).__name__,
                supported="keras.Model, tf_keras.Model",
            )
        ],
    )


def _live_input(model: Any) -> tuple[int | None, ...]:
    """Input shape of a built live model when its config does not say."""
    for attr in ("input_shape",):
        try:
            shape = getattr(model, attr)
        except Exception:  # unbuilt models raise AttributeError/ValueError
            continue
        if isinstance(shape, list) and shape and isinstance(shape[0], (list, tuple)):
            shape = shape[0]
        try:
            dims = tuple(None if d is None else int(d) for d in shape)
        except (TypeError, ValueError):
            continue
        return dims
    return ()


def read_live_model(model: Any) -> ModelSpec:
    """Describe a live ``keras`` (Keras 3) or ``tf_keras`` model as a ``ModelSpec``.

    Works by duck typing (``get_config``, ``layers``, ``get_weights``,
    ``weights``) so this module never imports TensorFlow itself; the model's
    own framework is already loaded by whoever built it.
    """
    source_format, keras_version = _live_flavor(model)
    where = f"live {type(model).__name__} model {getattr(model, 'name', '?')!r}"
    try:
        return _read_live(model, source_format, keras_version, where)
    except KerasInteropError:
        raise
    except Exception as exc:
        logger.debug("unexpected error reading %s", where, exc_info=True)
        raise _fail(where, f"cannot read model ({type(exc).__name__}: {exc})") from exc


def _read_live(model: Any, source_format: str, keras_version: str | None, where: str) -> ModelSpec:
    model_layers = getattr(model, "layers", None)
    if not isinstance(model_layers, (list, tuple)):
        raise _fail(where, "object has no 'layers' list; expected a Keras Model")
    try:
        config = model.get_config()
    except Exception as exc:  # subclassed models may not implement get_config
        logger.debug("%s: get_config() failed (%s); reading layers only", where, exc)
        config = None
    root = {
        "class_name": type(model).__name__,
        "config": _plain(config) if isinstance(config, Mapping) else {},
    }
    parsed = _parse_model_config(root, where)
    entries = {e.name: e for e in parsed.entries}
    input_shape = parsed.input_shape or _live_input(model)

    layers: list[LayerSpec] = []
    for index, layer in enumerate(model_layers):
        class_name = type(layer).__name__
        if class_name == "InputLayer":
            continue
        name = str(getattr(layer, "name", f"layer_{index}"))
        entry = entries.get(name)
        try:
            layer_config = layer.get_config()
        except Exception as exc:  # custom layers without get_config
            logger.debug("%s: layer %r get_config() failed: %s", where, name, exc)
            layer_config = entry.config if entry is not None else {}
        values = list(layer.get_weights())
        variables = list(getattr(layer, "weights", []))
        if len(values) != len(variables):
            raise _fail(
                where,
                f"get_weights() returned {len(values)} arrays for {len(variables)} variables",
                layer_index=index,
                layer_name=name,
                layer_class=class_name,
            )
        full_names = [str(getattr(v, "path", None) or getattr(v, "name", "")) for v in variables]
        weights = []
        for short, value in zip(_weight_names_for(name, full_names), values, strict=True):
            array = np.array(value, copy=True)
            array.flags.writeable = False
            weights.append((_canonical_weight_name(class_name, short), array))
        layers.append(
            LayerSpec(
                index=index,
                class_name=entry.class_name if entry is not None else class_name,
                name=name,
                config=normalize_layer_config(layer_config),
                weights=tuple(weights),
                module=entry.module if entry is not None else None,
                registered_name=entry.registered_name if entry is not None else None,
                inbound_nodes=entry.inbound_nodes if entry is not None else None,
            )
        )
    # Keras 3 operations (``x + y``, keras.ops calls) are nodes of the config but not in ``model.layers``;
    # they hold no weights, so their config entry is all there is to read.
    from keydnn.frontends.keras.operations import OPERATION_MODULES

    seen = {spec.name for spec in layers}
    for position, e in enumerate(parsed.entries):
        if e.name not in seen and not e.is_input and (e.module or "").startswith(OPERATION_MODULES):
            layers.append(LayerSpec(index=len(model_layers) + position, class_name=e.class_name, name=e.name,
                                    config=e.config, weights=(), module=e.module, registered_name=e.registered_name,
                                    inbound_nodes=e.inbound_nodes))
    return ModelSpec(
        model_class=type(model).__name__,
        name=str(getattr(model, "name", parsed.name)),
        input_shape=input_shape,
        input_dtype=parsed.input_dtype,
        layers=tuple(layers),
        source_format=source_format,
        keras_version=keras_version,
        input_layers=parsed.input_layers,
        output_layers=parsed.output_layers,
        input_layer_configs=tuple(
            {"name": e.name, "config": e.config} for e in parsed.entries if e.is_input
        ),
    )


# --------------------------------------------------------------------------- #
# Reading in a child process
# --------------------------------------------------------------------------- #

#: Seconds a child process may take to read one file before it is killed (environment:
#: ``KEYDNN_ISOLATE_TIMEOUT``). Far above what reading a supported model takes (a 4 GiB model
#: reads in well under a minute); a file that makes libhdf5 spin costs this long, then is refused.
ISOLATED_READ_TIMEOUT = 120.0
#: Address space a reading child may grow by, beyond what it has after start-up.
ISOLATED_READ_MEMORY = 8 * 1024**3

_CHILD = (
    "import sys; from keydnn.frontends.keras.reader import _isolated_main; "
    "sys.exit(_isolated_main(sys.argv[1], sys.argv[2]))"
)


class ReaderProcessError(KerasInteropError):
    """The child process reading a file was stopped at its time limit, crashed or ran out of memory.

    Unlike the reader's other refusals this does not prove the file malformed (a very large model on
    a slow disk can run past the limit), so the command line reports it as a failure (exit status 1)
    rather than as unreadable input, and says how to raise the limit.
    """


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def isolation_from_env(default: bool) -> bool:
    """Whether to read Keras files in a child process, from ``KEYDNN_ISOLATE_READER``.

    "1"/"true"/"yes"/"on" isolate, "0"/"false"/"no"/"off" read in process; unset or empty gives
    ``default``: the command line isolates (a hostile file must not hang it), the Python API does
    not (one process, no start-up cost, the caller decides). Any other value is a usage error.
    """
    raw = os.environ.get("KEYDNN_ISOLATE_READER", "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"KEYDNN_ISOLATE_READER={raw!r}: expected 1 (read Keras files in a child process) or 0")


def _timeout_from_env() -> float:
    raw = os.environ.get("KEYDNN_ISOLATE_TIMEOUT", "").strip()
    if not raw:
        return ISOLATED_READ_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"KEYDNN_ISOLATE_TIMEOUT={raw!r}: expected a number of seconds > 0")
    return seconds


#: ``-P`` (Python 3.11+): the child does not put its working directory first on ``sys.path``, so a
#: source checkout's ``keydnn/`` in the working directory never shadows the installed package.
_SAFE_PATH = ("-P",) if sys.version_info >= (3, 11) else ()


def read_keras_file_isolated(
    path: str | os.PathLike[str], *, timeout: float | None = None
) -> ModelSpec:
    """``read_keras_file`` in a child process, so that libhdf5 cannot hang or crash the caller.

    Fuzzing found corrupt ``.h5`` files on which libhdf5 (1.14) loops forever
    inside one C call that holds the GIL: no signal handler, thread or
    Python-level timeout can stop it. The child reads the file with the same
    code, under an address-space limit, and hands back the spec as JSON plus
    one ``.npy`` per weight (read with ``allow_pickle=False``; nothing
    executable crosses the boundary). A child that runs past ``timeout``
    seconds (default: ``KEYDNN_ISOLATE_TIMEOUT``, else ``ISOLATED_READ_TIMEOUT``),
    dies from a signal or runs out of memory becomes a ``ReaderProcessError``
    (a ``KerasInteropError``) naming the file; what the reader refuses in
    the child is raised here exactly as it would be in process. Costs one
    interpreter start-up (about half a second) per file.
    """
    import subprocess
    import tempfile

    if timeout is None:
        timeout = _timeout_from_env()
    try:
        fs_path = Path(os.fspath(path))
    except TypeError as exc:
        raise KerasInteropError(
            f"expected a file path, got {type(path).__name__}; supported formats: {SUPPORTED_FORMATS}",
            [Problem(message="not a path", value=type(path).__name__, supported=SUPPORTED_FORMATS)],
        ) from exc
    where = f"Keras model file '{fs_path}'"
    with tempfile.TemporaryDirectory(prefix="keydnn-read-") as out:
        try:
            proc = subprocess.run(
                [sys.executable, *_SAFE_PATH, "-c", _CHILD, str(fs_path), out],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise ReaderProcessError(f"cannot read {where}", [Problem(
                message=f"reading did not finish within {timeout:g} s and was stopped "
                "(corrupt HDF5 structures can make libhdf5 loop forever); refused",
                supported="for a very large model, a longer limit: KEYDNN_ISOLATE_TIMEOUT=<seconds>",
            )]) from None
        result = Path(out)
        if (result / "error.json").is_file():
            raise _from_child(where, lambda: _error_from_json((result / "error.json").read_text("utf-8")))
        if proc.returncode != 0 or not (result / "spec.json").is_file():
            how = (
                f"was killed by signal {-proc.returncode}"
                if proc.returncode < 0
                else f"exited with status {proc.returncode}"
            )
            detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise ReaderProcessError(f"cannot read {where}", [Problem(
                message=f"the process reading the file {how} (a crash in libhdf5, or out of memory?) "
                f"{detail[0][:300]}".rstrip(),
            )])
        spec = _from_child(where, lambda: _spec_from_dir(result))
        assert isinstance(spec, ModelSpec)
        return spec


def _from_child(where: str, decode: Any) -> Any:
    """Decode what the child wrote; anything malformed there is this file's failure, not an escape."""
    try:
        return decode()
    except Exception as exc:  # noqa: BLE001 -- the child handled hostile input; trust nothing it wrote
        raise _fail(where, f"the process reading the file returned a malformed result ({exc})") from exc


def _isolated_main(path: str, out: str) -> int:
    """Child side: read ``path``, write the spec (or the error) under ``out``."""
    try:
        import resource

        with open("/proc/self/statm", encoding="ascii") as fh:
            vm = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = vm + ISOLATED_READ_MEMORY
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, ValueError):  # not Linux: no limit beyond the reader's own bounds
        pass
    target = Path(out)
    try:
        spec = read_keras_file(path, isolate=False)
    except KerasInteropError as exc:
        (target / "error.json").write_text(_error_to_json(exc), "utf-8")
        return 0
    _spec_to_dir(spec, target)
    return 0


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _error_to_json(exc: KerasInteropError) -> str:
    problems = [
        {**{k: getattr(p, k) for k in ("message", "layer_index", "layer_name", "layer_class", "field", "supported")},
         "value": _jsonable(p.value)}
        for p in exc.problems
    ]
    return json.dumps({"summary": exc.summary, "problems": problems}, allow_nan=True)


def _error_from_json(text: str) -> KerasInteropError:
    doc = json.loads(text)
    return KerasInteropError(doc["summary"], [Problem(**p) for p in doc["problems"]])


def _spec_to_dir(spec: ModelSpec, out: Path) -> None:
    layers = []
    n = 0
    for layer in spec.layers:
        weights = []
        for name, array in layer.weights:
            bfloat16 = array.dtype.name == "bfloat16"
            np.save(out / f"w{n}.npy", array.view(np.uint16) if bfloat16 else array, allow_pickle=False)
            weights.append({"name": name, "file": f"w{n}.npy", "bfloat16": bfloat16})
            n += 1
        layers.append({
            "index": layer.index, "class_name": layer.class_name, "name": layer.name, "config": layer.config,
            "weights": weights, "module": layer.module, "registered_name": layer.registered_name,
            "inbound_nodes": layer.inbound_nodes,
        })
    doc = {
        "model_class": spec.model_class, "name": spec.name, "input_shape": list(spec.input_shape),
        "input_dtype": spec.input_dtype, "layers": layers, "source_format": spec.source_format,
        "keras_version": spec.keras_version, "input_layers": spec.input_layers,
        "output_layers": spec.output_layers, "input_layer_configs": list(spec.input_layer_configs),
    }
    (out / "spec.json").write_text(json.dumps(doc, allow_nan=True), "utf-8")


def _spec_from_dir(out: Path) -> ModelSpec:
    doc = json.loads((out / "spec.json").read_text("utf-8"))
    layers = []
    for layer in doc["layers"]:
        weights = []
        for w in layer["weights"]:
            array = np.load(out / w["file"], allow_pickle=False)
            if w["bfloat16"]:
                import ml_dtypes

                array = array.view(ml_dtypes.bfloat16)
            array.flags.writeable = False
            weights.append((w["name"], array))
        layers.append(LayerSpec(
            index=layer["index"], class_name=layer["class_name"], name=layer["name"], config=layer["config"],
            weights=tuple(weights), module=layer["module"], registered_name=layer["registered_name"],
            inbound_nodes=layer["inbound_nodes"],
        ))
    return ModelSpec(
        model_class=doc["model_class"], name=doc["name"], input_shape=tuple(doc["input_shape"]),
        input_dtype=doc["input_dtype"], layers=tuple(layers), source_format=doc["source_format"],
        keras_version=doc["keras_version"], input_layers=doc["input_layers"], output_layers=doc["output_layers"],
        input_layer_configs=tuple(doc["input_layer_configs"]),
    )
