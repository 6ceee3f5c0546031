"""One check for every pass test: verify, golden text, numerics, idempotence, input untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from keydnn.ir import Graph, verify
from keydnn.ir.passes import PassManager

from .builders import assert_same_numerics
from .golden import assert_golden

__all__ = ["check_pass", "HERE"]

HERE = Path(__file__).resolve().parent


def check_pass(before: Graph, passes: str, golden: Path | None, *, feed: Callable[[str, np.ndarray], np.ndarray]
               | None = None, seed: int = 0) -> Graph:
    """Run ``passes`` on ``before`` and check everything a pass promises; return the result.

    The pass manager verifies the IR after every pass; the result must also
    be fully typed, match its golden text, compute what ``before`` computes on
    random inputs, be left unchanged by a second run of the same passes, and
    ``before`` must not have been mutated.
    """
    text_before = str(before)
    after = PassManager(passes).run(before).graph
    verify(after, require_types=True)
    if golden is not None:
        assert_golden(str(after), golden)
    assert_same_numerics(before, after, feed=feed, seed=seed)
    again = PassManager(passes).run(after)
    changed = [r.name for r in again.records if r.changed]
    assert not changed, f"second run of {passes!r} changed the graph in {changed}:\n{again.graph}"
    assert again.graph == after
    assert str(before) == text_before, "the pass mutated its input graph"
    return after
