"""The code generator's refusals, in a leaf module so that the planning modules beside ``program``
(``value_types``) raise them without importing ``program`` (``program`` re-exports both).
"""

from __future__ import annotations

from keydnn.errors import BackendError

__all__ = ["Unsupported", "LayoutUnsupported"]


class Unsupported(BackendError):
    """A graph (or node) the code generator does not handle; the ops path still may."""


class LayoutUnsupported(Unsupported):
    """A node in a layout the kernels do not take (channels-last): a pass's job (canonicalize-layout), so the
    per-op mode refuses it too, by name, rather than running it on the reference kernel."""
