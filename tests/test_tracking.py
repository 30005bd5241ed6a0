"""MLflow: a study logged to a local store reads back number for number."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

import sparserobust
from sparserobust.cli import main
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


# --- the CLI routes: run --mlflow and export --mlflow (issue 30, requirement 2) -------


def test_cli_run_and_export_log_every_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    monkeypatch.chdir(tmp_path)
    config = {**SMALL, "name": "cli-tracked", "seeds": [0]}
    Path("study.yaml").write_text(yaml.safe_dump(config))
    uri = f"sqlite:///{tmp_path / 'cli.db'}"
    code = main(["run", "study.yaml", "--out", "run", "--no-progress", "--json", "--mlflow", uri])
    out, err = capsys.readouterr()
    assert code == 0, err
    pid = json.loads(out)["mlflow_run_id"]
    mlflow.set_tracking_uri(uri)
    exp = mlflow.tracking.MlflowClient(uri).get_experiment_by_name("cli-tracked")
    df = mlflow.search_runs([exp.experiment_id])
    children = df[df["tags.mlflow.parentRunId"] == pid].set_index("params.model_key")
    results = sparserobust.results(Path("run"))
    assert set(children.index) == set(results.model_key) and len(children) == 3
    checked = 0
    for row in results.itertuples():
        if math.isfinite(row.value):
            got = children.loc[row.model_key, f"metrics.{metric_key(row.label)}"]
            assert got == pytest.approx(row.value, abs=0), (row.model_key, row.label)
            checked += 1
    assert checked == len(results) > 20
    # export --mlflow logs the same run again, replacing the study run run --mlflow made
    assert main(["export", "run", "--mlflow", uri]) == 0
    again = capsys.readouterr().out
    assert again.startswith(f"logged to MLflow at {uri}: study run ")
    df = mlflow.search_runs([exp.experiment_id])
    parents = df[df["tags.mlflow.parentRunId"].isna()]
    assert len(parents) == 1 and parents.run_id.iloc[0] == again.split()[-1] != pid
    assert (df["tags.mlflow.parentRunId"] == parents.run_id.iloc[0]).sum() == 3


def test_cli_mlflow_without_mlflow_is_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    for args in (["run", "--out", "run", "--mlflow", uri], ["export", "run", "--mlflow", uri]):
        code = main([*args, "--no-progress"] if args[0] == "run" else args)
        _, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith("error: --mlflow needs MLflow: pip install 'sparserobust[mlflow]'")
    assert list(tmp_path.iterdir()) == []  # no study ran, no database made
    monkeypatch.undo()
    assert main(["export", str(tmp_path), "--mlflow", " "]) == 2
    assert "needs a tracking URI" in capsys.readouterr().err


def test_cli_mlflow_failures_are_one_line_and_create_nothing(
    logged: tuple[Path, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the round-two sweep: a URI MLflow cannot use was a traceback, and a folder
    that is not a run still created the MLflow database."""
    run, _, _ = logged
    assert main(["export", str(run), "--mlflow", "bogus://x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MLflow at bogus://x refused the run") and err.count("\n") == 1
    db = tmp_path / "m.db"
    assert main(["export", str(tmp_path / "notarun"), "--mlflow", f"sqlite:///{db}"]) == 2
    assert "holds no results database" in capsys.readouterr().err
    assert not db.exists()
