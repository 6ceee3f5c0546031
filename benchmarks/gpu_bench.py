"""numba-cuda against PyTorch (cuDNN): the same networks, the same weights, in the same run.

Runs from KeyDNN artifacts alone (no TensorFlow). Without ``--artifact`` it
builds three IR graphs with random weights: the seed CNN (1x28x28 NCHW: Conv 8
3x3 same, ReLU, MaxPool 2, Conv 16 3x3 same, ReLU, GlobalAvgPool, Dense 10,
Softmax), a CIFAR-style CNN (3x32x32: Conv32-BN-ReLU, Conv32-ReLU, MaxPool,
Conv64-ReLU, Conv64-ReLU, MaxPool, Flatten, Dense128-ReLU, Dense10, Softmax)
and a ResNet-8-style DAG (3x32x32: Conv16-BN-ReLU stem, three residual blocks
of two Conv-BN with 16, 32 and 64 filters, the last two strided with a 1x1
Conv-BN projection shortcut, Add, ReLU; GlobalAvgPool, Dense 10, Softmax),
all through the default pass pipeline (BN folded, activations fused). PyTorch
runs the very graph keydnn runs (``torch_net`` translates it op by op), in
FP32 with TF32 off unless ``--tf32``. Latencies are medians with the device
synchronized. ``--dry-run`` needs no GPU: it builds, saves and reloads the
artifacts and checks the CPU backend (and PyTorch on the CPU, if installed)
against the reference interpreter.

    python benchmarks/gpu_bench.py [--artifact A.json ...] [--models seed_cnn,cifar_cnn,resnet8]
                                   [--batches 1,64,1024] [--repeats 30] [--dry-run]
"""

from __future__ import annotations

import argparse
import functools
import math
import operator
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

import keydnn
from keydnn.device import parse_device
from keydnn.ir import Graph, Node, TensorType, Value, run_reference
from keydnn.ir.ops import (
    Add, BatchNorm, Conv2d, Dense, Flatten, GlobalAvgPool2d, MaxPool2d, OpBase, Relu, Softmax,
)
from keydnn.ir.passes import DEFAULT_PIPELINE, run_pipeline


