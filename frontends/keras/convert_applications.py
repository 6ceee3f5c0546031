"""Layers that ``keras.applications`` define for their own models, converted by their known math and
matched by module and class name: ConvNeXt's ``LayerScale`` (``x * gamma`` over the last axis) and
InceptionResNetV2's ``CustomScaleLayer`` (``a + b * scale``).

``.keras`` archives record the defining module, which must be Keras's own;
Keras 3 ``.h5`` files record none, so there the class name must come with
exactly the config fields Keras's class writes (a user class that copies both
is indistinguishable in that format).
"""

from __future__ import annotations

import numpy as np

from keydnn.frontends.keras.convert_core import check_dtype_policy
from keydnn.frontends.keras.convert_common import is_int, is_number
from keydnn.frontends.keras.lower import MULTI_INPUT_LAYERS
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter
from keydnn.ir.ops import Binary, ScaleShift

__all__ = ["APPLICATION_LAYERS"]

#: class name -> (Keras's defining module, the config fields its get_config writes besides the base ones).
APPLICATION_LAYERS: dict[str, tuple[str, frozenset[str]]] = {
    "LayerScale": ("keras.src.applications.convnext", frozenset({"init_values", "projection_dim"})),
    "CustomScaleLayer": ("keras.src.applications.inception_resnet_v2", frozenset({"scale"})),
}
_BASE_FIELDS = frozenset({"name", "trainable", "dtype"})
MULTI_INPUT_LAYERS.add("CustomScaleLayer")


def _check_identity(ctx: LayerContext) -> None:
    module, fields = APPLICATION_LAYERS[ctx.layer.class_name]
    if ctx.layer.module is not None and ctx.layer.module != module:
        ctx.refuse(f"{ctx.layer.class_name} from module {ctx.layer.module!r} is not Keras's own ({module})",
                   field="module", value=ctx.layer.module, supported=module)
        raise Unconvertible
    extra = set(ctx.layer.config) - _BASE_FIELDS - fields
    if extra or not fields <= set(ctx.layer.config):
        ctx.refuse(f"{ctx.layer.class_name} config fields {sorted(ctx.layer.config)} are not those of {module}",
                   field="config", supported=f"{sorted(_BASE_FIELDS | fields)}")
        raise Unconvertible


@register_converter("LayerScale", constraints=(
    "keras.applications ConvNeXt's LayerScale (module keras.src.applications.convnext): x * gamma over the last "
    "axis (a per-channel scale_shift)"))
def convert_layer_scale(ctx: LayerContext) -> None:
    _check_identity(ctx)
    check_dtype_policy(ctx)
    ctx.cfg("init_values")  # the initial gamma; the trained one is a weight
    dim = ctx.cfg("projection_dim")
    x = ctx.need_type()
    # Keras's LayerScale adds its weight without a name: "variable", "variable_1", ... in .h5 files
    names = ctx.layer.weight_names
    if len(names) != 1 or not (names[0] == "gamma" or names[0].startswith("variable")):
        ctx.refuse(f"expected one weight (gamma), the layer has {list(names)}")
        raise Unconvertible
    gamma = np.asarray(ctx.weight(names[0]), dtype=np.float64)
    if not (is_int(dim) and gamma.shape == (dim,) and x.shape[-1] == dim):
        ctx.refuse(f"gamma {list(gamma.shape)} / projection_dim {dim!r} do not fit the input {x}", field="projection_dim",
                   value=dim)
        raise Unconvertible
    ctx.emit(ScaleShift(axis=x.rank - 1), ctx.add_constant("gamma", gamma), ctx.add_constant("zero", np.zeros(1)))


@register_converter("CustomScaleLayer", constraints=(
    "keras.applications InceptionResNetV2's CustomScaleLayer (module keras.src.applications.inception_resnet_v2): "
    "inputs [a, b] -> a + b * scale"))
def convert_custom_scale(ctx: LayerContext) -> None:
    _check_identity(ctx)
    check_dtype_policy(ctx)
    scale = ctx.cfg("scale")
    inputs = list(ctx.inputs)  # type: ignore[attr-defined]
    if not is_number(scale) or len(inputs) != 2:
        ctx.refuse(f"needs a number scale and two inputs, got {scale!r} and {len(inputs)}", field="scale",
                   value=scale)
        raise Unconvertible
    a, b = inputs
    ctx.x, ctx.x_type = b, ctx.type_of(b)
    scaled = ctx.emit(Binary(function="mul"), ctx.add_constant("scale", np.array([float(scale)])), suffix="scaled")
    ctx.x, ctx.x_type = a, ctx.type_of(a)
    ctx.emit(Binary(function="add"), scaled)
