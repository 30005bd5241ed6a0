"""The study pipeline: config -> dense -> sparsity sweeps -> attacks/metrics -> store -> report.

:func:`run_study` is what ``sparserobust run`` calls. Every finished piece of
work (a checkpoint, one measurement on one model) is stored at once and
atomically, so a re-run skips it and an interrupted run resumes where it
stopped with the same numbers as an uninterrupted one (on CPU, same seed).

:func:`evaluate_model` measures one model (attacks, CLEVER, active ReLUs,
margin bounds) and :func:`sweep_robustness` runs a whole sparsity sweep on a
user's own ``nn.Module`` and ``DataLoader`` without the CLI or a run directory.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sparserobust.checkpoint import load_checkpoint, save_checkpoint
from sparserobust.config import (
    AttackSettings,
    EvalSettings,
    StudyConfig,
    attack_norm,
    attack_params,
    check_sparsities,
    masking_references,
)
from sparserobust.data import Dataset, Split, load_dataset
from sparserobust.errors import ConfigError, StoreError
from sparserobust.models import build_model, model_spec
from sparserobust.pruning import sparsity_report
from sparserobust.pruning.sweep import prune_model, sparsity_sweep
from sparserobust.store import ModelRow, ResultStore, RunLock, provenance, sha256_file
from sparserobust.training import TrainConfig, evaluate_accuracy, train_model
from sparserobust.utils import (
    eval_mode,
    forward,
    model_device,
    resolve_device,
    seed_everything,
    use_channels_last,
)

log = logging.getLogger(__name__)

Measurement = tuple[str, dict[str, Any]]


# --- measurements ----------------------------------------------------------------


def planned_measurements(settings: EvalSettings, seed: int) -> list[Measurement]:
    """The (measurement name, parameters) pairs :func:`evaluate_model` will compute.

    The parameters identify a stored result: change any and it is recomputed.
    """
    plan: list[Measurement] = [("checks", {"n": settings.n})]
    for a in settings.attacks:
        plan.append(
            (
                f"attack:{a.name}:l{attack_norm(a)}",
                {
                    **asdict(a),
                    "norm": attack_norm(a),
                    "eps": list(a.eps),
                    "n": settings.n,
                    "seed": seed,
                },
            )
        )
    if settings.clever.n > 0:
        for norm in settings.clever.norms:
            c = settings.clever
            plan.append(
                (
                    f"clever:l{norm}",
                    {
                        "n": c.n,
                        "n_batches": c.n_batches,
                        "batch_size": c.batch_size,
                        "radius": c.radius,
                        "seed": seed,
                    },
                )
            )
    for m in settings.masking:
        plan.append(
            (
                f"masking:square:l{m.norm}",
                {
                    "norm": m.norm,
                    "eps": list(m.eps),
                    "n": min(m.n, settings.n),
                    "steps": m.steps,
                    "against": [asdict(a) for a in masking_references(settings, m)],
                    "seed": seed,
                },
            )
        )
    if settings.activations:
        plan.append(("activations", {"n": settings.n}))
    if settings.bounds:
        plan.append(("bounds:l2", {"n": settings.n}))
        plan.append(("bounds:linf", {"n": settings.n}))
    return plan


def _finite(v: Any) -> Any:
    """JSON-safe and repeatable: non-finite floats as null/"inf", wall times dropped
    (they live in the results row's ``seconds`` column, not among the numbers)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items() if not str(k).startswith("seconds")}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def measure(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    name: str,
    params: dict[str, Any],
    batch_size: int = 500,
) -> dict[str, Any]:
    """Compute one measurement on ``model`` for images ``x`` (in [0,1]) and labels ``y``.

    Returns a JSON-able dict with a ``headline`` mapping of scalar robustness
    numbers (higher = more robust, except where the name says otherwise) plus
    the full summary and any evaluation ``flags``.
    """
    from sparserobust.metrics import active_relu_fraction, clever_scores, local_bounds

    kind = name.split(":")[0]
    n = int(params.get("n", len(y)))
    xs, ys = x[:n], y[:n]
    if not _finite_logits(model, xs, batch_size):  # a diverged model: nothing to measure
        return {
            "headline": {},
            "not_measured": True,
            "flags": [
                "not measured: the model returns NaN or inf logits on clean test "
                "images (it diverged in training or pruning); its numbers are missing, not zero"
            ],
        }
    if kind == "attack":
        from sparserobust.metrics.robustness import summarize

        _, attack_name, norm = name.split(":")
        norm_value = norm.removeprefix("l")
        attack = _build_attack(
            AttackSettings(
                name=attack_name,
                norm=norm_value,
                steps=params.get("steps"),
                restarts=params.get("restarts"),
                search_steps=params.get("search_steps"),
            )
        )
        eps = [float(e) for e in params.get("eps", [])]
        result = attack.run(model, xs, ys, epsilons=eps or None, seed=int(params["seed"]))
        from sparserobust.metrics.checks import monotonicity_flags, result_flags

        summary = summarize(result, epsilons=eps or None)
        headline = attack_headline(attack_name, norm, summary)
        flags = result_flags(model, result, batch_size) + monotonicity_flags(
            summary.get("robust_accuracy") or {}, f"{attack_name} {norm}"
        )
        return _finite({"headline": headline, "summary": summary, "flags": flags})
    if kind == "masking":
        return _finite(masking_check(model, xs, ys, params))
    if kind == "checks":
        from sparserobust.metrics.checks import gradient_check

        check = gradient_check(model, xs, ys, batch_size)
        share = check["vanishing_share"]
        return {"headline": {"vanishing gradient share (not robustness)": share}, **check}
    if kind == "clever":
        norm = name.split(":")[1].removeprefix("l")
        res = clever_scores(
            model,
            xs,
            norm=norm,
            radius=params.get("radius"),
            n_batches=params["n_batches"],
            batch_size=params["batch_size"],
            seed=int(params["seed"]),
        )
        s = res.summary()
        return _finite(
            {
                "headline": {
                    f"clever_l{norm} mean": s["clever_mean"],
                    f"clever_l{norm} median": s["clever_median"],
                },
                "summary": s,
                "scores": res.scores.tolist(),
            }
        )
    if kind == "activations":
        act = active_relu_fraction(model, xs, batch_size=batch_size)
        s = act.summary()
        headline = {"active_relu_fraction (not robustness)": act.overall} if act.has_relu else {}
        return _finite(
            {
                "headline": headline,
                "summary": s,
                "layers": act.layers,
                "dead": act.dead,
                "message": act.message,
            }
        )
    if kind == "bounds":
        norm = name.split(":")[1].removeprefix("l")
        b = local_bounds(model, xs, ys, norm=norm)
        s = b.summary()
        headline = {
            f"bound_l{norm} ratio median": s.get("ratio_median", math.nan),
            f"bound_l{norm} margin median (not robustness)": s.get("margin_median", math.nan),
            f"bound_l{norm} grad norm median (not robustness)": s.get("grad_norm_median", math.nan),
        }
        return _finite({"headline": headline, "summary": s})
    raise ConfigError(f"unknown measurement {name!r}")  # pragma: no cover


