"""The study pipeline: config -> dense -> sparsity sweeps -> attacks/metrics -> store -> report.

:func:`run_study` is what ``sparserobust run`` calls. Every finished piece of
work (a checkpoint, one measurement on one model) is stored at once and
atomically, so a re-run skips it and an interrupted run resumes where it
stopped with the same numbers as an uninterrupted one (on CPU, same seed).

:func:`evaluate_model` measures one model (every registered measurement the
eval settings switch on: attacks, CLEVER, active ReLUs, margin bounds...) and
:func:`sweep_robustness` runs a whole sparsity sweep on a user's own
``nn.Module`` and ``DataLoader`` without the CLI or a run directory.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparserobust.checkpoint import load_checkpoint
from sparserobust.config import AttackSettings, EvalSettings, StudyConfig, check_sparsities
from sparserobust.data import Split, resolve_data_dir
from sparserobust.engine.executors import EXECUTOR_NAMES, Executor, check_jobs, make_executor
from sparserobust.engine.plan import Resources, Task, plan, planned_keys
from sparserobust.engine.scheduler import run_tasks
from sparserobust.engine.tasks import (
    FRONT,
    dense_rel,
    front_key,
    front_rel,
    model_key,
    study_data,
)
from sparserobust.errors import ConfigError, StoreError, UnsafePathError
from sparserobust.measurements import MeasurementCell, plan_cells, records_of, timed_run_cell
from sparserobust.pruning import sparsity_report
from sparserobust.pruning.sweep import prune_model
from sparserobust.rundir import (
    DB_NAME,
    RunLock,
    check_force_target,
    check_layout,
    check_output,
    checkpoint_path,
    clean_stale_temps,
    drop_untrusted_models,
    open_no_follow,
    start_over,
)
from sparserobust.settings import check_value
from sparserobust.store import ModelRow, ResultStore, provenance, sha256_file
from sparserobust.training import evaluate_accuracy
from sparserobust.utils import resolve_device

log = logging.getLogger(__name__)


# --- measurements ----------------------------------------------------------------


def evaluate_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: EvalSettings,
    *,
    seed: int = 0,
    skip: Callable[[MeasurementCell], bool] | None = None,
    on_result: Callable[[MeasurementCell, dict[str, Any], float], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every planned measurement cell on ``model``; returns ``{cell key: numbers}``.

    ``skip(cell)`` may skip finished cells; ``on_result(cell, numbers, seconds)`` gets
    each result as soon as it is computed."""
    results: dict[str, dict[str, Any]] = {}
    for cell in plan_cells(settings, seed):
        if skip is not None and skip(cell):
            continue
        numbers, seconds = timed_run_cell(model, x, y, cell, settings.batch_size)
        log.info("%s: %s in %.1fs", cell.key, _brief(numbers), seconds)
        results[cell.key] = numbers
        if on_result is not None:
            on_result(cell, numbers, seconds)
    return results


def _brief(numbers: dict[str, Any]) -> str:
    """The records of a result as ``label=value`` pairs, for the log."""
    return ", ".join(f"{r.label}={r.value:.4g}" for r in records_of(numbers)) or "-"


# --- the study ------------------------------------------------------------------


def default_run_dir(config: StudyConfig) -> Path:
    """``runs/<name>-<config hash>``; the name may not leave ``runs/``."""
    from sparserobust.config import check_name

    check_name(config.name)
    return Path("runs") / f"{config.name}-{config.config_hash()}"


