"""CLI: train/evaluate end to end on digits, --help everywhere, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparserobust.checkpoint import read_metadata
from sparserobust.cli import cli, main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_train_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "d.st"
    code, out, _ = run_cli(
        [
            "train",
            "--model",
            "lenet300",
            "--dataset",
            "digits",
            "--epochs",
            "5",
            "--seed",
            "1",
            "--out",
            str(ckpt),
            "--json",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0
    trained = json.loads(out)
    meta = read_metadata(ckpt)
    for key in (
        "model",
        "dataset",
        "input_shape",
        "num_classes",
        "seed",
        "accuracy",
        "sparserobust_version",
    ):
        assert key in meta
    assert meta["seed"] == 1 and meta["input_shape"] == [1, 8, 8]
    code, out, _ = run_cli(["evaluate", "--checkpoint", str(ckpt), "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert 0.9 <= result["accuracy"] <= 1.0
    assert result["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-7)
    assert result["sparsity"] == 0.0 and result["total_weights"] == 50_200
    code, out, _ = run_cli(["evaluate", "--checkpoint", str(ckpt), "--n", "100"], capsys)
    assert code == 0 and "(100 test images)" in out


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_help_on_every_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0 and "Usage:" in out and "--help" in out


BAD = [
    (["train", "--model", "nope", "--dataset", "digits", "--out", "x.st"], "unknown model"),
    (["train", "--model", "linear", "--dataset", "nope", "--out", "x.st"], "unknown dataset"),
    (
        ["train", "--model", "linear", "--dataset", "digits", "--epochs", "-2", "--out", "x.st"],
        "--epochs: must be >= 0",
    ),
    (
        ["train", "--model", "linear", "--dataset", "digits", "--epochs", "two", "--out", "x"],
        "not a valid integer",
    ),
    (["train", "--model", "linear", "--dataset", "digits"], "Missing option '--out'"),
    (["evaluate", "--checkpoint", "missing.st"], "does not exist"),
    (["evaluate", "--checkpoint", "x.st", "--n", "0"], "must be >= 1"),
    (
        ["train", "--model", "linear", "--dataset", "digits", "--device", "tpu", "--out", "x"],
        "unknown device",
    ),
    (["frobnicate"], "No such command"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_gives_one_line(
    args: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    if "x.st" in args and args[0] == "evaluate":
        from sparserobust import save_checkpoint
        from sparserobust.models import build_model

        save_checkpoint(
            "x.st",
            build_model("linear", (1, 8, 8), 10),
            {
                "model": "linear",
                "dataset": "digits",
                "input_shape": [1, 8, 8],
                "num_classes": 10,
                "mean": [0.0],
                "std": [1.0],
            },
        )
    code, out, err = run_cli(args, capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_console_script_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from sparserobust.cli import run_main; run_main()",
            "evaluate",
            "--checkpoint",
            str(tmp_path / "none.st"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("model", ["resnet32", "vgg"])
def test_cifar10_models_train_and_reload(
    model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_data import make_tiny_cifar

    make_tiny_cifar(tmp_path / "data")
    ckpt = tmp_path / f"{model}.st"
    args = [
        "train",
        "--model",
        model,
        "--dataset",
        "cifar10",
        "--data-dir",
        str(tmp_path / "data"),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--out",
        str(ckpt),
        "--json",
        "--no-progress",
    ]
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    trained = json.loads(out)
    code, out, _ = run_cli(
        ["evaluate", "--checkpoint", str(ckpt), "--data-dir", str(tmp_path / "data"), "--json"],
        capsys,
    )
    assert code == 0
    result = json.loads(out)
    # BatchNorm running statistics travel with the checkpoint: same accuracy after reload
    assert result["accuracy"] == trained["accuracy"] and result["n"] == 4
    from sparserobust import load_checkpoint

    reloaded, meta = load_checkpoint(ckpt)
    bns = [m for m in reloaded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(int(m.num_batches_tracked) == 3 for m in bns)  # ceil(20/8) steps
    assert not torch.equal(bns[0].running_mean, torch.zeros_like(bns[0].running_mean))
