"""eliminate-identity on TimeDistributed chains: time folded back into the batch right after it was taken out
(``fold_time(unfold_time(x, like))``) is ``x``, and an ``unfold_time`` reads the first sequence for its N and T,
so the unfolded values between two TimeDistributed layers are left without uses."""

from __future__ import annotations

from pathlib import Path

from keydnn.ir.ops import Dense, Relu
from keydnn.ir.ops.recurrent import FoldTime, UnfoldTime

from ..builders import GraphBuilder
from ..harness import check_pass

HERE = Path(__file__).resolve().parent
PASS = "eliminate-identity,eliminate-dead-code"


def _chain(keep_middle: bool):
    b = GraphBuilder("time_folds", seed=5)
    x = b.input("x", ("N", "T", 5))
    h = b.add(Dense(), b.add(FoldTime(), x, name="td0.fold"), b.rand("w0", (5, 3)), name="td0.inner")
    seq0 = b.add(UnfoldTime(), h, x, name="td0")
    h = b.add(Relu(), b.add(FoldTime(), seq0, name="td1.fold"), name="td1.inner")
    seq1 = b.add(UnfoldTime(), h, seq0, name="td1")
    h = b.add(Dense(), b.add(FoldTime(), seq1, name="td2.fold"), b.rand("w2", (3, 2)), name="td2.inner")
    seq2 = b.add(UnfoldTime(), h, seq1, name="td2")
    return b.build(seq2, seq1) if keep_middle else b.build(seq2)


def test_fold_of_unfold_is_removed_and_unfolds_read_the_first_sequence():
    out = check_pass(_chain(False), PASS, HERE / "time_folds.txt")
    assert [n.op.kind for n in out.nodes] == ["fold_time", "dense", "relu", "dense", "unfold_time"]
    assert out.nodes[-1].inputs[1] == "x"


def test_an_unfolded_value_that_is_used_stays():
    out = check_pass(_chain(True), PASS, None)
    kinds = [n.op.kind for n in out.nodes]
    assert kinds.count("fold_time") == 1 and kinds.count("unfold_time") == 2
    assert all(n.inputs[1] == "x" for n in out.nodes if n.op.kind == "unfold_time")