@torch.no_grad()
def _finite_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> bool:
    device = model_device(model)
    with eval_mode(model):
        return all(
            bool(torch.isfinite(forward(model, x[i : i + batch_size].to(device))).all())
            for i in range(0, x.shape[0], batch_size)
        )


def _build_attack(a: AttackSettings) -> Any:
    from sparserobust.attacks import get_attack

    return get_attack(a.name, attack_norm(a), **attack_params(a))


def masking_check(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict[str, Any]
) -> dict[str, Any]:
    """Square attack (gradient-free) against the configured gradient attacks of the
    same norm on the same images (the first ``params["n"]``): robust accuracy of
    each, and a flag where Square succeeds on points every gradient attack missed."""
    from sparserobust.attacks import get_attack
    from sparserobust.metrics.checks import gradient_free_flags

    eps = [float(e) for e in params["eps"]]
    seed = int(params["seed"])
    square = get_attack("square", params["norm"], steps=int(params["steps"]))
    free = square.run(model, x, y, epsilons=eps, seed=seed)
    refs = []
    for ref in params["against"]:
        a = AttackSettings(**{**ref, "eps": tuple(ref["eps"])})
        attack = _build_attack(a)
        fixed = bool(getattr(attack, "fixed_epsilon", False))
        refs.append(attack.run(model, x, y, epsilons=eps if fixed else None, seed=seed))
    out = gradient_free_flags(free, refs)
    tag = f"square_l{params['norm']}"
    headline = {
        f"{tag} robust_acc@{float(e):g}": a for e, a in out["gradient_free_robust_accuracy"].items()
    }
    headline.update(
        {
            f"{tag}+gradient robust_acc@{float(e):g}": v
            for e, v in out["combined_robust_accuracy"].items()
            if v is not None
        }
    )
    headline.update(
        {
            f"{tag} missed by gradient attacks@{float(e):g} (not robustness)": v
            for e, v in out["missed_share"].items()
            if v is not None
        }
    )
    return {"headline": headline, **out}


