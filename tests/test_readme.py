"""The README's bring-your-own-model example runs as written and prints sane numbers."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_the_two_commands() -> None:
    first = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert first is not None
    lines = [ln.split("#")[0].strip() for ln in first.group(1).strip().splitlines()]
    assert lines == ["make run", "make test"]


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