class _Net:
    """Appends NCHW nodes with inferred types and random (He-scaled) weights; ``last`` is the value a
    layer reads unless given another (``src``), so branches and merges build a DAG."""

    def __init__(self, name: str, shape: tuple, seed: int = 0) -> None:
        self.name, self.rng = name, np.random.default_rng(seed)
        self.inputs = (Value(name="x", type=TensorType(shape=("N", *shape), layout="NCHW")),)
        self.types = {"x": self.inputs[0].type}
        self.nodes: list[Node] = []
        self.weights: dict[str, np.ndarray] = {}
        self.last = "x"

    def _const(self, name: str, array: np.ndarray) -> str:
        self.weights[name] = array.astype(np.float32)
        self.types[name] = TensorType(shape=array.shape)
        return name

    def add(self, op: OpBase, *consts: str, src: str | None = None) -> "_Net":
        inputs = (self.last if src is None else src, *consts)
        name = f"{op.kind}{len(self.nodes)}"
        out = op.infer([self.types[i] for i in inputs])
        self.nodes.append(Node(name=name, op=op, inputs=inputs, outputs=(Value(name=name, type=out),)))
        self.types[name], self.last = out, name
        return self

    def conv(self, out_ch: int, bn: bool = False, *, k: int = 3, stride: int = 1, relu: bool = True,
             bias: bool = True, src: str | None = None) -> "_Net":
        src = self.last if src is None else src
        c, n = self.types[src].shape[1], len(self.nodes)
        w = self._const(f"w{n}", self.rng.normal(0, math.sqrt(2 / (k * k * c)), (out_ch, c, k, k)))
        b = (self._const(f"b{n}", self.rng.normal(0, 0.05, out_ch)),) if bias else ()
        self.add(Conv2d(strides=(stride, stride), pads=(k // 2,) * 4), w, *b, src=src)
        if bn:
            stats = [self.rng.normal(0, 0.1, out_ch), self.rng.uniform(0.5, 1.5, out_ch),
                     self.rng.uniform(0.5, 1.5, out_ch), self.rng.normal(0, 0.1, out_ch)]
            self.add(BatchNorm(axis=1), *(self._const(f"bn{n}.{i}", s) for i, s in enumerate(stats)))
        return self.add(Relu()) if relu else self

    def residual(self, out_ch: int, stride: int = 1) -> "_Net":
        """Conv-BN-ReLU, Conv-BN, plus the input (through a 1x1 Conv-BN when the shape changes), ReLU."""
        x = self.last
        y = self.conv(out_ch, bn=True, stride=stride, bias=False).conv(out_ch, bn=True, relu=False, bias=False).last
        if stride != 1 or self.types[x].shape[1] != out_ch:
            x = self.conv(out_ch, bn=True, k=1, stride=stride, relu=False, bias=False, src=x).last
        return self.add(Add(), x, src=y).add(Relu())

    def dense(self, units: int, relu: bool = False) -> "_Net":
        fan_in, k = self.types[self.last].shape[-1], len(self.nodes)
        w = self._const(f"w{k}", self.rng.normal(0, math.sqrt(2 / fan_in), (fan_in, units)))
        self.add(Dense(), w, self._const(f"b{k}", self.rng.normal(0, 0.05, units)))
        return self.add(Relu()) if relu else self

    def pool(self) -> "_Net":
        return self.add(MaxPool2d(kernel=(2, 2), strides=(2, 2)))

    def graph(self) -> Graph:
        g = Graph.build(name=self.name, inputs=self.inputs, outputs=(self.last,), nodes=tuple(self.nodes),
                        weights=self.weights)
        return run_pipeline(g, DEFAULT_PIPELINE)


def seed_cnn() -> Graph:
    return _Net("seed_cnn", (1, 28, 28)).conv(8).pool().conv(16).add(GlobalAvgPool2d()).dense(10).add(
        Softmax()).graph()


def cifar_cnn() -> Graph:
    net = _Net("cifar_cnn", (3, 32, 32), seed=1).conv(32, bn=True).conv(32).pool().conv(64).conv(64).pool()
    return net.add(Flatten()).dense(128, relu=True).dense(10).add(Softmax()).graph()


def resnet8() -> Graph:
    net = _Net("resnet8", (3, 32, 32), seed=2).conv(16, bn=True).residual(16).residual(32, 2).residual(64, 2)
    return net.add(GlobalAvgPool2d()).dense(10).add(Softmax()).graph()


MODELS: dict[str, Callable[[], Graph]] = {"seed_cnn": seed_cnn, "cifar_cnn": cifar_cnn, "resnet8": resnet8}


def torch_net(graph: Graph, device: str) -> Callable:
    """The graph as PyTorch eager ops (cuDNN convolutions) on the same weights."""
    import torch
    import torch.nn.functional as F

    w = {k: torch.from_numpy(np.array(v)).to(device) for k, v in graph.weights.items()}
    functions = {
        "linear": lambda x, a: x, "sigmoid": lambda x, a: torch.sigmoid(x), "tanh": lambda x, a: torch.tanh(x),
        "softplus": lambda x, a: F.softplus(x), "softsign": lambda x, a: F.softsign(x),
        "elu": lambda x, a: F.elu(x, a), "selu": lambda x, a: F.selu(x), "gelu": lambda x, a: F.gelu(x),
        "gelu_tanh": lambda x, a: F.gelu(x, approximate="tanh"), "swish": lambda x, a: F.silu(x),
        "exponential": lambda x, a: torch.exp(x), "hard_sigmoid": lambda x, a: F.hardsigmoid(x),
        "hard_sigmoid_k2": lambda x, a: torch.clamp(0.2 * x + 0.5, 0.0, 1.0),
    }

    def relu(op, x):  # Keras's formula, as in keydnn.ir.reference
        if op.max_value is None and not op.negative_slope and not op.threshold:
            return F.relu(x)
        y = torch.where(x > op.threshold, x, torch.zeros_like(x))
        y = y if op.max_value is None else torch.clamp(y, 0.0, op.max_value)
        return y - op.negative_slope * F.relu(op.threshold - x) if op.negative_slope else y

    acts = {"relu": relu, "activation": lambda op, x: functions[op.function](x, op.alpha)}

    def epilogue(op, x):
        return x if getattr(op, "activation", None) is None else acts[op.activation.kind](op.activation, x)

    def conv(op, x, weight, bias=None):
        pt, pb, pl, pr = op.pads
        if (pt, pl) != (pb, pr):
            x, (pt, pl) = F.pad(x, (pl, pr, pt, pb)), (0, 0)
        return epilogue(op, F.conv2d(x, weight, bias, op.strides, (pt, pl), op.dilations, op.groups))

    table = {
        "conv2d": conv,
        "dense": lambda op, x, weight, bias=None: epilogue(op, F.linear(x, weight.T, bias)),
        "max_pool2d": lambda op, x: F.max_pool2d(x, op.kernel, op.strides, (op.pads[0], op.pads[2])),
        "avg_pool2d": lambda op, x: F.avg_pool2d(x, op.kernel, op.strides, (op.pads[0], op.pads[2]),
                                                 count_include_pad=False),
        "global_avg_pool2d": lambda op, x: x.mean(dim=(2, 3), keepdim=op.keepdims),
        "flatten": lambda op, x: x.flatten(1),
        "reshape": lambda op, x: x.reshape(x.shape[0], *op.shape),
        "transpose": lambda op, x: x.permute(*op.perm).contiguous(),
        "softmax": lambda op, x: F.softmax(x, dim=op.axis),
        "add": lambda op, *xs: functools.reduce(operator.add, xs),
        "sub": lambda op, x, y: x - y,
        "mul": lambda op, *xs: functools.reduce(operator.mul, xs),
        "avg": lambda op, *xs: functools.reduce(operator.add, xs) / len(xs),
        "max": lambda op, *xs: functools.reduce(torch.maximum, xs),  # NaN propagates, as in keydnn
        "min": lambda op, *xs: functools.reduce(torch.minimum, xs),
        "concat": lambda op, *xs: torch.cat(xs, dim=op.axis),
        **acts,
    }

    def run(x):
        env = {graph.inputs[0].name: x, **w}
        for node in graph.nodes:
            fn = table.get(node.op.kind) or _unsupported(node.op)
            env[node.outputs[0].name] = fn(node.op, *(env[i] for i in node.inputs))
        return env[graph.outputs[0]]

    return run


def _unsupported(op: OpBase):
    raise SystemExit(f"gpu_bench: no PyTorch translation for {op.kind} {op.attrs()}")


def median_ms(fn: Callable[[], object], sync: Callable[[], None], repeats: int) -> float:
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def dry_run(graphs: dict[str, Graph]) -> int:
    """No GPU: artifact round trip, CPU backend (and PyTorch on the CPU) against the reference."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, graph in graphs.items():
            path = keydnn.Model(graph).save(Path(tmp) / f"{name}.json")
            model = keydnn.load(path)
            x = np.random.default_rng(0).normal(size=(2, *graph.inputs[0].type.shape[1:])).astype(np.float32)
            want = run_reference(graph, x)[0]
            line = f"{name}: {len(graph.nodes)} nodes, cpu max|diff| {np.abs(model(x) - want).max():.2e}"
            try:
                import torch
            except ImportError:
                print(line + ", torch not installed")
                continue
            with torch.no_grad():
                got = torch_net(graph, "cpu")(torch.from_numpy(x)).numpy()
            print(line + f", torch-cpu max|diff| {np.abs(got - want).max():.2e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", action="append", default=[], help="KeyDNN artifact(s) to benchmark")
    parser.add_argument("--models", default=",".join(MODELS), help=f"built-in models to run (of {', '.join(MODELS)})")
    parser.add_argument("--batches", default="1,64,1024")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--tf32", action="store_true", help="let PyTorch use TF32 (keydnn computes in FP32)")
    parser.add_argument("--dry-run", action="store_true", help="no GPU needed: build, save, load, check on CPU")
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown --models {unknown}; built-in models are {', '.join(MODELS)}")
    graphs = ({Path(p).stem: keydnn.load(p).graph for p in args.artifact} if args.artifact
              else {name: MODELS[name]() for name in names})
    if args.dry_run:
        return dry_run(graphs)

    from keydnn.backends.numba_cuda.device import device_count, simulator_enabled

    if simulator_enabled() or device_count() == 0:
        print("gpu_bench: no CUDA GPU is available (the numba CUDA driver found none, or the simulator is on); "
              "nothing to benchmark. Use --dry-run to check the script without a GPU.", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
    from numba import cuda

    import numba

    device = parse_device(args.device)
    torch_device = f"cuda:{device.index}"
    with cuda.gpus[device.index]:
        gpu = cuda.get_current_device().name
    gpu = gpu.decode() if isinstance(gpu, bytes) else gpu
    versions = f"numba {numba.__version__}" + (f", torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}"
                                             if torch is not None else ", torch not installed")
    print(f"{gpu}; {versions}; FP32{'' if not args.tf32 else ' (torch TF32 on)'}; median of {args.repeats}")
    print(f"{'model':<12}{'batch':>6}{'keydnn dev ms':>15}{'keydnn host ms':>16}{'torch ms':>10}"
          f"{'keydnn/torch':>14}{'max|diff|':>11}")
    for name, graph in graphs.items():
        model = keydnn.Model(graph, device=device)
        ref_net = torch_net(graph, torch_device) if torch is not None else None
        for batch in (int(b) for b in args.batches.split(",")):
            x = np.random.default_rng(batch).normal(size=(batch, *graph.inputs[0].type.shape[1:])).astype(np.float32)
            x_dev = cuda.to_device(x) if torch is None else torch.from_numpy(x).to(torch_device)
            dev_ms = median_ms(lambda: model(x_dev), cuda.synchronize, args.repeats)
            host_ms = median_ms(lambda: model(x), cuda.synchronize, args.repeats)
            torch_ms, diff = float("nan"), float("nan")
            if ref_net is not None:
                with torch.inference_mode():
                    torch_ms = median_ms(lambda: ref_net(x_dev), torch.cuda.synchronize, args.repeats)
                    diff = float(np.abs(model(x) - ref_net(x_dev).cpu().numpy()).max())
            print(f"{name:<12}{batch:>6}{dev_ms:>15.3f}{host_ms:>16.3f}{torch_ms:>10.3f}"
                  f"{dev_ms / torch_ms:>14.2f}{diff:>11.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
