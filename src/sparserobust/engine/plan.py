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


@dataclass(frozen=True)
class PlannedModel:
    """One model a study plans: its store ``key``, ``seed``, ``kind`` (``"dense"``,
    ``"sweep"`` for a pruned model, ``"front"`` for a dense-front model), ``group``
    (the pruning method of a sweep, the front id of a front model, ``"dense"``) and
    the measurement ``cells`` planned on it."""

    key: str
    seed: int
    kind: str
    group: str
    cells: tuple[MeasurementCell, ...]


@dataclass(frozen=True)
class PlannedKeys:
    """The store identities a study plans: model keys, and results as (model key,
    measurement key, params hash)."""

    models: frozenset[str]
    results: frozenset[tuple[str, str, str]]


def planned_models(config: StudyConfig) -> list[PlannedModel]:
    """Every model of ``config`` in planning order: per seed the dense model, each
    method's grid, then the dense-front models; each with its planned cells."""
    out: list[PlannedModel] = []
    for seed in config.seeds:
        cells = tuple(plan_cells(config.eval, seed))
        out.append(PlannedModel(model_key(seed, "dense", 0.0), seed, "dense", "dense", cells))
        for method in config.pruning.methods:
            for t in config.pruning.grid(method):
                out.append(PlannedModel(model_key(seed, method, t), seed, "sweep", method, cells))
        for front in config.control.front_models():
            out.append(PlannedModel(front_key(seed, front), seed, "front", front, cells))
    return out


def planned_keys(config: StudyConfig) -> PlannedKeys:
    """The model keys and result identities ``config`` plans (:func:`planned_models`):
    what :func:`plan` schedules, what the report counts as complete and what a config
    must keep planning to reuse a run directory."""
    models = planned_models(config)
    return PlannedKeys(
        frozenset(m.key for m in models),
        frozenset((m.key, c.key, params_hash(c.params)) for m in models for c in m.cells),
    )


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

    def measures(model: PlannedModel, deps: tuple[str, ...]) -> None:
        for cell in model.cells:
            tid = measure_task_id(model.key, cell)
            if tid in seen or store.has_result(model.key, cell.key, cell.params):
                continue
            seen.add(tid)
            base = checkpoint_of(model.key)
            tasks.append(
                Task(
                    tid,
                    "measure",
                    model.seed,
                    task_measure,
                    lambda base=base, cell=cell: (*base(), cell),  # type: ignore[misc]
                    (model.key, cell),
                    deps,
                    res,
                )
            )

    models = planned_models(config)
    dense_deps: dict[int, tuple[str, ...]] = {}
    for m in models:
        if m.kind != "dense":
            continue
        dense_deps[m.seed] = ()
        if store.get_model(m.key) is None:
            dense_id = f"dense:s{m.seed}"
            dense_deps[m.seed] = (dense_id,)
            tasks.append(
                Task(dense_id, "dense", m.seed, task_dense, _const((m.seed,)), m.seed, (), res)
            )
        measures(m, dense_deps[m.seed])
        sweeps: dict[str, list[PlannedModel]] = {}
        for p in models:
            if p.seed == m.seed and p.kind == "sweep":
                sweeps.setdefault(p.group, []).append(p)
        for method, levels in sweeps.items():
            registered = {p.key for p in levels if store.get_model(p.key) is not None}
            sweep_id = f"sweep:s{m.seed}:{method}"
            if len(registered) < len(levels):
                tasks.append(
                    Task(
                        sweep_id,
                        "sweep",
                        m.seed,
                        task_sweep,
                        _const((m.seed, method)),
                        (m.seed, method),
                        dense_deps[m.seed],
                        res,
                    )
                )
            for p in levels:
                measures(p, () if p.key in registered else (sweep_id,))
        for p in models:
            if p.seed != m.seed or p.kind != "front":
                continue
            front_deps: tuple[str, ...] = ()
            if store.get_model(p.key) is None:
                front_task = f"front:s{p.seed}:{p.group}"
                front_deps = (front_task,)
                tasks.append(
                    Task(
                        front_task,
                        "front",
                        p.seed,
                        task_front,
                        _const((p.seed, p.group)),
                        (p.seed, p.group),
                        (),
                        res,
                    )
                )
            measures(p, front_deps)
    return tasks


__all__ = [
    "PlannedKeys",
    "PlannedModel",
    "Resources",
    "Task",
    "plan",
    "planned_keys",
    "planned_models",
]
