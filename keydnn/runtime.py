"""``keydnn.Sequential``: the one-input, one-output ``keydnn.Model`` a Sequential Keras model converts to."""

from __future__ import annotations

import logging

from keydnn.model import Model, _shape_text  # noqa: F401  (_shape_text: kept importable from here)

__all__ = ["Sequential", "Model"]

logger = logging.getLogger(__name__)


class Sequential(Model):
    """A converted Sequential model: ``model(x)`` returns what the Keras model returns for ``x``.

    Everything (inspection, calling, saving) is ``keydnn.Model``'s; the class
    tells a stack from a graph, as Keras does.
    """
