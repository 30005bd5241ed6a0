"""Log a finished (or partial) run to MLflow: one MLflow run per study, one nested run
per model.

The study run (named ``<study name>-<config hash>`` in the experiment named after the
study) holds the config as params (``config.train.epochs``...), the config hash and the
run directory as tags, the config (``config.json``) and the report folder as artifacts.
Each model's nested run holds its seed, method, target and measured sparsity and store
key as params, and every stored number as a metric: ``clean_accuracy`` and each record's
label made MLflow-safe by :func:`metric_key` (``pgd_linf robust_acc@0.1`` ->
``pgd_linf robust_acc at 0.1``).

Logging the same run directory again replaces what it logged before (the old runs are
deleted), so ``sparserobust run --mlflow`` after a resume leaves one study run. Any
MLflow tracking URI works; ``sqlite:///mlflow.db`` needs no server. ``mlflow`` is an
optional extra: ``pip install 'sparserobust[mlflow]'``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from sparserobust.errors import ConfigError, StoreError
from sparserobust.measurements import records_of
from sparserobust.store import ResultStore

log = logging.getLogger(__name__)

RUN_DIR_TAG = "sparserobust.run_dir"
HASH_TAG = "sparserobust.config_hash"
MODEL_TAG = "sparserobust.model_key"
MAX_PARAM = 6000
"""MLflow's longest param value; longer config values are cut (the whole config is an
artifact)."""


def metric_key(label: str) -> str:
    """A record label as an MLflow metric name: ``@`` becomes `` at ``, any other
    character MLflow refuses is dropped (``active_relu_fraction (not robustness)`` ->
    ``active_relu_fraction not robustness``)."""
    text = label.replace("@", " at ")
    text = re.sub(r"[^A-Za-z0-9_\-. :/]", "", text)
    return re.sub(r" +", " ", text).strip()


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}", v, out)
    else:
        text = json.dumps(value, sort_keys=True) if isinstance(value, list) else str(value)
        out[prefix] = text[:MAX_PARAM]


def check_uri(uri: str) -> None:
    """ConfigError (one line) unless MLflow is installed and ``uri`` is not empty:
    what ``--mlflow`` checks before a study runs, so a missing extra is not found
    only after hours of work."""
    try:
        import mlflow.tracking  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--mlflow needs MLflow: pip install 'sparserobust[mlflow]' (or pip install mlflow)"
        ) from None
    if not uri.strip():
        raise ConfigError("--mlflow needs a tracking URI, e.g. sqlite:///mlflow.db")


def _client(uri: str) -> Any:
    check_uri(uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def log_run(run_dir: str | os.PathLike[str], uri: str) -> str:
    """Log the run in ``run_dir`` to the MLflow tracking server or store at ``uri``,
    replacing what an earlier call logged for the same directory; returns the study
    run's id. Reads the run without writing to it, before MLflow is touched (a folder
    that is not a run creates no MLflow store); any MLflow failure, a URI it cannot
    use included, is one StoreError line."""
    check_uri(uri)
    from mlflow.entities import Metric, Param

    run = Path(run_dir)
    with ResultStore(run, readonly=True) as store:
        try:
            config = json.loads(store.get_meta("config") or "null")
        except ValueError:
            config = None
        config_hash = store.get_meta("config_hash") or "?"
        models = store.models()
        results = store.results()
    if not isinstance(config, dict):
        raise StoreError(f"{run} has no study config stored: run the study first")
    name = str(config.get("name", "study"))
    where = str(run.resolve())
    try:
        client = _client(uri)
        experiment = client.get_experiment_by_name(name)
        exp_id = (
            experiment.experiment_id if experiment is not None else client.create_experiment(name)
        )
        for old in client.search_runs([exp_id], f"tags.`{RUN_DIR_TAG}` = '{_quoted(where)}'"):
            client.delete_run(old.info.run_id)
        parent = client.create_run(
            exp_id,
            run_name=f"{name}-{config_hash}",
            tags={RUN_DIR_TAG: where, HASH_TAG: config_hash},
        )
        pid = parent.info.run_id
        params: dict[str, str] = {}
        _flat("config", config, params)
        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            client.log_batch(pid, params=items[i : i + 100])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.json"
            path.write_text(json.dumps(config, indent=1, sort_keys=True))
            client.log_artifact(pid, str(path))
        if (run / "report").is_dir() and not (run / "report").is_symlink():
            client.log_artifacts(pid, str(run / "report"), "report")
        by_model: dict[str, list[Any]] = {}
        for r in results:
            by_model.setdefault(r["model_key"], []).extend(records_of(r["numbers"]))
        for m in models:
            child = client.create_run(
                exp_id,
                run_name=m.model_key,
                tags={"mlflow.parentRunId": pid, MODEL_TAG: m.model_key, HASH_TAG: config_hash},
            ).info.run_id
            model_params = {
                "model_key": m.model_key,
                "seed": str(m.seed),
                "method": m.method,
                "target_sparsity": repr(m.target_sparsity),
                "sparsity": repr(m.sparsity),
                "parent": str(m.parent),
                "checkpoint_sha256": m.checkpoint_sha256,
            }
            metrics = [Metric("clean_accuracy", m.accuracy, 0, 0)]
            seen = {"clean_accuracy"}
            for rec in by_model.get(m.model_key, []):
                key = metric_key(rec.label)
                if key in seen or not math.isfinite(rec.value):
                    continue  # MLflow stores no NaN/inf; the export keeps them
                seen.add(key)
                metrics.append(Metric(key, rec.value, 0, 0))
            client.log_batch(child, params=[Param(k, v) for k, v in model_params.items()])
            for i in range(0, len(metrics), 1000):
                client.log_batch(child, metrics=metrics[i : i + 1000])
            client.set_terminated(child)
        client.set_terminated(pid)
    except Exception as exc:
        if exc.__class__.__module__.startswith("mlflow"):
            raise StoreError(
                f"MLflow at {uri} refused the run: "
                f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}"
            ) from None
        raise
    log.info("logged %s to MLflow (%s): study run %s, %d models", run, uri, pid, len(models))
    return str(pid)


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


__all__ = ["check_uri", "log_run", "metric_key"]
