"""``keydnn.Model``: a compiled model you call like the Keras model it came from.

A Functional Keras model converts to a ``Model``: any number of inputs
(named after the Keras input layers) and outputs. ``keydnn.Sequential`` is
the one-input, one-output special case and shares all of this code.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Mapping, Sequence

import numpy as np

from keydnn.device import Device, DeviceLike, parse_device
from keydnn.errors import BackendError
from keydnn.ir.graph import Graph
from keydnn.modules import Module, module_for

__all__ = ["Model"]

logger = logging.getLogger(__name__)


class Model:
    """A converted model: callable on arrays in the Keras model's own layout.

    Call it with one array per input, positionally (``model(x1, x2)``), as a
    list (``model([x1, x2])``), as a dict keyed by input name
    (``model({"image": x1, "meta": x2})``) or as keywords
    (``model(image=x1, meta=x2)``). It returns one array for a one-output
    model and a list of arrays (in the Keras model's output order) otherwise.
    The graph is compiled for its device lazily, on the first call, so that
    inspecting or re-saving a model never pays for compilation.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        device: DeviceLike = "cpu",
        pipeline: Sequence[str] = (),
        layers: Sequence[dict] = (),
        source: dict | None = None,
        verification: dict | None = None,
        output_names: Sequence[str] | None = None,
        threads: int | None = None,
        progress: bool | None = None,
    ) -> None:
        self.graph = graph
        self.device: Device = parse_device(device)
        self.pipeline = list(pipeline)
        self.keras_layers = [dict(layer) for layer in layers]
        self.source = dict(source or {})
        self.verification = verification
        names = list(output_names or ())
        self._output_names = names if len(names) == len(graph.outputs) and len(set(names)) == len(names) else None
        #: Threads one call may use (None: ``NUMBA_NUM_THREADS``, else the usable CPUs; at most 64).
        self.threads = check_threads(threads)
        #: Progress on compiling and on batched ``predict`` (None: on a terminal, unless KEYDNN_PROGRESS=0).
        self.progress = progress
        self._executable: Any = None
        self._lock = threading.Lock()
        self._fast = self._fast_signature()
        if self.device.kind != "cpu":
            self._compile()  # surface device errors (no GPU, bad index) at load time

    # -- inspection -------------------------------------------------------------
    @property
    def layers(self) -> list[Module]:
        """The KeyDNN modules in execution order."""
        return [module_for(node, self.graph) for node in self.graph.nodes]

    @property
    def input_names(self) -> list[str]:
        """Input names, in call order (the Keras input layer names for Functional models)."""
        return [v.name for v in self.graph.inputs]

    @property
    def output_names(self) -> list[str]:
        """Output names, in order: Keras's (its output layers' names, ``dense_1``), not the IR values'."""
        return list(self._output_names or self.graph.outputs)

    @property
    def input_types(self):
        return tuple(v.type for v in self.graph.inputs)

    @property
    def output_types(self):
        return self.graph.output_types()

    @property
    def dtype(self) -> np.dtype:
        """The floating-point type the model computes in (its outputs'; token-id inputs are integers)."""
        for value in [*self.graph.outputs, *self.graph.inputs]:
            if value.type is not None and value.type.np_dtype.kind == "f":
                return value.type.np_dtype
        return self.graph.inputs[0].type.np_dtype  # type: ignore[union-attr]

    def __repr__(self) -> str:
        def side(names: Sequence[str], types: Sequence[Any]) -> str:
            if len(names) == 1:
                return str(types[0])
            return ", ".join(f"{n}: {t}" for n, t in zip(names, types))

        ins = side(self.input_names, self.input_types)
        outs = side(self.output_names, self.output_types)
        return f"<keydnn.{type(self).__name__} {self.graph.name!r} ({ins}) -> ({outs}) on {self.device}>"

    # -- running ----------------------------------------------------------------
    def _compile(self) -> Any:
        if self._executable is None:
            with self._lock:
                if self._executable is None:
                    self._check_runnable()
                    from keydnn import progress
                    from keydnn.backends import compile_for

                    if self.device.kind == "cpu":
                        progress.install_compile_reporter()
                    with progress.setting(self.progress):
                        executable = compile_for(self.graph, self.device)
                    if self.threads is not None:
                        set_threads = getattr(executable, "set_threads", None)
                        if set_threads is None:
                            raise BackendError(f"threads={self.threads}: the {self.device} backend does not take a "
                                               "thread count")
                        set_threads(self.threads)
                    self._executable = executable
        return self._executable

    def _check_runnable(self) -> None:
        """Refuse a graph with placeholders (a non-strict conversion), naming its unsupported layers."""
        opaque = self.graph.find_opaque()
        if opaque:
            raise BackendError(_placeholder_message(opaque))

    def _label(self, index: int) -> str:
        return f"input {index}" if len(self.graph.inputs) == 1 else f"input {index} ({self.graph.inputs[index].name!r})"

    def _check_input(self, x: Any, index: int, convert: bool = True) -> Any:
        expected = self.graph.inputs[index].type
        assert expected is not None
        label = self._label(index)
        if self.device.kind == "cuda" and _on_device(x):
            return x
        if not isinstance(x, np.ndarray):
            if isinstance(x, (list, tuple)) or np.isscalar(x):
                x = np.asarray(x)
            else:
                raise ValueError(f"{label} must be a NumPy array of shape {_shape_text(expected.shape)}, "
                                 f"got {type(x).__name__}")
        if expected.np_dtype.kind == "i":  # token ids
            if x.dtype.kind not in "iu":
                raise ValueError(f"{label} has dtype {x.dtype}; expected an integer array of token ids "
                                 f"({expected.dtype}), shape {_shape_text(expected.shape)}")
            info = np.iinfo(expected.np_dtype)
            if x.size and (x.min() < info.min or x.max() > info.max):
                raise ValueError(f"{label} has values outside the {expected.dtype} range")
        else:  # integer token ids into an Embedding of a float-typed input are cast like any integer input
            _check_dtype(x, expected, label)
        if not expected.matches(x.shape):
            raise ValueError(f"{label} has shape {tuple(x.shape)}; expected {_shape_text(expected.shape)} "
                             f"({expected.layout if expected.layout != 'ANY' else 'Keras layout'}, batch first)")
        if x.shape[0] == 0:
            raise ValueError(f"{label}: batch is empty")
        return np.ascontiguousarray(x, dtype=expected.np_dtype) if convert else x

    def _gather(self, args: tuple, named: Mapping[str, Any]) -> list[Any]:
        """One value per graph input, from positional, list, dict or keyword arguments."""
        names = self.input_names
        if named:
            if args:
                raise ValueError("pass the inputs either positionally or by name, not both")
            args = (dict(named),)
        if len(args) == 1 and isinstance(args[0], Mapping):
            given = args[0]
            unknown = sorted(set(given) - set(names))
            missing = [n for n in names if n not in given]
            if unknown or missing:
                raise ValueError(f"model inputs are {names}; missing {missing}, unknown {unknown}")
            return [given[n] for n in names]
        if len(args) == 1 and isinstance(args[0], (list, tuple)) and _is_array_list(args[0], len(names)):
            args = tuple(args[0])
        if len(args) != len(names):
            raise ValueError(f"model takes {len(names)} input(s) {names}, got {len(args)}")
        return list(args)

    def arrange_inputs(self, inputs: Any) -> list[Any]:
        """Inputs given as one array, a list in input order, or a dict by input name -> a list in input order."""
        return self._gather(tuple(inputs) if isinstance(inputs, list) else (inputs,), {})

    def _fast_signature(self) -> Any:
        """(dtype, per-sample shape) of the one input of a CPU model with static sample dims, else None:
        calls with exactly such an array skip the general argument handling (microseconds at batch 1)."""
        if self.device.kind != "cpu" or len(self.graph.inputs) != 1 or self.graph.inputs[0].type is None:
            return None
        t = self.graph.inputs[0].type
        sample = tuple(t.shape[1:])
        if not all(isinstance(d, int) for d in sample) or t.shape[0] != "N":
            return None
        return t.np_dtype, sample

    def __call__(self, *inputs: Any, **named: Any) -> Any:
        fast = self._fast
        if fast is not None and len(inputs) == 1 and not named:
            x = inputs[0]
            if (type(x) is np.ndarray and x.dtype == fast[0] and x.shape[1:] == fast[1] and x.shape[0] > 0
                    and x.flags.c_contiguous):
                outputs = (self._executable or self._compile())(x)
                return outputs[0] if len(outputs) == 1 else list(outputs)
        values = self._gather(inputs, named)
        arrays = [self._check_input(x, i) for i, x in enumerate(values)]
        if len(arrays) > 1:
            batches = {a.shape[0] for a in arrays if hasattr(a, "shape")}
            if len(batches) > 1:
                raise ValueError(f"inputs have different batch sizes {sorted(batches)}")
        outputs = self._compile()(*arrays)
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def predict(self, *inputs: Any, batch_size: int | None = None, progress: bool | None = None,
                **named: Any) -> Any:
        """What ``model(...)`` returns, computed ``batch_size`` samples at a time.

        Takes the inputs as a call does (arrays, a list, a dict by input name, keywords), of any size:
        a memory-mapped ``.npy`` (``np.load(path, mmap_mode="r")``) is read one batch at a time, and
        only the outputs are held whole. ``batch_size=None`` runs everything in one call (as
        ``model(x)``). Integer inputs (uint8 images) are cast to the model's float type, batch by batch.
        ``progress`` shows a bar on a terminal for long runs (None: the ``KEYDNN_PROGRESS`` /
        terminal default). Results equal one call on the whole input: every sample is computed alone.
        """
        if batch_size is None:
            return self(*inputs, **named)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        values = [self._check_input(x, i, convert=False) for i, x in enumerate(self._gather(inputs, named))]
        total = max(int(np.shape(v)[0]) for v in values)
        if any(int(np.shape(v)[0]) not in (1, total) for v in values):
            raise ValueError(f"inputs have different batch sizes {sorted({int(np.shape(v)[0]) for v in values})}")
        from keydnn.progress import bar

        outputs: list[np.ndarray] | None = None
        with bar(total=total, desc="keydnn: predict", unit="sample", enabled=progress if progress is not None
                 else self.progress) as shown:
            for lo in range(0, total, int(batch_size)):
                hi = min(total, lo + int(batch_size))
                chunk = [v if np.shape(v)[0] == 1 and total > 1 else v[lo:hi] for v in values]
                result = self(*chunk)
                parts = result if isinstance(result, list) else [result]
                if outputs is None:
                    outputs = [np.empty((total,) + p.shape[1:], dtype=p.dtype) for p in parts]
                for out, part in zip(outputs, parts):
                    out[lo:hi] = part
                shown.update(hi - lo)
        assert outputs is not None
        return outputs[0] if len(outputs) == 1 else outputs

    def summary(self) -> str:
        """A Keras-style table: each Keras layer, the output shape keydnn computes for it, its parameters
        (as keydnn stores them: a BatchNormalization folded into its convolution has none left), total.
        Returned as text that also shows itself as the table in a REPL (``model.summary()``)."""
        from keydnn.introspect import summary_text

        return summary_text(self)

    def profile(self, batch: int = 1, repeat: int = 20) -> list[dict]:
        """Per-stage time of one call at ``batch`` samples, from the generated code's own cycle counters
        (``KEYDNN_CPU_PROFILE``): rows of stage, time in ms, share of the call. CPU devices only."""
        from keydnn.introspect import profile_rows

        return profile_rows(self, batch=batch, repeat=repeat)

    # -- pickling ---------------------------------------------------------------
    def __reduce__(self) -> tuple:
        """A model pickles as its artifact (JSON bytes, weights inline, checked on load like a file): a
        process pool, Dask or Ray ships it to workers, and each worker loads the compiled code from the
        disk cache (the generated source is the cache key) instead of compiling again."""
        from keydnn.backends.artifact import artifact_bytes

        data, _ = artifact_bytes(self.graph, pipeline=self.pipeline, layers=self._layer_records(),
                                 source=self.source or None, verification=self.verification,
                                 output_names=self.output_names)
        return (_unpickle, (data, str(self.device), self.threads, self.progress))

    # -- saving -----------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, sidecar: bool | None = None) -> str:
        """Write the KeyDNN artifact (atomically); returns the path written.

        ``sidecar=True`` puts the weights into ``<stem>.weights.bin`` beside the JSON (memory-mapped on load),
        ``False`` inline as base64; ``None`` (the default) chooses the sidecar for weights of 8 MiB or more
        (``AUTO_SIDECAR_BYTES``), where decoding base64 would dominate loading the model.
        """
        from keydnn.backends.artifact import default_sidecar, save_artifact

        if sidecar is None:
            sidecar = default_sidecar(self.graph)

        return str(save_artifact(path, self.graph, pipeline=self.pipeline, layers=self._layer_records(),
                                 source=self.source or None, verification=self.verification, sidecar=sidecar,
                                 output_names=self.output_names))

    def _layer_records(self) -> list[dict]:
        layers = []
        for layer in self.keras_layers:
            nodes = [n.name for n in self.graph.nodes if n.source == layer["keras_name"]]
            layers.append({**layer, "nodes": nodes})
        return layers


