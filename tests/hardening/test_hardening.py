"""Hardening (issue 16): tampered files are never trusted, run-directory files are never
written through links, exports never overwrite the run, names stay inside runs/, numbers
are validated at load, divergence is an error, and every failure is one line."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sparserobust.checkpoint import load_checkpoint
from sparserobust.cli import main
from sparserobust.config import config_from_dict, load_config
from sparserobust.errors import CheckpointError, ConfigError, ModelError, StoreError
from sparserobust.pipeline import _attach_log, run_study
from sparserobust.pruning.sweep import _finished
from sparserobust.rundir import RunLock
from sparserobust.store import ResultStore, sha256_file

TINY = {
    "name": "tiny",
    "dataset": "digits",
    "model": "lenet300",
    "seeds": [0],
    "train": {"epochs": 1},
    "pruning": {"methods": ["magnitude"], "sparsities": [0.5, 0.9], "retrain_epochs": 1},
    "eval": {
        "n": 30,
        "attacks": [{"name": "fgsm", "eps": [0.1]}],
        "clever": {"n": 0},
        "activations": False,
        "bounds": False,
    },
}
LEVEL = Path("checkpoints/s0/magnitude")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished TINY study (read it, never change it: copy with :func:`copy_run`)."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    run_study(config_from_dict(TINY), run, progress=False)
    return run


def copy_run(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def rows(run: Path) -> dict[str, tuple]:
    """model key -> (checkpoint sha, sparsity, accuracy, [result numbers])."""
    con = sqlite3.connect(run / "results.sqlite")
    try:
        out = {}
        for key, sha, sp, acc in con.execute(
            "SELECT model_key, checkpoint_sha256, sparsity, accuracy FROM models"
        ):
            numbers = [
                r[0]
                for r in con.execute(
                    "SELECT numbers FROM results WHERE model_key=? ORDER BY measurement", (key,)
                )
            ]
            out[key] = (sha, sp, acc, numbers)
        return out
    finally:
        con.close()


def tamper(path: Path, how: str) -> None:
    """Rewrite checkpoint ``path`` with the same metadata and edited tensors."""
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    for key, value in tensors.items():
        if how == "scale" and key.endswith("weight_orig"):
            tensors[key] = value * 3.0
        elif how == "zero-masks" and key.endswith("_mask"):
            tensors[key] = torch.zeros_like(value)
        elif how == "nan" and key.endswith("weight_orig"):
            tensors[key] = torch.full_like(value, float("nan"))
        elif how == "mask-shape" and key.endswith("_mask"):
            tensors[key] = torch.ones(value.shape[0] + 1, *value.shape[1:])
    save_file(tensors, str(path), metadata=meta)


# --- 1. tampered checkpoints ------------------------------------------------------


@pytest.mark.parametrize("how", ["scale", "zero-masks", "nan"])
def test_tampered_level_is_recomputed_on_resume(tiny_run: Path, tmp_path: Path, how: str) -> None:
    """Before the fix the resume accepted the edited file, stored its new SHA-256 and kept
    the old robust-accuracy rows (zeroed masks: sparsity 1.0 beside the old numbers)."""
    run = copy_run(tiny_run, tmp_path)
    before = rows(run)
    path = run / LEVEL / "magnitude-s0.9000.st"
    original = sha256_file(path)
    tamper(path, how)
    assert sha256_file(path) != original
    run_study(config_from_dict(TINY), run, progress=False)
    after = rows(run)
    assert sha256_file(path) == original  # recomputed, bit for bit
    assert after == before  # same sha, sparsity, accuracy and numbers as the clean run


def test_untrusted_parent_takes_its_descendants(tiny_run: Path, tmp_path: Path) -> None:
    """Level 0.9 is pruned from level 0.5: when 0.5 is not trusted, neither is 0.9, and
    both files are removed so the sweep recomputes them; dense stays."""
    from sparserobust.pipeline import drop_untrusted_models

    run = copy_run(tiny_run, tmp_path)
    tamper(run / LEVEL / "magnitude-s0.5000.st", "scale")
    with ResultStore(run) as store:
        dropped = drop_untrusted_models(store, run)
        assert sorted(dropped) == ["s0/magnitude/0.5000", "s0/magnitude/0.9000"]
        assert [m.model_key for m in store.models()] == ["s0/dense/0.0000"]
        assert {r["model_key"] for r in store.results()} == {"s0/dense/0.0000"}
    assert not list((run / LEVEL).glob("*.st"))
    assert (run / "checkpoints/s0/dense.st").is_file()


def test_intact_run_drops_nothing(tiny_run: Path, tmp_path: Path) -> None:
    from sparserobust.pipeline import drop_untrusted_models

    run = copy_run(tiny_run, tmp_path)
    with ResultStore(run) as store:
        assert drop_untrusted_models(store, run) == []
        assert len(store.models()) == 3


@pytest.mark.parametrize("how", ["nan", "zero-masks-ok", "mask-shape"])
def test_sweep_resume_rejects_damaged_files(tiny_run: Path, tmp_path: Path, how: str) -> None:
    """``prune``/sweep resume trusted any file whose metadata matched (NaN weights too)."""
    path = tmp_path / "level.st"
    shutil.copy(tiny_run / LEVEL / "magnitude-s0.5000.st", path)
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["sparserobust"])["meta"]
    if how != "zero-masks-ok":
        tamper(path, how)
        assert not _finished(path, meta["sweep"], meta["target_path"])
        assert not path.exists()
    else:  # an intact file is still resumed
        assert _finished(path, meta["sweep"], meta["target_path"])


def test_mask_of_wrong_shape_is_a_checkpoint_error(tiny_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.st"
    shutil.copy(tiny_run / LEVEL / "magnitude-s0.5000.st", path)
    tamper(path, "mask-shape")
    with pytest.raises(CheckpointError, match="mask .* has shape"):
        load_checkpoint(path)


# --- 2. symlinks ------------------------------------------------------------------


def test_lock_symlink_is_refused_and_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    with pytest.raises(StoreError, match="symbolic link"), RunLock(run):
        pass
    assert victim.read_text() == "precious"


def test_log_symlink_is_refused_and_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.log").symlink_to(victim)
    with pytest.raises(StoreError, match="symbolic link"):
        _attach_log(run)
    assert victim.read_text() == "precious"


# --- 3. export --------------------------------------------------------------------


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, text: str) -> None:
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], err


def test_export_refuses_the_run_directory(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(tiny_run, tmp_path)
    db = run / "results.sqlite"
    sha = sha256_file(db)
    one_line_error(capsys, main(["export", str(run), "--json", str(db)]), "inside the run")
    assert sha256_file(db) == sha


def test_export_refuses_non_regular_files(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_error(capsys, main(["export", str(tiny_run), "--csv", str(fifo)]), "not a regular")
    assert fifo.is_fifo()
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    one_line_error(capsys, main(["export", str(tiny_run), "--json", str(link)]), "not a regular")
    assert not (tmp_path / "elsewhere.json").exists()


def test_export_refuses_one_path_for_two_outputs(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x"
    code = main(["export", str(tiny_run), "--csv", str(out), "--json", str(tmp_path / "." / "x")])
    one_line_error(capsys, code, "same file")
    assert not out.exists()


def test_export_of_a_database_without_a_study_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a deleted -wal file leaves: the schema but no study. It exported "0 results"."""
    ResultStore(tmp_path / "run").close()
    code = main(["export", str(tmp_path / "run"), "--json", str(tmp_path / "o.json")])
    one_line_error(capsys, code, "no study")
    assert not (tmp_path / "o.json").exists()


