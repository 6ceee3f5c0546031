"""Fixtures and settings shared by the hostile-input tests (GitHub issue 7).

The in-CI fuzzers are deterministic (``derandomize=True``, no example
database) and bounded: ``FUZZ_SCALE`` (environment ``KEYDNN_FUZZ_SCALE``,
default 1) multiplies every ``max_examples``, so a developer can run the same
tests ten times longer without editing them; ``benchmarks/fuzz_long.py`` is
the long run.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from .harness import KerasCheckWorker
from .inputs import Seeds

#: Multiplier of every fuzz test's example count.
FUZZ_SCALE = float(os.environ.get("KEYDNN_FUZZ_SCALE", "1"))

#: A hang inside native code (libhdf5 spins on some corrupt heaps) cannot be
#: interrupted from Python; after this many seconds in one test the process
#: dumps every thread's stack and exits, so CI fails visibly instead of idling.
HARD_TEST_TIMEOUT = 600


def fuzz_settings(examples: int) -> settings:
    """Reproducible, bounded hypothesis settings for one fuzz test."""
    return settings(
        max_examples=max(1, int(examples * FUZZ_SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.function_scoped_fixture],
    )


@pytest.fixture(scope="session")
def fuzz_seeds() -> Seeds:
    """Every seed file (Keras files of both seed models in three flavors, artifacts), built once."""
    s = Seeds()
    _ = s.keras, s.artifacts
    return s


@pytest.fixture(scope="session")
def keras_worker() -> Iterator[KerasCheckWorker]:
    """A child process judging Keras files, so a libhdf5 spin cannot stall the test run (see harness)."""
    worker = KerasCheckWorker(timeout=5.0)  # an input takes < 0.5 s; a spin costs this long
    yield worker
    worker.close()


@pytest.fixture(autouse=True)
def _native_hang_guard() -> Iterator[None]:
    if sys.platform == "win32":
        yield
        return
    faulthandler.dump_traceback_later(HARD_TEST_TIMEOUT, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
