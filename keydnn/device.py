"""Devices: where a compiled model runs ("cpu", "cuda", "cuda:N" or a Device)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

__all__ = ["Device", "DeviceLike", "parse_device"]

_PATTERN = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class Device:
    """A target device; ``index`` selects a GPU."""

    kind: str = "cpu"
    index: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("cpu", "cuda"):
            raise ValueError(f"unknown device kind {self.kind!r}; supported: 'cpu', 'cuda', 'cuda:N'")
        if self.index < 0:
            raise ValueError(f"device index must be >= 0, got {self.index}")
        if self.kind == "cpu" and self.index != 0:
            raise ValueError("the cpu device has no index other than 0")

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


DeviceLike = Union[str, Device]


def parse_device(device: DeviceLike) -> Device:
    """Accept "cpu", "cuda", "cuda:N" (case-insensitive) or a Device."""
    if isinstance(device, Device):
        return device
    if not isinstance(device, str):
        raise ValueError(f"device must be a string or keydnn.Device, got {type(device).__name__}")
    m = _PATTERN.match(device.strip().lower())
    if not m:
        raise ValueError(f"unknown device {device!r}; supported: 'cpu', 'cuda', 'cuda:N'")
    return Device(m.group(1), int(m.group(2) or 0))
