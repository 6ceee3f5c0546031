"""The numba-cuda executable: lower every node once (weights uploaded then), then run the plan.

A call looks up the state for its input shapes (prepared launches, arena
buffers, scratch: allocated once per shape and reused), and launches one
bound kernel per step on the device's default stream, so activations never
leave the device between ops. NumPy inputs are copied in and NumPy copies of
the outputs come back; device inputs (numba device arrays, or anything with
``__cuda_array_interface__`` such as CuPy arrays and PyTorch CUDA tensors)
give numba device arrays back, freshly allocated so that the caller owns
them, with no host round trip. Calls are serialized by a lock: they share
the per-shape buffers, and the simulator cannot run two kernels at once.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any, Optional

import numpy as np

from keydnn.backends.step_list import node_where, opaque_problem
from keydnn.backends.step_list import slot_names as slot_list
from keydnn.backends.numba_cuda.device import as_device_array, cuda, device_context, is_device_array, require_device
from keydnn.backends.numba_cuda.lowering import KERNELS, LowerContext, Unsupported
from keydnn.backends.numba_cuda.plan import Plan, ShapePlan, Step, plan_shapes
from keydnn.errors import BackendError
from keydnn.ir.graph import Graph

__all__ = ["CudaExecutable", "compile_graph", "MAX_CACHED_SHAPES"]

logger = logging.getLogger(__name__)

#: Distinct input-shape keys (batch sizes) whose device buffers are kept.
MAX_CACHED_SHAPES = 8


def _build_plan(graph: Graph) -> tuple[Plan, list]:
    """Lower every node through KERNELS (uploading weights); report every node it cannot run at once."""
    slot_names = slot_list(graph)
    slot = {name: i for i, name in enumerate(slot_names)}
    types = graph.value_types()
    problems: list[str] = [f"graph input %{v.name} has no type" for v in graph.inputs if v.type is None]
    steps: list[Step] = []
    uploads: list = []
    for node in graph.nodes:
        where = node_where(node)
        if node.op.kind == "opaque":
            problems.append(opaque_problem(node))
            continue
        lowering = KERNELS.get(node.op.kind)
        if lowering is None:
            problems.append(f"{where}: op kind {node.op.kind!r} has no numba-cuda kernel; "
                            f"supported: {', '.join(sorted(KERNELS))}")
            continue
        in_types = tuple(types.get(i) for i in node.inputs)
        if node.outputs[0].type is None or any(t is None for t in in_types):
            problems.append(f"{where} has untyped operands or result; run the infer-shapes pass first")
            continue
        ctx = LowerContext(node=node, in_types=in_types, out_type=node.outputs[0].type, weights=graph.weights,
                           _uploads=uploads)
        try:
            lowered = lowering(ctx)
        except Unsupported as exc:
            problems.append(f"{where}: {exc}")
            continue
        steps.append(Step(node.name, node.op.kind, lowered, tuple(slot[i] for i in node.inputs),
                          slot[node.outputs[0].name]))
    if problems:
        raise BackendError(f"numba-cuda cannot compile graph {graph.name!r}:\n"
                           + "\n".join(f"  - {p}" for p in problems))
    template: list[Optional[Any]] = [None] * len(slot_names)
    for name in _constants_read_as_activations(graph):
        array = np.ascontiguousarray(graph.weights[name])
        template[slot[name]] = cuda.to_device(array.reshape(-1) if array.size else np.zeros(1, array.dtype))
    plan = Plan(graph=graph, steps=tuple(steps), slot_names=tuple(slot_names),
                input_slots=tuple(slot[v.name] for v in graph.inputs),
                output_slots=tuple(slot[o] for o in graph.outputs), template=tuple(template))
    return plan, uploads


def _constants_read_as_activations(graph: Graph) -> set[str]:
    """Constants that reach a kernel as a data operand (not as a weight its lowering uploads), or as an output."""
    constants = {c.name for c in graph.constants}
    used = {o for o in graph.outputs if o in constants}
    for node in graph.nodes:
        op = type(node.op)
        for position, name in enumerate(node.inputs):
            role = op.operands[position].rstrip("?") if position < len(op.operands) else ""
            if name in constants and role not in op.constant_operands:
                used.add(name)
    return used


class _ShapeState:
    """Device memory for one input-shape key: arena views per step, inputs, outputs, scratch."""

    def __init__(self, layout: ShapePlan, graph: Graph) -> None:
        self.layout = layout
        arena = [cuda.device_array(max(n, 1), dtype=d) for n, d in layout.arena]
        self.views = [arena[p.index][: p.size] if p.kind == "arena" else None for p in layout.placements]
        self.inputs: list = [None] * len(graph.inputs)  # host-input staging buffers, made on first use
        self.outputs: Optional[list] = None  # output storages reused by host-mode calls
        scratch = {d: cuda.device_array(n, dtype=d) for n, d in layout.scratch}
        dtypes = [n.outputs[0].type.np_dtype for n in graph.nodes]
        self.scratch = [scratch.get(d) if p.scratch else None for p, d in zip(layout.prepared, dtypes)]

    def output_storages(self, fresh: bool) -> list:
        if fresh:
            return [cuda.device_array(max(n, 1), dtype=d) for n, d in self.layout.output_storage]
        if self.outputs is None:
            self.outputs = [cuda.device_array(max(n, 1), dtype=d) for n, d in self.layout.output_storage]
        return self.outputs


class CudaExecutable:
    """Compiled form of one graph for one CUDA device."""

    def __init__(self, graph: Graph, index: int = 0) -> None:
        require_device(index)
        self.graph = graph
        self.index = index
        with device_context(index):
            self.plan, self._weights = _build_plan(graph)
        self._states: OrderedDict[tuple, _ShapeState] = OrderedDict()
        self._lock = threading.Lock()
        logger.debug("numba-cuda plan for %s on cuda:%d:\n%s", graph.name, index, self.plan)

    def _state(self, key: tuple) -> _ShapeState:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _ShapeState(plan_shapes(self.plan, key), self.graph)
            while len(self._states) > MAX_CACHED_SHAPES:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(key)
        return state

    def _stage(self, inputs: tuple) -> tuple[list, tuple, bool]:
        """Inputs as flat device arrays, their shapes, and whether the caller passed device arrays."""
        device_mode = any(is_device_array(x) for x in inputs)
        arrays, shapes = [], []
        for i, (x, value) in enumerate(zip(inputs, self.graph.inputs)):
            expected = value.type.np_dtype
            if is_device_array(x):
                x = as_device_array(x)
                if np.dtype(x.dtype) != expected:
                    raise ValueError(f"input {i} is a {x.dtype} device array; this model takes {expected} "
                                     "(cast it on the device first)")
                if not x.is_c_contiguous():
                    raise ValueError(f"input {i} is a non-contiguous device array; pass a C-contiguous copy")
            else:
                x = np.ascontiguousarray(x, dtype=expected)
            shape = tuple(int(d) for d in x.shape)
            if not value.type.matches(shape):
                raise ValueError(f"input {i} has shape {shape}; graph expects {value.type}")
            arrays.append(x)
            shapes.append(shape)
        return arrays, tuple(shapes), device_mode

    def __call__(self, *inputs: Any) -> list:
        if len(inputs) != len(self.plan.input_slots):
            raise ValueError(f"graph {self.graph.name!r} takes {len(self.plan.input_slots)} inputs, got {len(inputs)}")
        with self._lock, device_context(self.index):
            arrays, key, device_mode = self._stage(inputs)
            state = self._state(key)
            layout = state.layout
            env = list(self.plan.template)
            for k, (slot, x) in enumerate(zip(self.plan.input_slots, arrays)):
                if isinstance(x, np.ndarray):
                    if state.inputs[k] is None:
                        state.inputs[k] = cuda.device_array(max(x.size, 1), dtype=x.dtype)
                    buf = state.inputs[k][: x.size]
                    buf.copy_to_device(x.reshape(-1))
                    env[slot] = buf
                else:
                    env[slot] = x.reshape(x.size)
            storages = state.output_storages(fresh=device_mode)
            steps = zip(self.plan.steps, layout.prepared, layout.placements, state.views, state.scratch)
            for step, prepared, place, view, scratch in steps:
                out = view if place.kind != "output" else storages[place.index][: place.size]
                env[step.output] = prepared.launch([env[s] for s in step.operands], out, scratch)
            return self._collect(env, layout, storages, device_mode)

    def _collect(self, env: list, layout: ShapePlan, storages: list, device_mode: bool) -> list:
        results = []
        handed: set[int] = set()
        for slot, storage, shape in zip(self.plan.output_slots, layout.output_of, layout.output_shapes):
            flat = env[slot]
            if not device_mode:
                results.append(flat.copy_to_host().reshape(shape))
            elif storage >= 0 and storage not in handed:
                handed.add(storage)
                results.append(flat.reshape(shape))
            else:  # a view of an input, or an output listed twice: the caller gets its own copy
                copy = cuda.device_array(shape, dtype=flat.dtype)
                copy.copy_to_device(flat.reshape(shape))
                results.append(copy)
        return results

    def __repr__(self) -> str:
        return f"CudaExecutable({self.graph.name!r}, {len(self.plan.steps)} steps, cuda:{self.index})"


def compile_graph(graph: Graph, device: Any = None) -> CudaExecutable:
    """Compile a verified, typed, channels-first graph for ``device`` (a keydnn.Device; index 0 if None)."""
    return CudaExecutable(graph, index=int(getattr(device, "index", 0) or 0))
