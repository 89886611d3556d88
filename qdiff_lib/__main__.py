"""``python -m qdiff_lib``: the command line of :mod:`qdiff_lib.cli`."""

import sys

from qdiff_lib.cli import main

if __name__ == "__main__":  # not when a worker process started with spawn imports this module
    sys.exit(main())
