"""Benchmarks of the companion's library (``python -m bench``); timing lives here, never in the tests."""
