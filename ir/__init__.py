"""keydnn's intermediate representation: types, ops, graphs, verifier, printer, reference interpreter."""

from __future__ import annotations

from keydnn.ir.graph import Constant, Graph, Node, WeightStore, array_sha256
from keydnn.ir.ops import OP_CLASSES, Op
from keydnn.ir.printer import print_graph
from keydnn.ir.reference import run_reference
from keydnn.ir.types import TensorType, Value
from keydnn.ir.verify import verify

__all__ = [
    "Graph", "Node", "Constant", "WeightStore", "array_sha256", "Op", "OP_CLASSES",
    "TensorType", "Value", "print_graph", "run_reference", "verify",
]
