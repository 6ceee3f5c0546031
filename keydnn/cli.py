"""The ``keydnn`` command line (also ``python -m keydnn``).

Exit status: 0 success; 1 the model could not be converted or failed
verification; 2 bad usage or unreadable input. Errors are one paragraph on
stderr, never a traceback (set KEYDNN_DEBUG=1 to see one), and a failed
command never leaves a partial or clobbered output file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

import keydnn
from keydnn.errors import ArtifactError, KerasInteropError, KeydnnError

__all__ = ["main", "cli"]

EXIT_FAILED = 1
EXIT_USAGE = 2


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"keydnn: error: {message}", err=True)
    sys.exit(code)


class _Guard:
    """Turn keydnn errors into clean messages and exit codes."""

    def __init__(self, unreadable_code: int = EXIT_USAGE) -> None:
        self.unreadable_code = unreadable_code

    def __enter__(self) -> "_Guard":
        return self

    def __exit__(self, etype, exc, tb) -> bool:
        if exc is None or isinstance(exc, (SystemExit, click.exceptions.Exit, click.ClickException)):
            return False
        if os.environ.get("KEYDNN_DEBUG"):
            return False
        if isinstance(exc, KeyboardInterrupt):
            _fail("interrupted", 130)
        if isinstance(exc, ArtifactError):
            _fail(str(exc), self.unreadable_code)
        if isinstance(exc, ImportError):
            _fail(str(exc), EXIT_FAILED)
        if isinstance(exc, KeydnnError):
            _fail(str(exc), EXIT_FAILED)
        if isinstance(exc, (ValueError, TypeError)):
            _fail(str(exc), EXIT_USAGE)
        if isinstance(exc, OSError):
            _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), EXIT_USAGE)
        _fail(f"internal error ({type(exc).__name__}: {exc}); rerun with KEYDNN_DEBUG=1 for a traceback "
              "and please report it", EXIT_FAILED)


def _read_source(src: str) -> tuple[str, Any]:
    """Tell a KeyDNN artifact from a Keras file; ('artifact', LoadedArtifact) or ('keras', ModelSpec)."""
    path = Path(src)
    if not path.exists():
        _fail(f"{src}: no such file", EXIT_USAGE)
    if path.is_dir():
        _fail(f"{src}: is a directory; expected a .keras, .h5 or KeyDNN .json file", EXIT_USAGE)
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip()
    if head.startswith(b"{"):
        from keydnn.backends.artifact import load_artifact

        return "artifact", load_artifact(path)
    from keydnn.frontends.keras import load_spec

    try:
        return "keras", load_spec(path)
    except KerasInteropError as exc:
        _fail(str(exc), EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(keydnn.__version__, "--version", prog_name="keydnn")
def cli() -> None:
    """Convert trained Keras models into fast KeyDNN models and inspect their IR.

    \b
    Examples:
      keydnn convert --src model.h5 --dst model.json
      keydnn inspect-ir model.keras --after all
      python -m keydnn convert --src model.keras --dst model.json --passes infer-shapes
    """


@cli.command()
@click.option("--src", required=True, type=click.Path(dir_okay=False), help="Keras model file (.keras or .h5).")
@click.option("--dst", required=True, type=click.Path(dir_okay=False), help="KeyDNN artifact to write (.json).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N (checked at conversion).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--strict/--no-strict", default=True, show_default=True,
              help="Refuse unsupported layers (--no-strict keeps them as placeholders; the result cannot run).")
@click.option("--allow-non-linear-activation", is_flag=True, help="Accept fused activations such as Dense(activation='relu').")
@click.option("--passes", default=None, help="Pass pipeline, comma-separated (default: the standard pipeline).")
@click.option("--sidecar", is_flag=True, help="Store weights in a binary file beside the JSON.")
def convert(src: str, dst: str, device: str, dtype: str, strict: bool, allow_non_linear_activation: bool,
            passes: str | None, sidecar: bool) -> None:
    """Convert a Keras model file into a KeyDNN artifact.

    \b
    Example:
      keydnn convert --src model.h5 --dst model.json
    """
    from keydnn.ir.passes import DEFAULT_PIPELINE

    with _Guard():
        kind, spec = _read_source(src)
        if kind != "keras":
            _fail(f"{src} is already a KeyDNN artifact; convert takes a .keras or .h5 file", EXIT_USAGE)
        dst_dir = Path(dst).resolve().parent
        if not dst_dir.is_dir():
            _fail(f"cannot write {dst}: directory {dst_dir} does not exist", EXIT_USAGE)
        model = keydnn.from_keras(spec, device=device, dtype=dtype, strict=strict,
                                  allow_non_linear_activation=allow_non_linear_activation,
                                  passes=passes or DEFAULT_PIPELINE)
        written = model.save(dst, sidecar=sidecar)
        n_params = sum(int(a.size) for a in model.graph.weights.values())
        click.echo(f"wrote {written}: {len(model.graph.nodes)} nodes, {n_params} parameters, "
                   f"input {model.input_types[0]}, output {model.output_types[0]}", err=True)


@cli.command("inspect-ir")
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("--after", "after", default=None,
              help="Print the IR after this pass ('frontend' for the unoptimized IR, 'all' for every step).")
@click.option("--passes", default=None, help="Pass pipeline to run (for an artifact: extra passes, default none).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--strict/--no-strict", default=False, show_default=True,
              help="Refuse unsupported layers instead of showing them as placeholders.")
@click.option("--allow-non-linear-activation", is_flag=True)
@click.option("--time-passes", is_flag=True, help="Print each pass's run time to stderr.")
def inspect_ir(src: str, after: str | None, passes: str | None, fmt: str, strict: bool,
               allow_non_linear_activation: bool, time_passes: bool) -> None:
    """Print the IR of a Keras model file or a KeyDNN artifact.

    \b
    Examples:
      keydnn inspect-ir model.h5                 # IR after the default pipeline
      keydnn inspect-ir model.h5 --after all     # the IR after every pass
      keydnn inspect-ir model.json --format json
    """
    import warnings

    from keydnn.frontends.keras import ConversionOptions, convert
    from keydnn.ir.passes import DEFAULT_PIPELINE, PassManager

    with _Guard():
        kind, obj = _read_source(src)
        if kind == "artifact":
            graph, spec_passes = obj.graph, passes or ""
        else:
            options = ConversionOptions(strict=strict, allow_non_linear_activation=allow_non_linear_activation)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # placeholders are the point of inspecting non-strictly
                graph = convert(obj, options).graph
            spec_passes = DEFAULT_PIPELINE if passes is None else passes
        manager = PassManager(spec_passes)
        if after and after not in ("all", "frontend", "input") and after not in manager.names:
            _fail(f"--after {after!r}: no such pass in the pipeline {manager.names}", EXIT_USAGE)
        chunks: list[tuple[str, Any]] = []
        input_label = "frontend" if kind == "keras" else "input"
        manager.print_after = {"input" if after == "frontend" else after} if after else set()
        manager.printer = lambda name, g: chunks.append((input_label if name == "input" else name, g))
        result = manager.run(graph)
        if not after:
            chunks = [("final", result.graph)]
        if time_passes:
            click.echo(result.timing_table(), err=True)
        if fmt == "json":
            payload = [{"after": name, "graph": g.model_dump(mode="json")} for name, g in chunks]
            click.echo(json.dumps(payload[0]["graph"] if len(payload) == 1 else payload, indent=2))
        else:
            for i, (name, g) in enumerate(chunks):
                if len(chunks) > 1:
                    click.echo(f"// ----- IR after {name} -----")
                click.echo(str(g), nl=False)


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="keydnn", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        _fail("interrupted", 130)


if __name__ == "__main__":  # pragma: no cover
    main()
