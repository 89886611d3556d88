"""qdiff_lib: the library behind the companion book to arXiv:2504.00034.

A diffusion model whose lightweight U-Net carries a variational quantum circuit in its bottleneck.
Modules: ``data`` (datasets), ``quantum`` (circuits and simulators), ``schedules`` (beta schedules),
``noise`` (Gaussian and quantum noise sources), ``unet``, ``diffusion``, ``train``, ``metrics``; ``experiment``
(one run, from its options to its result files), ``study`` (the grids of runs behind the book), ``parallel``
(running them at once, locally or on a Dask cluster) and ``cli`` (``python -m qdiff_lib``); ``stats``,
``verdicts`` and ``claims`` (paired comparisons, verdict rules, the family of claims), and the readers of the
studies, each fixed before its data: ``decomposition`` (MNIST, the controls), ``convergence`` (longer training and
tuning), ``scaling``, ``medmnist_reader`` and ``released`` (the model as released).

Importing the package first pins the CPU numerics (:mod:`qdiff_lib.numerics`): it must happen before numpy,
scipy or torch compute anything, so nothing is imported above it.
"""

from qdiff_lib import numerics as _numerics

_numerics.pin()

from importlib.metadata import PackageNotFoundError, version  # noqa: E402  (after the pin, deliberately)

try:
    __version__ = version("qdiff_lib")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.1.0"

from pathlib import Path  # noqa: E402  (after the pin, deliberately)

#: Repository root, resolved from the package location (never the working directory).
REPO_ROOT = Path(__file__).resolve().parent.parent
