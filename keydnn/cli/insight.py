"""`keydnn summary` and `keydnn profile`: what a model is made of, and where a call spends its time."""

from __future__ import annotations

import json

import click

from keydnn.cli import cli
from keydnn.cli.common import Guard, open_model
from keydnn.cli.tools import FORMAT_HELP, threads_option


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help=FORMAT_HELP)
@click.option("--allow-non-linear-activation", is_flag=True,
              help="For a Keras MODEL: accept fused activations (see `convert`).")
def summary(model_path: str, fmt: str, allow_non_linear_activation: bool) -> None:
    """Keras-style summary of a model (artifact or .keras/.h5): layers, output shapes, parameters, total.

    \b
    Examples:
      keydnn summary model.json
      keydnn summary model.keras --allow-non-linear-activation
    """
    from keydnn.introspect import summary_rows

    with Guard():
        model = open_model(model_path, allow_non_linear_activation=allow_non_linear_activation, command="summary")
        if fmt == "json":
            total = int(sum(a.size for a in model.graph.weights.values()))
            click.echo(json.dumps({"model": model.graph.name, "layers": summary_rows(model), "total_params": total},
                                  indent=2))
        else:
            click.echo(model.summary())


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True, help="Samples per profiled call.")
@click.option("--repeat", type=click.IntRange(1, 100000), default=20, show_default=True,
              help="Profiled calls (after 3 untimed ones); the table gives the mean per call.")
@threads_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help=FORMAT_HELP)
@click.option("--allow-non-linear-activation", is_flag=True,
              help="For a Keras MODEL: accept fused activations (see `convert`).")
def profile(model_path: str, batch: int, repeat: int, threads: int | None, fmt: str,
            allow_non_linear_activation: bool) -> None:
    """Time each stage of a CPU model's generated code: ms per call and share of the whole.

    The counters are the generated code's own (a build with KEYDNN_CPU_PROFILE=1, compiled
    once and cached beside the normal one). A stage is one IR node or a fused group.

    \b
    Examples:
      keydnn profile model.json
      keydnn profile model.json --batch 64 --threads 2
    """
    from keydnn.introspect import profile_rows, profile_text

    with Guard():
        model = open_model(model_path, device="cpu", threads=threads,
                           allow_non_linear_activation=allow_non_linear_activation, command="profile")
        rows = profile_rows(model, batch=batch, repeat=repeat)
        if fmt == "json":
            click.echo(json.dumps({"model": model.graph.name, "batch": batch, "repeat": repeat, "stages": rows},
                                  indent=2))
        else:
            threads_text = f", {threads} thread(s)" if threads else ""
            click.echo(profile_text(rows, title=f"{model_path}: batch {batch}, mean of {repeat} calls{threads_text}"))
