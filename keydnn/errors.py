"""Exception types shared by every layer of keydnn.

Errors are part of the public contract: a user converting a model needs to
know *which* layer is wrong, *what* field, *which* value, and what would have
been accepted, all at once rather than one round trip per problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

__all__ = [
    "KeydnnError",
    "KerasInteropError",
    "ArtifactError",
    "IRError",
    "PassError",
    "BackendError",
    "Problem",
    "SlowPathWarning",
]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a model, located as precisely as we can."""

    message: str
    layer_index: int | None = None
    layer_name: str | None = None
    layer_class: str | None = None
    field: str | None = None
    value: object = None
    supported: str | None = None

    def __str__(self) -> str:
        where = []
        if self.layer_index is not None:
            where.append(f"layer {self.layer_index}")
        if self.layer_name is not None:
            where.append(repr(self.layer_name))
        if self.layer_class is not None:
            where.append(f"({self.layer_class})")
        text = " ".join(where)
        text = f"{text}: " if text else ""
        text += self.message
        if self.field is not None:
            text += f" [field {self.field}={self.value!r}]"
        if self.supported:
            text += f"; supported: {self.supported}"
        return text


class KeydnnError(Exception):
    """Base class of every error keydnn raises on purpose."""


class KerasInteropError(KeydnnError, ValueError):
    """A Keras model, layer or config keydnn cannot convert faithfully."""

    def __init__(self, message: str, problems: Sequence[Problem] | None = None,
                 notes: Sequence[str] = ()) -> None:
        self.problems: list[Problem] = list(problems or [])
        self.summary = message
        #: Lines printed after the problems (e.g. that the layers after the first problem were not checked).
        self.notes: list[str] = list(notes)
        super().__init__(message)

    def __str__(self) -> str:
        if not self.problems and not self.notes:
            return self.summary
        lines = [self.summary] + [f"  - {p}" for p in self.problems] + [f"  {n}" for n in self.notes]
        return "\n".join(lines)


class ArtifactError(KeydnnError, ValueError):
    """A KeyDNN artifact file that is malformed, truncated, tampered or too new."""


class IRError(KeydnnError, ValueError):
    """An IR graph that violates the IR's invariants (found by the verifier)."""


class PassError(KeydnnError):
    """A pass failed, or left the IR invalid; names the pass and the pipeline position."""


class BackendError(KeydnnError, RuntimeError):
    """A backend cannot run a graph (unsupported op, placeholder node, missing device)."""


class SlowPathWarning(UserWarning):
    """A graph runs on a slower path than it would normally take (e.g. the CPU backend's per-op kernels
    instead of generated code), with the op or reason named; the results are the same."""
