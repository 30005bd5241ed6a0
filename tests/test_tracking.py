"""MLflow: a study logged to a local store reads back number for number."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import sparserobust
from sparserobust.config import config_from_dict
from sparserobust.errors import ConfigError, StoreError
from sparserobust.pipeline import run_study
from sparserobust.tracking import log_run, metric_key

mlflow = pytest.importorskip("mlflow", reason="the [mlflow] extra is not installed")

SMALL = {
    "name": "tracked",
    "dataset": "digits",
    "model": "lenet300",
    "seeds": [0, 1],
    "train": {"epochs": 3},
    "pruning": {"methods": ["global-magnitude"], "sparsities": [0.5, 0.9]},
    "eval": {
        "n": 50,
        "attacks": [
            {"name": "fgsm", "norm": "inf", "eps": [0.05, 0.2]},
            {"name": "deepfool", "norm": "2", "eps": [0.5, 1.0]},
        ],
        "clever": {"n": 0},
    },
}


def test_metric_keys_are_mlflow_safe() -> None:
    assert metric_key("pgd_linf robust_acc@0.1") == "pgd_linf robust_acc at 0.1"
    assert metric_key("active_relu_fraction (not robustness)") == (
        "active_relu_fraction not robustness"
    )


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    base = tmp_path_factory.mktemp("mlflow")
    run = base / "run"
    run_study(config_from_dict(SMALL), run, progress=False)
    uri = f"sqlite:///{base / 'mlflow.db'}"
    log_run(run, uri)
    pid = log_run(run, uri)  # again: replaces the first
    return run, uri, pid


def test_every_number_reads_back(logged: tuple[Path, str, str]) -> None:
    run, uri, pid = logged
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("tracked")
    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs([exp.experiment_id])
    parents = df[df["tags.mlflow.parentRunId"].isna()]
    assert list(parents.run_id) == [pid]  # the second log replaced the first
    children = df[df["tags.mlflow.parentRunId"] == pid].set_index("params.model_key")
    models = sparserobust.models(run).set_index("model_key")
    assert set(children.index) == set(models.index) and len(models) == 6
    for key, m in models.iterrows():
        child = children.loc[key]
        assert child["metrics.clean_accuracy"] == pytest.approx(m.clean_accuracy, abs=0)
        assert child["params.method"] == m.method and int(child["params.seed"]) == m.seed
        assert float(child["params.sparsity"]) == m.sparsity
    results = sparserobust.results(run)
    checked = 0
    for row in results.itertuples():
        if not math.isfinite(row.value):
            continue
        got = children.loc[row.model_key, f"metrics.{metric_key(row.label)}"]
        assert got == pytest.approx(row.value, abs=0), (row.model_key, row.label)
        checked += 1
    assert checked == len(results) > 50
    parent = client.get_run(pid)
    assert parent.data.params["config.eval.n"] == "50"
    assert parent.data.tags["sparserobust.run_dir"] == str(run.resolve())
    artifacts = {a.path for a in client.list_artifacts(pid)}
    assert {"config.json", "report"} <= artifacts


def test_bad_uri_and_not_a_run_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tracking URI"):
        log_run(tmp_path, " ")
    with pytest.raises(StoreError):
        log_run(tmp_path, f"sqlite:///{tmp_path / 'm.db'}")
