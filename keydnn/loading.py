"""``keydnn.load``: an artifact back into a runnable model, without what converting needs.

Split from ``keydnn.api`` so that a process that only loads and runs a model
(a warm start, a worker unpickling one) does not import the pass pipeline
(about 40 ms of a 0.5-1 s warm start); ``keydnn.api`` re-exports both names.
"""

from __future__ import annotations

import os
from typing import Any

from keydnn.device import DeviceLike
from keydnn.errors import ArtifactError
from keydnn.model import Model
from keydnn.runtime import Sequential

__all__ = ["load", "model_from_artifact"]


def load(path: str | os.PathLike, device: DeviceLike = "cpu", *, threads: int | None = None,
         progress: bool | None = None) -> Model:
    """Load a KeyDNN artifact written by ``Model.save`` / ``keydnn convert``; no Keras needed.

    Gives a ``keydnn.Model`` for a model converted from a Functional Keras
    model (or with several inputs or outputs), a ``keydnn.Sequential`` otherwise.
    Weights in a sidecar file are memory-mapped, not copied. ``threads`` and
    ``progress`` are as for ``from_keras``. A Keras file is refused with the
    call that converts it.
    """
    from keydnn.backends.artifact import load_artifact
    from keydnn.model import check_threads

    threads = check_threads(threads)
    text = os.fspath(path)
    if os.path.isdir(text):
        raise ArtifactError(f"{text}: is a directory; expected a KeyDNN artifact (.json)")
    if os.path.isfile(text) and text.lower().endswith((".keras", ".h5", ".hdf5")):
        raise ArtifactError(f"{text}: is a Keras model file, not a KeyDNN artifact; convert it with "
                            f"keydnn.from_keras({text!r}) (CLI: keydnn convert {text} model.json)")
    return model_from_artifact(load_artifact(path), device=device, threads=threads, progress=progress)


def model_from_artifact(art: Any, device: DeviceLike = "cpu", threads: int | None = None,
                        progress: bool | None = None) -> Model:
    """The runtime model of a loaded artifact (``load``, and unpickling a model)."""
    source = art.producer.get("source") if isinstance(art.producer, dict) else None
    model_class = source.get("model_class") if isinstance(source, dict) else None
    graph_like = model_class in ("Functional", "Model") or len(art.graph.inputs) != 1 or len(art.graph.outputs) != 1
    cls = Model if graph_like else Sequential
    return cls(art.graph, device=device, pipeline=art.pipeline, layers=art.layers, source=source,
               verification=art.verification, output_names=[o["name"] for o in art.interface["outputs"]],
               threads=threads, progress=progress)
