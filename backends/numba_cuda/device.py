"""Finding the GPU, entering its context, and accepting other libraries' device arrays.

Everything that differs between a real CUDA driver and Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) is confined to this module, so kernels and the
executor never ask which one they run on:

* detection: the simulator has no driver to query but always offers one
  device, so it counts as one device;
* foreign arrays: the simulator has no ``as_cuda_array``; there a "device
  pointer" is a host pointer, so an object's ``__cuda_array_interface__`` is
  read back as a host view and wrapped like a device array;
* shared arrays: the simulator allocates a block's ``cuda.shared.array`` when
  the first thread reaches it, without a lock, so two threads arriving at once
  could each get an array of their own; that is serialized here
  (``_serialize_simulator_shared_arrays``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from typing import Any, Iterator

import numpy as np

from keydnn.errors import BackendError

__all__ = [
    "cuda", "simulator_enabled", "device_count", "require_device", "device_context", "multiprocessor_count",
    "is_device_array", "as_device_array",
]

logger = logging.getLogger(__name__)

try:
    from numba import cuda
except ImportError as _exc:  # pragma: no cover - a numba build without its CUDA target
    raise BackendError(f"cuda requested but numba's CUDA target cannot be imported ({_exc}); "
                       "install keydnn[cuda] or use device='cpu'") from _exc


def simulator_enabled() -> bool:
    """Whether numba.cuda is the simulator (decided once, when numba.cuda was first imported)."""
    from numba.core import config

    return bool(getattr(config, "ENABLE_CUDASIM", 0))


def _serialize_simulator_shared_arrays() -> None:
    """Make the simulator's shared-array allocation atomic.

    ``FakeCUDAShared.array`` (numba 0.68) looks the caller's line up in a dict and, when it is missing,
    allocates and stores an array: check, then set, with no lock. The simulator runs a block's threads as
    Python threads, so under load (or with a short switch interval) two of them can both miss, and each
    goes on with its own array: a write by one is never seen by the others, which then compute on
    uninitialized memory. Seen as wrong outputs and an overflow in the recurrent kernel on a busy CI
    machine, one run in a few. Here the same method runs under one lock; on a real GPU nothing changes.
    """
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    shared = kernelapi.FakeCUDAShared
    if getattr(shared, "_keydnn_serialized", False):
        return
    lock = threading.Lock()
    dynamic = shared.array

    def array(self, shape, dtype):
        if shape == 0:  # dynamic shared memory: one buffer for the block, made with the block
            return dynamic(self, shape, dtype)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)  # one allocation per source line, as numba keys it
        with lock:
            found = self._allocations.get(key)
            if found is None:
                found = self._allocations[key] = np.empty(shape, dtype)
        return found

    shared.array = array
    shared._keydnn_serialized = True


if simulator_enabled():
    _serialize_simulator_shared_arrays()


def device_count() -> int:
    """How many CUDA devices this process can use; 0 without a driver or a GPU. The simulator is one."""
    if simulator_enabled():
        return 1
    try:
        if not cuda.is_available():  # False, not an exception, when the driver library is missing
            return 0
        return len(cuda.gpus)
    except Exception as exc:  # a broken driver install raises CudaSupportError and friends
        logger.debug("CUDA detection failed: %s", exc)
        return 0


def require_device(index: int) -> None:
    """Raise the errors users see when asking for a GPU they do not have."""
    count = device_count()
    if count == 0:
        raise BackendError("cuda requested but no CUDA device was found; use device='cpu'")
    if index >= count:
        raise BackendError(f"cuda:{index} requested but only {count} CUDA device(s) found")


@contextlib.contextmanager
def device_context(index: int) -> Iterator[None]:
    """Make device ``index`` current on this thread (CUDA contexts are per thread)."""
    with cuda.gpus[index]:
        yield


def multiprocessor_count() -> int:
    """SMs of the current device: how many blocks it takes to fill it (split-K uses this)."""
    try:
        return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    except Exception:  # the simulator's fake device has no attributes
        return 1


def is_device_array(x: Any) -> bool:
    """A numba device array (real or simulated) or anything exporting ``__cuda_array_interface__``."""
    return bool(getattr(x, "__cuda_ndarray__", False)) or hasattr(x, "__cuda_array_interface__")


def as_device_array(x: Any) -> Any:
    """A numba device array viewing ``x``'s memory, without copying it."""
    if getattr(x, "__cuda_ndarray__", False):
        return x
    if simulator_enabled():
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(np.asarray(_HostView(x.__cuda_array_interface__)))
    return cuda.as_cuda_array(x)


class _HostView:
    """Under the simulator, device memory is host memory: expose an interface dict to NumPy."""

    def __init__(self, interface: dict) -> None:
        desc = dict(interface)
        desc.pop("stream", None)
        desc.pop("mask", None)
        desc["version"] = 3
        self.__array_interface__ = desc
