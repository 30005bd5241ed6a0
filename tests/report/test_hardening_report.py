"""Hardening, round two (issue 26, requirement 5): the report checks every stored number
against what it can be, marks the verdicts that depend on a flagged one, and a subset
report never replaces the full report."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from sparserobust.config import config_from_dict
from sparserobust.pipeline import run_study
from sparserobust.report import write_report
from sparserobust.store import ResultStore

HEAD = "fgsm_linf robust_acc@0.1"
SMALL = {
    "name": "plausible",
    "dataset": "digits",
    "model": "lenet300",
    "seeds": [0, 1],
    "train": {"epochs": 3},
    "pruning": {"methods": ["global-magnitude"], "sparsities": [0.5], "retrain_epochs": 1},
    "eval": {
        "n": 40,
        "attacks": [
            {"name": "fgsm", "norm": "inf", "eps": [0.1]},
            {"name": "ddn", "norm": "2", "eps": [1.0], "steps": 20},
        ],
        "clever": {"n": 0},
        "activations": False,
        "bounds": False,
        "measurements": {"verify": {"epsilons": [0.01], "n_exact": 10, "time_limit": 2}},
    },
    "report": {"headline_linf": HEAD},
}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("plausible") / "run"
    run_study(config_from_dict(SMALL), run, progress=False)
    return run


def _edit(run: Path, key: str, measurement: str, edit: object) -> None:
    """Apply ``edit(numbers)`` to one stored result, as a hand-edit of the database."""
    con = sqlite3.connect(run / "results.sqlite")
    rows = con.execute(
        "SELECT rowid, numbers FROM results WHERE model_key=? AND measurement LIKE ?",
        (key, measurement),
    ).fetchall()
    assert rows, (key, measurement)
    rowid, text = rows[0]
    numbers = json.loads(text)
    edit(numbers)  # type: ignore[operator]
    con.execute("UPDATE results SET numbers=? WHERE rowid=?", (json.dumps(numbers), rowid))
    con.commit()
    con.close()


def _set(label_part: str, value: float) -> object:
    def edit(numbers: dict) -> None:
        hits = [r for r in numbers["records"] if label_part in r["label"]]
        assert hits, label_part
        for r in hits:
            r["value"] = value

    return edit


def test_a_clean_run_has_no_flag(clean_run: Path) -> None:
    md = write_report(clean_run).read_text()
    assert "cannot be right" not in md and "flagged number" not in md


@pytest.mark.parametrize(
    "key,measurement,label,value,message",
    [
        ("s0/global-magnitude/0.5000", "attack:fgsm%", HEAD, 0.999, "exceeds the clean accuracy"),
        ("s1/dense/0.0000", "attack:ddn%", "ddn_l2 median_norm", -0.5, "is negative"),
        ("s0/dense/0.0000", "verify%", "timeouts", 500.0, "exceeds n = 10"),
        ("s0/dense/0.0000", "verify%", "resolved share", 2.0, "not in [0,1]"),
        ("s0/dense/0.0000", "verify%", "exact robust_acc upper", 0.0, "exceeds"),
    ],
)
def test_impossible_numbers_are_flagged_and_their_verdicts_marked(
    clean_run: Path,
    tmp_path: Path,
    key: str,
    measurement: str,
    label: str,
    value: float,
    message: str,
) -> None:
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    _edit(run, key, measurement, _set(label, value))
    md = write_report(run, out_dir=tmp_path / "rep").read_text()
    section = md.split("cannot be right", 1)[1].split("##", 1)[0]
    assert key in section and message in section
    if label == HEAD:  # the l_inf verdict is computed from it
        row = next(line for line in md.splitlines() if line.startswith("| global-magnitude |"))
        assert "(depends on a flagged number)" in row


def test_a_verdict_on_good_numbers_is_not_marked(clean_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    _edit(run, "s0/dense/0.0000", "verify%", _set("resolved share", 2.0))
    md = write_report(run, out_dir=tmp_path / "rep").read_text()
    verdict = md.split("## Verdict", 1)[1].split("## Overview", 1)[0]
    assert "flagged" not in verdict.split("### l_2", 1)[0]


def test_a_seed_subset_report_says_so_and_keeps_the_full_report(
    clean_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    full = write_report(run)
    before = full.read_text()
    sub = write_report(run, seeds=[0])
    assert sub.parent == run / "report-seeds-0" and full.read_text() == before
    text = sub.read_text()
    assert "**Subset report**: seeds [0] of the study's [0, 1]" in text
    assert "Subset report" not in before
    with ResultStore(run, readonly=True) as store:
        assert {m.seed for m in store.models()} == {0, 1}
