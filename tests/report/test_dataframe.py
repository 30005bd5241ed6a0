"""sparserobust.results / models: a run as DataFrames, number for number the JSON export."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from pathlib import Path

import pytest

import sparserobust
from sparserobust.config import config_from_dict
from sparserobust.dataframe import MODEL_COLUMNS, RESULT_COLUMNS
from sparserobust.errors import StoreError
from sparserobust.export import export_json
from sparserobust.measurements import records_of
from sparserobust.pipeline import run_study

SMALL = {
    "name": "frame",
    "dataset": "digits",
    "model": "lenet300",
    "seeds": [0, 1],
    "train": {"epochs": 3},
    "pruning": {"methods": ["global-magnitude", "random"], "sparsities": [0.5, 0.9]},
    "eval": {
        "n": 50,
        "attacks": [
            {"name": "fgsm", "norm": "inf", "eps": [0.05, 0.2]},
            {"name": "ddn", "norm": "2", "eps": [0.5, 1.0], "steps": 20},
        ],
        "clever": {"n": 0},
    },
}


def missing(value: object) -> object:
    """pandas' missing value (NaN in a string or float column) as the export's None."""
    return None if isinstance(value, float) and math.isnan(value) else value


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("frame") / "run"
    run_study(config_from_dict(SMALL), out, progress=False)
    return out


def test_results_equal_the_json_export_number_for_number(run: Path, tmp_path: Path) -> None:
    export_json(run, tmp_path / "r.json")
    payload = json.loads((tmp_path / "r.json").read_text())
    parents = {m["model_key"]: m["parent"] for m in payload["models"]}
    expected = []
    for r in payload["results"]:
        for rec in records_of(r["numbers"]):
            expected.append(
                (
                    r["model_key"],
                    r["seed"],
                    r["method"],
                    r["target_sparsity"],
                    r["sparsity"],
                    r["clean_accuracy"],
                    parents[r["model_key"]],
                    r["measurement"],
                    rec.label,
                    rec.metric,
                    rec.norm,
                    rec.eps,
                    rec.value,
                )
            )
    df = sparserobust.results(run)
    assert list(df.columns) == RESULT_COLUMNS
    got = [
        (
            row.model_key,
            row.seed,
            row.method,
            row.target_sparsity,
            row.sparsity,
            row.clean_accuracy,
            missing(row.parent),
            row.measurement,
            row.label,
            row.metric,
            missing(row.norm),
            missing(row.eps),
            row.value,
        )
        for row in df.itertuples()
    ]
    assert got == expected
    # 2 seeds x (dense + 2 methods x 2 levels) = 10 models, every one in the table
    assert df.model_key.nunique() == 10 and df.trusted.all()
    fgsm = df[df.label == "fgsm_linf robust_acc@0.2"]
    assert len(fgsm) == 10 and fgsm.value.between(0, 1).all()
    pivot = fgsm.pivot_table("value", "target_sparsity", "method")
    assert pivot.shape == (3, 3)  # dense, 0.5, 0.9 by dense / global-magnitude / random


def test_models_match_the_database(run: Path) -> None:
    df = sparserobust.models(run)
    assert list(df.columns) == MODEL_COLUMNS
    con = sqlite3.connect(run / "results.sqlite")
    rows = con.execute(
        "SELECT model_key, seed, method, target_sparsity, sparsity, pruned_weights, "
        "total_weights, accuracy, parent FROM models"
    ).fetchall()
    con.close()
    got = {
        r.model_key: (
            r.model_key,
            r.seed,
            r.method,
            r.target_sparsity,
            r.sparsity,
            r.pruned_weights,
            r.total_weights,
            r.clean_accuracy,
            missing(r.parent),
        )
        for r in df.itertuples()
    }
    assert got == {r[0]: r for r in rows}
    # exact sparsity counts: the 90% models have 90% of their weights removed
    ninety = df[df.target_sparsity == 0.9]
    assert (ninety.pruned_weights == (ninety.total_weights * 0.9).round().astype(int)).all()
    assert df.trusted.all() and df.untrusted.isna().all()


def test_a_changed_or_escaping_checkpoint_is_flagged(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    con = sqlite3.connect(copy / "results.sqlite")
    path = con.execute(
        "SELECT checkpoint FROM models WHERE model_key='s0/random/0.9000'"
    ).fetchone()[0]
    (copy / path).write_bytes((copy / path).read_bytes() + b"x")
    (tmp_path / "victim.st").write_bytes(b"not a checkpoint")
    con.execute("UPDATE models SET checkpoint='../victim.st' WHERE model_key='s1/random/0.5000'")
    con.commit()
    con.close()
    models = sparserobust.models(copy).set_index("model_key")
    assert models.loc["s0/random/0.9000", "untrusted"] == (
        "checkpoint SHA-256 differs from the database"
    )
    assert models.loc["s1/random/0.5000", "untrusted"] == (
        "checkpoint path leaves the run directory"
    )
    assert models.trusted.sum() == 8
    df = sparserobust.results(copy)
    assert set(df[~df.trusted].model_key) == {"s0/random/0.9000", "s1/random/0.5000"}
    assert (tmp_path / "victim.st").read_bytes() == b"not a checkpoint"


def test_not_a_run_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        sparserobust.results(tmp_path)