#: The native worker pool's limit (``cpu_pool.c``: 63 workers and the calling thread).
MAX_THREADS = 64


def check_threads(threads: Any) -> int | None:
    """``threads`` as a thread count, or a ValueError naming what is accepted."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an integer from 1 to {MAX_THREADS} (or None for the default: "
                         f"NUMBA_NUM_THREADS, else the usable CPUs), got {threads!r}")
    return int(threads)


def _unpickle(data: bytes, device: str, threads: int | None, progress: bool | None) -> "Model":
    from keydnn.loading import model_from_artifact
    from keydnn.backends.artifact import load_artifact_bytes

    return model_from_artifact(load_artifact_bytes(data, "<pickled keydnn model>"), device=device, threads=threads,
                               progress=progress)


#: NumPy dtype kinds a float-typed input accepts and casts to the model's dtype, as Keras casts them to its
#: input layer's dtype: floats of any width, signed and unsigned integers (uint8 images), booleans.
CASTABLE_KINDS = "fiub"


def _check_dtype(x: np.ndarray, expected: Any, label: str) -> None:
    """Keras's input dtype policy, for float-typed inputs: what converts to the model's float type is cast
    (uint8 images, int64 labels-as-features, float64, float16); what does not (complex numbers, strings,
    objects) is refused, naming the expected dtype. Integer-typed inputs (token ids) are left to the
    caller's own checks."""
    if not np.dtype(expected.np_dtype).kind == "f":
        return
    if x.dtype.kind not in CASTABLE_KINDS:
        raise ValueError(f"{label} has dtype {x.dtype}, which cannot be cast to the model's {expected.dtype}; "
                         f"expected a real-valued array (floating, integer, unsigned or bool) of shape "
                         f"{_shape_text(expected.shape)}")


