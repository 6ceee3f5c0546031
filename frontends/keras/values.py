"""Type checks for config values, which come from an untrusted file.

A model config is JSON written by a stranger: where Keras writes a number
there may be a list, a dict, an integer with a hundred digits, NaN. Every
converter checks values with these predicates before it computes with them,
and they never raise, whatever the value: NumPy's ``isfinite`` raises
``TypeError`` on an integer beyond 64 bits, ``sorted`` on a list mixing
numbers and lists, ``in`` on a dict for an unhashable key; each of those let
a ``TypeError`` escape a converter before (issue 7).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

__all__ = ["is_int", "finite_float", "is_number", "is_int_list", "is_one_of"]


def is_int(value: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def finite_float(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` when it is not a real number that fits one.

    Bools are not numbers here; an integer too large for a float (``10**400``) is refused
    rather than raising ``OverflowError``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError):
        return None
    return number if math.isfinite(number) else None


def is_number(value: Any) -> bool:
    """A real number that is finite as a float."""
    return finite_float(value) is not None


def is_int_list(value: Any) -> bool:
    """A list of integers (so it can be sorted, compared and converted without surprises)."""
    return isinstance(value, list) and all(is_int(v) for v in value)


def is_one_of(value: Any, allowed: Iterable[Any]) -> bool:
    """``value in allowed`` by equality, safe for unhashable values (a list where a string belongs).

    Bools only match bools and strings only strings, so ``1`` is not ``True`` and ``"1"`` is not ``1``.
    """
    for candidate in allowed:
        if isinstance(candidate, bool) or isinstance(value, bool):
            if isinstance(candidate, bool) and isinstance(value, bool) and candidate is value:
                return True
            continue
        if candidate is None or value is None:
            if candidate is value:
                return True
            continue
        if type(candidate) is str or type(value) is str:
            if isinstance(candidate, str) and isinstance(value, str) and candidate == value:
                return True
            continue
        try:
            if bool(candidate == value):
                return True
        except Exception:  # noqa: BLE001 -- an exotic value that cannot even be compared is not allowed
            continue
    return False
