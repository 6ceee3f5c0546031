"""keydnn: compile trained Keras models into fast, inspectable KeyDNN artifacts.

    >>> import keydnn
    >>> model = keydnn.from_keras("model.h5")        # no TensorFlow needed for files
    >>> y = model(x)                                  # same layout and result as Keras
    >>> model.save("model.json"); keydnn.load("model.json")
"""

from __future__ import annotations

__version__ = "0.1.0"

from keydnn.api import from_keras, load
from keydnn.device import Device
from keydnn.errors import ArtifactError, BackendError, IRError, KerasInteropError, KeydnnError, PassError
from keydnn.model import Model
from keydnn.runtime import Sequential

__all__ = [
    "__version__", "from_keras", "load", "Device", "Model", "Sequential", "KeydnnError", "KerasInteropError",
    "ArtifactError", "BackendError", "IRError", "PassError",
]
