"""Pipeline: config validation, a small digits study, resume after SIGKILL, report, export."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import torch

from sparserobust import load_checkpoint
from sparserobust.config import AttackSettings, config_from_dict, load_config
from sparserobust.errors import ConfigError, StoreError
from sparserobust.measurements import values_of
from sparserobust.pipeline import run_study, sweep_robustness
from sparserobust.pruning import sparsity_report
from sparserobust.report import Cell, interval, sweet_spots
from sparserobust.rundir import RunLock

SMALL = {
    "name": "small",
    "dataset": "digits",
    "model": "lenet300",
    "seeds": [0],
    "train": {"epochs": 4},
    "pruning": {
        "methods": ["global-magnitude", "random"],
        "sparsities": [0.5, 0.9],
        "retrain_epochs": 1,
    },
    "eval": {
        "n": 60,
        "attacks": [{"name": "fgsm", "eps": [0.05, 0.2]}],
        "clever": {"n": 0},
        "activations": True,
        "bounds": True,
    },
}
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def table_rows(db: Path) -> dict[str, list[tuple]]:
    """Models and results rows without wall times, timestamps and provenance."""
    con = sqlite3.connect(db)
    try:
        models = con.execute(
            "SELECT model_key, seed, method, target_sparsity, sparsity, pruned_weights, "
            "total_weights, accuracy, checkpoint, checkpoint_sha256, parent FROM models "
            "ORDER BY model_key"
        ).fetchall()
        results = con.execute(
            "SELECT model_key, measurement, params, numbers FROM results "
            "ORDER BY model_key, measurement, params_hash"
        ).fetchall()
    finally:
        con.close()
    return {"models": models, "results": results}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run") / "small"
    run_study(config_from_dict(SMALL), run, progress=False)
    return run


# --- config ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "patch,key",
    [
        ({"modle": "x"}, "modle"),
        ({"model": "alexnet"}, "model"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"train": {"epochs": -1}}, "train.epochs"),
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"pruning": {"sparsities": [0.5, 1.0]}}, "pruning.sparsities[1]"),
        ({"pruning": {"sparsities": []}}, "pruning.sparsities"),
        ({"pruning": {"sparsities": [0.5, 0.5]}}, "pruning.sparsities"),
        ({"pruning": {"methods": ["l1"]}}, "pruning.methods[0]"),
        ({"eval": {"attacks": [{"name": "fgsm", "eps": [0.1, -0.1]}]}}, "eval.attacks[0].eps[1]"),
        ({"eval": {"attacks": [{"name": "fgsm"}]}}, "eval.attacks[0].eps"),
        ({"eval": {"attacks": [{"name": "boom"}]}}, "eval.attacks[0].name"),
        (
            {"eval": {"attacks": [{"name": "pgd", "eps": [0.1], "norm": "1"}]}},
            "eval.attacks[0].norm",
        ),
        ({"eval": {"clever": {"radius": 0}}}, "eval.clever.radius"),
        ({"eval": {"attacks": [{"name": "fgsm", "eps": [0.1], "steps": 5}]}}, "eval.attacks[0]"),
        ({"eval": {"attacks": [{"name": "cw", "norm": "inf"}]}}, "eval.attacks[0]"),
        ({"report": {"max_accuracy_drop": 2}}, "report.max_accuracy_drop"),
        ({"eval": "all"}, "eval"),
        ({"eval": {"masking": [{"eps": [0.1]}]}}, "eval.masking[0].against[0]"),
        ({"eval": {"masking": [{"norm": "1", "eps": [0.1]}]}}, "eval.masking[0].norm"),
        ({"eval": {"masking": [{"against": ["pgd"]}]}}, "eval.masking[0].eps"),
    ],
)
def test_bad_config_names_the_key(patch: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({**SMALL, **patch})
    assert str(err.value).startswith(key + ":")


def test_attack_settings_reach_the_attack() -> None:
    from sparserobust.measurements import plan_cells
    from sparserobust.measurements.attack import attack_params

    attacks = [
        {"name": "cw", "search_steps": 3, "steps": 50},
        {"name": "ddn"},
        {"name": "pgd", "eps": [0.1], "restarts": 2},
    ]
    config = config_from_dict({**SMALL, "eval": {"attacks": attacks}})
    names = [c.key for c in plan_cells(config.eval, 0) if c.measurement == "attack"]
    assert names == ["attack:cw:l2", "attack:ddn:l2", "attack:pgd:linf"]
    assert attack_params(config.eval.attacks[0]) == {"binary_search_steps": 3, "steps": 50}


def test_config_hash_ignores_device_but_not_numbers() -> None:
    base = config_from_dict(SMALL)
    assert config_from_dict({**SMALL, "device": "cpu", "data_dir": "/x"}).config_hash() == (
        base.config_hash()
    )
    assert config_from_dict({**SMALL, "seeds": [1]}).config_hash() != base.config_hash()


def test_config_file_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(tmp_path / "empty.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    config = load_config(path)
    # every shipped study measures something: attacks, or (the verification-only
    # configs) a measurement such as verify
    assert config.pruning.sparsities and (config.eval.attacks or config.eval.measurements)


def test_paper_configs_are_shipped() -> None:
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {
        "mnist_lenet300.yaml",
        "mnist_lenet5.yaml",
        "cifar10_vgg.yaml",
        "cifar10_resnet32.yaml",
        "mnist_linear.yaml",
    } <= names


def test_lenet5_subset_config_measures_like_the_full_study() -> None:
    """configs/mnist_lenet5_subset.yaml claims the full LeNet-5 study's attacks and
    metrics on fewer models: same model, training and eval; only seeds and grid differ.
    Since issue 12 the full study adds AutoAttack and leaves CLEVER out (the subset
    study ran before, with CLEVER): every other setting is still the same."""
    full = load_config(CONFIGS / "mnist_lenet5.yaml")
    subset = load_config(CONFIGS / "mnist_lenet5_subset.yaml")
    full_attacks = tuple(a for a in full.eval.attacks if a.name != "autoattack")
    assert [a.name for a in full.eval.attacks if a.name == "autoattack"] == ["autoattack"]
    assert subset.eval.clever.n > 0 and full.eval.clever.n == 0
    assert dataclasses.replace(subset.eval, clever=full.eval.clever) == dataclasses.replace(
        full.eval, attacks=full_attacks
    )
    assert subset.train == full.train
    assert subset.model == full.model and subset.dataset == full.dataset
    assert set(subset.seeds) < set(full.seeds)
    assert set(subset.pruning.sparsities) < set(full.pruning.sparsities)
    assert set(subset.pruning.methods) < set(full.pruning.methods)
    # its seeds 1 and 2: the same study otherwise, so the tables merge them
    s12 = load_config(CONFIGS / "mnist_lenet5_subset_s12.yaml")
    assert s12.seeds == (1, 2) and subset.seeds == (0,)
    assert dataclasses.replace(s12, seeds=subset.seeds, name=subset.name) == subset
    pilot = load_config(CONFIGS / "mnist_lenet5_cpu.yaml")
    pilot12 = load_config(CONFIGS / "mnist_lenet5_cpu_s12.yaml")
    assert dataclasses.replace(pilot12, seeds=pilot.seeds, name=pilot.name) == pilot


# --- the study ------------------------------------------------------------------


def test_study_stores_every_model_and_number(small_run: Path) -> None:
    rows = table_rows(small_run / "results.sqlite")
    keys = [r[0] for r in rows["models"]]
    assert keys == [
        "s0/dense/0.0000",
        "s0/global-magnitude/0.5000",
        "s0/global-magnitude/0.9000",
        "s0/random/0.5000",
        "s0/random/0.9000",
    ]
    # 5 models x (checks, fgsm, activations, bounds l2, bounds linf)
    assert len(rows["results"]) == 5 * 5
    for _key, _, _method, target, sparsity, pruned, total, acc, ckpt, *_ in rows["models"]:
        model, meta = load_checkpoint(small_run / ckpt)
        rep = sparsity_report(model)
        assert (rep.pruned, rep.total) == (pruned, total) == (round(target * 50_200), 50_200)
        assert sparsity == pytest.approx(target, abs=1e-4)
        assert 0 <= acc <= 1
    fgsm = [json.loads(r[3]) for r in rows["results"] if r[1] == "attack:fgsm:linf"]
    for numbers in fgsm:
        h = values_of(numbers)
        assert h["fgsm_linf robust_acc@0.2"] <= h["fgsm_linf robust_acc@0.05"]


def test_rerun_skips_finished_work(small_run: Path) -> None:
    before = table_rows(small_run / "results.sqlite")
    con = sqlite3.connect(small_run / "results.sqlite")
    created = con.execute("SELECT created FROM results ORDER BY rowid").fetchall()
    con.close()
    start = time.perf_counter()
    run_study(config_from_dict(SMALL), small_run, progress=False)
    assert time.perf_counter() - start < 15
    assert table_rows(small_run / "results.sqlite") == before
    con = sqlite3.connect(small_run / "results.sqlite")
    assert con.execute("SELECT created FROM results ORDER BY rowid").fetchall() == created
    con.close()


def test_parallel_workers_store_the_same_numbers(tmp_path: Path) -> None:
    """--jobs 2 (spawned workers, one thread each) gives a one-thread sequential run's
    database, checkpoint hashes included, and resumes a half-finished directory."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_study(config_from_dict(SMALL), tmp_path / "seq", progress=False)
    finally:
        torch.set_num_threads(threads)
    expected = table_rows(tmp_path / "seq" / "results.sqlite")
    run = tmp_path / "par"
    run_study(config_from_dict(SMALL), run, progress=False, jobs=2)
    prov = json.loads(
        sqlite3.connect(run / "results.sqlite")
        .execute("SELECT provenance FROM results LIMIT 1")
        .fetchone()[0]
    )
    assert (prov["threads"], prov["jobs"]) == (1, 2)
    assert table_rows(run / "results.sqlite") == expected
    con = sqlite3.connect(run / "results.sqlite")
    con.execute("DELETE FROM results WHERE measurement = 'attack:fgsm:linf'")
    con.execute("DELETE FROM models WHERE method = 'random'")
    con.execute("DELETE FROM results WHERE model_key LIKE '%random%'")
    con.commit()
    con.close()
    (run / "checkpoints" / "s0" / "random" / "random-s0.9000.st").unlink()
    run_study(config_from_dict(SMALL), run, progress=False, jobs=2)
    assert table_rows(run / "results.sqlite") == expected
    with pytest.raises(ConfigError, match="jobs"):
        run_study(config_from_dict(SMALL), run, progress=False, jobs=0)


