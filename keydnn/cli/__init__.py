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
def cli() -> None:
    """Convert trained Keras models into fast KeyDNN models and inspect their IR.

    \b
    Examples:
      keydnn convert --src model.h5 --dst model.json
      keydnn inspect-ir model.keras --after all
      python -m keydnn convert --src model.keras --dst model.json --passes infer-shapes
    """




def _register() -> None:
    from keydnn.cli import convert, inspect, tools  # noqa: F401  (each module adds its commands to `cli`)


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="keydnn", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        fail("interrupted", 130)


if __name__ == "__main__":  # pragma: no cover
    main()