class StudyRecorder:
    """The driver's side of a study: checks the run directory's config and records
    every finished task in the results store (the only writer)."""

    def __init__(
        self, config: StudyConfig, run_dir: Path, store: ResultStore, prov: dict[str, Any]
    ):
        self.config = config
        self.run_dir = run_dir
        self.store = store
        self.prov = prov
        self.hash = config.config_hash()

    def check_config(self) -> None:
        """Refuse a run directory of another config (:meth:`check_compatible`), then
        record this config and the provenance."""
        self.check_compatible()
        self.store.set_meta("config_hash", self.hash)
        self.store.set_meta("config", json.dumps(self.config.to_dict(), sort_keys=True))
        self.store.set_meta("provenance", json.dumps(self.prov, sort_keys=True))

    def check_compatible(self) -> None:
        """StoreError when the run directory holds results of another config (one that
        this config does not merely add measurements to); writes nothing."""
        stored = self.store.get_meta("config_hash")
        if stored is not None and stored != self.hash:
            if not self.only_adds_measurements():
                raise StoreError(
                    f"{self.run_dir} holds results of another config (hash {stored}, this one "
                    f"is {self.hash}; a config may only add measurements or dense-front "
                    "models to a run directory): use another --out, or --force to start this "
                    "directory over"
                )
            log.warning(
                "%s: the config adds measurements to this run directory (hash %s -> %s); "
                "its models and results are kept",
                self.run_dir,
                stored,
                self.hash,
            )

    def only_adds_measurements(self) -> bool:
        """Whether this config differs from the stored one only by added measurements
        or added dense-front models (``control.dense_front``):
        the same models, images and batch size (:meth:`StudyConfig.models_hash`), and
        every measurement the stored config planned still planned with the same
        identity, so no stored number is orphaned or computed under other settings."""
        from sparserobust.config import config_from_dict

        try:
            old = config_from_dict(json.loads(self.store.get_meta("config") or "null"))
        except (ConfigError, TypeError, ValueError):
            return False
        if old.models_hash() != self.config.models_hash():
            return False
        before, now = planned_keys(old), planned_keys(self.config)
        return before.models <= now.models and before.results <= now.results

    def done(self, task: Task, out: Any) -> None:
        """Record the result of ``task`` (called by the scheduler, in this process)."""
        if task.kind == "dense":
            accuracy, seconds = out
            log.info("dense model, seed %d: accuracy %.4f in %.1fs", task.what, accuracy, seconds)
            self.register_dense(task.what, accuracy, seconds)
        elif task.kind == "front":
            seed, front = task.what
            accuracy, seconds = out
            log.info("dense-front model %s, seed %d: accuracy %.4f", front, seed, accuracy)
            self.register_front(seed, front, accuracy, seconds)
        elif task.kind == "sweep":
            seed, method = task.what
            log.info("sweep %s, seed %d: %d levels", method, seed, len(out))
            self.register_sweep(seed, method, out)
        else:
            key, cell = task.what
            numbers, seconds = out
            log.info("%s %s: %s in %.1fs", key, cell.key, _brief(numbers), seconds)
            self.store.add_result(
                key, cell.key, cell.params, numbers, seconds, self.hash, self.prov
            )

    def register_dense(self, seed: int, accuracy: float, seconds: float) -> None:
        rel = dense_rel(seed)
        model, _ = load_checkpoint(self.run_dir / rel)
        self._register(
            model_key(seed, "dense", 0.0), seed, "dense", 0.0, model, accuracy, rel, None, seconds
        )

    def register_front(self, seed: int, front: str, accuracy: float, seconds: float) -> None:
        rel = front_rel(seed, front)
        model, _ = load_checkpoint(self.run_dir / rel)
        self._register(
            front_key(seed, front), seed, FRONT, 0.0, model, accuracy, rel, None, seconds
        )

    def register_sweep(self, seed: int, method: str, records: list[dict[str, Any]]) -> None:
        for rec in records:
            target = float(rec["target_sparsity"])
            key = model_key(seed, method, target)
            if self.store.get_model(key) is not None:
                continue
            try:
                rel = Path(rec["path"]).resolve().relative_to(self.run_dir.resolve()).as_posix()
            except ValueError:
                raise UnsafePathError(
                    f"{rec['path']} lies outside the run directory {self.run_dir} (a folder "
                    "of the run is a symbolic link?): remove the link and re-run"
                ) from None
            checkpoint_path(self.run_dir, rel)
            model, meta = load_checkpoint(self.run_dir / rel)
            self._register(
                key,
                seed,
                method,
                target,
                model,
                float(meta["accuracy"]),
                rel,
                meta.get("parent"),
                float(rec.get("seconds") or 0.0),
            )

    def _register(
        self,
        key: str,
        seed: int,
        method: str,
        target: float,
        model: nn.Module,
        accuracy: float,
        rel: str,
        parent: str | None,
        seconds: float,
    ) -> None:
        rep = sparsity_report(model)
        row = ModelRow(
            key,
            seed,
            method,
            target,
            rep.sparsity,
            rep.pruned,
            rep.total,
            accuracy,
            rel,
            sha256_file(self.run_dir / rel),
            parent,
            seconds,
        )
        self.store.add_model(row, self.hash, self.prov)


