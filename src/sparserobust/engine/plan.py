"""A study as a task graph: dense training -> pruning sweeps -> measurement cells.

:func:`plan` looks at the config and what the results store already holds and
returns the tasks still to do, each with explicit dependencies (a sweep needs its
seed's dense model; a measurement needs its model). The scheduler
(:mod:`sparserobust.engine.scheduler`) runs them over an executor; the driver
records each result in the store as it arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sparserobust.config import StudyConfig
from sparserobust.engine.tasks import (
    front_key,
    model_key,
    task_dense,
    task_front,
    task_measure,
    task_sweep,
)
from sparserobust.errors import StoreError
from sparserobust.measurements import MeasurementCell, plan_cells
from sparserobust.store import ResultStore, params_hash

KIND_ORDER = {"dense": 0, "sweep": 1, "front": 2, "measure": 3}
"""Among ready tasks, dense models first, then sweeps (they gate the most work), then
the dense-front models."""


@dataclass(frozen=True)
class Resources:
    """What one task needs: CPU cores (its torch threads) and a share of a GPU."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass
class Task:
    """One unit of work: ``fn(config, run_dir, *args())`` in a worker.

    ``args`` is called in the driver just before the task is submitted (a
    measurement learns its model's checkpoint path once the sweep registered it).
    ``what`` identifies the work for the driver's bookkeeping: the seed (dense),
    ``(seed, method)`` (sweep), ``(seed, front id)`` (front) or ``(model_key, cell)``
    (measure)."""

    id: str
    kind: str
    seed: int
    fn: Callable[..., Any]
    args: Callable[[], tuple[Any, ...]]
    what: Any
    deps: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)

    def sort_key(self, index: int) -> tuple[int, int, int]:
        return (KIND_ORDER[self.kind], self.seed, index)


def _const(args: tuple[Any, ...]) -> Callable[[], tuple[Any, ...]]:
    return lambda: args


def measure_task_id(key: str, cell: MeasurementCell) -> str:
    return f"measure:{key}:{cell.key}:{params_hash(cell.params)}"


def plan(config: StudyConfig, store: ResultStore, resources: Resources | None = None) -> list[Task]:
    """The tasks of ``config`` not yet finished in ``store``, with their dependencies."""
    res = resources or Resources()
    tasks: list[Task] = []
    seen: set[str] = set()

    def checkpoint_of(key: str) -> Callable[[], tuple[Any, ...]]:
        def args() -> tuple[Any, ...]:
            row = store.get_model(key)
            if row is None:  # its sweep finished without this level: never silently skip
                raise StoreError(
                    f"model {key} was not produced by its sweep: run again, or --force to redo"
                )
            return (row.checkpoint,)

        return args

    def measures(seed: int, key: str, deps: tuple[str, ...]) -> None:
        for cell in plan_cells(config.eval, seed):
            tid = measure_task_id(key, cell)
            if tid in seen or store.has_result(key, cell.key, cell.params):
                continue
            seen.add(tid)
            base = checkpoint_of(key)
            tasks.append(
                Task(
                    tid,
                    "measure",
                    seed,
                    task_measure,
                    lambda base=base, cell=cell: (*base(), cell),  # type: ignore[misc]
                    (key, cell),
                    deps,
                    res,
                )
            )

    for seed in config.seeds:
        dense_key = model_key(seed, "dense", 0.0)
        dense_deps: tuple[str, ...] = ()
        if store.get_model(dense_key) is None:
            dense_id = f"dense:s{seed}"
            dense_deps = (dense_id,)
            tasks.append(Task(dense_id, "dense", seed, task_dense, _const((seed,)), seed, (), res))
        measures(seed, dense_key, dense_deps)
        for method in config.pruning.methods:
            keys = [model_key(seed, method, t) for t in config.pruning.grid(method)]
            registered = {k for k in keys if store.get_model(k) is not None}
            sweep_id = f"sweep:s{seed}:{method}"
            if len(registered) < len(keys):
                tasks.append(
                    Task(
                        sweep_id,
                        "sweep",
                        seed,
                        task_sweep,
                        _const((seed, method)),
                        (seed, method),
                        dense_deps,
                        res,
                    )
                )
            for k in keys:
                measures(seed, k, () if k in registered else (sweep_id,))
        for front in config.control.front_models():
            key = front_key(seed, front)
            front_deps: tuple[str, ...] = ()
            if store.get_model(key) is None:
                front_task = f"front:s{seed}:{front}"
                front_deps = (front_task,)
                tasks.append(
                    Task(
                        front_task,
                        "front",
                        seed,
                        task_front,
                        _const((seed, front)),
                        (seed, front),
                        (),
                        res,
                    )
                )
            measures(seed, key, front_deps)
    return tasks


__all__ = ["Resources", "Task", "plan"]
