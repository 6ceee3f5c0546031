"""Safe HDF5 access: hard links only, bounded and plain-data datasets.

Everything the reader takes from an HDF5 file goes through these helpers, so
soft/external links, virtual or external datasets, non-numeric dtypes and
datasets that claim more bytes than the file stores are refused in one place.
"""

from __future__ import annotations

import math
from typing import Any

import h5py
import numpy as np

from .limits import (
    DATASET_EXPANSION_CHECK_BYTES,
    MAX_DATASET_BYTES,
    MAX_DATASET_EXPANSION,
    MAX_TOTAL_WEIGHT_BYTES,
    fail,
)

__all__ = ["Budget", "attr_str", "attr_str_list", "read_dataset", "resolve"]


def attr_str(obj: Any, key: str) -> str | None:
    """A string attribute, whether h5py returns it as str, bytes or a 0-d array; None if absent or not a string."""
    value = obj.attrs.get(key)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
        if isinstance(value, bytes):
            return value.decode("utf-8")
    return value if isinstance(value, str) else None


def attr_str_list(obj: Any, key: str, where: str) -> list[str] | None:
    """A list-of-strings attribute (``weight_names``, ``layer_names``); None if absent, refused if not strings."""
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
            raise fail(where, f"HDF5 attribute {key!r} holds a non-string {item!r}", field=key)
        out.append(item)
    return out


def resolve(group: Any, relpath: str, where: str, what: str) -> Any | None:
    """Follow ``relpath`` inside ``group`` through hard links only."""
    node = group
    for part in [p for p in relpath.split("/") if p]:
        if not isinstance(node, h5py.Group):
            return None
        link = node.get(part, getlink=True)
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            raise fail(
                where,
                f"{what}: HDF5 entry {relpath!r} is a {type(link).__name__}; "
                "only plain datasets are read",
            )
        node = node[part]
    return node


class Budget:
    """Bytes of weights materialized so far for one file, against ``MAX_TOTAL_WEIGHT_BYTES``.

    Each dataset is bounded on its own; without a running total a file could
    list thousands of datasets just under that bound.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self.used = 0

    def take(self, nbytes: int, what: str) -> None:
        if self.used + nbytes > MAX_TOTAL_WEIGHT_BYTES:
            raise fail(
                self.where,
                f"{what}: weights total more than the {MAX_TOTAL_WEIGHT_BYTES}-byte limit",
            )
        self.used += nbytes


def read_dataset(node: Any, where: str, what: str, budget: Budget) -> np.ndarray:
    """Materialize one weight dataset, refusing anything that is not plain data.

    Sizes are checked on the declared shape *and* against the bytes the file
    really stores, before reading: a dataset that was never written (read
    back as fill values) or a compressed run of zeros can otherwise declare
    gigabytes in a file of a few kilobytes.
    """
    if not isinstance(node, h5py.Dataset):
        raise fail(where, f"{what} is not an HDF5 dataset")
    if node.is_virtual or node.external:
        raise fail(where, f"{what} refers to data outside the file; refused")
    dtype = node.dtype
    nbytes = math.prod(node.shape or ()) * dtype.itemsize
    if nbytes > MAX_DATASET_BYTES:
        raise fail(where, f"{what} is {nbytes} bytes, over the {MAX_DATASET_BYTES}-byte limit")
    bfloat16 = attr_str(node, "dtype") == "bfloat16"
    if not bfloat16 and dtype.kind not in "fiub":
        raise fail(where, f"{what} has non-numeric dtype {dtype}", value=str(dtype))
    stored = node.id.get_storage_size()
    if nbytes > DATASET_EXPANSION_CHECK_BYTES and nbytes > stored * MAX_DATASET_EXPANSION:
        raise fail(
            where,
            f"{what} declares {nbytes} bytes but stores only {stored} in the file "
            "(unwritten or over-compressed data); refused",
        )
    budget.take(nbytes, what)
    try:
        array = np.asarray(node[()])
    except (OSError, ValueError, TypeError, RuntimeError) as exc:  # bad chunks, missing filters
        raise fail(where, f"{what} cannot be read ({exc})") from exc
    if bfloat16:
        try:
            import ml_dtypes  # NumPy extension types; not TensorFlow

            array = array.view(np.uint16).view(ml_dtypes.bfloat16)
        except (ImportError, ValueError, TypeError) as exc:
            raise fail(where, f"{what} is bfloat16 and cannot be decoded ({exc})") from exc
    elif array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    if not array.flags.owndata:  # node[()] returns a fresh array; copy only views
        array = np.array(array, copy=True)
    array.flags.writeable = False
    return array