# --- 4. names ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a/b", "..", "x\x00y", "", "-x"])
def test_name_is_confined_to_runs(name: str) -> None:
    with pytest.raises(ConfigError, match="name"):
        config_from_dict({**TINY, "name": name})


def test_force_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "a.st").write_text("mine")
    with pytest.raises(StoreError, match="not a sparserobust run directory"):
        run_study(config_from_dict(TINY), tmp_path, force=True, progress=False)
    assert keep.read_text() == "mine" and (tmp_path / "checkpoints" / "a.st").exists()


# --- 5/6. config numbers and YAML -------------------------------------------------


@pytest.mark.parametrize(
    "patch,key",
    [
        ({"eval": {"attacks": [{"name": "fgsm", "eps": [1e308]}]}}, "eval.attacks[0].eps[0]"),
        ({"eval": {"attacks": [{"name": "fgsm", "eps": [1.5]}]}}, "eval.attacks[0].eps[0]"),
        ({"seeds": [2**64]}, "seeds"),
        ({"seeds": [-1]}, "seeds[0]"),
        ({"eval": {"n": 10**12}}, "eval.n"),
        ({"train": {"lr": 1e30}}, "train.lr"),
        ({"train": {"lr": 10**400}}, "train.lr"),
        ({"pruning": {"sparsities": [0.5, 0.9999999]}}, "pruning.sparsities[1]"),
        ({"train": {"epochs": 10**30}}, "train.epochs"),
    ],
)
def test_numbers_are_validated_at_load(patch: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({**TINY, **patch})
    assert str(info.value).startswith(key), str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_duplicate_yaml_keys_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: a\ndataset: digits\nmodel: lenet300\nmodel: linear\n")
    with pytest.raises(ConfigError, match="line 4: key 'model' is given twice"):
        load_config(path)


def test_deep_yaml_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    one_line_error(capsys, main(["run", str(path), "--out", str(tmp_path / "r")]), "nests")


# --- divergence ---------------------------------------------------------------------


def test_training_divergence_is_an_error(digits) -> None:  # type: ignore[no-untyped-def]
    from sparserobust.models import build_model
    from sparserobust.training import TrainSettings, train_model

    model = build_model("lenet300", (1, 8, 8), 10)
    with pytest.raises(ModelError, match="diverged"):
        train_model(model, digits.train.head(200), TrainSettings(epochs=2, lr=1e30), progress=False)


def test_evaluate_refuses_a_nan_checkpoint(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nan.st"
    shutil.copy(tiny_run / "checkpoints/s0/dense.st", path)
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tensors = {k: v * float("nan") if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, str(path), metadata=meta)
    one_line_error(capsys, main(["evaluate", "--checkpoint", str(path)]), "NaN")


# --- report -----------------------------------------------------------------------


def test_report_labels_an_incomplete_run(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path)
    from sparserobust.report import write_report

    assert "Incomplete run" not in write_report(run).read_text()
    con = sqlite3.connect(run / "results.sqlite")
    con.execute("DELETE FROM results WHERE model_key='s0/magnitude/0.9000'")
    con.execute("DELETE FROM models WHERE model_key='s0/magnitude/0.9000'")
    con.commit()
    con.close()
    text = write_report(run).read_text()
    assert "**Incomplete run**: 2 of 3 models and 4 of 6 measurements" in text


def test_report_warns_about_impossible_numbers(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path)
    from sparserobust.report import write_report

    con = sqlite3.connect(run / "results.sqlite")
    con.execute("UPDATE models SET accuracy=7.0 WHERE model_key='s0/magnitude/0.5000'")
    con.commit()
    con.close()
    assert "clean accuracy 7.0 is outside [0,1]" in write_report(run).read_text()


def test_corrupt_text_cell_is_one_line(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(tiny_run, tmp_path)

    def edit(sql: str) -> None:
        con = sqlite3.connect(run / "results.sqlite")
        con.execute(sql)
        con.commit()
        con.close()

    edit("UPDATE models SET sparsity='abc' WHERE model_key='s0/magnitude/0.5000'")
    one_line_error(capsys, main(["report", str(run)]), "models.sparsity")
    edit("UPDATE models SET sparsity=0.5 WHERE model_key='s0/magnitude/0.5000'")
    edit("UPDATE results SET numbers='{oops' WHERE model_key='s0/dense/0.0000'")
    one_line_error(capsys, main(["export", str(run), "--csv", str(tmp_path / "o.csv")]), "corrupt")
    edit("""UPDATE results SET numbers='{"records": [{"value": "x"}]}'""")
    one_line_error(capsys, main(["report", str(run)]), "damaged")


def test_report_folder_that_is_a_file(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(tiny_run, tmp_path)
    shutil.rmtree(run / "report")
    (run / "report").write_text("x")
    one_line_error(capsys, main(["report", str(run)]), "not a folder")


def test_export_and_report_on_a_read_only_run(
    tiny_run: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """They opened the database for writing and so refused a read-only run directory.
    As root, permissions do not bind: the two commands then run as user nobody."""
    from sparserobust.report import write_report

    tmp_path = Path(tempfile.mkdtemp(prefix="sparserobust-ro-"))  # pytest's is private
    request.addfinalizer(lambda: shutil.rmtree(tmp_path, ignore_errors=True))
    run = copy_run(tiny_run, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(tmp_path, 0o755)
    for p in [run, *run.rglob("*")]:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    os.chmod(out, 0o777)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    write_report(tiny_run, out_dir=out / "warm")  # fonts and imports loaded as root
    root = os.geteuid() == 0
    if root:  # permissions bind only an ordinary user: be user nobody for the two calls
        os.setegid(65534)
        os.seteuid(65534)
    try:
        codes = [
            main(["export", str(run), "--csv", str(out / "a.csv")]),
            main(["report", str(run), "--out", str(out / "rep")]),
        ]
    finally:
        if root:
            os.seteuid(0)
            os.setegid(0)
    try:
        assert codes == [0, 0], capsys.readouterr().err
        assert (out / "a.csv").read_text().count("\n") > 3
        assert "## Verdict" in (out / "rep" / "report.md").read_text()
        assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    finally:
        for p in [run, *run.rglob("*")]:
            os.chmod(p, 0o755)


# --- data and disk ------------------------------------------------------------------


def test_labels_outside_the_classes_are_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """MNIST files with a label >= 10 gave a traceback after training (CUDA/CPU index
    error in the loss); now loading says the files are corrupt."""
    from sparserobust import data
    from sparserobust.data import Split
    from sparserobust.errors import DataError

    x = torch.zeros(4, 1, 28, 28)
    good, bad = torch.tensor([0, 1, 2, 9]), torch.tensor([0, 1, 12, 3])
    entry = dataclasses.replace(
        data.DATASETS["mnist"], load=lambda root: (Split(x, good), Split(x, bad))
    )
    monkeypatch.setitem(data.DATASETS, "mnist", entry)
    with pytest.raises(DataError, match=r"labels outside 0\.\.9 \(found 0\.\.12\)"):
        data.load_dataset("mnist")


def test_safetensors_write_error_is_one_line_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk or `ulimit -f` surfaced as a raw SafetensorError traceback."""
    import safetensors.torch
    from safetensors import SafetensorError

    from sparserobust import save_checkpoint
    from sparserobust.models import build_model
    from tests.models.test_checkpoint import META

    def full(tensors: object, path: str, metadata: object = None) -> None:
        Path(path).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(StoreError, match="check free space"):
        save_checkpoint(tmp_path / "m.st", build_model("lenet300", (1, 8, 8), 10), META)
    assert list(tmp_path.iterdir()) == []


def test_key_with_a_line_break_is_still_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the Hypothesis properties: an unknown key holding a newline made the
    error two lines ("error: eval.clever.\\n: unknown key ...")."""
    with pytest.raises(ConfigError) as info:
        config_from_dict({**TINY, "eval": {"clever": {"\n": None}}})
    assert "\n" not in str(info.value) and str(info.value).startswith("eval.clever.'\\n'")
    path = tmp_path / "c.yaml"
    path.write_text('"a\\nb": 1\n')
    one_line_error(capsys, main(["run", str(path), "--out", str(tmp_path / "r")]), "unknown key")


def test_run_force_starts_over_and_keeps_other_files(tiny_run: Path, tmp_path: Path) -> None:
    """`run --force` had no test: it deletes the run's database, checkpoints and report
    (and nothing else), then recomputes the same numbers."""
    run = copy_run(tiny_run, tmp_path)
    before = rows(run)
    (run / "notes.txt").write_text("mine")
    with ResultStore(run) as store:  # a result the config does not plan: must be gone
        store.add_result("s0/dense/0.0000", "extra", {}, {"x": 1}, 0.0, "h", {})
    run_study(config_from_dict(TINY), run, force=True, progress=False)
    assert (run / "notes.txt").read_text() == "mine"
    assert rows(run) == before


# --- round two (issue 26, requirement 6): the tracebacks that were left -------------
# attack --eps 1e308, --seed 2**64 (attack, train), -j 10**10 and -j 2**64 are bounds:
# tests/hardening/test_hardening_bounds.py::test_every_cli_flag_meets_its_bound_before_any_work;
# compare --out a dangling link: tests/hardening/test_hardening_paths.py.


@pytest.mark.parametrize(
    "table,column",
    [
        ("models", "method"),
        ("models", "checkpoint"),
        ("results", "measurement"),
        ("results", "numbers"),
    ],  # fmt: skip
)
def test_text_cell_that_is_not_utf8_is_one_line(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, column: str
) -> None:
    """sqlite3 raised OperationalError ("Could not decode to UTF-8") from export."""
    run = copy_run(tiny_run, tmp_path)
    con = sqlite3.connect(run / "results.sqlite")
    con.execute(f"UPDATE {table} SET {column}=CAST(X'FF0A61' AS TEXT)")  # bad byte, newline
    con.commit()
    con.close()
    csv, js = tmp_path / "o.csv", tmp_path / "o.json"
    code = main(["export", str(run), "--csv", str(csv), "--json", str(js)])
    one_line_error(capsys, code, f"a text cell (column {column}) is not UTF-8")
    assert not csv.exists() and not js.exists()  # nothing half-written
    one_line_error(capsys, main(["report", str(run), "--out", str(tmp_path / "rep")]), "UTF-8")
    assert not (tmp_path / "rep").exists()


def test_report_out_with_a_300_character_name_is_one_line(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / ("r" * 300)
    one_line_error(capsys, main(["report", str(tiny_run), "--out", str(out)]), "too long")
    assert list(tmp_path.iterdir()) == []
    code = main(["compare", str(tiny_run), str(tiny_run), "--out", str(out)])
    one_line_error(capsys, code, "too long")
    code = main(["export", str(tiny_run), "--json", str(tmp_path / ("e" * 300 + ".json"))])
    one_line_error(capsys, code, "too long")
    assert list(tmp_path.iterdir()) == []
