"""The ``keydnn`` command line (also ``python -m keydnn``).

Exit status: 0 success; 1 the model could not be converted or failed
verification; 2 bad usage or unreadable input. Errors are one paragraph on
stderr, never a traceback (set KEYDNN_DEBUG=1 to see one), and a failed
command never leaves a partial or clobbered output file.
"""

from __future__ import annotations

import logging
import sys

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
    _show_compile_progress()


def _show_compile_progress() -> None:
    """Print the CPU backend's compile messages to stderr: a model's first run on a machine compiles its
    generated code (seconds), later runs load it from the cache and print nothing."""
    log = logging.getLogger("keydnn.compile")
    if any(getattr(h, "_keydnn_cli", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("keydnn: %(message)s"))
    handler.setLevel(logging.INFO)
    handler._keydnn_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)


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
