"""What one call of the code-generating executable runs on: its plan (variant, buffers, threads), the batch
chunking of large batches, array addresses for prebuilt entries, and the Python helper threads that join a
call where the native pool (``pool``) is unavailable.

Apart from ``executable`` to keep the executable module to its logic (compiling shapes, planning and running
calls); nothing here knows the graph.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from keydnn.backends.numba_cpu.codegen.program import Program
from keydnn.backends.numba_cpu.runtime.variant import Variant

__all__ = ["CallPlan", "HELPERS", "CHUNK_BYTES", "MIN_CHUNK", "batch_chunk", "array_address", "aligned_empty"]

logger = logging.getLogger(__name__)


class _Helpers:
    """Threads that join calls as ``tid > 0`` (numba's own thread pool would need a parallel entry,
    whose compile links every helper again). One queue per thread; a job is (entry, args)."""

    def __init__(self) -> None:
        self._pid = -1
        self._queues: list = []
        self._lock = threading.Lock()

    def submit(self, count: int, entry, args_for, keep: object = None) -> None:
        """Queue ``entry(*args_for(tid))`` for helpers 1..count. ``keep`` (the call plan) stays referenced
        until the helper is done: a late helper of a prebuilt entry reads the plan's arrays by address,
        so they must outlive the call (a caller thread's plans die with the thread)."""
        if self._pid != os.getpid() or len(self._queues) < count:
            self._start(count)
        for tid in range(1, count + 1):
            self._queues[tid - 1].put((entry, args_for(tid), keep))

    def _start(self, count: int) -> None:
        with self._lock:
            if self._pid != os.getpid():
                self._queues, self._pid = [], os.getpid()
            while len(self._queues) < count:
                q: queue.SimpleQueue = queue.SimpleQueue()
                t = threading.Thread(target=_helper_loop, args=(q,), name=f"keydnn-cpu-{len(self._queues) + 1}",
                                     daemon=True)
                self._queues.append(q)
                t.start()


def _helper_loop(q: "queue.SimpleQueue") -> None:
    while True:
        entry, args, keep = q.get()
        try:
            entry(*args)
        except Exception:  # noqa: BLE001 - the caller's own thread reports errors
            logger.exception("numba-cpu helper thread failed")
        del entry, args, keep


HELPERS = _Helpers()


#: Bytes of tensors a chunk of a large batch may take (``batch_chunk``), and the fewest samples in a chunk
#: (each chunk is one more call, and a stage's items are its samples).
CHUNK_BYTES = 4 << 20
MIN_CHUNK = 8


def batch_chunk(prog: "Program", key: tuple) -> int:
    """Samples per entry call. A stage runs over the whole batch before the next starts, so at a large batch
    every intermediate tensor leaves the caches between the stage writing it and the one reading it; in
    chunks whose tensors fit in ``CHUNK_BYTES`` they stay in the last-level cache (MobileNet-style model at
    batch 64: 6.2 -> 4.7 ms; the CIFAR CNN 7.7 -> 7.3 ms). Only graphs whose inputs and outputs are all
    batched are split; ``KEYDNN_CPU_CHUNK`` sets the chunk (benchmarking)."""
    samples, batched = key
    if not all(batched) or not all(b for _, _, b in prog.outputs):
        return 1 << 62
    override = os.environ.get("KEYDNN_CPU_CHUNK")
    if override:
        return max(1, int(override))
    elements = prog.arena_per_sample + sum(int(np.prod(s)) for s in samples)
    elements += sum(int(np.prod(s)) for _, s, _ in prog.outputs)
    return max(MIN_CHUNK, CHUNK_BYTES // (elements * prog.dtype.itemsize))


def _data_offset() -> Optional[int]:
    """Where CPython keeps an ndarray's data pointer inside the object (numpy's ``PyArrayObject_fields.data``,
    right after the object header), checked on probe arrays; None where it is elsewhere (a debug or
    free-threaded build): ``array_address`` then asks numpy."""
    probes = [np.empty(n, dtype=np.float32) for n in (1, 3, 1000)]
    for offset in (16, 24, 32):
        if all(ctypes.c_void_p.from_address(id(a) + offset).value == a.ctypes.data for a in probes):
            return offset
    return None


_DATA_OFFSET = _data_offset()


def array_address(a: np.ndarray) -> int:
    """The address of ``a``'s first element: 0.2 us, where ``a.ctypes.data`` takes 0.8-1 us (two per call of
    a batch-1 model whose whole inference takes 10 us)."""
    if _DATA_OFFSET is None:
        return a.ctypes.data
    return ctypes.c_void_p.from_address(id(a) + _DATA_OFFSET).value or 0


def aligned_empty(count: int, dtype: np.dtype, align: int = 64) -> np.ndarray:
    """An uninitialized 1-D array of ``count`` elements whose data starts at an ``align``-byte boundary (the
    generated code aligns its buffers within the arena; numpy aligns allocations to 16 bytes only)."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(count + align // itemsize, dtype=dtype)
    skip = (-raw.ctypes.data % align) // itemsize
    return raw[skip:skip + count]


@dataclass
class CallPlan:
    """What calls with one set of input shapes need on one thread: the variant, output shapes, threads and
    buffers (``CodegenExecutable._plan`` makes it, once per shape and thread)."""

    var: Variant
    n: int
    out_shapes: list[tuple[int, ...]]
    nthr: int
    tail: tuple  # W, D, T, arena, state, F
    arena: np.ndarray
    state: np.ndarray
    slots: Optional[np.ndarray] = None  # aot: the address array P (inputs, outputs, then the tail)
    slots_address: int = 0
    chunk: int = 1 << 62  # samples per entry call: a larger batch runs in chunks (then this plan has no buffers)
    bound: Optional[Callable[..., None]] = None  # aot: ``_bind``'s call of the prebuilt entry
    #: (inputs to repeat to the batch, outputs to cut to one row), where the generated code has no form with
    #: batch-1 inputs beside batch-N ones (``_broadcast_plan``); None otherwise
    broadcast: Optional[tuple[tuple[bool, ...], tuple[bool, ...]]] = None
