"""The study engine: plan a study as a task graph, schedule it over an executor.

- :mod:`.tasks`: the work (train dense, sweep a method, run a measurement cell);
- :mod:`.plan`: which tasks remain and what each depends on;
- :mod:`.scheduler`: the one loop that runs ready tasks and records results;
- :mod:`.executors`: inline, a local process pool, or Ray.
"""

from sparserobust.engine.executors import EXECUTOR_NAMES, Executor, make_executor
from sparserobust.engine.plan import Resources, Task, plan
from sparserobust.engine.scheduler import run_tasks

__all__ = ["EXECUTOR_NAMES", "Executor", "Resources", "Task", "make_executor", "plan", "run_tasks"]
