"""Interruption and concurrency: SIGKILL at many moments, then resume, equals one clean run;
a second process on the same run directory is refused."""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sparserobust import load_checkpoint
from tests.engine.test_pipeline import SMALL, table_rows

STUDY = {**SMALL, "name": "kill", "seeds": [0, 1]}


def command(cfg: Path, run: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from sparserobust.cli import run_main; run_main()",
        "run",
        str(cfg),
        "--out",
        str(run),
        "--no-progress",
    ]


def log_lines(run: Path) -> int:
    try:
        return len((run / "run.log").read_text().splitlines())
    except OSError:
        return 0


def messages(run: Path, skip: int = 0) -> list[str]:
    """Log messages from line ``skip`` on, without timestamps and wall times."""
    try:
        lines = (run / "run.log").read_text().splitlines()[skip:]
    except OSError:
        return []
    return [re.sub(r"in [0-9.]+s", "in Ts", ln.split(" ", 2)[-1]) for ln in lines]


def phase(message: str) -> str:
    if "train dense" in message:
        return "training"
    if "pruning" in message or "retrain" in message:
        return "pruning"
    if "writing the report" in message:
        return "report"
    if "study done" in message or "loaded" in message or " in /" in message:
        return "other"
    return "evaluation"


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted run of STUDY: (config file, run dir)."""
    base = tmp_path_factory.mktemp("clean")
    cfg = base / "study.yaml"
    cfg.write_text(yaml.safe_dump(STUDY))
    run = base / "run"
    subprocess.run(command(cfg, run), check=True, capture_output=True)
    return cfg, run


def test_sigkill_at_many_moments_then_resume(clean: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, reference = clean
    run = tmp_path / "killed"
    # kill points: random log events of the clean run, some in every phase (dense
    # training, pruning sweeps, attacks/metrics, report writing), in run order
    events = messages(reference)
    by_phase: dict[str, list[int]] = {}
    for i, m in enumerate(events):
        by_phase.setdefault(phase(m), []).append(i)
    rng = random.Random(7)
    cuts = set(
        rng.sample(by_phase["training"], 2)
        + rng.sample(by_phase["pruning"], 3)
        + rng.sample(by_phase["evaluation"], 4)
        + by_phase["report"][:1]
    )
    assert len(cuts) == 10
    killed_in = []
    for cut in sorted(cuts):
        target = events[cut]
        skip = log_lines(run)
        proc = subprocess.Popen(
            command(cfg, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if target in messages(run, skip):
                os.kill(proc.pid, signal.SIGKILL)
                killed_in.append(phase(target))
                break
            time.sleep(0.005)
        proc.wait()
    assert len(killed_in) >= 8, f"only {len(killed_in)} of 10 runs could be killed in time"
    assert {"training", "pruning", "evaluation", "report"} <= set(killed_in)
    done = subprocess.run(command(cfg, run), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert table_rows(run / "results.sqlite") == table_rows(reference / "results.sqlite")
    con = sqlite3.connect(run / "results.sqlite")
    paths = [r[0] for r in con.execute("SELECT checkpoint FROM models")]
    orphans = con.execute(
        "SELECT COUNT(*) FROM results WHERE model_key NOT IN (SELECT model_key FROM models)"
    ).fetchone()[0]
    con.close()
    assert orphans == 0 and len(paths) == 10
    for rel in paths:
        load_checkpoint(run / rel)
    assert not list(run.rglob(".*.tmp"))
    assert (run / "report" / "report.html").is_file()


def test_second_process_on_same_directory_is_refused(
    clean: tuple[Path, Path, int], tmp_path: Path
) -> None:
    cfg, _ = clean
    run = tmp_path / "busy"
    first = subprocess.Popen(
        command(cfg, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 60
        while log_lines(run) < 1 and time.time() < deadline:
            time.sleep(0.02)
        second = subprocess.run(command(cfg, run), capture_output=True, text=True, check=False)
        assert second.returncode == 2
        assert "in use by another sparserobust process" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.kill()
        first.wait()


def test_parallel_run_killed_leaves_no_workers_and_resumes(tmp_path: Path) -> None:
    """--jobs 2: SIGKILL the main process during sweeps and measurements; its workers
    exit on their own, and resuming gives an uninterrupted --jobs 2 run's database."""
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump(STUDY))
    reference = tmp_path / "reference"
    subprocess.run([*command(cfg, reference), "-j", "2"], check=True, capture_output=True)

    def progress(run: Path, skip: int = 0) -> int:
        return sum("sweep " in m or "attack:" in m for m in messages(run, skip))

    total = progress(reference)
    run = tmp_path / "killed"
    killed = 0
    # kill after the first sweep/attack event, then twice after a quarter of them; counts,
    # not named events: with two workers the order varies, and a named event may already
    # be done when the next segment starts
    for after in (1, total // 4, total // 4):
        skip = log_lines(run)
        proc = subprocess.Popen(
            [*command(cfg, run), "-j", "2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if progress(run, skip) >= after:
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
                break
            time.sleep(0.005)
        proc.wait()
        gone = time.time() + 15  # the workers notice their parent is gone and exit
        while time.time() < gone:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("worker processes outlived the killed run")
    assert killed == 3
    done = subprocess.run([*command(cfg, run), "-j", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert table_rows(run / "results.sqlite") == table_rows(reference / "results.sqlite")
    assert not list(run.rglob(".*.tmp"))
