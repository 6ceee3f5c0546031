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

This package is the public facade; each module holds one concern:

* ``limits`` -- the bounds a file is checked against, and ``fail``;
* ``normalize`` -- layer-config normalization (Keras 2 and 3 alike);
* ``model_config`` -- parsing the model config document (bounded JSON);
* ``weight_names`` -- weight names and the positional layouts of ``.keras`` files;
* ``safe_h5`` -- HDF5 access through hard links, bounded datasets;
* ``weight_stores`` -- a layer's weights from a ``.keras`` archive or an ``.h5``;
* ``build`` -- the ``ModelSpec`` from a parsed config and a weight store;
* ``archive`` / ``h5file`` -- the two file formats;
* ``heap_guard`` -- the HDF5 global-heap check run before libhdf5 reads a file;
* ``files`` / ``live`` -- the entry points for files and live models;
* ``isolation`` / ``child`` / ``transfer`` -- reading a file in a child process.
"""

from __future__ import annotations

from .files import read_keras_file
from .heap_guard import check_global_heaps
from .isolation import (
    ISOLATED_READ_MEMORY,
    ISOLATED_READ_TIMEOUT,
    ReaderProcessError,
    isolation_from_env,
    read_keras_file_isolated,
)
from .limits import (
    COMPRESSION_CHECK_BYTES,
    DATASET_EXPANSION_CHECK_BYTES,
    MAX_COMPRESSION_RATIO,
    MAX_DATASET_BYTES,
    MAX_DATASET_EXPANSION,
    MAX_GLOBAL_HEAP_OBJECTS,
    MAX_GROUP_DEPTH,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_LAYERS,
    MAX_TOTAL_WEIGHT_BYTES,
    MAX_ZIP_MEMBER_BYTES,
    SUPPORTED_FORMATS,
)
from .live import read_live_model
from .normalize import normalize_layer_config
from .weight_names import canonical_weight_name, positional_layout
from .weight_stores import snake_case

__all__ = [
    "COMPRESSION_CHECK_BYTES", "DATASET_EXPANSION_CHECK_BYTES", "ISOLATED_READ_MEMORY", "ISOLATED_READ_TIMEOUT",
    "MAX_COMPRESSION_RATIO", "MAX_DATASET_BYTES", "MAX_DATASET_EXPANSION", "MAX_GLOBAL_HEAP_OBJECTS",
    "MAX_GROUP_DEPTH", "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "MAX_LAYERS", "MAX_TOTAL_WEIGHT_BYTES",
    "MAX_ZIP_MEMBER_BYTES", "SUPPORTED_FORMATS", "ReaderProcessError", "canonical_weight_name",
    "check_global_heaps", "isolation_from_env", "normalize_layer_config", "positional_layout",
    "read_keras_file", "read_keras_file_isolated", "read_live_model", "snake_case",
]
