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
from keydnn.cli.common import EXIT_FAILED, EXIT_USAGE, Guard, fail, load_inputs


def _load(path: str, device: str) -> "keydnn.Sequential":
    if not Path(path).is_file():
        fail(f"{path}: no such artifact file", EXIT_USAGE)
    return keydnn.load(path, device=device)


@cli.command()
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def verify(artifact: str, device: str, fmt: str) -> None:
    """Replay the verification vectors recorded by `convert --verify` (no TensorFlow needed).

    \b
    Example:
      keydnn convert --src model.h5 --dst model.json --verify
      keydnn verify model.json --device cpu
    """
    from keydnn.verify import replay

    with Guard():
        model = _load(artifact, device)
        if not model.verification:
            fail(f"{artifact} has no verification vectors; convert it with --verify first", EXIT_USAGE)
        report = replay(model, model.verification)
        click.echo(json.dumps(report.as_dict(), indent=2) if fmt == "json" else report.text())
        if not report.ok:
            raise SystemExit(EXIT_FAILED)


@cli.command()
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--input", "input_paths", required=True, multiple=True, type=click.Path(dir_okay=False),
              help="Input batch as .npy, in the Keras model's layout; repeat in input order for several "
                   "inputs, or pass one .npz keyed by input name.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False),
              help="Write the result here (.npy; .npz keyed by output name for several outputs).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def run(artifact: str, input_paths: tuple[str, ...], output_path: str | None, device: str, fmt: str) -> None:
    """Run an artifact on a .npy input batch.

    \b
    Example:
      keydnn run model.json --input x.npy --output y.npy
    """
    from keydnn.atomic import atomic_writer

    with Guard():
        model = _load(artifact, device)
        xs = model.arrange_inputs(load_inputs(input_paths))
        result = model(*xs)
        ys = [np.asarray(v) for v in (result if isinstance(result, list) else [result])]
        if output_path:
            with atomic_writer(output_path, "wb") as fh:
                if len(ys) == 1:
                    np.save(fh, ys[0], allow_pickle=False)
                else:
                    np.savez(fh, **dict(zip(model.output_names, ys)))
        if len(ys) > 1:
            shapes = {n: list(y.shape) for n, y in zip(model.output_names, ys)}
            click.echo(json.dumps({"output_shapes": shapes, "output": output_path}) if fmt == "json"
                       else f"outputs {shapes}" + (f" -> {output_path}" if output_path else ""))
            return
        x, y = xs[0], ys[0]
        summary = {"input_shape": list(np.shape(x)), "output_shape": list(y.shape), "dtype": str(y.dtype),
                   "output": output_path}
        if y.ndim == 2:
            summary["argmax"] = y.argmax(axis=1).tolist()
        if fmt == "json":
            if not output_path:
                summary["values"] = y.tolist()
            click.echo(json.dumps(summary))
        else:
            click.echo(f"output {tuple(y.shape)} {y.dtype}" + (f" -> {output_path}" if output_path else ""))
            if "argmax" in summary:
                click.echo(f"argmax: {summary['argmax']}")
            if not output_path:
                with np.printoptions(precision=5, suppress=True, threshold=200):
                    click.echo(str(y))


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of batch sizes") from None
    if not values or min(values) < 1:
        raise click.BadParameter("batch sizes must be positive integers")
    return values


@cli.command()
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--batch", "batch_text", default="1,64", show_default=True, help="Comma-separated batch sizes.")
@click.option("--repeat", default=50, show_default=True, type=click.IntRange(1, 100000), help="Timed runs per batch.")
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(0, 10000))
@click.option("--device", default="cpu", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def bench(artifact: str, batch_text: str, repeat: int, warmup: int, device: str, fmt: str) -> None:
    """Measure latency and throughput of an artifact on random inputs.

    \b
    Example:
      keydnn bench model.json --batch 1,64 --repeat 100
    """
    from keydnn.verify import sample_inputs

    batches = _batches(batch_text)
    with Guard():
        start = time.perf_counter()
        model = _load(artifact, device)
        load_s = time.perf_counter() - start
        rows = []
        for batch in batches:
            xs = sample_inputs(model.input_types, n=batch)
            start = time.perf_counter()
            model(*xs)
            first_s = time.perf_counter() - start
            for _ in range(warmup):
                model(*xs)
            times = []
            show = fmt == "text" and repeat >= 20
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
@click.option("--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown", show_default=True)
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
