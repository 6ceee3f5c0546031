"""Dot and EinsumDense: products along named axes, lowered to ``matmul``/``dense`` with the transposes and
reshapes the passes see (only the equations Keras layers use; the rest is refused by name)."""

from __future__ import annotations

import numpy as np

from keydnn.frontends.keras.convert_attention import node
from keydnn.frontends.keras.convert_core import check_dtype_policy
from keydnn.frontends.keras.convert_common import is_int
from keydnn.frontends.keras.registry import (
    LayerContext,
    Unconvertible,
    register_converter,
)
from keydnn.ir.ops import (
    Binary,
    Dense,
    LayerNorm,
    MatMul,
    Reduce,
    Reshape,
    Transpose,
)


@register_converter("Dot", constraints=(
    "two inputs of rank 2 or 3, axes an int or a pair (not the batch axis), normalize (L2 along the axes first)"))
def convert_dot(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    inputs = list(ctx.inputs)  # type: ignore[attr-defined]
    if len(inputs) != 2:
        ctx.refuse(f"takes two tensors, got {len(inputs)}", field="inputs")
        raise Unconvertible
    types = [ctx.type_of(i) for i in inputs]
    if any(t is None for t in types):
        ctx._input_unknown = True
        raise Unconvertible
    axes_cfg = ctx.cfg("axes")
    normalize = ctx.check_in("normalize", (False, True), False)
    axes = [axes_cfg, axes_cfg] if is_int(axes_cfg) else axes_cfg
    ranks = [t.rank for t in types]
    if not (isinstance(axes, list) and len(axes) == 2 and all(is_int(a) for a in axes)
            and all(r in (2, 3) for r in ranks) and all(-r <= a < r and a % r for a, r in zip(axes, ranks))):
        ctx.refuse(f"unsupported axes {axes_cfg!r} for inputs of rank {ranks}", field="axes", value=axes_cfg,
                   supported="an int or a pair of non-batch axes; inputs of rank 2 or 3")
        raise Unconvertible
    a, b = (int(ax) % r for ax, r in zip(axes, ranks))
    x, y = inputs
    if normalize:
        one, zero = ctx.add_constant("ones", np.ones(1)), ctx.add_constant("zeros", np.zeros(1))
        unit = LayerNorm(axes=(a,), epsilon=1e-24 if ctx.options.keras_major >= 3 else 1e-12, center=False,
                         statistic="sum_square", eps_mode="max")
        x = node(ctx, unit, x, one, zero, suffix="x_unit")
        unit = unit.model_copy(update={"axes": (b,)})
        y = node(ctx, unit, y, one, zero, suffix="y_unit")
    if ranks == [2, 2]:  # (B, n) . (B, n) -> (B, 1)
        prod = node(ctx, Binary(function="mul"), x, y, suffix="products")
        node(ctx, Reduce(mode="sum", axes=(1,), keepdims=True), prod, suffix=None)
        return
    if 2 in ranks:
        ctx.refuse(f"inputs of ranks {ranks}: keydnn supports two rank-2 or two rank-3 inputs", field="inputs")
        raise Unconvertible
    # rank 3: batched matmul with the contracted axes innermost
    if a == 1:
        x = node(ctx, Transpose(perm=(0, 2, 1)), x, suffix="x_t")
    if b == 2:
        node(ctx, MatMul(transpose_b=True), x, y, suffix=None)
    else:
        node(ctx, MatMul(), x, y, suffix=None)



def _einsum_parts(equation: object) -> tuple[str, str, str] | None:
    """(x, w, y) letters of an ``x,w->y`` equation, or None for anything else (ellipses, repeats)."""
    if not isinstance(equation, str) or "->" not in equation or "," not in equation or "." in equation:
        return None
    lhs, y = equation.replace(" ", "").split("->")
    parts = lhs.split(",")
    if len(parts) != 2:
        return None
    x, w = parts
    if any(len(set(s)) != len(s) or not s.isalpha() for s in (x, w, y)):
        return None
    return x, w, y


@register_converter("EinsumDense", constraints=(
    "equations x,w->y where w = (contracted trailing axes of x) + (new axes) and y = (kept leading axes of x) + "
    "(new axes), as Keras layers use them ('ab,bc->ac', 'abc,cd->abd', 'abc,cde->abde', 'abcd,cde->abe'); "
    "bias_axes among the new axes; fused activation 'linear' (others with allow_non_linear_activation); "
    "lowered to reshape + dense + reshape"))
def convert_einsum_dense(ctx: LayerContext) -> None:
    from keydnn.frontends.keras.activations import emit_fused_activation

    check_dtype_policy(ctx)
    equation = ctx.cfg("equation")
    bias_axes = ctx.cfg("bias_axes")
    ctx.cfg("activation")  # read again (and checked) by emit_fused_activation
    ctx.ignore("output_shape")  # implied by the equation and the kernel
    for key in ("quantization_config", "lora_rank", "lora_alpha"):
        value = ctx.cfg(key)
        if value not in (None, 0):
            ctx.refuse(f"unsupported {key} {value!r}", field=key, value=value, supported="None")
    x = ctx.need_type()
    parts = _einsum_parts(equation)
    ok = parts is not None
    if ok:
        xs, ws, ys = parts  # type: ignore[misc]
        contracted = "".join(c for c in xs if c not in ys)
        new = "".join(c for c in ws if c not in xs)
        kept = xs[: len(xs) - len(contracted)]
        ok = (len(xs) == x.rank and xs.endswith(contracted) and bool(contracted) and ws == contracted + new
              and ys == kept + new and len(kept) >= 1)
    if not ok:
        ctx.refuse(f"unsupported equation {equation!r}", field="equation", value=equation,
                   supported="x,w->y with w = contracted trailing axes of x + new axes, y = kept axes + new axes")
        raise Unconvertible
    kernel = np.asarray(ctx.weight("kernel"), dtype=np.float64)
    k_in = int(np.prod(kernel.shape[: len(contracted)]))
    out_dims = tuple(int(d) for d in kernel.shape[len(contracted):])
    width = int(np.prod(out_dims))
    if not all(isinstance(d, int) for d in x.shape[len(kept):]) or int(np.prod(x.shape[len(kept):])) != k_in:
        ctx.refuse(f"kernel {list(kernel.shape)} does not fit the input {x} under {equation!r}")
        raise Unconvertible
    operands = [ctx.add_constant("kernel", kernel.reshape(k_in, width))]
    if bias_axes:
        if not (isinstance(bias_axes, str) and all(c in new for c in bias_axes)):
            ctx.refuse(f"unsupported bias_axes {bias_axes!r}", field="bias_axes", value=bias_axes,
                       supported=f"letters among the new axes {new!r}")
            raise Unconvertible
        first = min(ys.index(c) for c in bias_axes)
        tail = ys[first:]
        bias = np.asarray(ctx.weight("bias"), dtype=np.float64)
        shape = [out_dims[new.index(c)] if c in bias_axes else 1 for c in tail]
        full = np.broadcast_to(bias.reshape(shape), out_dims[len(out_dims) - len(tail):])
        operands.append(ctx.add_constant("bias", np.broadcast_to(full, out_dims).reshape(width)))
    if len(contracted) > 1:
        ctx.emit(Reshape(shape=tuple(x.shape[1: len(kept)]) + (k_in,)), suffix="flat_in")
    last_reshape = len(out_dims) != 1
    ctx.emit(Dense(), *operands, suffix="dense" if last_reshape else None)
    if last_reshape:
        ctx.emit(Reshape(shape=tuple(x.shape[1: len(kept)]) + out_dims))
    emit_fused_activation(ctx)
