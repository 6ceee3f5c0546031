"""Build a pass pipeline in Python, print the IR after each pass, and add a pass of your own.

Uses the bundled seed CNN (no TensorFlow needed). The custom pass,
``strip-softmax``, removes a trailing softmax so the model returns logits —
a common deployment tweak; the script checks that the predicted classes do
not change, against the NumPy reference interpreter.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import keydnn
from keydnn.ir import Graph, run_reference
from keydnn.ir.passes import Pass, PassManager, PassResult, register_pass

HERE = Path(__file__).resolve().parent


@register_pass
class StripSoftmax(Pass):
    """Guarantees: the graph output is not a softmax (returns logits; the argmax is unchanged)."""

    name = "strip-softmax"
    requires = ("typed",)

    def run(self, graph: Graph) -> PassResult:
        producers = graph.producers()
        last = producers.get(graph.outputs[0])
        if last is None or last.op.kind != "softmax":
            return PassResult(graph, changed=False)
        nodes = tuple(n for n in graph.nodes if n is not last)
        return PassResult(graph.replace(nodes=nodes, outputs=(last.inputs[0],)), changed=True)


def main() -> int:
    frontend = keydnn.from_keras(HERE / "seed_cnn.h5", passes="").graph  # the unoptimized IR
    pm = PassManager("infer-shapes,eliminate-identity", print_after="all")
    pm.add("fuse-activation").add("strip-softmax").add("eliminate-dead-code")
    print(f"pipeline: {','.join(pm.names)}\n")
    result = pm.run(frontend)
    print(result.timing_table())
    with np.load(HERE / "seed_cnn_samples.npz", allow_pickle=False) as data:
        x = data["x"]
    probs = run_reference(frontend, x)[0]
    logits = keydnn.Sequential(result.graph)(x)
    same = bool((probs.argmax(1) == logits.argmax(1)).all())
    print(f"\nlogits {logits.shape}; same classes as the softmax model: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
