"""The dense control front (control.dense_front): config, study, positions, report."""

from __future__ import annotations

import copy
import math
import sqlite3
from pathlib import Path

import pytest

from sparserobust import load_checkpoint
from sparserobust.config import FRONT, config_from_dict, front_id
from sparserobust.engine.tasks import dense_train_config
from sparserobust.errors import ConfigError
from sparserobust.pipeline import run_study
from sparserobust.report import CLEAN, Cell, StudyData, load_study, write_report
from sparserobust.report.front import (
    ABOVE,
    BELOW,
    ON,
    ONE_SEED,
    OUTSIDE,
    front_positions,
    front_value,
    mean_front,
)

LABEL = "pgd_linf robust_acc@0.1"

SMALL = {
    "name": "front",
    "dataset": "digits",
    "model": "lenet300",
    "seeds": [0],
    "train": {"epochs": 4},
    "pruning": {"methods": ["global-magnitude"], "sparsities": [0.5, 0.9], "retrain_epochs": 1},
    "eval": {
        "n": 60,
        "attacks": [{"name": "pgd", "norm": "inf", "eps": [0.1], "steps": 5}],
        "clever": {"n": 0},
        "activations": False,
        "bounds": False,
    },
    "report": {"headline_linf": LABEL},
}
RESULTS = "SELECT model_key, measurement, params_hash, numbers FROM results"
FRONT_ENTRIES = [{"weight_decay": 0.05}, {"epochs": 1}]


# --- config ------------------------------------------------------------------------


def test_front_ids_name_the_overrides_and_ignore_order() -> None:
    a = config_from_dict({**SMALL, "control": {"dense_front": FRONT_ENTRIES}})
    b = config_from_dict({**SMALL, "control": {"dense_front": FRONT_ENTRIES[::-1]}})
    assert list(a.control.front_models()) == ["weight_decay=0.05", "epochs=1"]
    assert set(a.control.front_models()) == set(b.control.front_models())
    assert front_id(a.control.dense_front[1]) == "epochs=1"
    # the front trains extra models: it is hashed; without it the hash is unchanged
    assert a.config_hash() != config_from_dict(SMALL).config_hash()
    assert a.models_hash() == config_from_dict(SMALL).models_hash()


def test_front_recipe_overrides_only_what_it_names() -> None:
    c = config_from_dict({**SMALL, "control": {"dense_front": FRONT_ENTRIES}})
    dense = dense_train_config(c, 3)
    wd = dense_train_config(c, 3, "weight_decay=0.05")
    short = dense_train_config(c, 3, "epochs=1")
    assert (dense.epochs, dense.weight_decay) == (4, 1e-4)
    assert (wd.epochs, wd.weight_decay, wd.lr, wd.seed) == (4, 0.05, dense.lr, 3)
    assert (short.epochs, short.weight_decay) == (1, 1e-4)


