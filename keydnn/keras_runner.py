"""Keras's own output for a model, on every CPU TensorFlow runs on.

TensorFlow's CPU kernels for channels_first (NCHW) convolutions and pools
exist only through its oneDNN kernels, which TensorFlow turns on by default
only on some CPUs (those with AVX-512 VNNI and newer). Elsewhere, or with
``TF_ENABLE_ONEDNN_OPTS=0``, calling a channels_first ``Conv2D`` raises
``UnimplementedError: The Conv2D op currently only supports the NHWC tensor
format on the CPU``; and where oneDNN is on, some channels_first ``Conv2D``
layers compute wrongly (see ``tests/test_parity_keras.py``).

XLA compiles a convolution from its dimension numbers and runs either layout
on every CPU, so a model (or a single layer) that has a channels_first layer is
run as ``tf.function(..., jit_compile=True)``; any other model is called
directly, with XLA as the fallback when TensorFlow refuses an op on this CPU.
Every caller that needs "what Keras computes" (``--verify``, the tests, the
examples, the benchmarks) goes through :func:`keras_outputs` /
:func:`keras_call`, so none of them depends on the CPU.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Callable

import numpy as np

from keydnn.errors import KeydnnError

__all__ = ["KerasRunError", "keras_outputs", "keras_call", "has_channels_first", "tf_runs_channels_first"]

logger = logging.getLogger(__name__)

#: Compiled XLA callables, per model or layer object (dropped with it).
_XLA: "weakref.WeakKeyDictionary[Any, Callable[..., Any]]" = weakref.WeakKeyDictionary()
_XLA_BY_ID: dict[int, tuple[Any, Callable[..., Any]]] = {}  # for objects that refuse weak references


class KerasRunError(KeydnnError, RuntimeError):
    """TensorFlow cannot run this Keras model on this CPU, directly or through XLA."""


def _children(layer: Any) -> list[Any]:
    found = list(getattr(layer, "layers", None) or [])
    for attr in ("layer", "forward_layer", "backward_layer", "cell"):
        try:
            inner = getattr(layer, attr, None)
        except Exception:  # a property that cannot be read before the layer is built
            inner = None
        if inner is not None and inner is not layer:
            found.append(inner)
    return found


def has_channels_first(model: Any) -> bool:
    """Whether ``model`` (a model or a layer) holds a layer with ``data_format='channels_first'``.

    Nested models and wrappers (``TimeDistributed``, ``Bidirectional``) are entered.
    """
    seen: set[int] = set()
    stack = [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if getattr(layer, "data_format", None) == "channels_first":
            return True
        stack.extend(_children(layer))
    return False


def _takes_training(fn: Any) -> bool:
    import inspect

    try:
        return "training" in inspect.signature(fn.call).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def _invoke(fn: Any, x: Any) -> Any:
    return fn(x, training=False) if _takes_training(fn) else fn(x)


def _xla(fn: Any) -> Callable[[Any], Any]:
    """``fn`` compiled by XLA (cached per object); runs channels_first ops on every CPU."""
    try:
        compiled = _XLA.get(fn)
    except TypeError:
        entry = _XLA_BY_ID.get(id(fn))
        compiled = entry[1] if entry is not None and entry[0] is fn else None
    if compiled is not None:
        return compiled
    import tensorflow as tf

    training = _takes_training(fn)
    # One trace per input shape, never relaxed to symbolic shapes: with ``reduce_retracing=True`` XLA
    # returned wrong outputs for TimeDistributed(Conv2D) -> LSTM at a second sequence length (TF 2.21).
    compiled = tf.function(lambda x: fn(x, training=False) if training else fn(x), jit_compile=True)
    try:
        _XLA[fn] = compiled
    except TypeError:
        _XLA_BY_ID[id(fn)] = (fn, compiled)
    return compiled


def _is_layout_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is TensorFlow refusing an op on this CPU (NCHW kernels missing), not a model bug."""
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover - only reached after TensorFlow ran
        return False
    return isinstance(exc, (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError))


def _run(fn: Any, x: Any, what: str) -> Any:
    if has_channels_first(fn):
        try:
            return _xla(fn)(x)
        except Exception as exc:  # XLA cannot compile some op: the direct call may still run it
            logger.info("XLA could not run %s (%s: %s); calling it directly", what, type(exc).__name__, exc)
            try:
                return _invoke(fn, x)
            except Exception as direct:
                raise _cannot_run(what, direct, exc) from direct
    try:
        return _invoke(fn, x)
    except Exception as exc:
        if not _is_layout_refusal(exc):
            raise
        logger.info("TensorFlow refused %s on this CPU (%s); running it through XLA", what, type(exc).__name__)
        try:
            return _xla(fn)(x)
        except Exception as xla_exc:
            raise _cannot_run(what, exc, xla_exc) from xla_exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _cannot_run(what: str, direct: BaseException, xla: BaseException) -> KerasRunError:
    return KerasRunError(
        f"TensorFlow cannot run {what} on this CPU, so there is no Keras output to compare with: calling it "
        f"directly failed ({_first_line(direct)}) and so did XLA ({_first_line(xla)}). TensorFlow's CPU kernels "
        "for channels_first layers need its oneDNN kernels (TF_ENABLE_ONEDNN_OPTS=1); the keydnn conversion "
        "itself does not depend on this")


def _flat(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [v for key in value for v in _flat(value[key])]
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flat(item)]
    return [value]


def keras_outputs(model: Any, xs: list[np.ndarray] | tuple[np.ndarray, ...] | np.ndarray) -> list[np.ndarray]:
    """Every output of ``model`` (a Keras 3 or tf_keras model) for inputs ``xs``, as NumPy arrays.

    ``xs`` is one array per model input (or a single array). Raises
    :class:`KerasRunError` where TensorFlow can run the model neither directly
    nor through XLA on this CPU.
    """
    if isinstance(xs, np.ndarray):
        xs = [xs]
    xs = list(xs)
    name = getattr(model, "name", type(model).__name__)
    out = _run(model, xs[0] if len(xs) == 1 else xs, f"Keras model {name!r}")
    return [np.asarray(v) for v in _flat(out)]


def keras_call(layer: Any, x: Any) -> Any:
    """``layer(x)`` at inference (``training=False`` where the layer takes it), on every CPU."""
    name = getattr(layer, "name", type(layer).__name__)
    return _run(layer, x, f"Keras layer {name!r} ({type(layer).__name__})")


def tf_runs_channels_first() -> bool:
    """Whether this TensorFlow runs a channels_first convolution eagerly on this CPU (oneDNN kernels on)."""
    import tensorflow as tf

    try:
        tf.nn.conv2d(tf.zeros((1, 1, 3, 3)), tf.zeros((1, 1, 1, 1)), 1, "VALID", data_format="NCHW")
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
        return False
    return True
