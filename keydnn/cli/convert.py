"""`keydnn convert`: Keras file -> KeyDNN artifact (optionally verified against Keras)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

import keydnn
from keydnn.cli import cli
from keydnn.cli.common import EXIT_FAILED, EXIT_USAGE, Guard, fail, load_inputs, read_source
from keydnn.progress import Stages


@cli.command()
@click.argument("src_arg", metavar="SRC", required=False, type=click.Path())
@click.argument("dst_arg", metavar="DST", required=False, type=click.Path())
@click.option("--src", default=None, type=click.Path(), help="Keras model file (.keras or .h5); same as SRC.")
@click.option("--dst", default=None, type=click.Path(), help="KeyDNN artifact to write (.json); same as DST.")
@click.option("--device", default="cpu", show_default=True,
              help="Device the model is checked for at conversion: cpu, cuda or cuda:N (the artifact runs on any).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="Compute and weight precision of the artifact; inputs of other types are cast to it.")
@click.option("--strict/--no-strict", default=True, show_default=True,
              help="Refuse unsupported layers (--no-strict keeps them as placeholders: the result can be inspected, "
                   "not run).")
@click.option("--allow-non-linear-activation", is_flag=True,
              help="Accept fused activations such as Dense(activation='relu'): keydnn lowers each into its own "
                   "exact activation node.")
@click.option("--passes", default=None, help="Pass pipeline, comma-separated (default: the standard pipeline).")
@click.option("--input-layout", type=click.Choice(["keras", "channels_first"]), default="keras", show_default=True,
              help="Feed data as Keras did, or feed channels_first data to a channels_last model (no input transpose).")
@click.option("--sidecar/--inline", default=None,
              help="Store weights in a binary file beside the JSON (memory-mapped on load) or inline as base64 "
                   "(default: a sidecar for 8 MiB of weights or more).")
@click.option("--verify", "verify", is_flag=True,
              help="Run Keras (needs TensorFlow) and the converted model on sample inputs; fail (exit 1) with a "
                   "per-layer report if they differ; record the vectors in the artifact for `keydnn verify`.")
@click.option("--verify-input", type=click.Path(exists=True, dir_okay=False),
              help="Sample inputs for --verify: .npy (one input) or .npz keyed by input name; "
                   "default: 8 seeded random samples.")
@click.option("--rtol", type=float, default=1e-4, show_default=True, help="Relative tolerance for --verify.")
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Absolute tolerance for --verify.")
def convert(src_arg: str | None, dst_arg: str | None, src: str | None, dst: str | None, device: str, dtype: str,
            strict: bool, allow_non_linear_activation: bool, passes: str | None, input_layout: str,
            sidecar: bool | None,
            verify: bool, verify_input: str | None, rtol: float, atol: float) -> None:
    """Convert a Keras model file SRC (.keras or .h5) into a KeyDNN artifact DST (.json).

    \b
    Examples:
      keydnn convert model.h5 model.json
      keydnn convert model.keras model.json --verify
      keydnn convert --src model.h5 --dst model.json --passes infer-shapes,eliminate-identity
    """
    src = _one_of("SRC", src_arg, "--src", src)
    dst = _one_of("DST", dst_arg, "--dst", dst)
    from keydnn.frontends.keras import ConversionOptions, convert as lower, keras_major
    from keydnn.ir.passes import DEFAULT_PIPELINE

    with Guard(), Stages(["read", "convert"] + (["load Keras", "compare"] if verify else []) + ["write"],
                         desc="keydnn: convert") as stages:
        stages.next("reading " + Path(src).name)
        kind, spec = read_source(src)
        if kind != "keras":
            fail(f"{src} is already a KeyDNN artifact; convert takes a .keras or .h5 file", EXIT_USAGE)
        dst_dir = Path(dst).resolve().parent
        if not dst_dir.is_dir():
            fail(f"cannot write {dst}: directory {dst_dir} does not exist", EXIT_USAGE)
        if Path(dst).is_dir():
            fail(f"cannot write {dst}: it is a directory", EXIT_USAGE)
        samples = load_inputs([verify_input]) if verify_input else None
        if verify:
            import importlib.util

            if importlib.util.find_spec("tensorflow") is None:
                from keydnn.verify import TF_HINT

                raise ImportError(TF_HINT)  # before any work: exit 1 with the install hint
        options = {"input_layout": input_layout} if input_layout != "keras" else {}
        stages.next("converting")
        model = keydnn.from_keras(spec, device=device, dtype=dtype, strict=strict,
                                  allow_non_linear_activation=allow_non_linear_activation,
                                  passes=passes or DEFAULT_PIPELINE, **options)
        if verify:
            from keydnn.verify import load_keras_model, sample_inputs, verify_against_keras

            # Only now, after keydnn's strict conversion accepted every layer (no Lambda, no custom class),
            # is the file handed to Keras itself.
            stages.next("loading the model with Keras (TensorFlow)")
            keras_model = load_keras_model(src, keras_major=keras_major(spec))

            if input_layout != "keras":
                fail("--verify compares in the Keras layout; drop --input-layout to verify", EXIT_USAGE)
            if samples is not None:
                xs = model.arrange_inputs(samples)
            else:
                xs = sample_inputs(model.input_types, graph=model.graph)
            xs = [np.asarray(x, dtype=t.np_dtype) for x, t in zip(xs, model.input_types)]  # token ids stay ids
            frontend = lower(spec, ConversionOptions(dtype=dtype, strict=strict,
                                                     allow_non_linear_activation=allow_non_linear_activation)).graph
            stages.next("comparing keydnn with Keras, layer by layer")
            report, expected = verify_against_keras(model, keras_model, xs, frontend_graph=frontend,
                                                    rtol=rtol, atol=atol)
            click.echo(report.text(), err=True)
            if not report.ok:
                fail(f"verification failed; {dst} was not written", EXIT_FAILED)
            outputs = [np.asarray(e, dtype=t.np_dtype) for e, t in zip(expected, model.output_types)]
            model.verification = {"inputs": xs, "outputs": outputs, "rtol": rtol, "atol": atol, "source": "keras"}
        stages.next("writing " + Path(dst).name)
        from keydnn.backends.artifact import default_sidecar, sidecar_path

        if sidecar is None:
            sidecar = default_sidecar(model.graph)
        written = model.save(dst, sidecar=sidecar)
        n_params = sum(int(a.size) for a in model.graph.weights.values())
        beside = f" (weights in {sidecar_path(written).name} beside it)" if sidecar else ""
        click.echo(f"wrote {written}{beside}: {len(model.graph.nodes)} nodes, {n_params} parameters, "
                   f"input {model.input_types[0]}, output {model.output_names[0]} {model.output_types[0]}", err=True)


def _one_of(arg_name: str, arg: str | None, option: str, value: str | None) -> str:
    """SRC/DST given positionally or as --src/--dst (the older spelling), not both differently."""
    if arg is not None and value is not None and arg != value:
        fail(f"{arg_name} {arg!r} and {option} {value!r} disagree; give one of them", EXIT_USAGE)
    chosen = arg if arg is not None else value
    if chosen is None:
        what = "the Keras model file" if arg_name == "SRC" else "the artifact to write"
        fail(f"missing {arg_name} ({what}); usage: keydnn convert SRC DST (or --src SRC --dst DST)", EXIT_USAGE)
    return chosen

