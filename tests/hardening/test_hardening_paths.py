"""Hardening, round two (issue 26, requirements 1-3): paths read from a database stay in
their run directory, nothing outside the project's own files is deleted, every command
that writes follows one output-path policy, and ``compact`` checks what ``evaluate``
checks. Each test replays a case of the issue that the code before the fix got wrong."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sparserobust.cli import main
from sparserobust.config import config_from_dict
from sparserobust.pipeline import run_study
from sparserobust.store import sha256_file
from tests.hardening.test_hardening import LEVEL, TINY, one_line_error, rows

L09 = "s0/magnitude/0.9000"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished TINY study (read it, never change it: copy with :func:`copy_run`)."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    run_study(config_from_dict(TINY), run, progress=False)
    return run


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def tiny_yaml(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def sql(run: Path, statement: str, *args: object) -> None:
    con = sqlite3.connect(run / "results.sqlite")
    con.execute(statement, args)
    con.commit()
    con.close()


def tree(folder: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def run_cli(config: Path, run: Path | str) -> int:
    return main(["run", str(config), "--out", str(run), "--no-progress"])


# --- 1. paths read from the database ----------------------------------------------


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_crafted_checkpoint_path_deletes_nothing_outside_the_run(
    tiny_run: Path, tmp_path: Path, how: str
) -> None:
    """The issue's first case: a row pointing at ``../../victim.txt`` (or at its absolute
    path) made the resume unlink the victim. The row is now untrusted, reported and
    recomputed; the victim is untouched and the numbers are the clean run's."""
    run = copy_run(tiny_run, tmp_path / "runs" / "b06")
    victim = tmp_path / "victim.txt"
    victim.write_text("VICTIM\n")
    before = rows(run)
    crafted = "../../victim.txt" if how == "relative" else str(victim)
    sql(run, "UPDATE models SET checkpoint=? WHERE model_key=?", crafted, L09)
    assert run_cli(tiny_yaml(tmp_path), run) == 0
    assert victim.read_text() == "VICTIM\n"
    assert rows(run) == before
    log = (run / "run.log").read_text()
    assert f"not trusting model {L09}" in log and "checkpoint path" in log


def test_checkpoint_path_naming_a_folder_is_untrusted_not_a_traceback(
    tiny_run: Path, tmp_path: Path
) -> None:
    """A row naming a folder gave an IsADirectoryError traceback (unlink of a folder)."""
    run = copy_run(tiny_run, tmp_path / "run")
    keep = tree(run / "checkpoints")
    sql(run, "UPDATE models SET checkpoint='checkpoints/s0' WHERE model_key=?", L09)
    assert run_cli(tiny_yaml(tmp_path), run) == 0
    assert tree(run / "checkpoints") == keep


