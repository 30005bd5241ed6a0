"""One scheduling loop for every executor: submit ready tasks, record results.

A task is ready when every task it depends on has finished. Among ready tasks the
scheduler prefers dense models, then sweeps, then measurements (lower seed first),
and keeps at most ``executor.capacity`` in flight. Each result goes to ``on_done``
in the driver as soon as it arrives (the driver stores it, so an interrupted
study loses only the tasks in flight). A task that fails stops the loop with its
error; the caller owns the executor and closes it (cancelling what is in flight).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sparserobust.config import StudyConfig
from sparserobust.engine.executors import Executor
from sparserobust.engine.plan import Task
from sparserobust.errors import StoreError

log = logging.getLogger(__name__)


def run_tasks(
    tasks: Sequence[Task],
    executor: Executor,
    config: StudyConfig,
    run_dir: Path,
    on_done: Callable[[Task, Any], None],
    *,
    progress: bool = False,
) -> int:
    """Run ``tasks`` (with their dependencies) on ``executor``; ``on_done(task,
    result)`` is called in this process for each. Returns the number of tasks run."""
    ids = {t.id for t in tasks}
    order = {t.id: i for i, t in enumerate(tasks)}
    pending = {t.id: t for t in tasks}
    # dependencies outside the plan are already finished (stored)
    remaining = {t.id: {d for d in t.deps if d in ids} for t in tasks}
    running: dict[Any, Task] = {}
    finished = 0
    bar = tqdm(total=len(tasks), desc="tasks", disable=not progress)
    try:
        while pending or running:
            ready = sorted(
                (t for t in pending.values() if not remaining[t.id]),
                key=lambda t: t.sort_key(order[t.id]),
            )
            for task in ready[: max(0, executor.capacity - len(running))]:
                del pending[task.id]
                handle = executor.submit(task.fn, (config, run_dir, *task.args()), task.resources)
                running[handle] = task
            if not running:
                raise StoreError(  # pragma: no cover - plan() never builds a cycle
                    f"no task can start: {sorted(pending)[:3]} wait on each other"
                )
            for handle, result in executor.wait(list(running)):
                task = running.pop(handle)
                on_done(task, result)
                finished += 1
                bar.update()
                for other in remaining.values():
                    other.discard(task.id)
    finally:
        bar.close()
    return finished
