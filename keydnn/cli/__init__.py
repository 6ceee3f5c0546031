"""The ``keydnn`` command line (also ``python -m keydnn``).

Exit status: 0 success; 1 the model could not be converted or failed
verification; 2 bad usage or unreadable input. Errors are one paragraph on
stderr, never a traceback (set KEYDNN_DEBUG=1 to see one), and a failed
command never leaves a partial or clobbered output file.
"""

from __future__ import annotations

import click

import keydnn
from keydnn.cli.common import fail

__all__ = ["main", "cli"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(keydnn.__version__, "--version", prog_name="keydnn")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars (compiling, run, --verify) on or off; default: bars when stderr is a terminal, "
                   "else one line per compile. Also KEYDNN_PROGRESS=0/1.")
def cli(progress: bool | None) -> None:
    """Convert trained Keras models into fast KeyDNN models, inspect and run them.

    \b
    Examples:
      keydnn convert model.h5 model.json
      keydnn summary model.json
      keydnn run model.json --input x.npy --output y.npy
      keydnn profile model.json --batch 64
      keydnn inspect-ir model.keras --after all
    """
    if progress is not None:
        from keydnn.progress import setting

        ctx = click.get_current_context()
        ctx.with_resource(setting(progress))  # for this command, undone when it ends


def _register() -> None:
    from keydnn.cli import convert, insight, inspect, tools  # noqa: F401  (each module adds its commands to `cli`)


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="keydnn", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        fail("interrupted", 130)


if __name__ == "__main__":  # pragma: no cover
    main()
