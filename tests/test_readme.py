"""The README's and docs' Python examples run as written and print sane numbers.

A fenced Python block right after a ``<!-- runnable -->`` line (in README.md or
docs/**/*.md) is executed by :func:`test_runnable_blocks_run`: the blocks of one file
in order, in one namespace, in a temporary working directory, on digits-sized data.
Before each block the namespace gets fresh copies of what the examples call "your"
model and data (:func:`given`): ``data`` (scikit-learn's digits), ``model`` (the
registry's softmax regression ``linear``, trained 3 epochs on it: small enough for the
exact verifiers' examples to finish in seconds), ``x``, ``y`` (4 test images and
labels), ``split`` and ``test_split`` (the train and test splits) and
``checkpoint_meta`` (the checkpoint fields of that model); names a block defines stay
for the blocks after it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARK = "<!-- runnable -->"
RUNNABLE = re.compile(r"^<!-- runnable -->\n```python\n(.*?)^```", flags=re.S | re.M)


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def runnable_blocks(path: Path) -> list[str]:
    """The Python blocks of ``path`` marked runnable, in order."""
    return RUNNABLE.findall(path.read_text())


DOCS = sorted([README, *(ROOT / "docs").rglob("*.md")])
MARKED = [p for p in DOCS if runnable_blocks(p)]


def given() -> dict[str, Any]:
    """The namespace every file's runnable blocks start from (module docstring)."""
    import torch

    from sparserobust.data import load_dataset
    from sparserobust.models import build_model
    from sparserobust.training import TrainSettings, train_model

    data = load_dataset("digits")
    info = data.info
    torch.manual_seed(0)
    model = build_model("linear", info.input_shape, info.num_classes, info.mean, info.std)
    train_model(model, data.train, TrainSettings(epochs=3, seed=0), progress=False)
    meta = {
        "model": "linear",
        "dataset": "digits",
        "input_shape": list(info.input_shape),
        "num_classes": info.num_classes,
        "mean": list(info.mean),
        "std": list(info.std),
    }
    return {
        "data": data,
        "model": model.eval(),
        "x": data.test.x[:4],
        "y": data.test.y[:4],
        "split": data.train,
        "test_split": data.test,
        "checkpoint_meta": meta,
    }


def test_readme_starts_with_the_two_commands() -> None:
    first = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert first is not None
    lines = [ln.split("#")[0].strip() for ln in first.group(1).strip().splitlines()]
    assert lines == ["make run", "make test"]


def test_the_runnable_marks_find_their_blocks() -> None:
    """Every mark sits right before a Python fence (a mark elsewhere runs nothing), and
    the examples meant to run are marked."""
    for path in DOCS:
        marks = sum(line == MARK for line in path.read_text().splitlines())
        assert marks == len(runnable_blocks(path)), path
    names = {p.relative_to(ROOT).as_posix(): len(runnable_blocks(p)) for p in MARKED}
    assert names == {"README.md": 2, "docs/pruning.md": 2, "docs/verification.md": 1}


@pytest.mark.parametrize("path", MARKED, ids=[p.name for p in MARKED])
def test_runnable_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    yours = given()
    namespace: dict[str, Any] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, block in enumerate(runnable_blocks(path)):
            namespace.update(copy.deepcopy(yours))
            exec(compile(block, f"{path.name} block {i + 1}", "exec"), namespace)
    if path == README:  # the last block prints the median C&W l2 norm of 4 points
        assert 0.0 < float(out.getvalue().strip().splitlines()[-1]) < 10.0


def test_bring_your_own_model_example_runs() -> None:
    block = next(b for b in python_blocks() if "sweep_robustness" in b)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(README), "exec"), {})
    rows = [line.split() for line in out.getvalue().strip().splitlines()]
    assert [r[:2] for r in rows] == [
        ["dense", "0.0"],
        ["global-magnitude", "0.5"],
        ["global-magnitude", "0.9"],
    ]
    for _, _, clean, robust in rows:
        assert 0.0 <= float(robust) <= float(clean) <= 1.0
    assert float(rows[0][2]) >= 0.9  # the dense model learned the digits
