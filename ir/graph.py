"""The IR graph: typed inputs and outputs, nodes in topological order, constants.

The pydantic structure is pure data and round-trips through JSON exactly.
Weights are NumPy arrays held beside it in a ``WeightStore`` and referenced by
constant name; the structure records each weight's type and SHA-256 so that
printing, hashing and comparing graphs never needs the bytes.
"""

from __future__ import annotations

import hashlib
from typing import Collection, Iterator, Mapping, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, PrivateAttr

from keydnn.ir.ops import Op
from keydnn.ir.types import TensorType, Value

__all__ = ["Node", "Constant", "Graph", "WeightStore", "array_sha256"]


def array_sha256(array: np.ndarray) -> str:
    """Checksum of an array's bytes in C order, as stored in artifacts."""
    # hashed through the buffer protocol: no copy of a (possibly memory-mapped, large) weight
    return hashlib.sha256(np.ascontiguousarray(array)).hexdigest()


class Node(BaseModel):
    """One op application; ``source`` keeps the Keras layer it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    op: Op
    inputs: tuple[str, ...]
    outputs: tuple[Value, ...]
    source: Optional[str] = None

    @property
    def output(self) -> Value:
        return self.outputs[0]


class Constant(BaseModel):
    """A named weight: its type and checksum (the bytes live in the WeightStore)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: TensorType
    sha256: str


class WeightStore(Mapping[str, np.ndarray]):
    """Read-only arrays by constant name; compares by content checksum."""

    def __init__(self, arrays: Mapping[str, np.ndarray] | None = None) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        for name, arr in (arrays or {}).items():
            self._arrays[name] = _frozen(arr)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WeightStore):
            return NotImplemented
        return self.keys() == other.keys() and all(
            self[k].dtype == other[k].dtype and self[k].shape == other[k].shape and np.array_equal(self[k], other[k])
            for k in self
        )

    def with_arrays(self, updates: Mapping[str, np.ndarray], drop: tuple[str, ...] = ()) -> "WeightStore":
        merged = {k: v for k, v in self._arrays.items() if k not in drop}
        merged.update(updates)
        return WeightStore(merged)


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr)
    if arr.flags.writeable:
        arr = arr.copy()
        arr.flags.writeable = False
    return arr


class Graph(BaseModel):
    """A dataflow graph in SSA form; immutable — passes build new graphs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    inputs: tuple[Value, ...]
    outputs: tuple[str, ...]
    nodes: tuple[Node, ...] = ()
    constants: tuple[Constant, ...] = ()
    metadata: dict[str, str] = {}

    _weights: WeightStore = PrivateAttr(default_factory=WeightStore)

    # -- construction -------------------------------------------------------
    @classmethod
    def build(
        cls,
        *,
        name: str,
        inputs: tuple[Value, ...],
        outputs: tuple[str, ...],
        nodes: tuple[Node, ...],
        weights: Mapping[str, np.ndarray],
        metadata: Mapping[str, str] | None = None,
    ) -> "Graph":
        """Build a graph whose constants are exactly ``weights`` (sorted by name)."""
        store = weights if isinstance(weights, WeightStore) else WeightStore(weights)
        constants = tuple(
            Constant(name=k, type=TensorType(shape=store[k].shape, dtype=str(store[k].dtype)), sha256=array_sha256(store[k]))
            for k in sorted(store)
        )
        g = cls(name=name, inputs=tuple(inputs), outputs=tuple(outputs), nodes=tuple(nodes),
                constants=constants, metadata=dict(metadata or {}))
        g._weights = store
        return g

    def replace(self, **changes: object) -> "Graph":
        """A copy with some fields changed; pass ``weights=`` to change the constants too."""
        weights = changes.pop("weights", None)
        fields = {
            "name": self.name, "inputs": self.inputs, "outputs": self.outputs,
            "nodes": self.nodes, "metadata": self.metadata,
        }
        fields.update(changes)
        store = self._weights if weights is None else weights
        if weights is None and "constants" not in changes:
            g = type(self)(constants=self.constants, **fields)  # type: ignore[arg-type]
            g._weights = self._weights
            return g
        return Graph.build(weights=store, **fields)  # type: ignore[arg-type]

    def with_weights(self, weights: Mapping[str, np.ndarray], *, verified: Collection[str] = ()) -> "Graph":
        """Attach arrays to a structure read from JSON; checks names, types and checksums.

        ``verified`` names arrays whose bytes the caller has already checked against this graph's recorded
        SHA-256 (the artifact loader checks each tensor against its entry, and the entry's checksum is the
        constant's): they are not hashed a second time, which for a 100 MB model is a tenth of a second.
        """
        store = weights if isinstance(weights, WeightStore) else WeightStore(weights)
        expected = {c.name: c for c in self.constants}
        if set(store) != set(expected):
            missing = sorted(set(expected) - set(store))
            extra = sorted(set(store) - set(expected))
            raise ValueError(f"weights do not match constants: missing {missing}, unexpected {extra}")
        for name, const in expected.items():
            arr = store[name]
            if arr.shape != const.type.shape or str(arr.dtype) != const.type.dtype:
                raise ValueError(f"weight {name!r} is {arr.dtype}{list(arr.shape)}, constant says {const.type}")
            if name not in verified and array_sha256(arr) != const.sha256:
                raise ValueError(f"weight {name!r} does not match its SHA-256 checksum")
        g = self.model_copy()
        g._weights = store
        return g

    # -- queries ------------------------------------------------------------
    @property
    def weights(self) -> WeightStore:
        return self._weights

    def value_types(self) -> dict[str, TensorType | None]:
        """Type of every value: inputs, constants, node outputs."""
        types: dict[str, TensorType | None] = {v.name: v.type for v in self.inputs}
        types.update({c.name: c.type for c in self.constants})
        for node in self.nodes:
            for out in node.outputs:
                types[out.name] = out.type
        return types

    def producers(self) -> dict[str, Node]:
        return {out.name: node for node in self.nodes for out in node.outputs}

    def users(self) -> dict[str, list[Node]]:
        uses: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                uses.setdefault(name, []).append(node)
        return uses

    def output_types(self) -> tuple[TensorType | None, ...]:
        types = self.value_types()
        return tuple(types[o] for o in self.outputs)

    def find_opaque(self) -> list[Node]:
        return [n for n in self.nodes if n.op.kind == "opaque"]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return self.model_dump() == other.model_dump() and self._weights == other._weights

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        from keydnn.ir.printer import print_graph

        return print_graph(self)
