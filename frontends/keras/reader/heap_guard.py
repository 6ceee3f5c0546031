"""HDF5 global heaps, checked before libhdf5 sees them.

libhdf5 (1.14) can loop forever or allocate gigabytes on a corrupt global heap
(see ``check_global_heaps``); this scans the raw bytes first. ``archive`` and
``h5file`` call it as ``heap_guard.check_global_heaps*`` so the fuzz tests can
switch it off in a child process and reach libhdf5 itself.
"""

from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path
from typing import Any

from .limits import HDF5_MAGIC, MAX_GLOBAL_HEAP_OBJECTS, fail

__all__ = ["check_global_heaps", "check_global_heaps_in_file"]

logger = logging.getLogger(__name__)


_GCOL = b"GCOL"
_SUPERBLOCK_OFFSETS = (0, 512, 1024, 2048, 4096, 8192)


def _hdf5_sizes(buf: Any) -> tuple[int, int, int]:
    """(base address, size of offsets, size of lengths) from the superblock; (0, 8, 8) if it cannot tell."""
    for off in _SUPERBLOCK_OFFSETS:
        if buf[off:off + 8] == HDF5_MAGIC and len(buf) > off + 14:
            version = buf[off + 8]
            offsets, lengths = (buf[off + 13], buf[off + 14]) if version in (0, 1) else (buf[off + 9], buf[off + 10])
            return off, offsets if offsets in (2, 4, 8) else 8, lengths if lengths in (2, 4, 8) else 8
    return 0, 8, 8


def check_global_heaps(buf: Any, where: str, what: str) -> None:
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
                    raise fail(where, f"{what} has more than {MAX_GLOBAL_HEAP_OBJECTS} HDF5 global heap objects")
                index = int.from_bytes(buf[p:p + 2], "little")
                obj_size = int.from_bytes(buf[p + 8:p + 8 + length], "little")
                need = object_header + -(-obj_size // 8) * 8 if index else obj_size
                if need < object_header or need > end - p:
                    raise fail(
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
                    raise fail(
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
                        raise fail(
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


def check_global_heaps_in_file(path: Path, where: str) -> None:
    """``check_global_heaps`` over a file, memory-mapped (nothing the size of the file is allocated)."""
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                return
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:  # cannot be mapped: libhdf5 will report what is wrong with it
        logger.debug("cannot map %s to check its global heaps: %s", path, exc)
        return
    with buf:
        check_global_heaps(buf, where, "the file")