def _attach_log(run_dir: Path) -> logging.Handler:
    """Append the study's log to ``run_dir/run.log`` (never through a symbolic link)."""
    fd = open_no_follow(run_dir / "run.log", os.O_WRONLY | os.O_APPEND)
    handler = logging.StreamHandler(os.fdopen(fd, "a", encoding="utf-8"))
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("sparserobust")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


def task_resources(device: torch.device) -> Resources:
    """One CPU per task, and a quarter of a GPU when the study runs on CUDA (four
    tasks share a GPU; the models of this field are small)."""
    return Resources(cpus=1.0, gpus=0.25 if device.type == "cuda" else 0.0)


def run_study(
    config: StudyConfig,
    run_dir: str | Path | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    jobs: int = 1,
    executor: str | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """Run the whole study of ``config`` in ``run_dir`` (default ``runs/<name>-<hash>``).

    Finished models and measurements are skipped; ``force`` starts the directory
    over. Writes the results database, checkpoints, ``run.log`` and the report.
    ``executor``: ``inline`` (this process; the default for ``jobs=1``), ``local``
    (``jobs`` worker processes, one torch thread each; the default for ``jobs>1``) or
    ``ray`` (Ray tasks on the cluster at ``address``, or on a local Ray instance with
    ``jobs`` CPUs). Numbers are the same with every executor when the inline run
    uses one torch thread (``OMP_NUM_THREADS=1``): torch's CPU results depend on the
    thread count, which the provenance records.
    Returns a summary: run directory, report path, models, results, seconds.
    """
    check_value("jobs", jobs, "--jobs")
    kind = executor or ("local" if jobs > 1 else "inline")
    if kind not in EXECUTOR_NAMES:
        raise ConfigError(f"unknown executor {kind!r}: choose one of {', '.join(EXECUTOR_NAMES)}")
    check_jobs(kind, jobs, address)  # before the run directory is touched
    raw = run_dir if run_dir is not None else default_run_dir(config)
    run = check_output(raw, folder=True, own_run=raw, what="the run directory (--out)")
    start = time.perf_counter()
    with RunLock(run):
        check_layout(run)
        if force:
            check_force_target(run)
            start_over(run)
        if (run / DB_NAME).is_file():  # validated as this config's run before any delete
            with ResultStore(run, create=False) as store:
                StudyRecorder(config, run, store, {}).check_compatible()
            # a killed run's temp files, and only those
            sweeps = {m: config.pruning.grid(m) for m in config.pruning.methods}
            clean_stale_temps(run, config.seeds, sweeps)
        handler = _attach_log(run)
        try:
            device = resolve_device(config.device)
            data = study_data(config)  # a data error stops the study here, before any worker
            if config.eval.n > len(data.test):
                log.warning(
                    "eval.n is %d but %s has only %d test images: measuring all %d",
                    config.eval.n,
                    config.dataset,
                    len(data.test),
                    len(data.test),
                )
            pool = make_executor(kind, jobs, address)
            try:
                report, n_models, n_results = _run_on(pool, config, run, device, progress)
            except BaseException:
                pool.close(cancel=True)
                raise
            pool.close(cancel=False)
            log.info(
                "study done in %.1fs: %d models, %d results; report %s",
                time.perf_counter() - start,
                n_models,
                n_results,
                report,
            )
        finally:
            logging.getLogger("sparserobust").removeHandler(handler)
            handler.close()
    seconds = time.perf_counter() - start
    return {
        "run_dir": str(run),
        "report": str(report),
        "models": n_models,
        "results": n_results,
        "seconds": seconds,
        "config_hash": config.config_hash(),
    }


def _run_on(
    pool: Executor, config: StudyConfig, run: Path, device: torch.device, progress: bool
) -> tuple[Path, int, int]:
    """Plan what is left of the study in ``run``, run it on ``pool``, write the report.
    Returns (report path, models, results)."""
    from sparserobust.report import write_report

    if pool.name == "ray":  # workers may run elsewhere: absolute paths
        worker_config = dataclasses.replace(config, data_dir=_absolute_data_dir(config))
        worker_run = run.resolve()
    else:
        worker_config, worker_run = config, run
    prov = {**provenance(str(device)), "channels_last": config.channels_last, **pool.describe()}
    with ResultStore(run) as store:
        recorder = StudyRecorder(config, run, store, prov)
        recorder.check_config()
        log.info("study %s (config %s) in %s on %s", config.name, recorder.hash, run, device)
        drop_untrusted_models(store, run)
        tasks = plan(config, store, task_resources(device))
        log.info("%d tasks to run on the %s executor", len(tasks), pool.name)
        run_tasks(tasks, pool, worker_config, worker_run, recorder.done, progress=progress)
        log.info("writing the report")
        report = write_report(run, config.report.max_accuracy_drop)
        return report, len(store.models()), len(store.results())


def _absolute_data_dir(config: StudyConfig) -> str | None:
    root = resolve_data_dir(config.data_dir)
    return None if root is None else str(root.resolve())


# --- bring your own model -------------------------------------------------------


def _collect(loader: Iterable[Any], n: int | None) -> Split:
    xs, ys, count = [], [], 0
    for batch in loader:
        x, y = batch[0], batch[1]
        xs.append(torch.as_tensor(x).float().cpu())
        ys.append(torch.as_tensor(y).long().cpu())
        count += len(ys[-1])
        if n is not None and count >= n:
            break
    if not xs:
        raise ConfigError("the DataLoader yielded no batches: give it some data")
    return Split(torch.cat(xs), torch.cat(ys)).head(n)


def sweep_robustness(
    model: nn.Module,
    test_loader: Iterable[Any],
    *,
    sparsities: Sequence[float],
    methods: Sequence[str] = ("global-magnitude",),
    settings: EvalSettings | None = None,
    retrain: Callable[[nn.Module, Any], None] | None = None,
    n: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate a user's own ``model`` across a sparsity sweep, from Python.

    ``test_loader`` yields ``(x, y)`` batches with ``x`` in [0,1]; the first
    ``n`` examples (default ``settings.n``) are evaluated. Each method prunes a
    copy of ``model`` to every level of ``sparsities`` (ascending, iteratively),
    calling ``retrain(model, after_step)`` after each pruning step when given
    (your own training loop; call ``after_step(step, model)`` after each
    optimiser step if not None). ``settings`` default: FGSM at
    eps 0.05/0.1/0.2/0.3, DeepFool l2 and active-ReLU fractions. The model
    itself is left unchanged. Returns one record per (method, level),
    dense first: method, sparsity, clean accuracy, and every measurement.
    """
    if settings is None:
        settings = EvalSettings(
            n=n or 500,
            attacks=(
                AttackSettings("fgsm", "inf", (0.05, 0.1, 0.2, 0.3)),
                AttackSettings("deepfool", "2"),
            ),
            bounds=False,
        )
    levels = sorted(check_sparsities(list(sparsities), "sparsities"))
    data = _collect(test_loader, n or settings.n)
    records: list[dict[str, Any]] = []

    def record(method: str, target: float, m: nn.Module) -> None:
        rep = sparsity_report(m)
        acc = evaluate_accuracy(m, data)
        res = evaluate_model(m, data.x, data.y, settings, seed=seed)
        records.append(
            {
                "method": method,
                "target_sparsity": target,
                "sparsity": rep.sparsity,
                "clean_accuracy": acc,
                "measurements": res,
            }
        )

    record("dense", 0.0, model)
    for method in methods:
        work = copy.deepcopy(model)
        for target in levels:
            if target > 0:
                prune_model(work, method, target, retrain=retrain, seed=seed, progress=progress)
            record(method, target, work)
    return records
