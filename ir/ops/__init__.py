"""The closed set of IR ops, as one discriminated union keyed by ``kind``.

Adding an op: write its class (attributes + ``infer``, and its traits) in the
module of its family (a new family module is imported below); the class
registers itself by its ``kind``, and ``Op`` and ``OP_CLASSES`` are derived
from that registry. Then give it a reference kernel
(``keydnn.ir.reference``), a layout rule (``keydnn.ir.passes.layout_rules``)
and a backend kernel. Nothing else dispatches on op classes by hand.

Families: ``nn`` (conv2d, dense, windowed pools), ``spatial`` (pad2d, crop2d,
upsample2d, global_max_pool2d), ``norm`` (batch_norm, scale_shift),
``elementwise`` (relu, prelu, softmax, activation), ``shape`` (flatten,
reshape, transpose, expand_dims, squeeze, opaque), ``merge`` (add, sub, mul,
avg, max, min, concat: the multi-operand ops of DAGs), ``recurrent``
(rnn, embedding, sequence_mask, masking, repeat_vector, fold_time, unfold_time:
sequence models; ``conv_recurrent``: conv_lstm). 1-D layers are 2-D ops
between ``expand_dims`` and ``squeeze``; see ``keydnn.ir.ops.shape``.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from keydnn.ir.ops.base import OpBase, ShapeError
from keydnn.ir.ops.elementwise import ACTIVATION_FUNCTIONS, Activation, PRelu, Relu, Softmax
from keydnn.ir.ops.merge import Add, Avg, Concat, Max, Min, Mul, Sub
from keydnn.ir.ops.nn import AvgPool2d, Conv2d, Dense, Epilogue, GlobalAvgPool2d, MaxPool2d
from keydnn.ir.ops.conv_recurrent import ConvLstm
from keydnn.ir.ops.norm import BatchNorm, ScaleShift
from keydnn.ir.ops.recurrent import Embedding, FoldTime, Masking, RepeatVector, Rnn, SequenceMask, UnfoldTime
from keydnn.ir.ops.math import BiasSoftmax, Binary, MatMul, Slice, Unary
from keydnn.ir.ops.reduce import LayerNorm, Reduce
from keydnn.ir.ops.resize import DilatePad2d, Resize2d
from keydnn.ir.ops.shape import ExpandDims, Flatten, Opaque, Reshape, Squeeze, Transpose
from keydnn.ir.ops.spatial import Crop2d, GlobalMaxPool2d, Pad2d, Upsample2d

__all__ = [
    "Op", "OpBase", "ShapeError", "OP_CLASSES", "kinds_with", "Epilogue", "ACTIVATION_FUNCTIONS",
    "Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Dense", "Flatten", "Reshape",
    "Transpose", "Relu", "Softmax", "Activation", "Opaque",
    "BatchNorm", "ScaleShift", "PRelu", "Pad2d", "Crop2d", "Upsample2d", "GlobalMaxPool2d",
    "ExpandDims", "Squeeze", "Add", "Sub", "Mul", "Avg", "Max", "Min", "Concat",
    "Rnn", "Embedding", "SequenceMask", "Masking", "RepeatVector", "FoldTime", "UnfoldTime", "ConvLstm",
    "LayerNorm", "Reduce", "Unary", "Binary", "MatMul", "Slice", "DilatePad2d", "Resize2d",
    "BiasSoftmax",
]

#: kind -> op class, for tables keyed by op kind: every op class of the family modules above, by kind.
OP_CLASSES: dict[str, type[OpBase]] = OpBase.registered()

#: The closed union of ops, discriminated by ``kind`` (what graphs and artifacts hold).
Op = Annotated[Union[tuple(OP_CLASSES.values())], Field(discriminator="kind")]  # type: ignore[valid-type]


def kinds_with(trait: str) -> frozenset[str]:
    """The kinds of the ops whose class sets ``trait`` (an ``OpBase`` trait such as ``"is_view"``)."""
    if not isinstance(getattr(OpBase, trait, None), bool):
        raise AttributeError(f"{trait!r} is not an op trait")
    return frozenset(kind for kind, cls in OP_CLASSES.items() if getattr(cls, trait))