def attack_headline(attack: str, norm: str, summary: dict[str, Any]) -> dict[str, float]:
    """The scalar numbers of an attack summary the report plots."""
    out: dict[str, float] = {}
    tag = f"{attack}_{norm}"
    for eps, acc in (summary.get("robust_accuracy") or {}).items():
        out[f"{tag} robust_acc@{float(eps):g}"] = acc
    if "at_epsilon" not in summary:  # minimisation attacks: the norms are the point
        for key in ("median_norm", "rho"):
            if summary.get(key) is not None:
                out[f"{tag} {key}"] = summary[key]
    return {k: float(v) for k, v in out.items() if v is not None}


def evaluate_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: EvalSettings,
    *,
    seed: int = 0,
    skip: Callable[[str, dict[str, Any]], bool] | None = None,
    on_result: Callable[[str, dict[str, Any], dict[str, Any], float], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every planned measurement on ``model``; returns ``{name: numbers}``.

    ``skip(name, params)`` may skip finished measurements; ``on_result`` gets
    each result as soon as it is computed (the pipeline stores it there).
    """
    results: dict[str, dict[str, Any]] = {}
    for name, params in planned_measurements(settings, seed):
        if skip is not None and skip(name, params):
            continue
        start = time.perf_counter()
        numbers = measure(model, x, y, name, params, settings.batch_size)
        seconds = time.perf_counter() - start
        log.info("%s: %s in %.1fs", name, numbers.get("headline"), seconds)
        results[name] = numbers
        if on_result is not None:
            on_result(name, params, numbers, seconds)
    return results


# --- the study ------------------------------------------------------------------


def default_run_dir(config: StudyConfig) -> Path:
    """``runs/<name>-<config hash>``."""
    return Path("runs") / f"{config.name}-{config.config_hash()}"


def _model_key(seed: int, method: str, target: float) -> str:
    return f"s{seed}/{method}/{target:.4f}"


def _dense_train_config(config: StudyConfig, seed: int) -> TrainConfig:
    spec = model_spec(config.model)
    t = config.train
    return TrainConfig(
        epochs=spec.epochs if t.epochs is None else t.epochs,
        lr=spec.lr if t.lr is None else t.lr,
        batch_size=spec.batch_size if t.batch_size is None else t.batch_size,
        weight_decay=spec.weight_decay if t.weight_decay is None else t.weight_decay,
        seed=seed,
    )


class _Study:
    def __init__(self, config: StudyConfig, run_dir: Path, progress: bool) -> None:
        self.config = config
        self.run_dir = run_dir
        self.progress = progress
        self.hash = config.config_hash()
        self.device = resolve_device(config.device)
        self.prov = {**provenance(str(self.device)), "channels_last": config.channels_last}
        self.store = ResultStore(run_dir)
        self.data: Dataset = load_dataset(config.dataset, config.data_dir)
        self.eval_split = self.data.test.head(config.eval.n)

    def check_config(self) -> None:
        stored = self.store.get_meta("config_hash")
        if stored is not None and stored != self.hash:
            raise StoreError(
                f"{self.run_dir} holds results of another config (hash {stored}, this one is "
                f"{self.hash}): use another --out, or --force to start this directory over"
            )
        self.store.set_meta("config_hash", self.hash)
        self.store.set_meta("config", json.dumps(self.config.to_dict(), sort_keys=True))
        self.store.set_meta("provenance", json.dumps(self.prov, sort_keys=True))

    def dense(self, seed: int) -> nn.Module:
        key = _model_key(seed, "dense", 0.0)
        rel = _dense_rel(seed)
        if self.store.get_model(key) is None:
            acc, seconds = train_dense_checkpoint(
                self.config, self.run_dir, seed, self.data, self.device, self.progress
            )
            self.register_dense(seed, acc, seconds)
        return load_checkpoint(self.run_dir / rel, device=self.device)[0]

    def register_dense(self, seed: int, accuracy: float, seconds: float) -> None:
        rel = _dense_rel(seed)
        model, _ = load_checkpoint(self.run_dir / rel)
        key = _model_key(seed, "dense", 0.0)
        self._register(key, seed, "dense", 0.0, model, accuracy, rel, None, seconds)

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

    def sweep_done(self, seed: int, method: str) -> bool:
        p = self.config.pruning
        return all(
            self.store.get_model(_model_key(seed, method, t)) is not None for t in p.sparsities
        )

    def sweep(self, seed: int, method: str, dense: nn.Module) -> None:
        if self.sweep_done(seed, method):
            return
        records = sweep_checkpoints(
            self.config, self.run_dir, seed, method, self.data, dense, self.progress
        )
        self.register_sweep(seed, method, records)

    def register_sweep(self, seed: int, method: str, records: list[dict[str, Any]]) -> None:
        for rec in records:
            target = float(rec["target_sparsity"])
            key = _model_key(seed, method, target)
            if self.store.get_model(key) is not None:
                continue
            rel = str(Path(rec["path"]).resolve().relative_to(self.run_dir.resolve()))
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

    def pending(self, seeds: Sequence[int]) -> list[tuple[ModelRow, str, dict[str, Any]]]:
        """Every (model, measurement, parameters) of ``seeds`` not yet stored."""
        out = []
        for seed in seeds:
            plan = planned_measurements(self.config.eval, seed)
            for row in self.store.models():
                if row.seed == seed:
                    out += [
                        (row, n, p)
                        for n, p in plan
                        if not self.store.has_result(row.model_key, n, p)
                    ]
        return out

    def store_result(
        self, key: str, name: str, params: dict[str, Any], numbers: dict[str, Any], seconds: float
    ) -> None:
        self.store.add_result(key, name, params, numbers, seconds, self.hash, self.prov)

    def evaluate_all(self, seed: int) -> None:
        rows = [r for r in self.store.models() if r.seed == seed]
        todo = sorted({r.model_key for r, _, _ in self.pending([seed])})
        rows = [r for r in rows if r.model_key in todo]
        x, y = self.eval_split.x, self.eval_split.y
        bar = tqdm(rows, desc=f"evaluate seed {seed}", disable=not self.progress)
        for row in bar:
            bar.set_postfix(model=row.model_key)
            model = _model_to_measure(self.config, self.run_dir, row.checkpoint, self.device)
            evaluate_model(
                model,
                x,
                y,
                self.config.eval,
                seed=seed,
                skip=partial(self.store.has_result, row.model_key),
                on_result=partial(self.store_result, row.model_key),
            )

    def run_sequential(self) -> None:
        for seed in self.config.seeds:
            dense = self.dense(seed)
            for method in self.config.pruning.methods:
                self.sweep(seed, method, dense)
            self.evaluate_all(seed)

    def run_parallel(self, jobs: int) -> None:
        """The same work in ``jobs`` worker processes (one torch thread each), each
        piece as soon as what it needs exists: a seed's sweeps (one task per
        pruning method) once its dense model is there, a model's measurements (one
        task each) once the model is. Sweeps are queued before measurements, as
        they gate the most work. Workers only write checkpoints (atomically); this
        process registers them and stores every result as it arrives."""
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        self.prov = {**self.prov, "threads": 1, "jobs": jobs}  # what the workers compute with
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(
            jobs, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),)
        )
        cfg, run_dir = self.config, self.run_dir
        running: dict[Future[Any], tuple[int, str, Any]] = {}
        submitted: set[str] = set()
        order = itertools.count()
        bar = tqdm(desc="tasks", total=0, disable=not self.progress)

        def submit(kind: str, what: Any, fn: Callable[..., Any], *args: Any) -> None:
            tag = json.dumps([kind, what], sort_keys=True, default=str)
            if tag not in submitted:
                submitted.add(tag)
                running[pool.submit(fn, cfg, run_dir, *args)] = (next(order), kind, what)
                bar.total = len(submitted)

        def measure_models(rows: list[ModelRow]) -> None:
            for row in rows:
                for name, params in planned_measurements(cfg.eval, row.seed):
                    if not self.store.has_result(row.model_key, name, params):
                        what = (row.model_key, name, params)
                        submit("measure", what, _task_measure, row.checkpoint, name, params)

        def dense_ready(seed: int) -> None:
            for m in cfg.pruning.methods:
                if not self.sweep_done(seed, m):
                    submit("sweep", (seed, m), _task_sweep, seed, m)
            measure_models([r for r in self.store.models() if r.seed == seed])

        def handle(kind: str, what: Any, out: Any) -> None:
            if kind == "dense":
                log.info("dense model, seed %d: accuracy %.4f in %.1fs", what, *out)
                self.register_dense(what, *out)
                dense_ready(what)
            elif kind == "sweep":
                seed, method = what
                log.info("sweep %s, seed %d: %d levels", method, seed, len(out))
                self.register_sweep(seed, method, out)
                measure_models(
                    [r for r in self.store.models() if r.seed == seed and r.method == method]
                )
            else:
                key, name, params = what
                numbers, seconds = out
                log.info("%s %s: %s in %.1fs", key, name, numbers.get("headline"), seconds)
                self.store_result(key, name, params, numbers, seconds)

        try:
            for seed in cfg.seeds:
                if self.store.get_model(_model_key(seed, "dense", 0.0)) is None:
                    submit("dense", seed, _task_dense, seed)
                else:
                    dense_ready(seed)
            while running:
                done, _ = wait(set(running), return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: running[f][0]):
                    _, kind, what = running.pop(fut)
                    handle(kind, what, fut.result())
                    bar.update()
        except BrokenProcessPool:
            pool.shutdown(wait=False, cancel_futures=True)
            raise StoreError(
                "a worker process died (out of memory, killed, or run_study was called from a "
                "script without an `if __name__ == '__main__':` guard): run again to resume, "
                "or use --jobs 1"
            ) from None
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()
        pool.shutdown()


# --- work that runs in this process or in a worker ---------------------------------


def _dense_rel(seed: int) -> str:
    return f"checkpoints/s{seed}/dense.st"


def _base_meta(config: StudyConfig, data: Dataset, seed: int) -> dict[str, Any]:
    info = data.info
    return {
        "model": config.model,
        "dataset": config.dataset,
        "input_shape": list(info.input_shape),
        "num_classes": info.num_classes,
        "mean": list(info.mean),
        "std": list(info.std),
        "seed": seed,
        "config_hash": config.config_hash(),
    }


def train_dense_checkpoint(
    config: StudyConfig,
    run_dir: Path,
    seed: int,
    data: Dataset,
    device: torch.device,
    progress: bool,
) -> tuple[float, float]:
    """Train seed ``seed``'s dense model and save its checkpoint; (accuracy, seconds)."""
    start = time.perf_counter()
    seed_everything(seed)
    info = data.info
    model = build_model(config.model, info.input_shape, info.num_classes, info.mean, info.std).to(
        device
    )
    tc = _dense_train_config(config, seed)
    train_model(model, data.train, tc, progress=progress, desc=f"train dense seed {seed}")
    acc = evaluate_accuracy(model, data.test)
    meta = {
        **_base_meta(config, data, seed),
        "accuracy": acc,
        "method": "dense",
        "sparsity": 0.0,
        "train": tc.as_dict(),
    }
    save_checkpoint(run_dir / _dense_rel(seed), model, meta)
    return acc, time.perf_counter() - start


