"""keydnn: compile trained Keras models into fast, inspectable KeyDNN artifacts.

    >>> import keydnn
    >>> model = keydnn.from_keras("model.h5")        # no TensorFlow needed for files
    >>> y = model(x)                                  # same layout and result as Keras
    >>> model.save("model.json"); keydnn.load("model.json")

The API names are loaded on first use (PEP 562 ``__getattr__``): ``keydnn.ir``,
``keydnn.errors`` and the backends are imported by each other and by tools that
need none of the API, and ``import keydnn.ir.graph`` must not pull in the model,
the compiler and numba with it (tests/test_import_contracts.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keydnn._version import __version__
from keydnn.errors import ArtifactError, BackendError, IRError, KerasInteropError, KeydnnError, PassError

if TYPE_CHECKING:
    from keydnn.api import from_keras
    from keydnn.loading import load
    from keydnn.device import Device
    from keydnn.model import Model
    from keydnn.runtime import Sequential

__all__ = [
    "__version__", "from_keras", "load", "Device", "Model", "Sequential", "KeydnnError", "KerasInteropError",
    "ArtifactError", "BackendError", "IRError", "PassError",
]

#: Lazily loaded API name -> the module that defines it.
_LAZY = {
    "from_keras": "keydnn.api",
    "load": "keydnn.loading",  # without the passes: a warm start only loads
    "Device": "keydnn.device",
    "Model": "keydnn.model",
    "Sequential": "keydnn.runtime",
}


#: Subpackages reachable as attributes after a bare ``import keydnn`` (``keydnn.ir.Graph``), as before the API was lazy.
_SUBPACKAGES = frozenset({"ir", "frontends", "backends"})


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBPACKAGES:
        return importlib.import_module(f"keydnn.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keydnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBPACKAGES)
