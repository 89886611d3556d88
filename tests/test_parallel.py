"""qdiff_lib.parallel: the executor of the study's runs (in this process, local Dask workers, a Dask cluster)."""

from __future__ import annotations

import os

import pytest

from qdiff_lib import numerics, parallel


def _fails_on_b(name: str) -> None:
    if name == "b":
        raise ValueError(f"task {name} is broken")


def test_in_process_failures_are_reported_and_the_others_run():
    done = []
    with parallel.Executor(workers=1) as executor:
        assert executor.where(3) == "in this process"
        failures = executor.run(lambda n: (_fails_on_b(n), done.append(n)), {n: (n,) for n in "abc"}, progress=False)
    assert failures == [parallel.TaskFailure("b", "ValueError: task b is broken")]
    assert done == ["a", "c"] and str(failures[0]) == "b: ValueError: task b is broken"
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        parallel.Executor(workers=0)


def test_local_workers_run_without_dask_malloc_trim_and_with_pinned_numerics():
    """Dask's default MALLOC_TRIM_THRESHOLD_ halves the speed of a training step: the local workers run without it,
    with this process's pinned numerics."""
    with parallel.Executor(workers=2) as executor:
        assert executor.where(5) == "on 2 local worker processes" and executor.where(1) == "in this process"
        assert executor.run(os.getcwd, {"a": (), "b": ()}, progress=False) == []
        trim = executor._client.run(os.getenv, "MALLOC_TRIM_THRESHOLD_")
        problems = executor._client.run(numerics.check)
    assert len(trim) == 2 and set(trim.values()) == {None}
    assert all(p == numerics.check() for p in problems.values())


def test_worker_exports_pin_the_numerics_and_drop_dask_malloc_trim(monkeypatch):
    lines = parallel.worker_exports()
    assert [f"export {k}={v}" for k, v in numerics.PINNED_ENV.items()] == lines[:-1]
    assert lines[-1] == """export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{"MALLOC_TRIM_THRESHOLD_": None}'"""
    monkeypatch.setenv(numerics.SWITCH, "native")
    assert len(parallel.worker_exports()) == 1