def _placeholder_message(opaque: Sequence[Any]) -> str:
    """Why a non-strict conversion cannot run: its unsupported layers, by name; the layers only skipped
    after them (probably supported) are counted, not blamed."""
    from keydnn.frontends.keras.lower import NOT_CHECKED

    refused = [n for n in opaque if n.op.reason != NOT_CHECKED]
    skipped = len(opaque) - len(refused)
    names = ", ".join(f"{n.name} ({n.op.keras_class})" for n in refused)
    text = (f"this model cannot run: it was converted with strict=False, and these layers are placeholders for "
            f"what keydnn could not convert: {names}")
    if skipped:
        text += f" ({skipped} later layer(s) were not checked because of them)"
    return text


def _is_array_list(value: Sequence[Any], n_inputs: int) -> bool:
    """Whether a list argument holds one array per input (rather than being one input's data as nested lists)."""
    if n_inputs > 1:
        return True
    return len(value) == 1 and (isinstance(value[0], np.ndarray) or _on_device(value[0]))


def _on_device(x: Any) -> bool:
    """A GPU array (CuPy, PyTorch, numba; the simulator's arrays say so with ``__cuda_ndarray__``)."""
    return hasattr(x, "__cuda_array_interface__") or bool(getattr(x, "__cuda_ndarray__", False))


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("batch" if isinstance(d, str) and d == "N" else str(d) for d in shape) + ")"