def sweep_checkpoints(
    config: StudyConfig,
    run_dir: Path,
    seed: int,
    method: str,
    data: Dataset,
    dense: nn.Module,
    progress: bool,
) -> list[dict[str, Any]]:
    """Prune a copy of ``dense`` over the grid with ``method``; one checkpoint per level
    (resuming after the last finished one). Returns the sweep records."""
    p = config.pruning
    dense_cfg = _dense_train_config(config, seed)
    retrain = TrainConfig(
        epochs=p.retrain_epochs,
        lr=p.retrain_lr if p.retrain_lr is not None else dense_cfg.lr,
        seed=seed,
        batch_size=dense_cfg.batch_size,
        weight_decay=dense_cfg.weight_decay,
    )
    return sparsity_sweep(
        copy.deepcopy(dense),
        method,
        list(p.sparsities),
        train=data.train,
        test=data.test,
        retrain=retrain,
        seed=seed,
        chain=p.iterative,
        out_dir=run_dir / "checkpoints" / f"s{seed}" / method,
        metadata=_base_meta(config, data, seed),
        parent="dense.st",
        progress=progress,
    )


_WORKER_DATA: dict[tuple[str, str | None], Dataset] = {}


def _worker_init(parent: int) -> None:
    """One torch thread; exit as soon as the parent process is gone (a killed run
    must not leave workers behind that keep computing or wait forever)."""
    import os
    import threading

    torch.set_num_threads(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker_data(config: StudyConfig) -> Dataset:
    key = (config.dataset, config.data_dir)
    if key not in _WORKER_DATA:
        _WORKER_DATA[key] = load_dataset(config.dataset, config.data_dir)
    return _WORKER_DATA[key]


def _task_dense(config: StudyConfig, run_dir: Path, seed: int) -> tuple[float, float]:
    device = resolve_device(config.device)
    return train_dense_checkpoint(config, run_dir, seed, _worker_data(config), device, False)


def _task_sweep(config: StudyConfig, run_dir: Path, seed: int, method: str) -> list[dict[str, Any]]:
    device = resolve_device(config.device)
    dense, _ = load_checkpoint(run_dir / _dense_rel(seed), device=device)
    return sweep_checkpoints(config, run_dir, seed, method, _worker_data(config), dense, False)


def _model_to_measure(
    config: StudyConfig, run_dir: Path, checkpoint: str, device: torch.device
) -> nn.Module:
    """A stored model, ready for measurements (channels-last if the config asks)."""
    model, _ = load_checkpoint(run_dir / checkpoint, device=device)
    return use_channels_last(model) if config.channels_last else model


def _task_measure(
    config: StudyConfig, run_dir: Path, checkpoint: str, name: str, params: dict[str, Any]
) -> tuple[dict[str, Any], float]:
    split = _worker_data(config).test.head(config.eval.n)
    model = _model_to_measure(config, run_dir, checkpoint, resolve_device(config.device))
    start = time.perf_counter()
    numbers = measure(model, split.x, split.y, name, params, config.eval.batch_size)
    return numbers, time.perf_counter() - start


def _attach_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("sparserobust")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


def run_study(
    config: StudyConfig,
    run_dir: str | Path | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run the whole study of ``config`` in ``run_dir`` (default ``runs/<name>-<hash>``).

    Finished models and measurements are skipped; ``force`` starts the directory
    over. Writes the results database, checkpoints, ``run.log`` and the report.
    ``jobs`` > 1 runs the work in that many worker processes (one torch thread
    each; see :meth:`_Study.run_parallel`). Its numbers equal a ``jobs=1`` run's
    with one torch thread (``OMP_NUM_THREADS=1``): torch's CPU results depend on
    the thread count, which the provenance records.
    Returns a summary: run directory, report path, models, results, seconds.
    """
    from sparserobust.report import write_report

    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs}")
    run = Path(run_dir) if run_dir is not None else default_run_dir(config)
    start = time.perf_counter()
    with RunLock(run):
        if force:
            for name in ("results.sqlite", "results.sqlite-wal", "results.sqlite-shm"):
                (run / name).unlink(missing_ok=True)
            shutil.rmtree(run / "checkpoints", ignore_errors=True)
            shutil.rmtree(run / "report", ignore_errors=True)
        for stale in run.rglob(".*.tmp"):  # temp files of a killed run: never trusted
            stale.unlink(missing_ok=True)
        handler = _attach_log(run)
        try:
            study = _Study(config, run, progress)
            try:
                study.check_config()
                log.info(
                    "study %s (config %s) in %s on %s", config.name, study.hash, run, study.device
                )
                if jobs > 1:
                    study.run_parallel(jobs)
                else:
                    study.run_sequential()
                log.info("writing the report")
                report = write_report(run, config.report.max_accuracy_drop)
                n_models = len(study.store.models())
                n_results = len(study.store.results())
                log.info(
                    "study done in %.1fs: %d models, %d results; report %s",
                    time.perf_counter() - start,
                    n_models,
                    n_results,
                    report,
                )
            finally:
                study.store.close()
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