@pytest.mark.parametrize(
    "front,key",
    [
        ([{}], "control.dense_front[0]: sets nothing"),
        ([{"weight_decay": 2.0}], "control.dense_front[0].weight_decay"),
        ([{"epochs": -1}], "control.dense_front[0].epochs"),
        ([{"weight_decay": 0.1}, {"weight_decay": 0.1}], "duplicate"),
        ([{"wd": 0.1}], "control.dense_front[0].wd: unknown key"),
    ],
)
def test_bad_front_entries_are_one_line_errors(front: list, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict({**SMALL, "control": {"dense_front": front}})


# --- the front as a function ---------------------------------------------------------


def test_front_value_interpolates_between_neighbours() -> None:
    curve = [(0.80, 0.50), (0.90, 0.30), (0.98, 0.10)]
    assert front_value(curve, 0.85) == pytest.approx(0.40)
    assert front_value(curve, 0.94) == pytest.approx(0.20)
    assert front_value(curve, 0.90) == pytest.approx(0.30)
    assert front_value(curve, 0.80) == pytest.approx(0.50)
    assert front_value(curve, 0.99) == pytest.approx(0.10)  # above: the most accurate
    assert front_value(curve, 0.79) is None  # below: no extrapolation
    assert front_value([], 0.9) is None
    assert front_value([(0.9, 0.2), (0.9, 0.4), (1.0, 0.0)], 0.95) == pytest.approx(0.15)


def _data(pruned: dict[tuple[str, float], dict[int, tuple[float, float]]]) -> StudyData:
    """A study by hand: dense (clean 0.98, robust 0.10) and two front models per seed
    (clean 0.90 / 0.80, robust 0.30 / 0.50), plus ``pruned`` (method, target) -> seed
    -> (clean, robust)."""
    data = StudyData("t", {}, {}, [LABEL], {})
    seeds = (0, 1, 2)
    rows = {("m", 0.0): {s: (0.98, 0.10) for s in seeds}, **pruned}
    for (method, target), per in rows.items():
        for k, label in ((0, CLEAN), (1, LABEL)):
            values = {s: v[k] for s, v in per.items()}
            mean = sum(values.values()) / len(values)
            data.table.setdefault(label, {}).setdefault(method, {})[target] = Cell(
                mean, mean, mean, len(values), target
            )
            data.seed_values[(label, method, target)] = values
    for s in seeds:
        data.front.setdefault(CLEAN, {})[s] = {"a": 0.90, "b": 0.80}
        data.front.setdefault(LABEL, {})[s] = {"a": 0.30, "b": 0.50}
    return data


def test_positions_against_the_front_with_paired_intervals() -> None:
    data = _data(
        {
            # at clean 0.90 the front is 0.30: +0.10, +0.12, +0.08 -> above
            ("m", 0.5): {0: (0.90, 0.40), 1: (0.90, 0.42), 2: (0.90, 0.38)},
            # at clean 0.85 the front is 0.40: -0.10, -0.12, -0.08 -> below
            ("m", 0.9): {0: (0.85, 0.30), 1: (0.85, 0.28), 2: (0.85, 0.32)},
            # on the front within noise: +0.02, -0.02, 0.00 -> on
            ("m", 0.95): {0: (0.94, 0.22), 1: (0.94, 0.18), 2: (0.94, 0.20)},
            # less accurate than every front model -> outside
            ("m", 0.99): {0: (0.70, 0.60), 1: (0.70, 0.60), 2: (0.70, 0.60)},
        }
    )
    got = {p.target: p for p in front_positions(data, LABEL)}
    assert [got[t].position for t in (0.5, 0.9, 0.95, 0.99)] == [ABOVE, BELOW, ON, OUTSIDE]
    d, lo, hi = got[0.5].difference
    assert d == pytest.approx(0.10)
    # Student-t over the 3 paired differences (sd 0.02): half width 4.303 * 0.02 / sqrt 3
    assert hi - d == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
    assert got[0.5].front == pytest.approx(0.30)
    assert got[0.9].difference[0] == pytest.approx(-0.10)
    assert got[0.9].front == pytest.approx(0.40)
    assert got[0.5].seeds == 3 and got[0.99].seeds == 0
    front = mean_front(data, LABEL)
    assert [p[0] for p in front] == ["b", "a", "dense"]
    assert [p[2] for p in front] == pytest.approx([0.50, 0.30, 0.10])


def test_a_seed_is_compared_with_its_own_front() -> None:
    data = _data({("m", 0.5): {0: (0.90, 0.40), 1: (0.90, 0.40), 2: (0.90, 0.40)}})
    data.front[LABEL][2] = {"a": 0.45, "b": 0.50}  # seed 2's front is higher at 0.90
    (p,) = front_positions(data, LABEL)
    assert p.difference[0] == pytest.approx((0.10 + 0.10 - 0.05) / 3)
    assert p.position == ON


# --- a study with a front --------------------------------------------------------------


@pytest.fixture(scope="module")
def front_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("front") / "run"
    run_study(config_from_dict(SMALL), run, progress=False)
    con = sqlite3.connect(run / "results.sqlite")
    before = con.execute(RESULTS).fetchall()
    con.close()
    # a front added to a finished run: only the front models are trained and measured
    run_study(
        config_from_dict({**copy.deepcopy(SMALL), "control": {"dense_front": FRONT_ENTRIES}}),
        run,
        progress=False,
    )
    return run, {r[:3]: r[3] for r in before}


def test_adding_a_front_keeps_every_stored_result(front_run: tuple[Path, dict]) -> None:
    run, before = front_run
    con = sqlite3.connect(run / "results.sqlite")
    models = con.execute(
        "SELECT model_key, method, target_sparsity, sparsity, accuracy, checkpoint FROM models"
    ).fetchall()
    after = {r[:3]: r[3] for r in con.execute(RESULTS).fetchall()}
    con.close()
    assert {k: after[k] for k in before} == before
    front = {m[0]: m for m in models if m[1] == FRONT}
    assert set(front) == {"s0/dense-front/weight_decay=0.05", "s0/dense-front/epochs=1"}
    assert {k[0] for k in after} == {k[0] for k in before} | set(front)
    assert len(after) == len(before) + 2 * len(front)  # the attack and the checks
    for key, (_, _, target, sparsity, accuracy, checkpoint) in front.items():
        assert target == 0.0 and sparsity == 0.0
        model, meta = load_checkpoint(run / checkpoint)
        assert meta["method"] == FRONT and meta["front"] == key.split("/")[2]
        assert meta["accuracy"] == accuracy
    _, meta = load_checkpoint(run / front["s0/dense-front/epochs=1"][5])
    assert meta["train"]["epochs"] == 1
    _, meta = load_checkpoint(run / front["s0/dense-front/weight_decay=0.05"][5])
    assert meta["train"]["weight_decay"] == 0.05 and meta["train"]["epochs"] == 4


def test_front_models_stay_out_of_the_methods(front_run: tuple[Path, dict]) -> None:
    data = load_study(front_run[0])
    assert set(data.table[CLEAN]) == {"global-magnitude"}
    assert set(data.front[CLEAN][0]) == {"weight_decay=0.05", "epochs=1"}
    positions = front_positions(data, LABEL)
    assert [p.target for p in positions] == [0.5, 0.9]
    dense = (
        data.seed_values[(CLEAN, "global-magnitude", 0.0)][0],
        data.seed_values[(LABEL, "global-magnitude", 0.0)][0],
    )
    fronts = [(data.front[CLEAN][0][f], data.front[LABEL][0][f]) for f in data.front[CLEAN][0]]
    curve = sorted([dense, *fronts])
    for p in positions:
        ref = front_value(curve, data.seed_values[(CLEAN, "global-magnitude", p.target)][0])
        if ref is None:
            assert p.position == OUTSIDE
            continue
        assert p.front == pytest.approx(ref)
        assert p.difference[0] == pytest.approx(p.robust - ref)
        assert p.position == ONE_SEED  # one seed: never above / on / below


def test_report_has_the_front_section_and_column(front_run: tuple[Path, dict]) -> None:
    md = write_report(front_run[0]).read_text()
    assert "## Against the dense control front" in md
    assert "vs dense front" in md
    assert "`weight_decay=0.05`" in md and "`epochs=1`" in md
    data = load_study(front_run[0])
    for p in front_positions(data, LABEL):
        assert f"| global-magnitude | {100 * p.target:.4g}% |" in md


# --- compare: runs on different datasets, one summary table ----------------------------


def test_compare_puts_datasets_side_by_side(front_run: tuple[Path, dict], tmp_path: Path) -> None:
    from sparserobust.report import write_comparison
    from tests.test_data import make_tiny_mnist

    make_tiny_mnist(tmp_path / "data", "FashionMNIST", n_train=200, n_test=40)
    fashion = {
        **copy.deepcopy(SMALL),
        "name": "front-fashion",
        "dataset": "fashion-mnist",
        "data_dir": str(tmp_path / "data"),
        "train": {"epochs": 1},
        "eval": {**SMALL["eval"], "n": 40},
    }
    run_study(config_from_dict(fashion), tmp_path / "fashion", progress=False)
    md = write_comparison([front_run[0], tmp_path / "fashion"], tmp_path / "cmp").read_text()
    summary = md.split("## Summary", 1)[1].split("## Verdict", 1)[0]
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[:3] for r in rows[1:]] == [
        ["| digits", "lenet300", "global-magnitude"],
        ["| fashion-mnist", "lenet300", "global-magnitude"],
    ]
    assert rows[1].endswith("|") and "no front" not in rows[1]  # the digits run has a front
    assert "no front" in rows[2]