def test_checkpoint_that_is_a_link_out_of_the_run_is_not_followed(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A level file replaced by a symbolic link to a copy outside the run was read and
    trusted (same SHA-256) through the link. Now the row is untrusted and reported, and
    the sweep refuses to resume through (or write over) the link: one line, exit 2, the
    file outside untouched."""
    run = copy_run(tiny_run, tmp_path / "run")
    level = run / LEVEL / "magnitude-s0.9000.st"
    outside = tmp_path / "outside.st"
    shutil.move(level, outside)
    sha = sha256_file(outside)
    level.symlink_to(outside)
    code = run_cli(tiny_yaml(tmp_path), run)
    err = capsys.readouterr().err.strip().splitlines()  # the warning, then the error
    assert code == 2 and err[-1].startswith("error: ") and "symbolic link" in err[-1], err
    assert level.is_symlink() and sha256_file(outside) == sha
    log = (run / "run.log").read_text()
    assert f"not trusting model {L09}" in log and "leaves the run directory" in log


def test_crafted_parent_is_untrusted(tiny_run: Path, tmp_path: Path) -> None:
    """``parent`` names a file of the same sweep; a row whose parent is a path is not
    one this project wrote: it is dropped (and recomputed), not followed."""
    from sparserobust.pipeline import drop_untrusted_models
    from sparserobust.store import ResultStore

    run = copy_run(tiny_run, tmp_path / "run")
    sql(run, "UPDATE models SET parent='../../../etc/passwd' WHERE model_key=?", L09)
    with ResultStore(run) as store:
        assert drop_untrusted_models(store, run) == [L09]


# --- 1. stale temp files --------------------------------------------------------------


def test_run_in_a_folder_that_is_not_a_run_deletes_no_temp_file(tmp_path: Path) -> None:
    """`run` deleted every hidden *.tmp under --out, recursively, before any check. A
    data error stops this study right after that point; the user's files stay."""
    folder = tmp_path / "mine"
    (folder / "deep").mkdir(parents=True)
    for rel in (".notes.tmp", "deep/.draft.tmp", ".report.md.abcd1234.tmp"):
        (folder / rel).write_text("mine")
    config = tiny_yaml(tmp_path, dataset="mnist", model="lenet300", data_dir=str(tmp_path / "no"))
    assert run_cli(config, folder) == 2
    for rel in (".notes.tmp", "deep/.draft.tmp", ".report.md.abcd1234.tmp"):
        assert (folder / rel).read_text() == "mine"


def test_refused_run_deletes_no_temp_file(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run directory of another config is refused (exit 2); its temp files, even the
    ones our writer names, were deleted before the refusal."""
    run = copy_run(tiny_run, tmp_path / "run")
    ours = run / "checkpoints/s0/.dense.st.abcd1234.tmp"
    ours.write_text("x")
    (run / ".notes.tmp").write_text("mine")
    before = tree(run)
    code = run_cli(tiny_yaml(tmp_path, model="linear"), run)
    one_line_error(capsys, code, "another config")
    assert tree(run) == before


def test_empty_out_is_an_error_and_touches_the_current_folder_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--out ''` silently meant the current folder (and its *.tmp files went)."""
    monkeypatch.chdir(tmp_path)
    config = tiny_yaml(tmp_path)
    (tmp_path / ".notes.tmp").write_text("mine")
    one_line_error(capsys, run_cli(config, ""), "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "tiny.yaml"]


def test_resume_deletes_only_its_own_stale_temp_files(tiny_run: Path, tmp_path: Path) -> None:
    """In this config's run: temp files of our atomic writer for files the run writes go
    (a killed run's leftovers), anything else (another name, a sub-folder, a link) stays."""
    run = copy_run(tiny_run, tmp_path / "run")
    stale = [
        "checkpoints/s0/.dense.st.abcd1234.tmp",
        "checkpoints/s0/magnitude/.magnitude-s0.9000.st.x_y9z0k1.tmp",
        "report/.report.md.q1w2e3r4.tmp",
    ]
    kept = [
        ".notes.tmp",
        "checkpoints/s0/.mine.tmp",
        "checkpoints/s0/.dense.st.tmp",
        "report/sub/.report.md.q1w2e3r4.tmp",
        "checkpoints/s0/magnitude/.magnitude-s0.7000.st.abcd1234.tmp",
    ]
    for rel in stale + kept:
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text("x")
    victim = tmp_path / "victim.tmp"
    victim.write_text("mine")
    (run / "checkpoints/s0/.dense.st.linkto01.tmp").symlink_to(victim)
    assert run_cli(tiny_yaml(tmp_path), run) == 0
    assert [rel for rel in stale if (run / rel).exists()] == []
    assert [rel for rel in kept if not (run / rel).exists()] == []
    assert (run / "checkpoints/s0/.dense.st.linkto01.tmp").is_symlink()
    assert victim.read_text() == "mine"


def test_sweep_deletes_only_temp_files_of_its_own_levels(tmp_path: Path) -> None:
    """`prune`/sweep removed every `.<method>-s*.st.*.tmp` of its folder; now only the
    temp files of the levels it writes, in the form our writer names them."""
    from sparserobust.models import build_model
    from sparserobust.pruning.sweep import sparsity_sweep

    out = tmp_path / "out"
    out.mkdir()
    ours = out / ".magnitude-s0.5000.st.abcd1234.tmp"
    others = [out / ".magnitude-s0.7000.st.abcd1234.tmp", out / ".magnitude-s0.5000.st.mine.tmp"]
    for p in [ours, *others]:
        p.write_text("x")
    from tests.models.test_checkpoint import META

    model = build_model("lenet300", (1, 8, 8), 10)
    sparsity_sweep(model, "magnitude", [0.5], out_dir=out, metadata=META, progress=False)
    assert not ours.exists() and all(p.exists() for p in others)


# --- 2. one output-path policy --------------------------------------------------------


def test_compact_refuses_to_replace_a_run_database(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(tiny_run, tmp_path / "runs" / "r")
    db = run / "results.sqlite"
    sha = sha256_file(db)
    src = run / LEVEL / "magnitude-s0.5000.st"
    one_line_error(capsys, main(["compact", str(src), "--out", str(db)]), "database")
    assert sha256_file(db) == sha
    new = run / "compact.st"  # nor a new file anywhere in a run directory
    one_line_error(capsys, main(["compact", str(src), "--out", str(new)]), "run directory")
    assert not new.exists()
    copy = tmp_path / "copy.sqlite"  # a database outside any run: not replaced either
    shutil.copy(db, copy)
    one_line_error(capsys, main(["compact", str(src), "--out", str(copy)]), "database")
    assert sha256_file(copy) == sha


def test_compare_refuses_to_write_into_a_run(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = copy_run(tiny_run, tmp_path / "a")
    b = copy_run(tiny_run, tmp_path / "b")
    before = tree(a)
    one_line_error(
        capsys, main(["compare", str(a), str(b), "--out", str(a / "report")]), "run directory"
    )
    assert tree(a) == before


def test_compare_refuses_a_symlink_and_a_dangling_one(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = copy_run(tiny_run, tmp_path / "a")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for out in ("link", "dangling"):
        code = main(["compare", str(a), str(tiny_run), "--out", str(tmp_path / out)])
        one_line_error(capsys, code, "symbolic link")
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "nowhere").exists()


def test_report_and_export_refuse_another_run(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`report A --out B/report` replaced run B's figures; `export A --json B/x.json`
    wrote into run B (only A itself was refused)."""
    a = copy_run(tiny_run, tmp_path / "a")
    b = copy_run(tiny_run, tmp_path / "b")
    before = tree(b)
    one_line_error(capsys, main(["report", str(a), "--out", str(b / "report")]), "run directory")
    one_line_error(
        capsys, main(["export", str(a), "--json", str(b / "x.json")]), "inside the run directory"
    )
    assert tree(b) == before
    assert main(["report", str(a), "--out", str(a / "report2")]) == 0  # its own run: fine


def test_train_and_prune_refuse_a_run_directory(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`train --out` over a checkpoint the database references, `prune --out` into a
    run's sweep folder: both wrote into the run."""
    run = copy_run(tiny_run, tmp_path / "run")
    before = tree(run)
    dense = run / "checkpoints/s0/dense.st"
    train = ["train", "--model", "linear", "--dataset", "digits", "--epochs", "1"]
    one_line_error(capsys, main([*train, "--out", str(dense), "--no-progress"]), "run directory")
    prune = ["prune", "--checkpoint", str(dense), "--method", "magnitude", "--sparsity", "0.5"]
    code = main([*prune, "--out", str(run / LEVEL), "--no-progress", "--retrain-epochs", "0"])
    one_line_error(capsys, code, "run directory")
    assert tree(run) == before


def test_run_refuses_a_folder_inside_another_run(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    before = tree(run)
    one_line_error(capsys, run_cli(tiny_yaml(tmp_path), run / "checkpoints"), "run directory")
    assert tree(run) == before


@pytest.mark.parametrize(
    "args",
    [
        ["report", "RUN", "--out", ""],
        ["export", "RUN", "--csv", ""],
        ["export", "RUN", "--json", ""],
        ["compare", "RUN", "RUN2", "--out", ""],
        ["compact", "CKPT", "--out", ""],
        ["train", "--model", "linear", "--dataset", "digits", "--epochs", "1", "--out", ""],
        ["prune", "--checkpoint", "CKPT", "--method", "random", "--sparsity", ".5", "--out", ""],
    ],
    ids=lambda a: a[0] + ("-" + a[2] if a[0] == "export" else ""),
)
def test_empty_output_path_is_a_one_line_error(
    args: list[str],
    tiny_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An empty --out meant the current folder (report, compare: files written there) or
    failed late."""
    run = copy_run(tiny_run, tmp_path / "run")
    ckpt = run / LEVEL / "magnitude-s0.5000.st"
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    repl = {"RUN": str(run), "RUN2": str(tiny_run), "CKPT": str(ckpt)}
    one_line_error(capsys, main([repl.get(a, a) for a in args]), "empty")
    assert list(work.iterdir()) == []


def test_outputs_refuse_fifos_links_and_devices(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sparserobust.errors import SparseRobustError
    from sparserobust.rundir import check_output

    src = tiny_run / LEVEL / "magnitude-s0.5000.st"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_error(capsys, main(["compact", str(src), "--out", str(fifo)]), "not a regular")
    assert fifo.is_fifo()
    link = tmp_path / "link.st"
    link.symlink_to(tmp_path / "elsewhere.st")
    one_line_error(capsys, main(["compact", str(src), "--out", str(link)]), "symbolic link")
    assert not (tmp_path / "elsewhere.st").exists()
    with pytest.raises(SparseRobustError, match="not a regular"):
        check_output("/dev/null")  # never replaced: checked without writing anything
    with pytest.raises(SparseRobustError, match="not a folder"):
        check_output("/dev/null", folder=True)


# --- 3. compact checks what evaluate checks ------------------------------------------


def edit_tensors(src: Path, dst: Path, how: str) -> None:
    with safe_open(str(src), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(src))
    for key, value in tensors.items():
        if how == "nan" and key.endswith("weight_orig"):
            tensors[key] = torch.full_like(value, float("nan"))
        elif how == "half-masks" and key.endswith("_mask"):
            tensors[key] = value * 0.5
    save_file(tensors, str(dst), metadata=meta)


@pytest.mark.parametrize("how,text", [("nan", "NaN"), ("half-masks", "other than 0 and 1")])
def test_compact_refuses_what_evaluate_refuses(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, text: str
) -> None:
    """NaN weights passed (`diff > tol` is False for NaN); masks holding 0.5 came out as
    a clean-looking checkpoint at sparsity 0."""
    src = tmp_path / "bad.st"
    edit_tensors(tiny_run / LEVEL / "magnitude-s0.5000.st", src, how)
    one_line_error(capsys, main(["evaluate", "--checkpoint", str(src)]), text)
    one_line_error(capsys, main(["compact", str(src), "--out", str(tmp_path / "c.st")]), text)
    assert not (tmp_path / "c.st").exists()


def test_compact_logit_check_fails_on_nan(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output side: finite weights whose logits are NaN (a zero normalisation std)
    passed, since `diff > tol` is False for NaN; such a model is never written."""
    from sparserobust.errors import SparseRobustError
    from sparserobust.pruning import structured

    real = structured.compact

    def broken(model: torch.nn.Module) -> torch.nn.Sequential:
        small = real(model)
        with torch.no_grad():
            small[0].std.zero_()
        return small

    monkeypatch.setattr(structured, "compact", broken)
    with pytest.raises(SparseRobustError, match="logits"):
        structured.compact_checkpoint(tiny_run / LEVEL / "magnitude-s0.5000.st", tmp_path / "c.st")
    assert not (tmp_path / "c.st").exists()
