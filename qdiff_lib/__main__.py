"""``python -m qdiff_lib``: the command line of :mod:`qdiff_lib.cli`."""

import sys

from qdiff_lib.cli import main

sys.exit(main())
