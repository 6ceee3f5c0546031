"""Weight naming: the names converters look weights up by, whatever format stored them.

Whole-model ``.h5`` files and live models name each weight by a path
(``"sequential/conv2d/kernel:0"``); ``.keras`` archives store them by
position only, so the names of known layer classes come from
``positional_layout``, in Keras 3's variable creation order.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

__all__ = ["canonical_weight_name", "expected_count", "positional_layout", "short_weight_name", "weight_names_for"]


#: Keras 2 weight names that Keras 3 calls differently; reported under the
#: Keras 3 name so converters need one lookup.
_WEIGHT_ALIASES: dict[tuple[str, str], str] = {
    ("DepthwiseConv2D", "depthwise_kernel"): "kernel",
    ("DepthwiseConv1D", "depthwise_kernel"): "kernel",
}

_KERNEL_BIAS = frozenset(
    {
        "Dense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
        "Conv2DTranspose", "Conv3DTranspose", "DepthwiseConv1D",
        "DepthwiseConv2D",
    }
)  # fmt: skip
_SEPARABLE = frozenset({"SeparableConv1D", "SeparableConv2D"})
_RNN = frozenset({"LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"})


def canonical_weight_name(class_name: str, name: str) -> str:
    """The Keras 3 name of a weight Keras 2 names differently (``depthwise_kernel`` -> ``kernel``)."""
    return _WEIGHT_ALIASES.get((class_name, name), name)


def short_weight_name(full: str) -> str:
    """``"sequential/conv2d/kernel"`` / ``"conv2d/kernel:0"`` -> ``"kernel"``."""
    last = full.rstrip("/").split("/")[-1]
    return re.sub(r":\d+$", "", last)


def weight_names_for(layer_name: str, full_names: list[str]) -> list[str]:
    """Short names, or layer-relative paths where short names would collide.

    Wrappers and nested models (``Bidirectional``, a Sequential used as a
    layer) own several ``kernel``s; their names then keep the path below the
    layer (``"forward_lstm/lstm_cell/kernel"``) so every name stays unique.
    """
    shorts = [short_weight_name(f) for f in full_names]
    counts = Counter(shorts)
    out = []
    for full, short in zip(full_names, shorts, strict=True):
        if counts[short] > 1:
            parts = re.sub(r":\d+$", "", full).split("/")
            head = parts[:-1]
            if layer_name in head:  # drop the model/layer scope above the weight
                parts = parts[len(head) - head[::-1].index(layer_name) :]
            short = "/".join(parts)
        out.append(short)
    return out


def positional_layout(class_name: str, config: Mapping[str, Any]) -> dict[str, list[str]] | None:
    """Known weight names by relative h5 sub-path ("" = the layer's own vars).

    ``None`` means the class is unknown: positional vars get ``var<i>`` names.
    The names follow Keras 3's variable creation order, which is the order
    ``save_own_variables`` writes them and ``get_weights()`` returns them.
    """
    use_bias = config.get("use_bias", True) is not False
    if class_name in _KERNEL_BIAS:
        return {"": ["kernel"] + (["bias"] if use_bias else [])}
    if class_name in _SEPARABLE:
        return {"": ["depthwise_kernel", "pointwise_kernel"] + (["bias"] if use_bias else [])}
    if class_name == "BatchNormalization":
        names = []
        if config.get("scale", True) is not False:
            names.append("gamma")
        if config.get("center", True) is not False:
            names.append("beta")
        names += ["moving_mean", "moving_variance"]
        if config.get("renorm"):
            names += ["moving_stddev", "renorm_mean", "renorm_stddev"]
        return {"": names}
    if class_name == "LayerNormalization":
        rms = bool(config.get("rms_scaling"))
        names = []
        if config.get("scale", True) is not False or rms:
            names.append("gamma")
        if config.get("center", True) is not False and not rms:
            names.append("beta")
        return {"": names}
    if class_name == "GroupNormalization":
        return {"": (["gamma"] if config.get("scale", True) is not False else [])
                + (["beta"] if config.get("center", True) is not False else [])}
    if class_name == "LayerScale":
        return {"": ["gamma"]}
    if class_name == "EinsumDense":
        return {"": ["kernel"] + (["bias"] if config.get("bias_axes") else [])}
    if class_name == "Attention":
        return {"": (["scale"] if config.get("use_scale") else [])
                + (["concat_score_weight"] if config.get("score_mode") == "concat" else [])}
    if class_name == "AdditiveAttention":
        return {"": ["scale"] if config.get("use_scale", True) is not False else []}
    if class_name == "RMSNormalization":
        return {"": ["scale"]}
    if class_name == "UnitNormalization":
        return {"": []}
    if class_name == "PReLU":
        return {"": ["alpha"]}
    if class_name == "Normalization":
        if config.get("mean") is not None:
            return {"": []}  # mean/variance are constants in the config
        return {"": ["mean", "variance", "count"]}
    if class_name == "Embedding":
        return {"": ["embeddings"]}
    if class_name in _RNN:
        return {"": [], "cell": ["kernel", "recurrent_kernel"] + (["bias"] if use_bias else [])}
    return None


def expected_count(class_name: str, config: Mapping[str, Any]) -> int | None:
    """How many weights a layer of a known class must store (None: unknown class)."""
    layout = positional_layout(class_name, config)
    return None if layout is None else sum(len(v) for v in layout.values())
