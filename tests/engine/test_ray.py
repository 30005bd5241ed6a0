"""The Ray executor on a real two-node cluster on this machine (loopback only).

A head node and a second node are started with ``ray start`` (one CPU each, their
own custom resources). A small digits study (the quick study's attacks on one seed
and five sparsities: 11 models, a third of the quick study, so that the four runs here
fit the suite's time) run on the cluster must store exactly the numbers of an inline
run with one torch thread; killing the second node or the
driver mid-study must end, after a re-run at most, in the same numbers with no
duplicate or missing cell; an address where nothing listens is a one-line error.
Every process started here is stopped at the end (``ray stop --force`` and the
process groups we started), even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("ray")

from sparserobust.config import StudyConfig, config_from_dict, quick_config  # noqa: E402
from sparserobust.engine import plan  # noqa: E402
from sparserobust.pipeline import run_study  # noqa: E402
from sparserobust.store import ResultStore  # noqa: E402

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")
ENV = {
    **os.environ,
    "RAY_USAGE_STATS_ENABLED": "0",
    "OMP_NUM_THREADS": "1",
    "RAY_AUTH_MODE": "disabled",  # every node and the driver are this machine's own
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_stop() -> None:
    subprocess.run([RAY, "stop", "--force"], env=ENV, capture_output=True, timeout=120)


class Cluster:
    """A head node and one worker node on 127.0.0.1, each with one CPU."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.tmp = tmp
        self.worker: subprocess.Popen[bytes] | None = None
        common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats", "--num-cpus=1"]
        subprocess.run(
            [
                RAY,
                "start",
                "--head",
                f"--port={self.port}",
                "--include-dashboard=false",
                '--resources={"head": 1}',
                *common,
            ],
            env=ENV,
            check=True,
            capture_output=True,
            timeout=180,
        )
        self.common = common

    def start_worker(self) -> None:
        """The second node, blocking in its own process group (so that a SIGKILL to
        the group takes its raylet and workers with it)."""
        log = open(self.tmp / "worker-node.log", "ab")  # noqa: SIM115 - closed with the node
        self.worker = subprocess.Popen(
            [
                RAY,
                "start",
                f"--address={self.address}",
                "--block",
                '--resources={"second": 1}',
                *self.common,
            ],
            env=ENV,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.alive_nodes() >= 2:
                return
            time.sleep(1)
        raise RuntimeError("the second Ray node did not join within 120 s")

    def alive_nodes(self) -> int:
        code = (
            f"import ray;ray.init(address='{self.address}',logging_level='ERROR');"
            "print(sum(n['Alive'] for n in ray.nodes()))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120
        )
        try:
            return int(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return 0

    def kill_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(timeout=30)

    def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(timeout=30)
        ray_stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ray_stop()
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start_worker()
        yield c
    finally:
        c.stop()


def snapshot(run: Path) -> tuple[list[tuple], list[tuple]]:
    """Models (key, sparsity, accuracy, checkpoint SHA-256) and results (model,
    measurement, params, numbers) of a run, sorted: what must be identical."""
    con = sqlite3.connect(run / "results.sqlite")
    try:
        models = con.execute(
            "SELECT model_key, sparsity, pruned_weights, accuracy, checkpoint_sha256 "
            "FROM models ORDER BY model_key"
        ).fetchall()
        results = con.execute(
            "SELECT model_key, measurement, params_hash, numbers FROM results "
            "ORDER BY model_key, measurement, params_hash"
        ).fetchall()
    finally:
        con.close()
    return models, results


def study_dict() -> dict:
    """The quick study on one seed and five sparsities (11 models)."""
    data = quick_config().to_dict()
    data["name"], data["seeds"] = "ray-digits", [0]
    data["pruning"]["sparsities"] = [0.5, 0.8, 0.9, 0.95, 0.99]
    return data


def study() -> StudyConfig:
    return config_from_dict(study_dict())


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "ray-digits.yaml"
    path.write_text(yaml.safe_dump(study_dict()))
    return path


@pytest.fixture(scope="module")
def inline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study inline with one torch thread: the reference numbers."""
    run = tmp_path_factory.mktemp("inline") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_study(study(), run, progress=False, executor="inline")
    finally:
        torch.set_num_threads(threads)
    return run


def expected_cells() -> int:
    """Every (model, cell) of the study: nothing missing, nothing twice."""
    cfg = study()
    models = len(cfg.seeds) * (1 + len(cfg.pruning.methods) * len(cfg.pruning.sparsities))
    from sparserobust.measurements import plan_cells

    return models * len(plan_cells(cfg.eval, 0))


def cli(run: Path, address: str, config: Path | None = None) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from sparserobust.cli import run_main; run_main()",
        "run",
        *([str(config)] if config is not None else []),
        "--out",
        str(run),
        "--executor",
        "ray",
        "--address",
        address,
        "--no-progress",
    ]


def stored_results(run: Path) -> int:
    try:
        con = sqlite3.connect(run / "results.sqlite", timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def wait_for_results(run: Path, proc: subprocess.Popen[bytes], count: int, limit: float) -> None:
    deadline = time.time() + limit
    while stored_results(run) < count:
        assert proc.poll() is None, "the study ended before it could be interrupted"
        assert time.time() < deadline, "the study stored too few results in time"
        time.sleep(0.2)


def test_cluster_numbers_equal_inline(
    cluster: Cluster, inline_run: Path, config_file: Path, tmp_path: Path
) -> None:
    run = tmp_path / "ray"
    out = subprocess.run(
        cli(run, cluster.address, config_file), env=ENV, capture_output=True, timeout=900
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert snapshot(run) == snapshot(inline_run)
    assert len(snapshot(run)[1]) == expected_cells()
    with ResultStore(run, create=False) as store:
        prov = json.loads(store.get_meta("provenance") or "{}")
        assert prov["executor"] == "ray" and prov["threads"] == 1
        assert plan(study(), store) == []  # nothing left to do


def test_second_node_killed_mid_study(
    cluster: Cluster, inline_run: Path, config_file: Path, tmp_path: Path
) -> None:
    run = tmp_path / "ray-node-killed"
    proc = subprocess.Popen(
        cli(run, cluster.address, config_file),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_results(run, proc, 10, 600)
        cluster.kill_worker()
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:  # the study may stop with a one-line error: resume it
            assert len(err.decode().strip().splitlines()) == 1, err.decode()[-2000:]
            again = subprocess.run(
                cli(run, cluster.address, config_file), env=ENV, capture_output=True, timeout=900
            )
            assert again.returncode == 0, again.stderr.decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.start_worker()  # later tests get both nodes again
    assert snapshot(run) == snapshot(inline_run)
    assert len(snapshot(run)[1]) == expected_cells()


def test_driver_killed_then_resumed(
    cluster: Cluster, inline_run: Path, config_file: Path, tmp_path: Path
) -> None:
    run = tmp_path / "ray-driver-killed"
    proc = subprocess.Popen(
        cli(run, cluster.address, config_file),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_results(run, proc, 30, 600)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = stored_results(run)
    assert 0 < partial < expected_cells()
    again = subprocess.run(
        cli(run, cluster.address, config_file), env=ENV, capture_output=True, timeout=900
    )
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert snapshot(run) == snapshot(inline_run)
    assert len(snapshot(run)[1]) == expected_cells()


def test_closed_address_is_a_one_line_error(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there once the probe socket is closed
    start = time.perf_counter()
    out = subprocess.run(
        cli(tmp_path / "run", f"127.0.0.1:{port}"), env=ENV, capture_output=True, timeout=60
    )
    seconds = time.perf_counter() - start
    err = out.stderr.decode().strip()
    assert out.returncode == 2 and seconds < 30
    assert len(err.splitlines()) == 1 and err.startswith("error: no Ray cluster answers at")
    assert not (tmp_path / "run" / "results.sqlite").exists()
