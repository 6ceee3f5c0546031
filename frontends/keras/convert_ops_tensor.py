"""Converters of Keras operations on whole tensors (reductions, matmul, reshapes, concatenation, casts,
slicing): see ``convert_ops``."""

from __future__ import annotations

from typing import Any

from keydnn.frontends.keras.convert_ops import (
    OpCall,
    axis_arg,
    one_tensor,
    register_operation,
    tensor_list,
)
from keydnn.frontends.keras.convert_common import is_int
from keydnn.ir.ops import (
    Concat,
    ExpandDims,
    MatMul,
    Reduce,
    Reshape,
    Slice,
    Squeeze,
    Transpose,
)

# --------------------------------------------------------------------------- #
# Reductions, matmul, shapes
# --------------------------------------------------------------------------- #

_REDUCE = {"Mean": "mean", "Sum": "sum", "Max": "max", "Min": "min", "Amax": "max", "Amin": "min"}


@register_operation(*_REDUCE, constraints="axis (an int or a list of non-batch axes), keepdims; max/min without "
                    "initial")
def _reduce(call: OpCall) -> None:
    x = one_tensor(call)
    rank = call.type_of(x).rank
    value = call.ctx.cfg("axis")
    keepdims = call.ctx.check_in("keepdims", (False, True), False)
    if "initial" in call.ctx.layer.config:
        initial = call.ctx.cfg("initial")
        if initial is not None:
            call.refuse(f"unsupported initial {initial!r}", field="initial", value=initial, supported="None")
    axes = [value] if is_int(value) else value
    if not (isinstance(axes, list) and axes and all(is_int(a) and -rank <= a < rank and a % rank for a in axes)):
        call.refuse(f"unsupported axis {value!r} (None or the batch axis reduces over the batch)", field="axis",
                    value=value, supported="an int or a list of non-batch axes")
    call.emit(Reduce(mode=_REDUCE[call.ctx.layer.class_name], axes=tuple(a % rank for a in axes),  # type: ignore
                     keepdims=keepdims), x)


@register_operation("Matmul", "MatMul", constraints="two operands of rank >= 2 (tensors, or one constant matrix); "
                    "NumPy semantics")
def _matmul(call: OpCall) -> None:
    if len(call.args) != 2:
        call.refuse(f"takes two operands, got {len(call.args)}", field="args")
    x, y = call.operand(call.args[0]), call.operand(call.args[1])
    call.emit(MatMul(), x, y)


@register_operation("Reshape", constraints="newshape keeps the batch axis first (-1 or None there, static sizes "
                    "after it)")
def _reshape(call: OpCall) -> None:
    x = one_tensor(call)
    shape = call.ctx.cfg("newshape")
    ok = isinstance(shape, list) and len(shape) >= 1 and shape[0] in (-1, None) and all(
        is_int(d) and (d > 0 or d == -1) for d in shape[1:]) and -1 not in shape[1:]
    if not ok:
        call.refuse(f"unsupported newshape {shape!r}", field="newshape", value=shape,
                    supported="[-1 or None, static positive sizes...] (the batch axis stays first)")
    call.emit(Reshape(shape=tuple(int(d) for d in shape[1:])), x)


@register_operation("Transpose", constraints="axes keeping the batch axis first")
def _transpose(call: OpCall) -> None:
    x = one_tensor(call)
    rank = call.type_of(x).rank
    axes = call.ctx.cfg("axes")
    if not (isinstance(axes, list) and sorted(a % rank for a in axes if is_int(a)) == list(range(rank))
            and axes[0] % rank == 0):
        call.refuse(f"unsupported axes {axes!r}", field="axes", value=axes,
                    supported="a permutation of the axes with the batch axis 0 first")
    call.emit(Transpose(perm=tuple(int(a) % rank for a in axes)), x)


@register_operation("ExpandDims", constraints="axis (an int, or a list) after the batch axis")
def _expand_dims(call: OpCall) -> None:
    x = one_tensor(call)
    value = call.ctx.cfg("axis")
    axes = [value] if is_int(value) else value
    out_rank = call.type_of(x).rank + (len(axes) if isinstance(axes, list) else 0)
    if not (isinstance(axes, list) and axes and all(is_int(a) and -out_rank <= a < out_rank and a % out_rank
                                                    for a in axes)):
        call.refuse(f"unsupported axis {value!r}", field="axis", value=value, supported="axes after the batch axis")
    for i, a in enumerate(sorted(int(a) % out_rank for a in axes)):
        x = call.emit(ExpandDims(axis=a), x, last=i == len(axes) - 1)


