"""Every op kind has everything an op needs, and the op facts live on the op classes.

An op kind without a reference kernel, a layout rule, a CPU kernel, a CPU
code generator or a CUDA kernel fails here, naming the kind, instead of
surfacing as a refusal (or a silent slow path) on some user's model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from keydnn.errors import SlowPathWarning
from keydnn.ir import OP_CLASSES
from keydnn.ir.ops import OpBase, kinds_with

#: Placeholders for layers keydnn cannot convert: they refuse to run anywhere, by design.
NOT_RUNNABLE = {"opaque"}


def test_every_kind_has_a_reference_kernel_and_a_layout_rule():
    from keydnn.ir.passes.layout_rules import LAYOUT_RULES
    from keydnn.ir.reference import REFERENCE_KERNELS

    assert sorted(set(OP_CLASSES) - set(REFERENCE_KERNELS)) == []
    assert sorted(set(OP_CLASSES) - set(LAYOUT_RULES)) == []


def test_every_kind_has_a_cpu_kernel():
    """Every kind runs in the per-op mode: as a one-node generated program, a view, or a per-op-only kernel."""
    from keydnn.backends.numba_cpu.modes import load_kernels
    from keydnn.backends.numba_cpu.ops.steps import ops_mode_kinds

    load_kernels()
    assert sorted(set(OP_CLASSES) - NOT_RUNNABLE - ops_mode_kinds()) == []


def test_every_kind_has_a_cpu_code_generator():
    """Every kind has an emitter, except the ones ``modes.PER_OP_ONLY`` declares (and compile_graph warns
    about): a new op without generated code fails here until it gets an emitter or is declared."""
    from keydnn.backends.numba_cpu.modes import PER_OP_ONLY
    from keydnn.backends.numba_cpu.runtime.executable import EMITTERS
    from keydnn.backends.numba_cpu.codegen.program import BATCH_VIEW_KINDS, VIEW_KINDS

    missing = sorted(set(OP_CLASSES) - NOT_RUNNABLE - set(EMITTERS) - set(VIEW_KINDS) - set(BATCH_VIEW_KINDS))
    assert missing == sorted(PER_OP_ONLY), f"op kinds without generated CPU code: {missing}"
    assert PER_OP_ONLY <= {"fold_time", "unfold_time", "conv_lstm"}, "the declared gaps may only shrink"


CUDA_KINDS = """
import json
from keydnn.backends import numba_cuda  # registers every kernel
from keydnn.backends.numba_cuda.lowering import KERNELS
print(json.dumps(sorted(KERNELS)))
"""


def test_every_kind_has_a_cuda_kernel():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run([sys.executable, "-c", CUDA_KINDS], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    cuda = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert sorted(set(OP_CLASSES) - NOT_RUNNABLE - cuda) == []


def test_op_classes_register_themselves_once_per_kind():
    assert OP_CLASSES == OpBase.registered()
    for kind, cls in OP_CLASSES.items():
        assert cls.model_fields["kind"].default == kind
    with pytest.raises(TypeError, match="declared by both"):
        from typing import Literal

        class Relu2(OpBase):  # noqa: F841 - defining it is the test
            kind: Literal["relu"] = "relu"


def test_traits_are_consistent():
    assert kinds_with("is_elementwise_merge") < kinds_with("is_merge")
    assert kinds_with("is_activation") <= kinds_with("writes_in_place")
    assert kinds_with("is_elementwise_merge") <= kinds_with("writes_in_place")
    assert not kinds_with("is_view") & kinds_with("writes_in_place")
    assert not kinds_with("is_batch_view") & (kinds_with("is_view") | kinds_with("writes_in_place"))
    with pytest.raises(AttributeError, match="not an op trait"):
        kinds_with("operands")


def test_passes_and_backends_read_the_traits():
    from keydnn.backends.numba_cpu.codegen import program as codegen
    from keydnn.ir.passes import base, fold_constants, fuse_activation, layout_rules

    assert codegen.VIEW_KINDS == fold_constants.RESHAPE_LIKE == kinds_with("is_view")
    assert codegen.BATCH_VIEW_KINDS == kinds_with("is_batch_view") == {"fold_time", "unfold_time"}
    assert codegen.INPLACE_KINDS == kinds_with("writes_in_place")
    assert codegen.FUSIBLE_INTO_MERGE == fuse_activation.FUSIBLE_ACTIVATIONS == layout_rules.FLATTEN_PASS_THROUGH
    assert fuse_activation.FUSING_PRODUCERS == kinds_with("accepts_epilogue")
    assert base.DATA_MOVEMENT_KINDS == kinds_with("layout_is_result_only")


def test_slow_path_is_a_warning_naming_the_reason():
    """A graph the code generator refuses still runs, on the per-op kernels, and the user is told why."""
    from keydnn.backends.numba_cpu.modes import compile_graph
    from keydnn.ir import Graph, Node, TensorType, Value
    from keydnn.ir.ops import Transpose

    graph = Graph(
        name="swap_batch",
        inputs=[Value(name="x", type=TensorType(shape=(2, 3), dtype="float32"))],
        nodes=[Node(name="t", op=Transpose(perm=(1, 0)), inputs=("x",),
                    outputs=[Value(name="y", type=TensorType(shape=(3, 2), dtype="float32"))])],
        outputs=["y"],
    )
    with pytest.warns(SlowPathWarning, match="swap_batch.*per-op kernels.*batch axis"):
        exe = compile_graph(graph)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(exe(x)[0] if isinstance(exe(x), (list, tuple)) else exe(x), x.T)


def test_generated_code_path_is_silent():
    from keydnn.backends.numba_cpu.modes import compile_graph
    from keydnn.ir import Graph, Node, TensorType, Value
    from keydnn.ir.ops import Relu

    graph = Graph(
        name="relu",
        inputs=[Value(name="x", type=TensorType(shape=("N", 8), dtype="float32"))],
        nodes=[Node(name="r", op=Relu(), inputs=("x",),
                    outputs=[Value(name="y", type=TensorType(shape=("N", 8), dtype="float32"))])],
        outputs=["y"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowPathWarning)
        compile_graph(graph, mode="codegen")
