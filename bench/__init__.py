"""Benchmarks of the companion's library (``python -m bench``); timing lives here, never in the tests.

Importing the package imports ``qdiff_lib`` first, so that every benchmark runs under the pinned CPU numerics
(:mod:`qdiff_lib.numerics`), whatever its modules import next.
"""

import qdiff_lib  # noqa: F401  (first: pins the CPU numerics before numpy, scipy or torch compute anything)
