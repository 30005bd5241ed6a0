"""`make run`'s exact command from a fresh clone layout, and the report's numbers checked
against the results database (every cell of every table, the sweet spots, completeness)."""

from __future__ import annotations

import math
import os
import re
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from sparserobust.measurements import records_of
from sparserobust.store import ResultStore

REPO = Path(__file__).resolve().parent.parent


def make_recipe(target: str) -> list[str]:
    """The recipe lines of ``target`` in the Makefile."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"{target}:"))
    recipe = []
    for ln in lines[start + 1 :]:
        if not ln.startswith("\t"):
            break
        recipe.append(ln.strip())
    return recipe


def expected_table(run: Path) -> dict[tuple[str, str, float], list[float]]:
    """(metric, method, target) -> the values over seeds, straight from the database;
    the dense model counts under every method at target 0 (as the report draws it)."""
    out: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    with ResultStore(run, readonly=True) as store:
        models = store.models()
        methods = sorted({m.method for m in models if m.method != "dense"})
        for m in models:
            for meth in methods if m.method == "dense" else [m.method]:
                out[("clean_accuracy", meth, m.target_sparsity)].append(m.accuracy)
                out[("measured sparsity", meth, m.target_sparsity)].append(m.sparsity)
        for r in store.results():
            for rec in records_of(r["numbers"]):
                for meth in methods if r["method"] == "dense" else [r["method"]]:
                    out[(rec.label, meth, r["target_sparsity"])].append(rec.value)
    return out


def _target(text: str) -> float:
    """A column header of the report ("0%", "99.5%") as a sparsity."""
    return float(text.rstrip("%")) / 100


def report_tables(text: str) -> dict[tuple[str, str, float], str]:
    """(metric, method, target) -> the cell text of the report's detail tables (under
    "## Details": measured sparsity, then one table per metric)."""
    cells: dict[tuple[str, str, float], str] = {}
    section = text.split("## Details", 1)[1]
    for block in re.split(r"^#{3,4} ", section, flags=re.M)[1:]:
        title, _, body = block.partition("\n")
        rows = [ln for ln in body.splitlines() if ln.startswith("| ")]
        if not rows:
            continue
        metric = "measured sparsity" if title.strip() == "Measured sparsity" else title.strip()
        header = [c.strip() for c in rows[0].strip("|").split("|")]
        targets = [_target(t) for t in header[1:]]
        for row in rows[2:]:
            parts = [c.strip() for c in row.strip("|").split("|")]
            for target, cell in zip(targets, parts[1:], strict=True):
                cells[(metric, parts[0], target)] = cell
    return cells


def mean_of(cell: str) -> float:
    return float(cell.split(" [")[0])


def verdict_rows(text: str) -> list[tuple[str, str, str, str, str]]:
    """(headline, method, best sparsity cell, value cell, verdict) of the verdict tables."""
    out = []
    section = text.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    for block in section.split("### ")[1:]:
        title, _, body = block.partition("\n")
        headline = title.split(": ", 1)[1].strip()
        for row in [ln for ln in body.splitlines() if ln.startswith("| ")][2:]:
            parts = [c.strip() for c in row.strip("|").split("|")]
            out.append((headline, parts[0], parts[1], parts[2], parts[4]))
    return out


def check_report_against_db(run: Path, max_drop: float = 0.01) -> int:
    """Every number of the report's detail tables equals the database's mean over seeds
    (4 significant digits), every stored number is in the report, and each verdict row's
    best sparsity is the best eligible cell of its headline with that cell's value.
    Returns the number of cells checked."""
    text = (run / "report" / "report.md").read_text()
    want = expected_table(run)
    got = report_tables(text)
    assert all(got[k] == "" for k in set(got) - set(want))  # blank only where nothing is stored
    metrics_in_db = {k[0] for k in want}
    metrics_in_report = {k[0] for k in got}
    assert metrics_in_db == metrics_in_report, metrics_in_db ^ metrics_in_report
    for key, values in want.items():
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            assert got[key].startswith("nan"), key
            continue
        mean = sum(finite) / len(finite)
        if key[0] == "measured sparsity":
            assert got[key] == f"{mean:.4f}", key
        else:
            assert mean_of(got[key]) == pytest.approx(mean, rel=6e-4, abs=1e-12), key
    rows = verdict_rows(text)
    assert rows
    for headline, method, best, value, verdict in rows:

        def mean(metric: str, target: float, method: str = method) -> float:
            vals = [v for v in want[(metric, method, target)] if math.isfinite(v)]
            return sum(vals) / len(vals)

        targets = sorted(t for (m, me, t) in want if m == "clean_accuracy" and me == method)
        dense_clean = mean("clean_accuracy", 0.0)
        eligible = [
            t
            for t in targets
            if t > 0
            and mean("clean_accuracy", t) >= dense_clean - max_drop
            and (headline, method, t) in want
        ]
        if best == "none in budget":
            assert not eligible and "no pruned model" in verdict
            continue
        target = _target(best.split(" ")[0])
        assert target in eligible
        assert float(value.split(" ")[0]) == pytest.approx(mean(headline, target), rel=2e-3)
        clean = float(best.split("(")[1].rstrip(")"))
        assert clean == pytest.approx(mean("clean_accuracy", target), abs=6e-4)
        assert all(mean(headline, t) <= mean(headline, target) + 1e-12 for t in eligible)
    assert "Incomplete run" not in text
    return len(want)


def fresh_clone(dest: Path) -> Path:
    """The repository's files as a fresh clone has them (tracked and new, not ignored)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    return dest


def test_report_numbers_match_the_database(tmp_path: Path) -> None:
    """Fast: a small study's report against its database, cell by cell (the report tests
    checked two fixed strings and passed with the sparsity columns reversed)."""
    from sparserobust.config import config_from_dict
    from sparserobust.pipeline import run_study
    from tests.engine.test_pipeline import SMALL

    run = tmp_path / "run"
    run_study(config_from_dict({**SMALL, "seeds": [0, 1]}), run, progress=False)
    assert check_report_against_db(run) > 30


@pytest.mark.slow
def test_make_run_from_a_fresh_clone(tmp_path: Path) -> None:
    """`make run`'s command (read from the Makefile), run in a fresh clone layout: the
    quick digits study, 34 models and 272 results, report numbers equal the database."""
    assert make_recipe("run") == ["$(BIN)/sparserobust run"]
    clone = fresh_clone(tmp_path / "clone")
    script = Path(sys.executable).parent / "sparserobust"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "sparserobust.cli"]
    env = {**os.environ, "PYTHONPATH": str(clone / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("SPARSEROBUST_DATA", None)
    res = subprocess.run(
        [*cmd, "run"], cwd=clone, env=env, capture_output=True, text=True, timeout=1800
    )
    assert res.returncode == 0, res.stderr[-2000:]
    runs = list((clone / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("quick-digits-")
    con = sqlite3.connect(runs[0] / "results.sqlite")
    n_models = con.execute("SELECT COUNT(*) FROM models").fetchone()[0]
    n_results = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    con.close()
    assert (n_models, n_results) == (34, 272)
    assert "34 models, 272 results" in res.stdout
    assert check_report_against_db(runs[0]) > 300
