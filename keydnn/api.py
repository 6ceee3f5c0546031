"""The two entry points: ``from_keras`` (convert) and ``load`` (read an artifact)."""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np

from keydnn.device import DeviceLike, parse_device
from keydnn.errors import KerasInteropError
from keydnn.ir.passes import DEFAULT_PIPELINE, Pass, PassManager
from keydnn.loading import load, model_from_artifact
from keydnn.model import Model
from keydnn.runtime import Sequential

__all__ = ["from_keras", "load", "normalize_dtype", "model_from_artifact", "check_model_path"]

logger = logging.getLogger(__name__)


def normalize_dtype(dtype: Any) -> str:
    """np.float32 / "float32" / np.dtype -> the IR dtype name; refuse what we cannot compute in."""
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise ValueError(f"unknown dtype {dtype!r}; supported: float32, float64") from exc
    if name not in ("float32", "float64"):
        raise ValueError(f"unsupported dtype {name}; supported: float32, float64")
    return name


def from_keras(
    model_or_path: Any,
    device: DeviceLike = "cpu",
    dtype: Any = np.float32,
    strict: bool = True,
    allow_non_linear_activation: bool = False,
    *,
    passes: str | Sequence[str | Pass] = DEFAULT_PIPELINE,
    print_after: str | Sequence[str] | None = None,
    verify_ir: bool = True,
    isolate_reader: bool | None = None,
    threads: int | None = None,
    progress: bool | None = None,
    **options: Any,
) -> Model:
    """Convert a Keras model (live object, ``.keras`` or ``.h5`` path) into a keydnn model.

    A Sequential model gives a ``keydnn.Sequential``; a Functional model
    (``tf.keras.Model(inputs, outputs)``: branches, several inputs or outputs,
    shared layers, nested models) gives a ``keydnn.Model`` whose inputs are
    named after the Keras input layers. Subclassed models are refused.
    Files are read without importing TensorFlow. ``passes`` is the pipeline to
    run (a spec string such as ``"infer-shapes,eliminate-identity"`` or a list
    of names / Pass instances); ``print_after`` prints the IR after the named
    passes ("all" for every one). Extra ``options`` are passed to passes that
    take them (e.g. ``input_layout="channels_first"`` for canonicalize-layout).
    ``isolate_reader=True`` reads a model file in a child process with a time
    and memory limit, so that a corrupt ``.h5`` on which libhdf5 loops forever
    or crashes becomes a ``KerasInteropError`` instead of hanging or killing
    this process (about half a second per file); ``None`` (the default)
    follows ``KEYDNN_ISOLATE_READER`` (``1`` to isolate), else reads in process.
    ``threads`` caps the threads one call uses (default: ``NUMBA_NUM_THREADS``, else
    the usable CPUs). ``progress=False`` silences the compile message / bar of the
    first call (``None``: bars on a terminal, one line elsewhere; ``KEYDNN_PROGRESS=0``
    silences everything).
    """
    from keydnn.frontends.keras import ConversionOptions, convert
    from keydnn.model import check_threads

    if isinstance(model_or_path, (str, os.PathLike)):
        check_model_path(model_or_path)
    device = parse_device(device)
    threads = check_threads(threads)
    opts = ConversionOptions(dtype=normalize_dtype(dtype), allow_non_linear_activation=allow_non_linear_activation,
                             strict=strict)
    result = convert(model_or_path, opts, isolate=isolate_reader)
    manager = PassManager(_configure(passes, options), verify=verify_ir, print_after=print_after)
    out = manager.run(result.graph)
    for record in out.records:
        logger.debug("pass %s: %.3f ms%s", record.name, record.seconds * 1e3, " (changed)" if record.changed else "")
    cls = Model if result.functional else Sequential
    return cls(out.graph, device=device, pipeline=manager.names, layers=result.layers, source=result.source,
               output_names=result.output_names, threads=threads, progress=progress)


def check_model_path(path: str | os.PathLike) -> None:
    """Refuse what is not a Keras model file before reading it, saying what to do instead (the CLI says
    the same: ``keydnn.cli.common.read_source``)."""
    text = os.fspath(path)
    if not os.path.exists(text):
        raise KerasInteropError(f"model file {text!r} does not exist")
    if os.path.isdir(text):
        if os.path.exists(os.path.join(text, "saved_model.pb")):
            raise KerasInteropError(f"{text!r} is a TensorFlow SavedModel directory, which keydnn does not read; "
                                    "save the model as .keras (model.save('model.keras')) and convert that")
        raise KerasInteropError(f"{text!r} is a directory; expected a .keras or .h5 model file")
    with open(text, "rb") as fh:
        head = fh.read(64).lstrip()
    if head.startswith(b"{"):
        raise KerasInteropError(f"{text!r} is a JSON file (a KeyDNN artifact?), not a Keras model: load an "
                                "artifact with keydnn.load(path)")


def _configure(passes: str | Sequence[str | Pass], options: dict) -> list[Pass]:
    """Instantiate the pipeline, handing each pass the options its constructor accepts."""
    import inspect

    from keydnn.ir.passes import parse_pipeline

    instances = parse_pipeline(passes)
    used: set[str] = set()
    configured: list[Pass] = []
    for p in instances:
        params = inspect.signature(type(p).__init__).parameters
        accepted = {k: v for k, v in options.items() if k in params}
        if accepted:
            p = type(p)(**accepted)
            used.update(accepted)
        configured.append(p)
    unknown = sorted(set(options) - used)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}: no pass in the pipeline takes them")
    return configured
