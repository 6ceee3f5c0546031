"""eliminate-identity: the new ops' identity forms disappear; everything else stays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keydnn.ir.ops import Crop2d, Pad2d, PRelu, Relu, ScaleShift, Upsample2d

from ..builders import GraphBuilder
from ..harness import check_pass

HERE = Path(__file__).resolve().parent
PASS = "eliminate-identity"


def test_identity_forms_of_new_ops_are_removed():
    b = GraphBuilder("identities")
    x = b.input("x", ("N", 3, 4, 4), "NCHW")
    h = b.add(Relu(), x, name="relu")
    h = b.add(Pad2d(pads=(0, 0, 0, 0), value=3.0), h, name="pad0")
    h = b.add(Crop2d(crops=(0, 0, 0, 0)), h, name="crop0")
    h = b.add(Upsample2d(factors=(1, 1)), h, name="up1")
    h = b.add(ScaleShift(axis=1), h, b.const("ss.scale", np.ones(3)), b.const("ss.shift", np.zeros(3)), name="ss")
    h = b.add(ScaleShift(axis=None), h, b.const("one", np.array(1.0)), b.const("zero", np.array(0.0)), name="ss2")
    h = b.add(PRelu(), h, b.const("alpha1", np.ones((3, 1, 1))), name="prelu1")
    g = b.build(b.add(Relu(max_value=1.0), h, name="relu6"))
    out = check_pass(g, PASS, HERE / "identities.txt")
    assert [n.op.kind for n in out.nodes] == ["relu", "relu"]
    assert not out.weights


def test_non_identities_are_kept():
    b = GraphBuilder("not_identities")
    x = b.input("x", ("N", 3, 4, 4), "NCHW")
    h = b.add(Pad2d(pads=(0, 1, 0, 0)), x, name="pad")
    h = b.add(Upsample2d(factors=(1, 2)), h, name="up")
    h = b.add(ScaleShift(axis=1), h, b.const("ss.scale", np.ones(3)), b.const("ss.shift", [0.0, 0.0, 1e-3]),
              name="ss")
    g = b.build(b.add(PRelu(), h, b.const("alpha", np.array(0.5)), name="prelu"))
    out = check_pass(g, PASS, None)
    assert out is g or out == g
