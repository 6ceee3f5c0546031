"""What a model file may make the reader allocate or walk, and how the reader fails.

A file comes from a stranger, so every size it declares is checked against
these bounds before anything of that size is allocated; the numbers are far
above any Keras model we support, and far below what would take a machine down.
Every refusal is a ``KerasInteropError`` built by ``fail``.
"""

from __future__ import annotations

from typing import Any

from keydnn.errors import KerasInteropError, Problem

__all__ = [
    "COMPRESSION_CHECK_BYTES", "DATASET_EXPANSION_CHECK_BYTES", "HDF5_MAGIC", "MAX_COMPRESSION_RATIO",
    "MAX_DATASET_BYTES", "MAX_DATASET_EXPANSION", "MAX_GLOBAL_HEAP_OBJECTS", "MAX_GROUP_DEPTH", "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH", "MAX_LAYERS", "MAX_TOTAL_WEIGHT_BYTES", "MAX_ZIP_MEMBER_BYTES", "SUPPORTED_FORMATS",
    "ZIP_MAGICS", "fail",
]

SUPPORTED_FORMATS = ".keras (Keras 3 zip archive), .h5 (HDF5 saved by Keras 3 or Keras 2/tf_keras)"

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

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


def fail(where: str, message: str, **problem: Any) -> KerasInteropError:
    """Build the error: the summary names the file, the Problem says what is wrong.

    Layer details go into the Problem's fields (not the message text) so the
    error prints each fact once and callers can inspect them.
    """
    return KerasInteropError(f"cannot read {where}", [Problem(message=message, **problem)])
