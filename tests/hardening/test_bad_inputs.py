"""Bad-input suite: every user mistake is one actionable line and a non-zero exit (CLI)
or a SparseRobustError subclass (API); never a traceback, never a partial result."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml

from sparserobust import load_checkpoint, save_checkpoint
from sparserobust.cli import main
from sparserobust.errors import (
    AttackError,
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    SparseRobustError,
    StoreError,
)
from sparserobust.models import build_model
from tests.models.test_checkpoint import META as DIGITS_META


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) digits LeNet-300-100 checkpoint."""
    path = tmp_path_factory.mktemp("ckpt") / "m.st"
    torch.manual_seed(0)
    save_checkpoint(path, build_model("lenet300", (1, 8, 8), 10, [0.3], [0.4]), DIGITS_META)
    return path


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ckpt: Path) -> Path:
    """A scratch folder holding bad files, as the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEROBUST_NO_DOWNLOAD", "1")
    monkeypatch.delenv("SPARSEROBUST_DATA", raising=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.st").write_bytes(b"\x01\x02 not a checkpoint")
    data = ckpt.read_bytes()
    (tmp_path / "truncated.st").write_bytes(data[: len(data) // 3])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "pickle.pt")
    other = dict(DIGITS_META, model="linear")  # header says linear, tensors are lenet300
    save_checkpoint(tmp_path / "other.st", build_model("lenet300", (1, 8, 8), 10), other)
    wrong_shape = dict(DIGITS_META, input_shape=[1, 28, 28])
    save_checkpoint(tmp_path / "shape.st", build_model("lenet300", (1, 28, 28), 10), wrong_shape)
    cfg = {"name": "x", "dataset": "digits", "model": "lenet300"}
    for name, content in {
        "unknown_key.yaml": {**cfg, "epochz": 3},
        "wrong_type.yaml": {**cfg, "seeds": "zero"},
        "bad_sparsity.yaml": {**cfg, "pruning": {"sparsities": [0.5, 1.5]}},
        "empty_sparsities.yaml": {**cfg, "pruning": {"sparsities": []}},
        "dup_sparsities.yaml": {**cfg, "pruning": {"sparsities": [0.9, 0.9]}},
        "bad_eps.yaml": {**cfg, "eval": {"attacks": [{"name": "fgsm", "eps": [0]}]}},
    }.items():
        (tmp_path / name).write_text(yaml.safe_dump(content))
    (tmp_path / "not_yaml.yaml").write_text("name: [oops\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    return tmp_path


C = str  # readability: every case is a CLI argument list and a message fragment
CLI_CASES: list[tuple[str, list[str], str]] = [
    (
        "unknown model",
        ["train", "--model", "vgg19", "--dataset", "digits", "--out", "o.st"],
        "unknown model",
    ),
    (
        "unknown dataset",
        ["train", "--model", "linear", "--dataset", "svhn", "--out", "o.st"],
        "unknown dataset",
    ),
    (
        "negative epochs",
        ["train", "--model", "linear", "--dataset", "digits", "--epochs", "-1", "--out", "o.st"],
        "--epochs: must be >= 0",
    ),
    (
        "wrong type",
        ["train", "--model", "linear", "--dataset", "digits", "--seed", "x", "--out", "o.st"],
        "not a valid integer",
    ),
    (
        "sparsity 1",
        [
            "prune",
            "--checkpoint",
            "CKPT",
            "--method",
            "magnitude",
            "--sparsity",
            "1.0",
            "--out",
            "p",
        ],
        "[0",
    ),
    (
        "sparsity negative",
        [
            "prune",
            "--checkpoint",
            "CKPT",
            "--method",
            "magnitude",
            "--sparsity",
            "-0.1",
            "--out",
            "p",
        ],
        "[0",
    ),
    (
        "empty sparsity list",
        ["prune", "--checkpoint", "CKPT", "--method", "magnitude", "--sparsity", "", "--out", "p"],
        "sparsit",
    ),
    (
        "duplicate levels",
        [
            "prune",
            "--checkpoint",
            "CKPT",
            "--method",
            "magnitude",
            "--sparsity",
            "0.5,0.5",
            "--out",
            "p",
        ],
        "duplicate",
    ),
    (
        "unknown method",
        ["prune", "--checkpoint", "CKPT", "--method", "l0", "--sparsity", "0.5", "--out", "p"],
        "unknown",
    ),
    ("epsilon zero", ["attack", "--checkpoint", "CKPT", "--attack", "fgsm", "--eps", "0"], "eps"),
    (
        "epsilon negative",
        ["attack", "--checkpoint", "CKPT", "--attack", "pgd", "--eps", "-0.1"],
        "eps",
    ),
    ("unknown attack", ["attack", "--checkpoint", "CKPT", "--attack", "jsma"], "unknown attack"),
    ("missing checkpoint", ["evaluate", "--checkpoint", "nothing.st"], "does not exist"),
    ("garbage checkpoint", ["evaluate", "--checkpoint", "garbage.st"], "not a valid"),
    ("truncated checkpoint", ["evaluate", "--checkpoint", "truncated.st"], "not a valid"),
    ("pickle checkpoint", ["evaluate", "--checkpoint", "pickle.pt"], "not a valid"),
    ("other architecture", ["evaluate", "--checkpoint", "other.st"], "another model"),
    ("input shape mismatch", ["evaluate", "--checkpoint", "shape.st"], "input shape"),
    (
        "missing data dir",
        [
            "train",
            "--model",
            "lenet300",
            "--dataset",
            "mnist",
            "--data-dir",
            "nowhere",
            "--out",
            "o.st",
        ],
        "does not exist",
    ),
    (
        "empty data dir",
        [
            "train",
            "--model",
            "lenet300",
            "--dataset",
            "mnist",
            "--data-dir",
            "empty",
            "--out",
            "o.st",
        ],
        "--data-dir",
    ),
    ("config unknown key", ["run", "unknown_key.yaml", "--out", "r"], "epochz: unknown key"),
    ("config wrong type", ["run", "wrong_type.yaml", "--out", "r"], "seeds[0]: expected an int"),
    (
        "config sparsity range",
        ["run", "bad_sparsity.yaml", "--out", "r"],
        "pruning.sparsities[1]: sparsity must be in [0,1)",
    ),
    (
        "config empty sparsities",
        ["run", "empty_sparsities.yaml", "--out", "r"],
        "give at least one sparsity",
    ),
    ("config duplicate sparsities", ["run", "dup_sparsities.yaml", "--out", "r"], "duplicate"),
    ("config epsilon", ["run", "bad_eps.yaml", "--out", "r"], "eval.attacks[0].eps[0]"),
    ("config not yaml", ["run", "not_yaml.yaml", "--out", "r"], "not valid YAML"),
    ("config not a mapping", ["run", "list.yaml", "--out", "r"], "mapping"),
    ("config missing", ["run", "none.yaml", "--out", "r"], "does not exist"),
    ("report without results", ["report", "empty"], "no results database"),
    ("export without target", ["export", "empty"], "--csv"),
    ("unknown command", ["prunee"], "No such command"),
]


@pytest.mark.parametrize("case,args,message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(
    case: str,
    args: list[str],
    message: str,
    work: Path,
    ckpt: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [str(ckpt) if a == "CKPT" else a for a in args]
    before = sorted(p.name for p in work.rglob("*"))
    code = main(args)
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
    # nothing half-written: no new files except an empty run directory's lock/log
    after = sorted(p.name for p in work.rglob("*"))
    new = set(after) - set(before)
    assert new <= {"r", ".lock", "run.log", "o.st", "p"} and not (work / "o.st").exists()


def test_at_least_25_distinct_cli_cases() -> None:
    assert len({c[0] for c in CLI_CASES}) >= 25


# --- Python API -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet300", (1, 8, 8), 10).eval()


def test_api_nan_and_out_of_box_inputs(small_model: torch.nn.Module) -> None:
    from sparserobust.attacks import get_attack

    y = torch.zeros(4, dtype=torch.long)
    x = torch.rand(4, 1, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(AttackError, match="NaN"):
        get_attack("fgsm").run(small_model, x, y, epsilons=[0.1])
    with pytest.raises(AttackError, match=r"\[0,1\]"):
        get_attack("deepfool").run(small_model, torch.rand(4, 1, 8, 8) * 2, y)


def test_api_wrong_number_of_classes() -> None:
    from sparserobust.attacks import get_attack

    three = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    with pytest.raises(AttackError, match="out of range"):
        get_attack("fgsm").run(three, torch.rand(4, 1, 8, 8), torch.full((4,), 7), epsilons=[0.1])
    with pytest.raises(AttackError):
        get_attack("fgsm").run(
            three,
            torch.rand(4, 1, 8, 8),
            torch.zeros(4, dtype=torch.long),
            epsilons=[0.1],
            num_classes=10,
        )


def test_api_input_shape_mismatch() -> None:
    from sparserobust.attacks import get_attack

    mnist_model = build_model("lenet300", (1, 28, 28), 10)
    with pytest.raises(ModelError, match="input shape"):
        get_attack("fgsm").run(
            mnist_model, torch.rand(2, 1, 8, 8), torch.zeros(2).long(), epsilons=[0.1]
        )


def test_api_errors_share_one_family(tmp_path: Path) -> None:
    from sparserobust.data import load_dataset
    from sparserobust.training import TrainSettings

    with pytest.raises(ConfigError):
        load_dataset("imagenet")
    with pytest.raises(ConfigError):
        TrainSettings(epochs=-3)
    with pytest.raises(DataError):
        load_dataset("cifar10", tmp_path / "missing")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "missing.st")
    for cls in (ConfigError, DataError, CheckpointError, ModelError, AttackError, StoreError):
        assert issubclass(cls, SparseRobustError)


def test_read_only_output_directory(small_model: torch.nn.Module) -> None:
    target = Path("/sys/sparserobust-test.st")
    if os.access("/sys", os.W_OK) and not Path("/sys").is_mount():
        pytest.skip("no read-only folder on this machine")
    with pytest.raises(StoreError, match="cannot write"):
        save_checkpoint(target, small_model, DIGITS_META)
    assert not target.exists()


def test_full_disk_leaves_no_file(
    tmp_path: Path, small_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    def full(*args: object, **kwargs: object) -> None:
        Path(str(args[1])).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(StoreError, match="free space"):
        save_checkpoint(tmp_path / "m.st", small_model, DIGITS_META)
    assert list(tmp_path.iterdir()) == []


def test_locked_database_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sparserobust import store

    with store.ResultStore(tmp_path) as s:
        s.set_meta("x", "1")
    blocker = sqlite3.connect(tmp_path / store.DB_NAME, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(store, "DB_TIMEOUT", 0.2)
    try:
        with pytest.raises(StoreError, match="locked"), store.ResultStore(tmp_path) as s:
            s.set_meta("y", "2")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    from sparserobust.store import DB_NAME, ResultStore

    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a sparserobust results database"):
        ResultStore(tmp_path)
