"""The KeyDNN artifact: versioned JSON holding the IR, its weights and how it was made.

Loading validates everything with pydantic and checksums, and never unpickles,
evaluates or imports anything named in the file.
"""

from __future__ import annotations

from keydnn.backends.artifact.format import FORMAT, FORMAT_VERSION, ArtifactFile, artifact_json_schema
from keydnn.backends.artifact.io import (
    AUTO_SIDECAR_BYTES, LoadedArtifact, artifact_bytes, default_sidecar, interface_of, load_artifact,
    load_artifact_bytes, read_artifact_header, save_artifact, sidecar_path,
)

__all__ = [
    "FORMAT", "FORMAT_VERSION", "ArtifactFile", "artifact_json_schema", "LoadedArtifact",
    "save_artifact", "load_artifact", "read_artifact_header", "sidecar_path", "interface_of",
    "artifact_bytes", "load_artifact_bytes", "AUTO_SIDECAR_BYTES", "default_sidecar",
]
