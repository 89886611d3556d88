"""Shared test configuration."""

from __future__ import annotations

import os

import qdiff_lib  # noqa: F401  (first: pins the CPU numerics before numpy, scipy or torch compute anything)

# isort: split
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def one_thread():
    """One intra-op thread for the duration of a test. Batches of a few images gain nothing from threads, and on a
    loaded 2-core machine two threads spin against each other (measured: a 30-step run took 39 s wall with 2
    threads against 5 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
