"""The built wheel installs and works: `python -m build --wheel`, installed without its
dependencies into a fresh virtual environment that borrows this environment's pinned
packages (torch and the rest, through a .pth path entry: nothing is downloaded or
reinstalled), then `sparserobust --version` and `sparserobust run` (a small digits study
from a YAML config, through the same CLI, engine, store and report code as the quick
study, in a few seconds) from it. A module, a subpackage, py.typed or the entry point
missing from the wheel fails here, not on a user's machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "sparserobust"


def clean_env() -> dict[str, str]:
    """This environment without PYTHONPATH (which would import the source tree)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "SPARSEROBUST_NO_DOWNLOAD": "1"}


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the project (source, pyproject.toml, README), built with
    this environment's setuptools (`--no-isolation`: no download)."""
    pytest.importorskip("build")
    tree = tmp_path / "project"
    shutil.copytree(
        PACKAGE, tree / "src" / "sparserobust", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, tree],
        check=True,
        capture_output=True,
        env=clean_env(),
    )
    (wheel,) = dist.glob("sparserobust-*.whl")
    return wheel


TINY_STUDY = """\
name: wheel-digits
dataset: digits
model: lenet300
seeds: [0]
train: {epochs: 3}
pruning: {methods: [global-magnitude], sparsities: [0.5, 0.9], retrain_epochs: 1}
eval:
  n: 64
  attacks:
    - {name: pgd, norm: inf, eps: [0.1], steps: 5}
    - {name: ddn, norm: '2', eps: [1.0], steps: 10}
  clever: {n: 0}
"""


def test_wheel_installs_and_runs_a_study(tmp_path: Path) -> None:
    from sparserobust.config import load_config
    from sparserobust.engine.plan import planned_keys

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        f"sparserobust/{p.relative_to(PACKAGE).as_posix()}"
        for p in PACKAGE.rglob("*")
        if p.suffix in (".py", ".typed")
    }
    assert sources <= names, sorted(sources - names)
    assert f"sparserobust-{version}.dist-info/entry_points.txt" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel],
        check=True,
        capture_output=True,
        env=clean_env(),
    )
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # the pinned dependencies of this environment, after the venv's own packages
    (Path(purelib) / "borrowed_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )

    def run(*args: str | Path) -> str:
        done = subprocess.run(
            [*args], capture_output=True, text=True, env=clean_env(), cwd=tmp_path, timeout=600
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    # imported from the wheel, with every declared dependency satisfied
    check = (
        "import importlib.metadata as md, sparserobust\n"
        "from packaging.requirements import Requirement\n"
        "print(sparserobust.__file__)\n"
        "for text in md.requires('sparserobust'):\n"
        "    req = Requirement(text)\n"
        "    if req.marker is None:\n"
        "        assert req.specifier.contains(md.version(req.name), prereleases=True), text\n"
    )
    assert run(python, "-c", check).strip().startswith(purelib)
    assert run(bin_dir / "sparserobust", "--version").strip() == f"sparserobust, version {version}"
    config = tmp_path / "wheel.yaml"
    config.write_text(TINY_STUDY)
    cli = bin_dir / "sparserobust"
    out = json.loads(run(cli, "run", config, "--out", tmp_path / "s", "--no-progress", "--json"))
    planned = planned_keys(load_config(config))
    assert (out["models"], out["results"]) == (len(planned.models), len(planned.results)) != (0, 0)
    report = (tmp_path / "s" / "report" / "report.md").read_text()
    assert report.startswith("# sparserobust report: wheel-digits") and "## Verdict" in report
