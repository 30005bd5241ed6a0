"""Property-based tests (Hypothesis) of the config loader and the CLI's `run` entry:
any generated YAML text, value, number or name gives either a valid study or one
line ``error: ...`` with exit code 2, never a traceback; an accepted study is sane
(finite numbers in range, a run directory inside runs/)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sparserobust import pipeline  # noqa: E402
from sparserobust.cli import main  # noqa: E402
from sparserobust.config import StudyConfig, config_from_dict, load_config  # noqa: E402
from sparserobust.errors import ConfigError  # noqa: E402
from sparserobust.pipeline import default_run_dir  # noqa: E402
from tests.hardening.test_hardening import TINY  # noqa: E402

FAST = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

NASTY_TEXT = st.text(alphabet=st.sampled_from(list("ab01./\\-_ \x00\n:{}[]'\"é~*")), max_size=30)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63, 2**64, 10**12, 1e308, 1e-308, 0.9999999]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, NASTY_TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(NASTY_TEXT, inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    ("name",),
    ("seeds",),
    ("train", "epochs"),
    ("train", "lr"),
    ("train", "batch_size"),
    ("pruning", "sparsities"),
    ("pruning", "retrain_lr"),
    ("pruning", "methods"),
    ("eval", "n"),
    ("eval", "batch_size"),
    ("eval", "attacks"),
    ("eval", "clever"),
    ("report", "max_accuracy_drop"),
    ("device",),
]


def patched(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """TINY with the field at ``path`` set to ``value``."""
    data: dict[str, Any] = yaml.safe_load(yaml.safe_dump(TINY))
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return data


def assert_sane(config: StudyConfig) -> None:
    """What an accepted config promises: finite numbers in range, a confined run dir."""
    assert all(0 <= s < 2**32 for s in config.seeds)
    assert all(0 <= s <= 0.9999 for s in config.pruning.sparsities)
    for a in config.eval.attacks:
        assert all(math.isfinite(e) and 0 < e <= 100 for e in a.eps)
    assert 0 < config.eval.n <= 1_000_000
    for lr in (config.train.lr, config.pruning.retrain_lr):
        assert lr is None or (math.isfinite(lr) and 0 < lr <= 10)
    run = default_run_dir(config)
    assert run.parent == Path("runs") and "\x00" not in str(run) and ".." not in run.parts


def load_or_error(data: Any) -> StudyConfig | None:
    try:
        config = config_from_dict(data)
    except ConfigError as exc:
        text = str(exc)
        assert text and "\n" not in text and len(text) < 400, text
        return None
    assert_sane(config)
    return config


@FAST
@given(field=st.sampled_from(FIELDS), value=VALUES)
def test_any_value_in_any_field_is_valid_or_one_error(field: tuple[str, ...], value: Any) -> None:
    load_or_error(patched(field, value))


@FAST
@given(
    field=st.sampled_from(
        [("train", "lr"), ("eval", "n"), ("seeds",), ("pruning", "sparsities"), ("train", "epochs")]
    ),
    number=NUMBERS,
)
def test_any_number_is_valid_or_one_error(field: tuple[str, ...], number: Any) -> None:
    value = [number] if field in (("seeds",), ("pruning", "sparsities")) else number
    load_or_error(patched(field, value))


@FAST
@given(name=st.text(max_size=120))
def test_any_name_stays_inside_runs_or_is_refused(name: str) -> None:
    config = load_or_error(patched(("name",), name))
    if config is not None:
        assert default_run_dir(config).resolve().parent == Path("runs").resolve()


@pytest.fixture()
def no_study(monkeypatch: pytest.MonkeyPatch) -> list[StudyConfig]:
    """`run_study` replaced by a recorder: the CLI's parsing and validation run for real."""
    seen: list[StudyConfig] = []

    def fake(config: StudyConfig, run_dir: Any = None, **kwargs: Any) -> dict[str, Any]:
        seen.append(config)
        return {"run_dir": "r", "report": "r/report.md", "models": 0, "results": 0, "seconds": 0}

    monkeypatch.setattr(pipeline, "run_study", fake)
    return seen


YAML_TEXT = st.one_of(
    st.text(max_size=200),
    VALUES.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    st.builds(
        lambda field, v: yaml.safe_dump(patched(field, v), allow_unicode=True),
        st.sampled_from(FIELDS),
        VALUES,
    ),
    st.builds(lambda d: "name: " + "[" * d + "]" * d, st.integers(1, 3000)),
    st.builds(lambda k: f"name: a\ndataset: digits\nmodel: lenet300\n{k}: 1\n{k}: 2\n", NASTY_TEXT),
)


@FAST
@given(text=YAML_TEXT)
def test_cli_run_on_any_yaml_is_a_study_or_one_line(
    text: str, tmp_path: Path, no_study: list[StudyConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    before = len(no_study)
    code = main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"])
    _, err = capsys.readouterr()
    if code == 0:
        assert len(no_study) == before + 1
        assert_sane(no_study[-1])
        assert load_config(path) == no_study[-1]
    else:
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert "Traceback" not in err and len(no_study) == before
