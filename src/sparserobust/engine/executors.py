"""Executors: where tasks run. ``inline`` (this process), ``local`` (a process pool
on this machine) and ``ray`` (Ray tasks on a cluster, or a local Ray instance).

Every executor runs ``fn(*args)`` for a task and hands the result back to the
driver; none of them writes the results store. Workers use one torch thread per
CPU the task asks for, so a study's numbers do not depend on the executor (on
CPU, with ``OMP_NUM_THREADS=1`` for inline runs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch

from sparserobust.engine.plan import Resources
from sparserobust.errors import ClusterError, ConfigError, SparseRobustError, StoreError
from sparserobust.settings import check_value

log = logging.getLogger(__name__)

EXECUTOR_NAMES = ("inline", "local", "ray")


class Executor(ABC):
    """Runs task functions; ``capacity`` is how many may be in flight at once."""

    name: str = "executor"
    capacity: int = 1
    threads: int | None = None
    """Torch threads per task (None: the process default)."""

    @abstractmethod
    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], resources: Resources) -> Any:
        """Start ``fn(*args)``; returns a handle."""

    @abstractmethod
    def wait(self, handles: Sequence[Any]) -> list[tuple[Any, Any]]:
        """Block until at least one of ``handles`` finished; ``(handle, result)`` for
        each finished one, in submission order. A task's error is raised here."""

    def close(self, cancel: bool) -> None:  # noqa: B027 - optional hook
        """Release workers; ``cancel`` drops tasks still queued or running."""

    def describe(self) -> dict[str, Any]:
        """What the provenance records about how the numbers were computed."""
        return {"executor": self.name, "threads": self.threads}


class InlineExecutor(Executor):
    """Runs each task in this process when it is waited for (``--jobs 1``)."""

    name = "inline"
    capacity = 1

    def __init__(self) -> None:
        self._calls: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        self._next = 0

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], resources: Resources) -> Any:
        self._next += 1
        self._calls[self._next] = (fn, args)
        return self._next

    def wait(self, handles: Sequence[Any]) -> list[tuple[Any, Any]]:
        handle = min(handles)
        fn, args = self._calls.pop(handle)
        return [(handle, fn(*args))]


def _worker_init(parent: int) -> None:
    """One torch thread; exit as soon as the parent process is gone (a killed run
    must not leave workers behind that keep computing or wait forever)."""
    torch.set_num_threads(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class LocalExecutor(Executor):
    """A pool of ``jobs`` spawned worker processes on this machine, one torch thread
    each (``--jobs N``)."""

    name = "local"
    threads = 1

    def __init__(self, jobs: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if jobs < 1:
            raise ConfigError(f"jobs must be at least 1, got {jobs}")
        self.capacity = jobs
        self._pool = ProcessPoolExecutor(
            jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(os.getpid(),),
        )
        self._order: dict[Any, int] = {}

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], resources: Resources) -> Any:
        fut = self._pool.submit(fn, *args)
        self._order[fut] = len(self._order)
        return fut

    def wait(self, handles: Sequence[Any]) -> list[tuple[Any, Any]]:
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as wait_futures
        from concurrent.futures.process import BrokenProcessPool

        done, _ = wait_futures(list(handles), return_when=FIRST_COMPLETED)
        out = []
        for fut in sorted(done, key=lambda f: self._order[f]):
            try:
                out.append((fut, fut.result()))
            except BrokenProcessPool:
                raise StoreError(
                    "a worker process died (out of memory, killed, or run_study was called "
                    "from a script without an `if __name__ == '__main__':` guard): run again "
                    "to resume, or use --jobs 1"
                ) from None
            self._order.pop(fut, None)
        return out

    def close(self, cancel: bool) -> None:
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "jobs": self.capacity}


def _ray_call(fn: Callable[..., Any], args: tuple[Any, ...], threads: int) -> Any:
    """Run one task in a Ray worker with ``threads`` torch threads."""
    torch.set_num_threads(max(1, threads))
    return fn(*args)


