"""Everyday commands on artifacts: verify, run, bench; and the published facts: schema, layers."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import click
import numpy as np

import keydnn
from keydnn.cli import cli
from keydnn.progress import messages_enabled
from keydnn.cli.common import (
    EXIT_FAILED, EXIT_USAGE, Guard, directory_message, fail, load_inputs, open_model, read_source,
)


def _load(path: str, device: str, threads: int | None = None) -> "keydnn.Model":
    """An artifact for the commands that need one (verify, bench); a Keras file or a directory is refused
    with what to run instead."""
    if Path(path).is_dir():
        fail(directory_message(path), EXIT_USAGE)
    if not Path(path).is_file():
        fail(f"{path}: no such artifact file", EXIT_USAGE)
    kind, obj = read_source(path)
    if kind != "artifact":
        fail(f"{path} is a Keras model file, not a KeyDNN artifact; convert it first: keydnn convert {path} "
             f"{Path(path).stem}.json", EXIT_USAGE)
    from keydnn.api import model_from_artifact

    return model_from_artifact(obj, device=device, threads=threads)


DEVICE_HELP = "Device to run on: cpu, cuda or cuda:N."
THREADS_HELP = "Threads one call may use (default: NUMBA_NUM_THREADS, else every usable CPU)."
FORMAT_HELP = "text for people, json for programs."
threads_option = click.option("--threads", type=click.IntRange(1, 64), default=None, help=THREADS_HELP)


@cli.command()
@click.argument("artifact", type=click.Path())
@click.option("--device", default="cpu", show_default=True, help=DEVICE_HELP)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help=FORMAT_HELP)
@threads_option
def verify(artifact: str, device: str, fmt: str, threads: int | None) -> None:
    """Replay the verification vectors recorded by `convert --verify` (no TensorFlow needed).

    \b
    Example:
      keydnn convert model.h5 model.json --verify
      keydnn verify model.json --device cpu
    """
    from keydnn.verify import replay

    with Guard():
        model = _load(artifact, device, threads)
        if not model.verification:
            fail(f"{artifact} has no verification vectors; convert it with --verify first", EXIT_USAGE)
        report = replay(model, model.verification)
        click.echo(json.dumps(report.as_dict(), indent=2) if fmt == "json" else report.text())
        if not report.ok:
            raise SystemExit(EXIT_FAILED)


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.option("--input", "input_paths", required=True, multiple=True, type=click.Path(),
              help="Input batch as .npy (memory-mapped: it may be larger than memory), in the Keras model's "
                   "layout; repeat in input order for several inputs, or pass one .npz keyed by input name.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False),
              help="Write the predictions here (.npy; .npz keyed by output name for several outputs).")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Samples per call (default: 1024 for inputs larger than that, else all at once); the "
                   "predictions are the same for any batch size.")
@click.option("--device", default="cpu", show_default=True, help=DEVICE_HELP)
@threads_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: a short summary; json: shapes and (without --output) the values.")
@click.option("--allow-non-linear-activation", is_flag=True,
              help="For a Keras MODEL converted in memory: accept fused activations (see `convert`).")
def run(model_path: str, input_paths: tuple[str, ...], output_path: str | None, batch_size: int | None,
        device: str, threads: int | None, fmt: str, allow_non_linear_activation: bool) -> None:
    """Run a model (a KeyDNN artifact, or a .keras/.h5 file converted in memory) on .npy inputs.

    \b
    Examples:
      keydnn run model.json --input x.npy --output y.npy
      keydnn run model.json --input big.npy --output y.npy --batch-size 512
    """
    from keydnn.atomic import atomic_writer

    with Guard():
        model = open_model(model_path, device=device, threads=threads,
                           allow_non_linear_activation=allow_non_linear_activation, command="run")
        xs = model.arrange_inputs(load_inputs(input_paths, mmap=True))
        n = max(int(np.shape(x)[0]) for x in xs) if xs else 0
        size = batch_size or (AUTO_BATCH if n > AUTO_BATCH else None)
        result = model.predict(*xs, batch_size=size)
        ys = [np.asarray(v) for v in (result if isinstance(result, list) else [result])]
        if output_path:
            with atomic_writer(output_path, "wb") as fh:
                if len(ys) == 1:
                    np.save(fh, ys[0], allow_pickle=False)
                else:
                    np.savez(fh, **dict(zip(model.output_names, ys)))
        if fmt == "json":
            summary = {"samples": n, "outputs": {name: {"shape": list(y.shape), "dtype": str(y.dtype)}
                                                 for name, y in zip(model.output_names, ys)},
                       "output": output_path}
            if len(ys) > 1:  # the several-outputs form of earlier versions
                summary["output_shapes"] = {name: list(y.shape) for name, y in zip(model.output_names, ys)}
            if len(ys) == 1:  # the one-output form of earlier versions
                summary.update(input_shape=list(np.shape(xs[0])), output_shape=list(ys[0].shape),
                               dtype=str(ys[0].dtype))
                if ys[0].ndim == 2 and not output_path:
                    summary["argmax"] = ys[0].argmax(axis=1).tolist()
            if not output_path:
                summary["values"] = {name: y.tolist() for name, y in zip(model.output_names, ys)} \
                    if len(ys) > 1 else ys[0].tolist()
            click.echo(json.dumps(summary))
            return
        for name, y in zip(model.output_names, ys):
            click.echo(_describe_output(name, y) + (f" -> {output_path}" if output_path else ""))
        if not output_path and n > SHOW_SAMPLES:
            click.echo(f"({n} samples: pass --output y.npy to keep every prediction)")
        elif not output_path:
            with np.printoptions(precision=5, suppress=True, threshold=200):
                for name, y in zip(model.output_names, ys):
                    click.echo(str(y) if len(ys) == 1 else f"{name}:\n{y}")


#: ``keydnn run`` splits inputs larger than this into batches (bounded memory for the intermediate tensors).
AUTO_BATCH = 1024
#: ``keydnn run`` prints the predictions themselves only for this many samples or fewer.
SHOW_SAMPLES = 20


def _describe_output(name: str, y: np.ndarray) -> str:
    """One line: name, shape, dtype, range, and for class scores the predicted classes (first few, counts)."""
    text = f"{name}: {tuple(y.shape)} {y.dtype}"
    if y.size:
        text += f", min {float(y.min()):.4g}, mean {float(y.mean()):.4g}, max {float(y.max()):.4g}"
    if y.ndim == 2 and y.shape[1] > 1 and y.shape[0]:
        classes = y.argmax(axis=1)
        head = ", ".join(str(int(c)) for c in classes[:SHOW_SAMPLES])
        more = f", ... ({len(classes)} in all)" if len(classes) > SHOW_SAMPLES else ""
        counts = np.bincount(classes, minlength=y.shape[1])
        top = ", ".join(f"{int(k)}: {int(counts[k])}" for k in np.argsort(-counts, kind="stable")[:5] if counts[k])
        text += f"\n  argmax: [{head}{more}]\n  most predicted classes (class: samples): {top}"
    return text


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of batch sizes") from None
    if not values or min(values) < 1:
        raise click.BadParameter("batch sizes must be positive integers")
    return values


@cli.command()
@click.argument("artifact", type=click.Path())
@click.option("--batch", "batch_text", default="1,64", show_default=True, help="Comma-separated batch sizes.")
@click.option("--repeat", default=50, show_default=True, type=click.IntRange(1, 100000), help="Timed runs per batch.")
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(0, 10000),
              help="Untimed runs per batch before timing.")
@click.option("--device", default="cpu", show_default=True, help=DEVICE_HELP)
@threads_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help=FORMAT_HELP)
def bench(artifact: str, batch_text: str, repeat: int, warmup: int, device: str, threads: int | None,
          fmt: str) -> None:
    """Measure latency and throughput of an artifact on random inputs.

    \b
    Example:
      keydnn bench model.json --batch 1,64 --repeat 100
    """
    from keydnn.verify import sample_inputs

    batches = _batches(batch_text)
    with Guard():
        start = time.perf_counter()
        model = _load(artifact, device, threads)
        load_s = time.perf_counter() - start
        rows = []
        for batch in batches:
            xs = sample_inputs(model.input_types, n=batch, graph=model.graph)
            start = time.perf_counter()
            model(*xs)
            first_s = time.perf_counter() - start
            for _ in range(warmup):
                model(*xs)
            times = []
            show = fmt == "text" and repeat >= 20 and messages_enabled()
            with click.progressbar(range(repeat), label=f"batch {batch}", file=None if show else _Null()) as bar:
                for _ in bar:
                    t0 = time.perf_counter()
                    model(*xs)
                    times.append(time.perf_counter() - t0)
            times.sort()
            median = statistics.median(times)
            rows.append({"batch": batch, "median_ms": median * 1e3, "p90_ms": times[int(0.9 * (len(times) - 1))] * 1e3,
                         "min_ms": times[0] * 1e3, "samples_per_s": batch / median, "first_call_ms": first_s * 1e3})
        if fmt == "json":
            click.echo(json.dumps({"artifact": artifact, "device": device, "load_ms": load_s * 1e3, "rows": rows}))
            return
        click.echo(f"{artifact} on {device}: load {load_s * 1e3:.1f} ms")
        click.echo(f"{'batch':>6} {'median ms':>10} {'p90 ms':>9} {'min ms':>9} {'samples/s':>11} {'first call ms':>14}")
        for r in rows:
            click.echo(f"{r['batch']:>6} {r['median_ms']:>10.3f} {r['p90_ms']:>9.3f} {r['min_ms']:>9.3f} "
                       f"{r['samples_per_s']:>11.1f} {r['first_call_ms']:>14.1f}")


class _Null:
    """A sink for the progress bar when it should stay quiet."""

    def write(self, _: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the KeyDNN artifact format (generated from the pydantic models)."""
    from keydnn.backends.artifact import artifact_json_schema

    click.echo(json.dumps(artifact_json_schema(), indent=2, sort_keys=True))


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown", show_default=True,
              help="markdown: the README's table; json: one object per layer.")
def layers(fmt: str) -> None:
    """List the supported Keras layers and their constraints (from the converter table)."""
    from keydnn.frontends.keras.docs import layer_table

    rows = layer_table()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
        from keydnn.frontends.keras.docs import layer_table_markdown

        click.echo(layer_table_markdown(), nl=False)


@cli.command("passes")
def list_passes() -> None:
    """List the registered IR passes, with what each guarantees, and the default pipeline."""
    from keydnn.ir.passes import DEFAULT_PIPELINE, PASS_REGISTRY

    for name in sorted(PASS_REGISTRY):
        doc = (PASS_REGISTRY[name].__doc__ or "").strip().split("\n\n")[0]
        click.echo(f"{name}\n    " + " ".join(doc.split()))
    click.echo(f"\ndefault pipeline:\n    {DEFAULT_PIPELINE}")
