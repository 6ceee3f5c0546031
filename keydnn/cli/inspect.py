"""`keydnn inspect-ir`: print the IR of a Keras file or an artifact, after any pass."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

import keydnn
from keydnn.cli import cli
from keydnn.cli.common import EXIT_FAILED, EXIT_USAGE, Guard, fail, read_source


@cli.command("inspect-ir")
@click.argument("src", type=click.Path())
@click.option("--after", "after", default=None,
              help="Print the IR after this pass ('frontend' for the unoptimized IR, 'all' for every step).")
@click.option("--passes", default=None, help="Pass pipeline to run (for an artifact: extra passes, default none).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: the printed IR; json: the IR as the artifact stores it.")
@click.option("--strict/--no-strict", default=False, show_default=True,
              help="Refuse unsupported layers instead of showing them as placeholders.")
@click.option("--allow-non-linear-activation", is_flag=True,
              help="Accept fused activations such as Dense(activation='relu') (see `convert`).")
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

    with Guard():
        kind, obj = read_source(src)
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
            fail(f"--after {after!r}: no such pass in the pipeline {manager.names}", EXIT_USAGE)
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