def test_other_config_in_same_dir_is_refused(small_run: Path) -> None:
    with pytest.raises(StoreError, match="another config"):
        run_study(config_from_dict({**SMALL, "seeds": [3]}), small_run, progress=False)


def test_a_config_may_add_measurements_to_a_run_directory(small_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "grown"
    shutil.copytree(small_run, run)
    before = table_rows(run / "results.sqlite")
    pgd = {"name": "pgd", "eps": [0.05], "steps": 5}
    grown = {**SMALL, "eval": {**SMALL["eval"], "attacks": [*SMALL["eval"]["attacks"], pgd]}}
    # anything but an added measurement is refused, before any work
    changed = [
        {**SMALL, "eval": {**SMALL["eval"], "n": 50}},  # other images
        {**SMALL, "eval": {**SMALL["eval"], "attacks": [{"name": "fgsm", "eps": [0.05]}]}},
        {**grown, "eval": {**grown["eval"], "bounds": False}},  # adds pgd, drops bounds
        {**grown, "pruning": {**SMALL["pruning"], "retrain_epochs": 2}},
    ]
    for cfg in changed:
        with pytest.raises(StoreError, match="may only add measurements"):
            run_study(config_from_dict(cfg), run, progress=False)
    assert table_rows(run / "results.sqlite") == before
    run_study(config_from_dict(grown), run, progress=False)
    after = table_rows(run / "results.sqlite")
    assert after["models"] == before["models"]  # no model retrained
    added = [r for r in after["results"] if r not in before["results"]]
    assert set(before["results"]) <= set(after["results"])
    assert {r[1] for r in added} == {"attack:pgd:linf"} and len(added) == len(before["models"])
    con = sqlite3.connect(run / "results.sqlite")
    (stored,) = con.execute("SELECT value FROM meta WHERE key = 'config_hash'").fetchone()
    con.close()
    assert stored == config_from_dict(grown).config_hash()
    # and the original config is now the one that lacks a stored measurement: refused
    with pytest.raises(StoreError, match="another config"):
        run_study(config_from_dict(SMALL), run, progress=False)


def test_second_process_is_refused(tmp_path: Path) -> None:
    with RunLock(tmp_path), pytest.raises(StoreError, match="in use by another"):
        run_study(config_from_dict(SMALL), tmp_path, progress=False)


def test_report_and_export(small_run: Path, tmp_path: Path) -> None:
    report = small_run / "report"
    md = (report / "report.md").read_text()
    assert "biases and BatchNorm excluded" in md and md.index("## Verdict") < md.index("## Details")
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(list(report.glob("*.png"))) >= 5
    from sparserobust.cli import main

    assert (
        main(
            [
                "export",
                str(small_run),
                "--csv",
                str(tmp_path / "r.csv"),
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    with open(tmp_path / "r.csv") as fh:
        rows = list(csv.DictReader(fh))
    fgsm = [r for r in rows if r["metric"] == "fgsm_linf robust_acc@0.05"]
    assert len(fgsm) == 5
    assert all(r["norm"] == "inf" and float(r["eps"]) == 0.05 for r in fgsm)
    assert all(r["robustness"] == "True" and r["higher_is_better"] == "True" for r in fgsm)
    relu = [r for r in rows if r["metric"] == "active_relu_fraction (not robustness)"]
    assert len(relu) == 5 and all(r["robustness"] == "False" for r in relu)
    payload = json.loads((tmp_path / "r.json").read_text())
    assert len(payload["models"]) == 5 and len(payload["results"]) == 25


def test_interval_and_sweet_spot() -> None:
    mean, lo, hi = interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and hi - mean == pytest.approx(4.303 * 1 / 3**0.5, rel=1e-3)
    table = {
        "clean_accuracy": {
            "m": {
                0.0: Cell(0.98, 0, 0, 1, 0.0),
                0.5: Cell(0.975, 0, 0, 1, 0.5),
                0.9: Cell(0.90, 0, 0, 1, 0.9),
            }
        },
        "rob": {
            "m": {
                0.0: Cell(0.3, 0, 0, 1, 0.0),
                0.5: Cell(0.4, 0, 0, 1, 0.5),
                0.9: Cell(0.6, 0, 0, 1, 0.9),
            }
        },
    }
    (spot,) = sweet_spots(table, ["rob"], max_drop=0.01)
    assert spot["sparsity"] == 0.5 and spot["value"] == 0.4  # 0.9 is too inaccurate
    (spot,) = sweet_spots(table, ["rob"], max_drop=0.1)
    assert spot["sparsity"] == 0.9
    assert (spot["dense_value"], spot["clean_accuracy"], spot["method"]) == (0.3, 0.90, "m")
    # a method without a dense model has no sweet spot; the methods after it still do
    table["clean_accuracy"]["a"] = {0.5: Cell(0.9, 0, 0, 1, 0.5)}
    table["rob"]["a"] = {0.5: Cell(0.9, 0, 0, 1, 0.5)}
    assert [s["method"] for s in sweet_spots(table, ["rob"], max_drop=0.1)] == ["m"]


# resuming after SIGKILL at many moments: tests/engine/test_interruption.py


# --- bring your own model -------------------------------------------------------


def test_sweep_robustness_on_own_model(digits_lenet300: torch.nn.Module, digits) -> None:  # type: ignore[no-untyped-def]
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(digits.test.x, digits.test.y), batch_size=50)
    before = {k: v.clone() for k, v in digits_lenet300.state_dict().items()}
    records = sweep_robustness(digits_lenet300, loader, sparsities=[0.5, 0.8], n=100)
    assert [(r["method"], r["target_sparsity"]) for r in records] == [
        ("dense", 0.0),
        ("global-magnitude", 0.5),
        ("global-magnitude", 0.8),
    ]
    assert [round(r["sparsity"], 4) for r in records] == [0.0, 0.5, 0.8]
    for r in records:
        acc = values_of(r["measurements"]["attack:fgsm:linf"])
        assert (
            acc["fgsm_linf robust_acc@0.3"]
            <= acc["fgsm_linf robust_acc@0.05"]
            <= (r["clean_accuracy"] + 1e-9)
        )
    assert all(torch.equal(before[k], v) for k, v in digits_lenet300.state_dict().items())


# --- evaluation sanity flags ----------------------------------------------------


def test_masking_check_flags_a_model_with_zero_gradients(digits, digits_lenet300) -> None:  # type: ignore[no-untyped-def]
    """The study's Square-vs-gradient-attacks measurement on the same images: next to
    nothing missed on a normal network; a flag on the same network behind an 8-bit input rounding
    (identical decisions, all input gradients zero), with Square's robust accuracy
    far below PGD's there."""
    from torch import nn

    from sparserobust.config import validate
    from sparserobust.measurements import plan_cells, run_cell

    class Rounded(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(torch.round(x * 255) / 255)

    cfg = validate(
        config_from_dict(
            {
                **SMALL,
                "eval": {
                    "n": 100,
                    "attacks": [
                        {"name": "pgd", "eps": [0.1, 0.2], "steps": 20},
                        {"name": "ddn", "norm": "2", "steps": 100},
                    ],
                    "masking": [
                        {"norm": "inf", "eps": [0.1, 0.2], "n": 60, "steps": 300},
                        {"norm": "2", "eps": [1.0], "n": 60, "steps": 300, "against": ["ddn"]},
                    ],
                },
            }
        )
    )
    plan = {c.key: c for c in plan_cells(cfg.eval, seed=0)}
    cell = plan["masking:square:linf"]
    params = cell.params
    assert params["against"][0]["name"] == "pgd" and params["n"] == 60
    x, y = digits.test.x, digits.test.y
    normal = run_cell(digits_lenet300, x, y, cell)
    # a normal network: PGD misses at most a few boundary points that Square finds
    assert normal["compared_with"] == ["pgd"] and max(normal["missed_share"].values()) <= 0.05
    h = values_of(normal)
    assert h["square_linf robust_acc@0.2"] <= h["square_linf robust_acc@0.1"]
    l2 = run_cell(digits_lenet300, x, y, plan["masking:square:l2"])
    assert l2["compared_with"] == ["ddn"] and max(l2["missed_share"].values()) <= 0.05
    masked = Rounded(digits_lenet300).eval()
    out = run_cell(masked, x, y, cell)
    assert len(out["flags"]) == 1 and "gradient masking suspected" in out["flags"][0]
    assert min(out["missed_share"].values()) >= 0.3
    acc_free, acc_grad = out["gradient_free_robust_accuracy"], out["gradient_robust_accuracy"]
    assert acc_free[0.2] < acc_grad[0.2] - 0.3
    combined = values_of(out)["square_linf+gradient robust_acc@0.2"]
    assert combined <= min(acc_free[0.2], acc_grad[0.2])
    assert combined == pytest.approx(acc_grad[0.2] - out["missed_share"][0.2], abs=1e-6)


def test_diverged_model_is_flagged_not_measured(digits, digits_lenet300) -> None:  # type: ignore[no-untyped-def]
    """A model with NaN logits (e.g. diverged while pruning) gets a flagged, empty
    record for every measurement instead of aborting the whole study."""
    import copy

    from sparserobust.config import EvalSettings
    from sparserobust.pipeline import evaluate_model

    broken = copy.deepcopy(digits_lenet300)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    settings = EvalSettings(
        n=20, attacks=(AttackSettings("fgsm", "inf", (0.1,)), AttackSettings("deepfool", "2"))
    )
    out = evaluate_model(broken, digits.test.x, digits.test.y, settings)
    assert set(out) == {
        "checks",
        "attack:fgsm:linf",
        "attack:deepfool:l2",
        "activations",
        "bounds:l2",
        "bounds:linf",
    }
    for numbers in out.values():
        assert numbers["records"] == [] and numbers["not_measured"] is True
        assert "NaN or inf logits" in numbers["flags"][0]
    healthy = evaluate_model(digits_lenet300, digits.test.x, digits.test.y, settings)
    assert values_of(healthy["attack:fgsm:linf"])["fgsm_linf robust_acc@0.1"] > 0


def test_flags_catch_masking_non_monotone_and_unconfirmed(digits, digits_lenet300) -> None:  # type: ignore[no-untyped-def]
    from torch import nn

    from sparserobust.attacks import get_attack
    from sparserobust.metrics.checks import gradient_check, monotonicity_flags, result_flags

    x, y = digits.test.x[:50], digits.test.y[:50]
    assert gradient_check(digits_lenet300, x, y)["flags"] == []
    dead = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU())
    with torch.no_grad():
        dead[1].weight.zero_()
        dead[1].bias.fill_(-1.0)  # every ReLU dead: zero gradients everywhere
    check = gradient_check(dead, x, y)
    assert check["vanishing_share"] == 1.0 and "gradient masking" in check["flags"][0]
    assert monotonicity_flags({0.1: 0.5, 0.2: 0.3}, "a") == []
    assert "rises" in monotonicity_flags({0.1: 0.3, 0.2: 0.5}, "a")[0]
    result = get_attack("deepfool", "2").run(digits_lenet300, x, y, seed=0)
    assert result_flags(digits_lenet300, result) == []
    result.success[:] = True  # claim successes the model does not confirm
    result.x_adv.copy_(result.x)
    flags = result_flags(digits_lenet300, result)
    assert any("not confirmed" in f for f in flags)


def test_flags_reach_the_store_and_report(small_run: Path, tmp_path: Path) -> None:
    """Every stored flag is listed in the report with its model and measurement. The
    small study raises none (this test passed as 0 == 0), so two are stored by hand."""
    import shutil

    from sparserobust.report import write_report

    rows = table_rows(small_run / "results.sqlite")
    checks = [json.loads(r[3]) for r in rows["results"] if r[1] == "checks"]
    assert len(checks) == 5 and all(0 <= c["vanishing_share"] <= 1 for c in checks)
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    planted = {
        ("s0/random/0.9000", "checks"): "vanishing input gradients on 97% of points",
        ("s0/dense/0.0000", "attack:fgsm:linf"): "robust accuracy rises with epsilon",
    }
    con = sqlite3.connect(run / "results.sqlite")
    for (key, measurement), flag in planted.items():
        (numbers,) = con.execute(
            "SELECT numbers FROM results WHERE model_key=? AND measurement=?", (key, measurement)
        ).fetchone()
        data = json.loads(numbers)
        data["flags"] = [*data.get("flags", []), flag]
        con.execute(
            "UPDATE results SET numbers=? WHERE model_key=? AND measurement=?",
            (json.dumps(data), key, measurement),
        )
    con.commit()
    con.close()
    md = write_report(run).read_text()
    for (key, measurement), flag in planted.items():
        assert f"- `{key}` {measurement}: {flag}" in md
    flagged = [
        json.loads(r[3]).get("flags", []) for r in table_rows(run / "results.sqlite")["results"]
    ]
    total = sum(len(f) for f in flagged)
    assert total >= 2 and md.count("\n- `s0/") == total


def test_planned_keys_are_what_plan_schedules_and_the_report_counts(
    small_run: Path, tmp_path: Path
) -> None:
    """engine.plan.planned_keys: the models and results plan() schedules on an empty
    store, none left on a finished run, and the report's completeness counts them."""
    from sparserobust.engine.plan import plan, planned_keys
    from sparserobust.report import completeness
    from sparserobust.store import ResultStore, params_hash

    config = config_from_dict(SMALL)
    keys = planned_keys(config)
    with ResultStore(tmp_path / "empty") as empty:
        tasks = plan(config, empty)
    measured = {
        (t.what[0], t.what[1].key, params_hash(t.what[1].params))
        for t in tasks
        if t.kind == "measure"
    }
    assert measured == keys.results
    assert len(keys.models) == 5 and {k for k, _, _ in keys.results} == keys.models
    assert [t.kind for t in tasks].count("sweep") == 2
    with ResultStore(small_run, readonly=True) as store:
        assert plan(config, store) == []
        n = len(keys.results)
        assert completeness(config.to_dict(), store) == (5, 5, n, n)
        # a second seed and two dense-front models: planned, not stored
        more = {
            **SMALL,
            "seeds": [0, 1],
            "control": {"dense_front": [{"epochs": 1}, {"epochs": 2}]},
        }
        bigger = planned_keys(config_from_dict(more))
        assert len(bigger.models) == 2 * (5 + 2) and len(bigger.results) == 2 * n * 7 // 5
        assert completeness(config_from_dict(more).to_dict(), store) == (5, 14, n, 14 * n // 5)


def test_reproduction_tables_script(small_run: Path, tmp_path: Path) -> None:
    """scripts/reproduction_tables.py: tables carry the stored numbers, peaks and
    their verdicts follow the intervals, and a missing run is one error line."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "reproduction_tables.py"
    spec = importlib.util.spec_from_file_location("reproduction_tables", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from sparserobust.report import tables as repro

    out = tmp_path / "tables"
    assert mod.main([str(small_run), str(out), "--plot", "fgsm_linf robust_acc@0.05"]) == 0
    text = (out / "tables.md").read_text()
    con = sqlite3.connect(small_run / "results.sqlite")
    acc = con.execute("SELECT accuracy FROM models WHERE model_key = 's0/random/0.9000'").fetchone()
    con.close()
    assert f"{acc[0]:.3f}" in text.split("#### clean_accuracy")[1].split("####")[0]
    assert "Wall time of the study" in text and (out / "fgsm_linf_robust_acc_0.05.png").is_file()
    cell = lambda m, lo, hi, n=3: Cell(m, lo, hi, n, 0.0)  # noqa: E731
    table = {
        "clean_accuracy": {
            "a": {
                0.0: cell(0.98, 0.97, 0.99),
                0.5: cell(0.975, 0.97, 0.98),
                0.9: cell(0.90, 0.89, 0.91),
            }
        },
        "r": {
            "a": {
                0.0: cell(0.20, 0.18, 0.22),
                0.5: cell(0.30, 0.25, 0.35),
                0.9: cell(0.50, 0.45, 0.55),
            }
        },
    }
    from sparserobust.measurements import Record

    info = {"r": Record("r", 0.0, "robust_accuracy", "pgd", "inf", 0.1)}
    row = repro.peaks(["r"], table, info)[2]
    # a diagnostic has no peak row
    diag = {"r": Record("r", 0.0, "active_relu_fraction", "x", robustness=False)}
    assert len(repro.peaks(["r"], table, diag)) == 3
    # the overall peak (0.9) costs 8 points of accuracy; the usable one (0.5) clears dense
    assert "| 0.9: 0.500 | 0.5: 0.300 [0.250, 0.350] | yes (95% intervals disjoint) |" in row
    table["r"]["a"][0.5] = cell(0.21, 0.15, 0.27)
    assert "intervals overlap" in repro.peaks(["r"], table, info)[2]
    assert mod.main([str(tmp_path / "none"), str(out)]) == 2
    # runs of one config with other seeds merge; anything else is refused
    other = tmp_path / "seed1"
    # name and layout are not part of the numbers' identity: they do not block a merge
    seed1 = {**SMALL, "seeds": [1], "name": "small-s1", "channels_last": True}
    run_study(config_from_dict(seed1), other, progress=False)
    assert mod.main([str(small_run), str(other), str(out)]) == 0
    merged = (out / "tables.md").read_text()
    assert "Seeds [0, 1]" in merged and "0.5 [" not in merged.split("####")[0]
    row = next(ln for ln in merged.splitlines() if ln.startswith("| random |"))
    assert row.count("[") == 3  # dense, 0.5 and 0.9: a mean with an interval each
    # --seed reads one seed's models only: the merged runs' seed-1 table equals seed 1's own
    assert mod.main([str(small_run), str(other), str(out / "s1"), "--seed", "1"]) == 0
    assert mod.main([str(other), str(out / "own")]) == 0
    only = (out / "s1" / "tables.md").read_text()
    assert "Seeds [1]" in only and "--seed 1`" in only
    clean = lambda t: t.split("#### clean_accuracy")[1].split("####")[0]  # noqa: E731
    assert clean(only) == clean((out / "own" / "tables.md").read_text())
    assert mod.main([str(small_run), str(out / "s7"), "--seed", "7"]) == 2  # no such seed
    assert not (out / "s7").exists()
    assert mod.main([str(small_run), str(small_run), str(out)]) == 2
    third = tmp_path / "other"
    run_study(
        config_from_dict({**SMALL, "seeds": [2], "train": {"epochs": 1}}), third, progress=False
    )
    assert mod.main([str(small_run), str(third), str(out)]) == 2
    log = tmp_path / "run.log"
    log.write_text(
        "2026-01-01 10:00:00,000 INFO sparserobust.data: loaded mnist: 1 train\n"
        "2026-01-01 10:00:01,000 INFO sparserobust.pipeline: study x (config 1) in r on cpu\n"
        "2026-01-01 10:01:40,000 INFO sparserobust.pipeline: s0/dense/0.0000 checks: in 1.0s\n"
        "2026-01-01 11:00:00,000 INFO sparserobust.data: loaded mnist: 1 train\n"
        "2026-01-01 11:00:01,000 INFO sparserobust.pipeline: study x (config 1) in r on cpu\n"
        "2026-01-01 11:00:30,000 INFO sparserobust.pipeline: study done in 30.5s: 1 models\n"
    )
    # a killed start counts to its last line (100 s), a finished one its own total
    assert repro.wall_time(log).endswith("130 s over 2 start(s) (100 s, 30 s).")
    # a diverged (not measured) model is missing from its cell, which says so, not zero
    from types import SimpleNamespace

    masking = {"gradient_robust_accuracy": {"0.1": 0.5}, "missed_share": {"0.1": 0.1}}
    rows = [
        {
            "measurement": "masking:square:linf",
            "method": "a",
            "target_sparsity": 0.9,
            "numbers": {**masking, "gradient_robust_accuracy": {"0.1": acc}},
        }
        for acc in (0.5, 0.7)
    ] + [
        {
            "measurement": "masking:square:linf",
            "method": "a",
            "target_sparsity": 0.9,
            "numbers": {"headline": {}, "not_measured": True, "flags": ["diverged"]},
        }
    ]
    store = SimpleNamespace(models=lambda: [SimpleNamespace(method="a")], results=lambda: rows)
    combined: dict = {"other": {"a": {0.9: cell(0.1, 0.0, 0.2, 3)}}}
    repro.add_combined(store, combined, {})
    got = combined["square_linf+gradient robust_acc@0.1"]["a"][0.9]
    assert got.n == 2 and got.mean == pytest.approx(0.5)
    combined["square_linf+gradient robust_acc@0.1"]["a"][0.5] = cell(0.3, 0.2, 0.4, 3)
    text = "\n".join(
        repro.metric_table("square_linf+gradient robust_acc@0.1", combined, [0.5, 0.9])
    )
    assert "| a | 0.300 [0.200, 0.400] | 0.500 [" in text and text.count("(n=2)") == 1
