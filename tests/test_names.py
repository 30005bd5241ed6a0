"""One name per concept: one norm parser, the ``Settings`` suffix for every settings
class, one meaning per class name, and the old names of renamed classes still importable
(with a DeprecationWarning)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import math
import typing
from collections import defaultdict
from pathlib import Path

import pytest

from sparserobust.errors import AttackError, ConfigError, NormError
from sparserobust.norms import norm_key, norm_name, parse_norm

PACKAGE = next(
    p / "src" / "sparserobust"
    for p in Path(__file__).resolve().parents
    if (p / "src" / "sparserobust").is_dir()
)


@pytest.mark.parametrize(
    "given,p",
    [
        (2, 2.0),
        (2.0, 2.0),
        ("2", 2.0),
        ("2.0", 2.0),
        ("l2", 2.0),
        ("L2", 2.0),
        ("l_2", 2.0),
        (" l2 ", 2.0),
        (math.inf, math.inf),
        ("inf", math.inf),
        ("Infinity", math.inf),
        ("linf", math.inf),
        ("l_inf", math.inf),
        ("Linf", math.inf),
    ],
)
def test_every_spelling_of_a_norm_parses_to_one_value(given: float | str, p: float) -> None:
    assert parse_norm(given) == p
    assert norm_key(given) == ("inf" if math.isinf(p) else "2")
    assert norm_name(given) == ("linf" if math.isinf(p) else "l2")


@pytest.mark.parametrize("bad", [1, "l1", "3", "", "l", "linfinity2", True, None, "nan"])
def test_a_norm_other_than_2_or_inf_is_a_config_and_an_attack_error(bad: object) -> None:
    with pytest.raises(NormError, match="unsupported norm") as err:
        parse_norm(bad)  # type: ignore[arg-type]
    assert isinstance(err.value, ConfigError) and isinstance(err.value, AttackError)


def test_there_is_one_norm_parser() -> None:
    """Attacks, metrics, verification, training and the settings limits all parse norms
    with :func:`sparserobust.norms.parse_norm`: no module defines another."""
    from sparserobust import attacks
    from sparserobust.attacks import norms as attack_norms
    from sparserobust.metrics import margin

    assert attacks.parse_norm is parse_norm and attack_norms.parse_norm is parse_norm
    assert not hasattr(margin, "parse_metric_norm")
    parsers = [
        f"{p.relative_to(PACKAGE)}:{node.name}"
        for p in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.FunctionDef) and "parse" in node.name and "norm" in node.name
    ]
    assert parsers == ["norms.py:parse_norm"]


def _settings_classes() -> set[type]:
    """Every settings dataclass a user sets: the study config's blocks (recursively),
    each pruning method's and measurement's settings, training's."""
    from sparserobust.config import StudyConfig
    from sparserobust.measurements import MEASUREMENTS
    from sparserobust.pruning.registry import METHODS
    from sparserobust.training import AdversarialTrainingSettings, TrainSettings

    found: set[type] = {TrainSettings, AdversarialTrainingSettings}
    found |= {m.settings_type for m in METHODS.values()}
    found |= {m.settings_type for m in MEASUREMENTS.values()}
    stack: list[type] = [StudyConfig]
    while stack:
        cls = stack.pop()
        for hint in typing.get_type_hints(cls).values():
            for arg in (
                hint,
                *typing.get_args(hint),
                *sum(map(typing.get_args, typing.get_args(hint)), ()),
            ):
                if dataclasses.is_dataclass(arg) and isinstance(arg, type) and arg not in found:
                    found.add(arg)
                    stack.append(arg)
    return found


def test_every_settings_class_ends_in_settings() -> None:
    names = sorted(cls.__name__ for cls in _settings_classes())
    assert "AttackSettings" in names and "DNSSettings" in names and "TrainSettings" in names
    assert [n for n in names if not n.endswith("Settings")] == []


def test_no_two_classes_share_a_name() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for p in PACKAGE.rglob("*.py"):
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, ast.ClassDef):
                where[node.name].append(str(p.relative_to(PACKAGE)))
    assert {n: f for n, f in where.items() if len(f) > 1} == {}


@pytest.mark.parametrize(
    "module,old,new",
    [
        ("sparserobust.training", "TrainConfig", "TrainSettings"),
        ("sparserobust.training", "AdversarialTraining", "AdversarialTrainingSettings"),
        ("sparserobust.pruning", "DNSConfig", "DNSSettings"),
        ("sparserobust.pruning.dns", "DNSConfig", "DNSSettings"),
        ("sparserobust.measurements", "Cell", "MeasurementCell"),
        ("sparserobust.measurements.base", "Cell", "MeasurementCell"),
    ],
)
def test_a_renamed_class_keeps_its_old_name_with_a_warning(module: str, old: str, new: str) -> None:
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=f"{module}.{old} is renamed {new}"):
        assert getattr(mod, old) is getattr(mod, new)
    with pytest.raises(AttributeError):
        mod.NoSuchName  # noqa: B018
