"""Keras 2's ``TFOpLambda`` / ``SlicingOpLambda`` layers: a TensorFlow function applied to tensors in a
Functional model, recorded by the function's name (``math.multiply``, ``nn.softmax``,
``__operators__.getitem``) and its call's arguments. Each allow-listed function is translated into the
Keras 3 operation that computes the same thing and converted by that operation's converter
(``convert_ops.OPERATIONS``); anything else is refused naming the function. No code is ever executed.

A call entry is ``[tensor_or_"_CONSTANT_VALUE", node, tensor_index_or_value, {kwargs}]``; tensors among the
kwargs are ``[layer, node, index]`` triples; concat / stack list one entry per tensor.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from keydnn.frontends.keras.convert_core import check_dtype_policy
from keydnn.frontends.keras.convert_ops import OPERATIONS, OpCall
from keydnn.frontends.keras.wiring import TF_OP_LAYERS, tf_op_entries
from keydnn.frontends.keras.lower import MULTI_INPUT_LAYERS
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter

__all__ = ["TF_FUNCTIONS"]

MULTI_INPUT_LAYERS.update(TF_OP_LAYERS)

_T = {"class_name": "__keras_tensor__"}  # an argument slot filled by the next input tensor, in order

#: TensorFlow function -> (Keras 3 operation, the second operand's keyword or None, config keyword map).
_BINARY = {
    "math.multiply": "Multiply", "__operators__.mul": "Multiply", "math.add": "Add", "__operators__.add": "Add",
    "math.subtract": "Subtract", "__operators__.sub": "Subtract", "math.truediv": "TrueDivide",
    "math.divide": "TrueDivide", "math.maximum": "Maximum", "math.minimum": "Minimum", "math.pow": "Power",
    "math.greater": "Greater", "math.greater_equal": "GreaterEqual", "math.less": "Less",
    "math.less_equal": "LessEqual", "math.equal": "Equal", "math.not_equal": "NotEqual",
}
_UNARY = {
    "nn.relu": "Relu", "nn.relu6": "Relu6", "math.sigmoid": "Sigmoid", "nn.sigmoid": "Sigmoid",
    "math.tanh": "Tanh", "nn.tanh": "Tanh", "math.sqrt": "Sqrt", "math.abs": "Absolute", "math.square": "Square",
    "math.exp": "Exp", "math.log": "Log", "math.negative": "Negative", "math.rsqrt": "Rsqrt", "nn.silu": "Silu",
    "nn.swish": "Silu", "nn.elu": "Elu", "nn.selu": "Selu", "math.softplus": "Softplus", "nn.softplus": "Softplus",
    "nn.softsign": "Softsign", "math.reciprocal": "Reciprocal", "math.erf": "Erf", "math.floor": "Floor",
    "math.ceil": "Ceil", "math.sign": "Sign",
}
_REDUCE = {"math.reduce_mean": "Mean", "math.reduce_sum": "Sum", "math.reduce_max": "Max",
           "math.reduce_min": "Min"}
TF_FUNCTIONS: tuple[str, ...] = tuple(sorted(
    set(_BINARY) | set(_UNARY) | set(_REDUCE) | {
        "nn.softmax", "reshape", "transpose", "compat.v1.transpose", "expand_dims", "squeeze", "compat.v1.squeeze",
        "concat", "stack", "linalg.matmul", "cast", "clip_by_value", "__operators__.getitem", "nn.leaky_relu",
        "nn.gelu"}))


def _arguments(ctx: LayerContext) -> tuple[list[Any], dict[str, Any]]:
    """(leading arguments as Keras 3 args with tensor slots, keyword arguments with tensor slots)."""
    entries = getattr(ctx, "raw_call", None)
    if not isinstance(entries, list):
        ctx.refuse("has no recorded Keras 2 call", field="inbound_nodes")
        raise Unconvertible
    entries = tf_op_entries(entries)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for entry in entries:
        if entry and entry[0] == "_CONSTANT_VALUE":
            args.append(entry[2])
        else:
            args.append(_T)
    if entries and len(entries[0]) == 4 and isinstance(entries[0][3], dict):
        for key, value in entries[0][3].items():
            is_ref = isinstance(value, list) and len(value) == 3 and isinstance(value[0], str)
            kwargs[key] = _T if is_ref else value
    return args, kwargs


@register_converter("TFOpLambda", constraints=(
    "Keras 2 TensorFlow-function layers: arithmetic and comparisons (math.* and Python operators), relu/relu6/"
    "sigmoid/tanh/softmax/..., sqrt/square/exp/log/abs, reduce_mean/sum/max/min, reshape, transpose, "
    "expand_dims, squeeze, concat, stack, linalg.matmul (transpose_b), cast to float, clip_by_value; others "
    "are refused naming the function"))
def convert_tf_op(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    function = ctx.cfg("function")
    args, kwargs = _arguments(ctx)
    kwargs.pop("name", None)
    config: dict[str, Any] = {"name": ctx.layer.name}
    call_args: list[Any] = list(args)
    if function in _BINARY:
        cls = _BINARY[function]
        if "y" in kwargs:
            call_args.append(kwargs.pop("y"))
    elif function in _UNARY:
        cls = _UNARY[function]
    elif function == "nn.leaky_relu":
        cls, config["negative_slope"] = "LeakyRelu", kwargs.pop("alpha", 0.2)
    elif function == "nn.gelu":
        cls, config["approximate"] = "Gelu", kwargs.pop("approximate", False)
    elif function in _REDUCE:
        cls = _REDUCE[function]
        config.update(axis=kwargs.pop("axis", None), keepdims=bool(kwargs.pop("keepdims", False)))
    elif function == "nn.softmax":
        cls, config["axis"] = "Softmax", kwargs.pop("axis", -1)
    elif function == "reshape":
        cls, config["newshape"] = "Reshape", kwargs.pop("shape", None)
    elif function in ("transpose", "compat.v1.transpose"):
        cls, config["axes"] = "Transpose", kwargs.pop("perm", None)
        if kwargs.pop("conjugate", False):
            ctx.refuse("transpose with conjugate=True", field="conjugate", value=True, supported="False")
            raise Unconvertible
    elif function == "expand_dims":
        cls, config["axis"] = "ExpandDims", kwargs.pop("axis", None)
    elif function in ("squeeze", "compat.v1.squeeze"):
        cls, config["axis"] = "Squeeze", kwargs.pop("axis", None)
    elif function in ("concat", "stack"):
        cls = "Concatenate" if function == "concat" else "Stack"
        config["axis"] = kwargs.pop("axis", 0)
        call_args = [list(args)]
    elif function == "linalg.matmul":
        cls = "Matmul"
        for key in ("transpose_a", "adjoint_a", "adjoint_b", "a_is_sparse", "b_is_sparse"):
            if kwargs.pop(key, False):
                ctx.refuse(f"matmul with {key}=True", field=key, value=True, supported="False")
                raise Unconvertible
        call_args.append(kwargs.pop("b", None))
        if kwargs.pop("transpose_b", False):
            cls = "MatmulTransposeB"
    elif function == "cast":
        cls, config["dtype"] = "Cast", kwargs.pop("dtype", None)
    elif function == "clip_by_value":
        cls = "Clip"
        config.update(x_min=kwargs.pop("clip_value_min", None), x_max=kwargs.pop("clip_value_max", None))
    else:
        ctx.refuse(f"TensorFlow function {function!r} is not supported", field="function", value=function,
                   supported=", ".join(TF_FUNCTIONS))
        raise Unconvertible
    if kwargs:
        key = next(iter(kwargs))
        ctx.refuse(f"unsupported argument {key}={kwargs[key]!r} of {function}", field=key, value=kwargs[key])
        raise Unconvertible
    _run(ctx, cls, config, call_args)


@register_converter("SlicingOpLambda", constraints=(
    "Keras 2 x[...] on a tensor: static slices (positive steps) and integer indices, the batch axis whole"))
def convert_slicing(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    function = ctx.cfg("function")
    if function != "__operators__.getitem":
        ctx.refuse(f"TensorFlow function {function!r} is not supported", field="function", value=function,
                   supported="'__operators__.getitem'")
        raise Unconvertible
    args, kwargs = _arguments(ctx)
    spec = kwargs.pop("slice_spec", None)
    entries = spec if isinstance(spec, list) else [spec]
    key = [{"class_name": "__slice__", "config": e} if isinstance(e, dict) else e for e in entries]
    _run(ctx, "GetItem", {"name": ctx.layer.name}, [args[0] if args else _T, key])


def _run(ctx: LayerContext, cls: str, config: dict, call_args: list[Any]) -> None:
    """Convert as the Keras 3 operation ``cls`` with ``config`` and these call arguments."""
    from keydnn.ir.ops import MatMul

    original = ctx.layer
    ctx.layer = replace(original, config=config, class_name=cls)
    try:
        call = OpCall(ctx, {"args": call_args, "kwargs": {}}, tuple(ctx.inputs))  # type: ignore[attr-defined]
        if cls == "MatmulTransposeB":
            call.emit(MatMul(transpose_b=True), call.operand(call.args[0]), call.operand(call.args[1]))
        else:
            OPERATIONS[cls].fn(call)
        unread = [k for k in config if k not in ctx._used and k != "name"]
        if unread:
            ctx.refuse(f"argument {unread[0]!r} was not read", field=unread[0])
    finally:
        ctx.layer = original
