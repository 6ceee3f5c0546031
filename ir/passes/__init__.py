"""IR passes: the registry, the pass manager, and the built-in passes.

Importing this package registers every built-in pass, so pipeline strings can
name them. A user pass is a ``Pass`` subclass decorated with ``register_pass``.
"""

from __future__ import annotations

from keydnn.ir.passes.base import PASS_REGISTRY, PROPERTIES, Pass, PassResult, register_pass
from keydnn.ir.passes.manager import DEFAULT_PIPELINE, PassManager, PassRecord, PipelineResult, parse_pipeline
from keydnn.ir.passes import infer_shapes as _infer_shapes  # noqa: F401  (registers)
from keydnn.ir.passes import eliminate as _eliminate  # noqa: F401  (registers)
from keydnn.ir.passes import canonicalize_layout as _canonicalize_layout  # noqa: F401  (registers)
from keydnn.ir.passes import fold_batchnorm as _fold_batchnorm  # noqa: F401  (registers)
from keydnn.ir.passes import fold_constants as _fold_constants  # noqa: F401  (registers)
from keydnn.ir.passes import fuse_activation as _fuse_activation  # noqa: F401  (registers)
from keydnn.ir.passes import sink_squeeze as _sink_squeeze  # noqa: F401  (registers)
from keydnn.ir.passes import fuse_softmax as _fuse_softmax  # noqa: F401  (registers)

__all__ = [
    "Pass", "PassResult", "PASS_REGISTRY", "PROPERTIES", "register_pass", "PassManager",
    "PassRecord", "PipelineResult", "parse_pipeline", "DEFAULT_PIPELINE", "run_pipeline",
]


def run_pipeline(graph, passes=DEFAULT_PIPELINE, **options):
    """Convenience: run ``passes`` (a spec string or list) on ``graph``; return the new graph."""
    return PassManager(passes, **options).run(graph).graph