@register_operation("Squeeze", constraints="axis (an int, a list, or None: every static size-1 axis but the batch)")
def _squeeze(call: OpCall) -> None:
    x = one_tensor(call)
    shape = call.type_of(x).shape
    value = call.ctx.cfg("axis")
    rank = len(shape)
    if value is None:
        axes = [i for i in range(1, rank) if shape[i] == 1]
    else:
        axes = [value] if is_int(value) else value
        if not (isinstance(axes, list) and all(is_int(a) and -rank <= a < rank and a % rank and shape[a % rank] == 1
                                               for a in axes)):
            call.refuse(f"unsupported axis {value!r} for input {list(shape)}", field="axis", value=value,
                        supported="size-1 axes after the batch axis")
    if not axes:
        return
    for i, a in enumerate(sorted((int(a) % rank for a in axes), reverse=True)):
        x = call.emit(Squeeze(axis=a), x, last=i == len(axes) - 1)




@register_operation("Concatenate", constraints="a list of tensors, any non-batch axis")
def _concatenate(call: OpCall) -> None:
    xs = tensor_list(call)
    call.emit(Concat(axis=axis_arg(call, "axis", call.type_of(xs[0]).rank)), *xs)


@register_operation("Stack", constraints="a list of tensors, any non-batch axis of the result")
def _stack(call: OpCall) -> None:
    xs = tensor_list(call)
    rank = call.type_of(xs[0]).rank + 1
    axis = axis_arg(call, "axis", rank)
    expanded = [call.emit(ExpandDims(axis=axis), x, last=False) for x in xs]
    call.emit(Concat(axis=axis), *expanded)


@register_operation("Cast", constraints="to a float dtype: no node (values stay in the model's float dtype)")
def _cast(call: OpCall) -> None:
    x = one_tensor(call)
    dtype = call.ctx.cfg("dtype")
    if dtype not in ("float16", "bfloat16", "float32", "float64"):
        call.refuse(f"unsupported cast to {dtype!r}", field="dtype", value=dtype, supported="a float dtype")
    call.ctx.x, call.ctx.x_type = x, call.type_of(x)


def _slice_entry(entry: Any) -> tuple[str, Any]:
    if isinstance(entry, dict) and entry.get("class_name") == "__slice__" and isinstance(entry.get("config"), dict):
        c = entry["config"]
        return "slice", (c.get("start"), c.get("stop"), c.get("step"))
    if is_int(entry):
        return "index", int(entry)
    return "other", entry


@register_operation("GetItem", constraints="static slices (positive steps) and integer indices; the batch axis "
                    "whole")
def _get_item(call: OpCall) -> None:
    x = call.tensor(0)
    key = call.arg(1, "key")
    shape = call.type_of(x).shape
    entries = key if isinstance(key, list) else [key]
    if len(entries) > len(shape):
        call.refuse(f"index {key!r} has more entries than the input has axes {list(shape)}", field="args")
    starts, stops, steps, squeeze = [], [], [], []
    for axis, dim in enumerate(shape):
        kind, value = _slice_entry(entries[axis]) if axis < len(entries) else ("slice", (None, None, None))
        if kind == "other" or (kind == "slice" and not all(v is None or is_int(v) for v in value)):
            call.refuse(f"unsupported index {entries[axis]!r} on axis {axis}", field="args", value=entries[axis],
                        supported="static slices and integers")
        if axis == 0:
            if kind != "slice" or value not in ((None, None, None), (0, None, None), (None, None, 1)):
                call.refuse(f"indexes the batch axis ({entries[0]!r})", field="args", value=entries[0],
                            supported="the batch axis whole (`:`)")
            continue
        if not isinstance(dim, int):
            call.refuse(f"slices axis {axis} of unknown size", field="args")
        if kind == "index":
            i = value + dim if value < 0 else value
            if not 0 <= i < dim:
                call.refuse(f"index {value} is out of range for axis {axis} of size {dim}", field="args")
            lo, hi, st = i, i + 1, 1
            squeeze.append(axis)
        else:
            start, stop, step = value
            st = 1 if step is None else step
            if st < 1:
                call.refuse(f"slice step {step} on axis {axis}", field="args", value=step, supported="positive steps")
            lo, hi, _ = slice(start, stop, st).indices(dim)
            hi = max(hi, lo)
        starts.append(lo)
        stops.append(hi)
        steps.append(st)
    out = call.emit(Slice(starts=tuple(starts), stops=tuple(stops), steps=tuple(steps)), x, last=not squeeze)
    for i, axis in enumerate(sorted(squeeze, reverse=True)):
        out = call.emit(Squeeze(axis=axis), out, last=i == len(squeeze) - 1)
