"""Many independent tasks at once: in this process, on local worker processes, or on a running Dask cluster.

:class:`Executor` runs a function over named argument tuples and reports, as each task finishes, whether it
succeeded; a task that raises is recorded as a :class:`TaskFailure` (its name and the exception's message) and
never stops the others. :func:`qdiff_lib.study.run_study` runs its configurations through it. Three ways:

* ``workers=1`` (or a single task): in this process, one task after the other;
* ``workers=N``: a ``dask.distributed.LocalCluster`` of N worker processes (``processes=True``, one thread each);
* ``scheduler=ADDRESS``: a running Dask cluster (``tcp://host:8786``), e.g. one started on a university cluster
  with ``dask-jobqueue`` (README.md, "The full study and the benchmarks").

Why Dask for the local case too, rather than ``concurrent.futures.ProcessPoolExecutor``: one code path from a
laptop to a cluster, so what the tests check locally is what runs there; and a worker process that dies (killed by
the operating system for memory, say) is replaced and its task retried, then reported as failed
(``KilledWorker``), while the other tasks go on (a ``ProcessPoolExecutor`` breaks as a whole,
``BrokenProcessPool``, and fails every pending task). The cost, a few seconds to start the local cluster and import
the library in each worker, is nothing next to a full-profile run (minutes to hours).

Numerics: the local worker processes are started with ``spawn`` and inherit this process's environment, which
``import qdiff_lib`` has already pinned (:mod:`qdiff_lib.numerics`), and import ``qdiff_lib`` when they start
(``preload``), before any task computes. Workers of another cluster must be started the same way (``dask worker
--preload qdiff_lib`` with the variables of :func:`worker_exports` exported); the tasks of :mod:`qdiff_lib.study`
check this and fail with a message saying so where it is not the case.

Speed: Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which makes glibc hand memory back
to the system after almost every free and serve every tensor above 128 KiB by a fresh ``mmap``: a training step
took twice as long (measured: 91 against 49 ms for a small ``se`` run). The workers started here, and those
started with :func:`worker_exports`, run without it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TaskFailure", "Executor", "default_workers", "worker_exports"]

#: Dask configuration of the workers' nannies: no ``MALLOC_TRIM_THRESHOLD_`` (see the module docstring).
_NANNY_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


@dataclass(frozen=True)
class TaskFailure:
    """A task that raised: its name and ``"ExceptionType: message"``."""

    name: str
    error: str

    def __str__(self) -> str:
        return f"{self.name}: {self.error}"


def default_workers() -> int:
    """The number of CPU cores this process may use (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_exports() -> list[str]:
    """Shell lines that prepare the environment of ``dask worker`` on another machine (e.g. the
    ``job_script_prologue`` of ``dask-jobqueue``): the pinned numerics (:data:`qdiff_lib.numerics.PINNED_ENV`, unless
    ``QDIFF_NUMERICS=native``) and Dask's nanny configuration without ``MALLOC_TRIM_THRESHOLD_``."""
    from qdiff_lib import numerics

    env = dict(numerics.PINNED_ENV) if numerics.mode() == "pinned" else {}
    env["DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"] = '{"MALLOC_TRIM_THRESHOLD_": None}'
    return [f"export {name}={shlex.quote(value)}" for name, value in env.items()]


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


@contextlib.contextmanager
def _without_env(name: str):
    """``os.environ`` without ``name`` inside the block; its value (if any) back afterwards."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        os.environ.pop(name, None)  # what Dask sets while the block runs goes too
        if saved is not None:
            os.environ[name] = saved


class Executor:
    """Runs tasks in this process (``workers=1``), on a local Dask cluster (``workers>1``) or on the Dask cluster
    whose scheduler listens at ``scheduler``. Use as a context manager: leaving it shuts down what it started.

    The local cluster is started on the first call of :meth:`run` with more than one task, with as many workers as
    tasks (at most ``workers``), and grows up to ``workers`` when a later call has more tasks.
    """

    def __init__(self, workers: int = 1, scheduler: str | None = None):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        self.workers = workers
        self.scheduler = scheduler
        self._cluster = None
        self._client = None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect from the scheduler and stop the local cluster, if any."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def where(self, n_tasks: int) -> str:
        """Where :meth:`run` runs ``n_tasks`` tasks, in words."""
        if self.scheduler:
            return f"on the Dask cluster at {self.scheduler}"
        if self._in_process(n_tasks):
            return "in this process"
        return f"on {min(self.workers, n_tasks)} local worker processes"

    def _in_process(self, n_tasks: int) -> bool:
        return not self.scheduler and (self.workers == 1 or n_tasks == 1)

    def _dask_client(self, n_tasks: int):
        import dask
        from distributed import Client, LocalCluster

        if self.scheduler:
            if self._client is None:
                try:
                    self._client = Client(self.scheduler)
                except OSError as error:  # refused, unresolvable, or timed out
                    raise ConnectionError(f"no Dask scheduler answers at {self.scheduler!r}: {error}") from None
            return self._client
        wanted = min(self.workers, n_tasks)
        # A Dask cluster started earlier in this process (by anyone) leaves MALLOC_TRIM_THRESHOLD_ in os.environ,
        # which the spawned workers would inherit whatever the nanny configuration says: hide it while ours spawn.
        with dask.config.set(_NANNY_CONFIG), _without_env("MALLOC_TRIM_THRESHOLD_"):
            if self._cluster is None:
                self._cluster = LocalCluster(n_workers=wanted, threads_per_worker=1, processes=True,
                                             dashboard_address=None, memory_limit=0, preload=["qdiff_lib"])
                self._client = Client(self._cluster)
            elif len(self._cluster.workers) < wanted:
                self._cluster.scale(wanted)
                self._client.wait_for_workers(wanted)  # the new nannies start inside this configuration
        return self._client

    def run(self, fn: Callable[..., Any], tasks: Mapping[str, tuple], progress: bool = True,
            desc: str = "") -> list[TaskFailure]:
        """Call ``fn(*args)`` for every ``name: args`` of ``tasks``; return the failures (empty: all succeeded).

        A progress bar (tqdm) counts the finished tasks and estimates the time left. ``fn`` and its arguments
        must be picklable for the Dask cluster (a module-level function: workers import it by name).
        """
        from tqdm.auto import tqdm

        if not tasks:
            return []
        failures: list[TaskFailure] = []
        with tqdm(total=len(tasks), desc=desc, unit="run", disable=not progress) as bar:
            for name, error in self._completed(fn, tasks):
                if error is not None:
                    failures.append(TaskFailure(name, error))
                    bar.set_postfix(failed=len(failures), refresh=False)
                bar.update(1)
        return failures

    def _completed(self, fn: Callable[..., Any], tasks: Mapping[str, tuple]) -> Iterator[tuple[str, str | None]]:
        """``(name, None)`` or ``(name, error message)`` for each task, as the tasks finish."""
        if self._in_process(len(tasks)):
            for name, args in tasks.items():
                try:
                    fn(*args)
                except Exception as error:  # reported; the other tasks go on (KeyboardInterrupt stops them all)
                    yield name, _describe(error)
                else:
                    yield name, None
            return
        from distributed import as_completed

        client = self._dask_client(len(tasks))
        futures = {client.submit(fn, *args, key=f"{name}-{uuid.uuid4().hex[:8]}", pure=False): name
                   for name, args in tasks.items()}
        try:
            for future in as_completed(futures):
                name = futures[future]
                try:
                    future.result()
                except Exception as error:  # raised by the task, or its worker died (KilledWorker), or cancelled
                    yield name, _describe(error)
                else:
                    yield name, None
        finally:  # on an interrupt: nothing left queued on the cluster
            client.cancel([future for future in futures if not future.done()])