def check_address(address: str, timeout: float = 5.0) -> None:
    """ClusterError at once when nothing listens at ``HOST:PORT`` (``auto`` and
    ``ray://`` addresses are left to Ray)."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ClusterError(
            f"--address {address!r} is not HOST:PORT, 'auto' or ray://HOST:PORT: "
            "give the head node's address as printed by `ray start --head`"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}): start one with "
            "`ray start --head` and pass the address it prints, or leave out --address "
            "to start Ray on this machine"
        ) from None


class RayExecutor(Executor):
    """Ray tasks, each asking for its :class:`Resources` (``num_cpus``, ``num_gpus``).

    ``address`` connects to a running cluster (``auto`` or ``HOST:PORT``); None starts
    a local Ray instance with ``jobs`` CPUs. A task whose worker or node dies is
    retried by Ray (up to ``retries`` times) on another node; if it still fails the
    study stops with a one-line error and a re-run resumes it."""

    name = "ray"
    threads = 1

    def __init__(
        self, address: str | None = None, jobs: int = 1, retries: int = 3, timeout: float = 30.0
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "the ray executor needs Ray: pip install 'sparserobust[ray]'"
            ) from None
        self._ray = ray
        self._own = False
        if address is not None:
            check_address(address)
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "logging_level": logging.WARNING,
                "log_to_driver": False,
                "include_dashboard": False,
            }
            try:
                if address is None:
                    ray.init(num_cpus=jobs, **kwargs)
                else:
                    kwargs.pop("include_dashboard")
                    ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ClusterError(
                    f"cannot connect to Ray at {address or 'a new local instance'}: {first}"
                ) from None
            self._own = True
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        self.capacity = max(1, int(cpus)) * 2  # a short queue keeps every CPU busy
        self.address = address
        self.retries = retries
        self._remote = ray.remote(_ray_call)
        self._order: dict[Any, int] = {}

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], resources: Resources) -> Any:
        ref = self._remote.options(
            num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=self.retries
        ).remote(fn, args, int(max(1, resources.cpus)))
        self._order[ref] = len(self._order)
        return ref

    def wait(self, handles: Sequence[Any]) -> list[tuple[Any, Any]]:
        ray = self._ray
        done, _ = ray.wait(list(handles), num_returns=1)
        # collect whatever else has finished too, without waiting
        more, _ = (
            ray.wait([h for h in handles if h not in done], num_returns=len(handles) - 1, timeout=0)
            if len(handles) > 1
            else ([], [])
        )
        out = []
        for ref in sorted([*done, *more], key=lambda r: self._order[r]):
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if hasattr(exc, "cause") else None
                if isinstance(cause, SparseRobustError):
                    raise cause from None
                raise StoreError(f"a Ray task failed: {cause or exc}") from None
            except (ray.exceptions.RayError, ConnectionError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ClusterError(
                    f"a Ray worker or node died and the task failed after {self.retries} "
                    f"retries ({first}): run again to resume"
                ) from None
            self._order.pop(ref, None)
            out.append((ref, result))
        return out

    def close(self, cancel: bool) -> None:
        ray = self._ray
        if cancel:
            for ref in list(self._order):
                with contextlib.suppress(Exception):  # best effort on the way out
                    ray.cancel(ref, force=True)
        if self._own and ray.is_initialized():
            ray.shutdown()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "address": self.address}


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def check_jobs(name: str, jobs: int, address: str | None = None, warn: bool = True) -> None:
    """``jobs`` workers for executor ``name``: in ``[1, MAX_JOBS]`` (settings.check_value);
    with a local Ray instance (``ray`` without ``address``) at most the available CPUs,
    since Ray starts one Python worker per CPU it is told about before running anything
    (``-j 10**9`` never finished starting): ConfigError. A local pool above the CPUs
    works (it starts a process per queued task, up to ``jobs``, and the CPUs are shared):
    a warning (``warn``) says so. With an ``address`` the cluster's CPUs set the
    parallelism and ``-j`` is not used: a warning when it was given."""
    check_value("jobs", jobs, "--jobs")
    if address is not None and name != "ray":
        raise ConfigError("--address is for --executor ray: add --executor ray or drop it")
    cpus = available_cpus()
    if name == "ray" and address is None and jobs > cpus:
        raise ConfigError(
            f"--jobs {jobs} is more than the {cpus} CPUs here: a local Ray instance starts "
            f"one worker process per CPU it is given before any task runs; use -j {cpus} "
            "or less, or --address to use a cluster"
        )
    if not warn:
        return
    if name == "local" and jobs > cpus:
        log.warning(
            "--jobs %d is more than the %d CPUs here: up to %d worker processes will share "
            "them (each with its own copy of the model and data), so the study is no faster "
            "than with -j %d",
            jobs, cpus, jobs, cpus,
        )  # fmt: skip
    if name == "ray" and address is not None and jobs > 1:
        log.warning("--jobs is not used with --address: the cluster's CPUs set the parallelism")


def make_executor(name: str, jobs: int = 1, address: str | None = None) -> Executor:
    """The executor ``name`` (inline, local or ray); ConfigError for a bad choice or a
    worker count :func:`check_jobs` refuses."""
    check_jobs(name, jobs, address, warn=False)
    if name == "inline":
        return InlineExecutor()
    if name == "local":
        return LocalExecutor(jobs)
    if name == "ray":
        return RayExecutor(address, jobs)
    raise ConfigError(f"unknown executor {name!r}: choose one of {', '.join(EXECUTOR_NAMES)}")
