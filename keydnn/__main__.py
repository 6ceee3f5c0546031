"""``python -m keydnn``: the same command line as the ``keydnn`` script."""

from keydnn.cli import main

if __name__ == "__main__":
    main()
