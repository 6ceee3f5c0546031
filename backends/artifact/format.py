"""The KeyDNN artifact file format, as pydantic models (the schema *is* the code).

Every model forbids unknown fields and uses strict integers, so a renamed,
added or retyped field is reported rather than silently ignored or coerced.
Bounds on tensor sizes live here too, so that a hostile file is rejected
before anything is decoded or allocated.
"""

from __future__ import annotations

from math import prod
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator

from keydnn.ir.graph import Graph
from keydnn.ir.types import DType, Layout

__all__ = [
    "FORMAT", "FORMAT_VERSION", "TENSOR_DTYPES", "MAX_TENSOR_ELEMENTS", "MAX_TOTAL_BYTES", "ALIGNMENT",
    "SourceInfo", "Producer", "InterfaceTensor", "Interface", "LayerRecord", "Base64Tensor",
    "SidecarTensor", "TensorEntry", "SidecarRef", "Verification", "ArtifactFile", "artifact_json_schema",
]

#: The exact value of the top-level ``format`` field.
FORMAT = "keydnn-artifact"
#: The newest format version this keydnn reads and the one it writes.
FORMAT_VERSION = 1
#: Element types a tensor in the file may have; always stored little-endian.
TENSOR_DTYPES: tuple[str, ...] = ("float32", "float64", "int32", "int64")
#: Per-tensor and whole-file bounds, checked before any decoding.
MAX_TENSOR_ELEMENTS = 2**31
MAX_TOTAL_BYTES = 4 * 2**30
#: Byte alignment of every tensor in a sidecar file.
ALIGNMENT = 64

_ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8}
_SHA256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_Count = Annotated[StrictInt, Field(ge=0)]
_Dim = Union[Annotated[StrictInt, Field(ge=0)], Annotated[StrictStr, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]]
_Tolerance = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceInfo(_Strict):
    """Where the graph came from, so an artifact can be traced back to its model file."""

    format: StrictStr
    keras_version: Optional[StrictStr] = None
    path_name: Optional[StrictStr] = None
    model_name: Optional[StrictStr] = None
    model_class: Optional[StrictStr] = None
    #: SHA-256 of the source file's bytes (absent for a live model): which file exactly was converted.
    sha256: Optional[_SHA256] = None
    #: When the conversion ran, ISO 8601 UTC (``SOURCE_DATE_EPOCH`` pins it for reproducible builds).
    converted_at: Optional[Annotated[StrictStr, Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")]] = None


class Producer(_Strict):
    """Versions of the software that wrote the file (for bug reports, not for dispatch)."""

    keydnn: StrictStr
    python: StrictStr
    numpy: StrictStr
    pydantic: StrictStr
    source: Optional[SourceInfo] = None


class InterfaceTensor(_Strict):
    """One external input or output, as the Keras model saw it (batch as ``"N"``)."""

    name: StrictStr
    shape: list[_Dim]
    dtype: DType
    layout: Layout
    #: The graph value behind it when its name is not the Keras name (``dense_1`` shown, ``dense_1.softmax``
    #: computed); absent when they are the same.
    value: Optional[StrictStr] = None


class Interface(_Strict):
    inputs: list[InterfaceTensor]
    outputs: list[InterfaceTensor]


class LayerRecord(_Strict):
    """A Keras layer and the IR nodes lowered from it (for inspection and error messages)."""

    keras_name: StrictStr
    keras_class: StrictStr
    nodes: list[StrictStr]
    #: How many parameters Keras counts for the layer (its weights as saved, BatchNormalization's moving
    #: statistics included), for a summary that matches Keras's; absent in older files.
    params: Optional[_Count] = None


class _TensorBase(_Strict):
    name: Annotated[StrictStr, Field(min_length=1)]
    dtype: Literal["float32", "float64", "int32", "int64"]
    shape: list[_Count]
    sha256: _SHA256

    @model_validator(mode="after")
    def _bounded(self) -> "_TensorBase":
        count = prod(self.shape)
        if count > MAX_TENSOR_ELEMENTS:
            raise ValueError(f"tensor {self.name!r} has {count} elements, more than the limit of 2**31")
        return self

    @property
    def nbytes_expected(self) -> int:
        """Byte length of the tensor: prod(shape) * itemsize."""
        return prod(self.shape) * _ITEMSIZE[self.dtype]


class Base64Tensor(_TensorBase):
    """A tensor stored inline: standard base64 of its little-endian C-order bytes, unwrapped."""

    encoding: Literal["base64"]
    data: StrictStr


class SidecarTensor(_TensorBase):
    """A tensor stored in the sidecar file at a 64-byte aligned offset."""

    encoding: Literal["sidecar"]
    offset: _Count
    nbytes: _Count

    @model_validator(mode="after")
    def _consistent(self) -> "SidecarTensor":
        if self.offset % ALIGNMENT:
            raise ValueError(f"tensor {self.name!r} offset {self.offset} is not {ALIGNMENT}-byte aligned")
        if self.nbytes != self.nbytes_expected:
            raise ValueError(
                f"tensor {self.name!r} declares {self.nbytes} bytes but {self.dtype}{self.shape} "
                f"needs {self.nbytes_expected}"
            )
        return self


TensorEntry = Annotated[Union[Base64Tensor, SidecarTensor], Field(discriminator="encoding")]


class SidecarRef(_Strict):
    """The binary file beside the JSON that holds tensors with ``encoding: sidecar``."""

    file: Annotated[StrictStr, Field(pattern=r"^[^/\\:\x00-\x1f]+$")]
    sha256: _SHA256
    nbytes: _Count

    @field_validator("file")
    @classmethod
    def _bare_name(cls, v: str) -> str:
        if v in (".", ".."):  # the pattern already excludes separators, so no path escapes the folder
            raise ValueError(f"sidecar file must be a plain file name, got {v!r}")
        return v


class Verification(_Strict):
    """Sample inputs and the source framework's outputs for them, recorded at conversion."""

    inputs: list[TensorEntry]
    outputs: list[TensorEntry]
    rtol: _Tolerance
    atol: _Tolerance
    source: StrictStr = "keras"


class ArtifactFile(_Strict):
    """The whole file. Field order is the order written, so output is deterministic."""

    format: Literal["keydnn-artifact"]
    version: Annotated[StrictInt, Field(ge=1, le=FORMAT_VERSION)]
    producer: Producer
    interface: Interface
    pipeline: list[StrictStr]
    layers: list[LayerRecord]
    graph: Graph
    weights: list[TensorEntry]
    sidecar: Optional[SidecarRef] = None
    verification: Optional[Verification] = None

    def tensors(self) -> list[Union[Base64Tensor, SidecarTensor]]:
        """Every tensor entry in the file: weights, then verification inputs and outputs."""
        extra = [] if self.verification is None else self.verification.inputs + self.verification.outputs
        return list(self.weights) + extra

    @model_validator(mode="after")
    def _whole_file(self) -> "ArtifactFile":
        tensors = self.tensors()
        total = sum(t.nbytes_expected for t in tensors)
        if total > MAX_TOTAL_BYTES:
            raise ValueError(f"tensors total {total} bytes, more than the limit of 4 GiB")
        names = [w.name for w in self.weights]
        if len(set(names)) != len(names):
            raise ValueError("weight names are not unique")
        if self.sidecar is None and any(t.encoding == "sidecar" for t in tensors):
            raise ValueError("tensors use encoding 'sidecar' but the file names no sidecar")
        if self.sidecar is not None and self.sidecar.nbytes > MAX_TOTAL_BYTES + ALIGNMENT * len(tensors):
            raise ValueError(f"sidecar of {self.sidecar.nbytes} bytes exceeds the 4 GiB limit")
        return self


def artifact_json_schema() -> dict:
    """JSON Schema of the artifact file, for publishing and for non-Python readers."""
    schema = ArtifactFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"KeyDNN artifact, format version {FORMAT_VERSION}"
    return schema
