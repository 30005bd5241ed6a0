"""`sparserobust verify CHECKPOINT` (issue 28, requirement 5): per-point statuses that
agree with closed forms on a linear model and with the MILP on a trained ReLU net, the
JSON schema, and one-line errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sparserobust.checkpoint import load_checkpoint, save_checkpoint
from sparserobust.cli import main
from sparserobust.data import Dataset
from sparserobust.models.compact import sequential_spec
from sparserobust.pruning.sweep import state_fingerprint
from sparserobust.verify import verify_exact
from sparserobust.verify.methods import POINT_STATUSES, VERIFIERS, strongest
from tests.hardening.test_hardening import one_line_error


def _save(model: nn.Module, name: str, data: Dataset, path: Path, **extra: object) -> Path:
    info = data.info
    meta = {
        "model": name,
        "dataset": "digits",
        "input_shape": list(info.input_shape),
        "num_classes": info.num_classes,
        "mean": list(info.mean),
        "std": list(info.std),
        **extra,
    }
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="module")
def ckpts(
    tmp_path_factory: pytest.TempPathFactory,
    digits: Dataset,
    digits_linear: nn.Module,
    digits_lenet300: nn.Module,
) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("verify")
    return {
        "linear": _save(digits_linear, "linear", digits, base / "linear.st"),
        "lenet300": _save(digits_lenet300, "lenet300", digits, base / "lenet300.st"),
    }


def verify_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code = main(["verify", *args, "--json", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def closed_form_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> list:
    """For an affine model f(x) = A x + c: per point, the exact minimum over the l_inf
    ball intersected with the [0,1] box of min_j f_y - f_j (the box minimum of a linear
    function is coordinate-wise), in float64."""
    m = copy.deepcopy(model).double().eval()
    d = x[0].numel()
    with torch.no_grad():
        c = m(torch.zeros(1, *x.shape[1:], dtype=torch.float64))[0]
        a = (m(torch.eye(d, dtype=torch.float64).view(d, *x.shape[1:])) - c).T  # (K, d)
    out = []
    for xi, yi in zip(x.double().flatten(1), y.tolist(), strict=True):
        lo, hi = (xi - eps).clamp(0, 1), (xi + eps).clamp(0, 1)
        diff = a[yi] - a  # (K, d): rows e_y - e_j
        low = torch.minimum(diff * lo, diff * hi).sum(1) + (c[yi] - c)
        low[yi] = float("inf")
        out.append(float(low.min()))
    return out


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha", "milp", "bab"])
def test_linear_model_statuses_match_the_closed_form(
    ckpts: dict[str, Path],
    digits: Dataset,
    digits_linear: nn.Module,
    capsys: pytest.CaptureFixture[str],
    method: str,
) -> None:
    n, eps = 60, 0.03
    res = verify_json(capsys, str(ckpts["linear"]), "--eps", f"{eps}", "--n", str(n),
                      "--method", method, "--time-limit", "10")  # fmt: skip
    x, y = digits.test.x[:n], digits.test.y[:n]
    exact = closed_form_margins(digits_linear, x, y, eps)
    clean = (digits_linear(x).argmax(1) == y).tolist()
    points = res["epsilons"][0]["points"]
    assert [p["index"] for p in points] == list(range(n))
    seen = {"verified": 0, "attackable": 0, "clean": 0}
    for p, margin, ok in zip(points, exact, clean, strict=True):
        if not ok:
            assert (p["status"], p["by"]) == ("counterexample", "clean")
            seen["clean"] += 1
        elif margin > 1e-4:
            assert p["status"] == "verified", (p, margin)
            seen["verified"] += 1
            if p["by"] in ("ibp", "crown", "alpha"):
                # one affine layer: the bounds are the exact minimum
                assert p["margin_lower"] == pytest.approx(margin, abs=1e-6)
        elif margin < -1e-4:
            complete = method in ("milp", "bab")
            assert p["status"] == ("counterexample" if complete else "not_certified")
            seen["attackable"] += 1
    assert min(seen.values()) > 0, seen  # every kind of point occurs: the test means something
    counts = res["epsilons"][0]["counts"]
    assert counts["verified"] == sum(p["status"] == "verified" for p in points)
    assert res["epsilons"][0]["verified_accuracy"] == counts["verified"] / n


def test_trained_relu_net_agrees_with_the_milp(
    ckpts: dict[str, Path],
    digits: Dataset,
    digits_lenet300: nn.Module,
    capsys: pytest.CaptureFixture[str],
) -> None:
    n, eps = 30, 0.03
    args = [str(ckpts["lenet300"]), "--eps", f"{eps}", "--n", str(n), "--time-limit", "5"]
    methods = ("ibp", "crown", "alpha", "milp", "bab")
    by = {m: verify_json(capsys, *args, "--method", m) for m in methods}
    status = {m: [p["status"] for p in r["epsilons"][0]["points"]] for m, r in by.items()}
    x, y = digits.test.x[:n], digits.test.y[:n]
    milp = [r.status for r in verify_exact(digits_lenet300, x, y, epsilon=eps, time_limit=5)]
    decided = 0
    for i in range(n):
        ibp, crown, alpha = status["ibp"][i], status["crown"][i], status["alpha"][i]
        if ibp == "verified":
            assert crown == "verified", i  # CROWN is at least as tight as IBP here
        if crown == "verified":
            assert alpha == "verified", i  # alpha-CROWN starts from CROWN's slopes
        if alpha == "verified":
            assert status["milp"][i] == status["bab"][i] == milp[i] == "verified", i
        for ours in (status["milp"][i], status["bab"][i]):
            if "timeout" not in (ours, milp[i]) and "error" not in (ours, milp[i]):
                assert ours == milp[i], (i, ours, milp[i])
                decided += 1
    assert decided >= 2 * n - 3
    assert "counterexample" in status["milp"] and "verified" in status["milp"]
    # a point the bounds leave open is decided by the MILP or the attack, not by them
    assert any(
        c == "not_certified" and m in ("verified", "counterexample")
        for c, m in zip(status["crown"], status["milp"], strict=True)
    )


def test_json_schema_and_text_agree(
    ckpts: dict[str, Path], digits: Dataset, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    res = verify_json(capsys, str(ckpts["lenet300"]), "--eps", "0.01,0.05", "--n", "12",
                      "--method", "crown")  # fmt: skip
    assert set(res) == {
        "checkpoint", "weights_fingerprint", "model", "dataset", "method", "complete", "norm",
        "n", "start", "time_limit_s", "seed", "clean_accuracy", "seconds", "epsilons",
    }  # fmt: skip
    # the weights' fingerprint: the same for a copy with other metadata, not for
    # other weights
    model, meta = load_checkpoint(ckpts["lenet300"])
    assert res["weights_fingerprint"] == state_fingerprint(model)
    copy_path, other_path = tmp_path / "copy.st", tmp_path / "other.st"
    save_checkpoint(copy_path, model, {**meta, "note": "other metadata"})
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    save_checkpoint(other_path, model, meta)
    same, other = (verify_json(capsys, str(f), "--eps", "0.01", "--n", "2", "--method", "ibp")
                   for f in (copy_path, other_path))  # fmt: skip
    assert same["weights_fingerprint"] == res["weights_fingerprint"]
    assert other["weights_fingerprint"] != res["weights_fingerprint"]
    assert (res["model"], res["dataset"], res["method"], res["complete"]) == (
        "lenet300", "digits", "crown", False,
    )  # fmt: skip
    assert res["n"] == 12 and [e["epsilon"] for e in res["epsilons"]] == [0.01, 0.05]
    labels = digits.test.y[:12].tolist()
    for e in res["epsilons"]:
        assert set(e) == {"epsilon", "counts", "verified_accuracy", "robust_accuracy_upper",
                          "seconds", "points"}  # fmt: skip
        assert set(e["counts"]) == set(POINT_STATUSES) and sum(e["counts"].values()) == 12
        assert e["counts"]["timeout"] == e["counts"]["error"] == 0  # bounds never time out
        assert [p["label"] for p in e["points"]] == labels
        for p in e["points"]:
            assert set(p) == {"index", "label", "status", "by", "seconds", "margin_lower",
                              "margin_upper", "detail"}  # fmt: skip
            assert p["status"] in ("verified", "not_certified", "counterexample")
            assert p["seconds"] >= 0
            assert (p["status"] == "verified") == (p["by"] == "crown" and p["margin_lower"] > 0)
        upper = (12 - e["counts"]["counterexample"]) / 12
        assert e["robust_accuracy_upper"] == upper == pytest.approx(res["clean_accuracy"])
    # a larger radius never verifies more
    small, large = (e["counts"]["verified"] for e in res["epsilons"])
    assert large <= small and small > 0
    assert main(["verify", str(ckpts["lenet300"]), "--eps", "0.01,0.05", "--n", "12",
                 "--method", "crown", "--no-progress"]) == 0  # fmt: skip
    text = capsys.readouterr().out.splitlines()
    assert len(text) == 3 and text[0].startswith("crown (sound, incomplete) l_inf on 12")
    acc = res["epsilons"][1]["verified_accuracy"]
    assert f"eps 0.05: verified accuracy {acc:.4f}" in text[2]


def test_default_is_the_strongest_method_for_the_norm(
    ckpts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert strongest("inf") == "bab" == list(VERIFIERS)[-1] and strongest("2") == "alpha"
    res = verify_json(capsys, str(ckpts["linear"]), "--eps", "0.02", "--n", "3")
    assert (res["method"], res["complete"]) == ("bab", True)
    res = verify_json(capsys, str(ckpts["linear"]), "--eps", "0.5", "--n", "3", "--norm", "2")
    assert (res["method"], res["norm"], res["complete"]) == ("alpha", "2", False)


def test_bab_sizes_its_search_for_the_models_device(
    ckpts: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`verify --method bab` asks BabSettings.for_device for the model's device (on CUDA:
    GPU-sized batches) and hands those settings to the search of all points."""
    import sparserobust.verify.methods as methods
    from sparserobust.verify import BabSettings

    asked: list[torch.device] = []
    used: list[BabSettings] = []
    sized = BabSettings(batch_domains=7)

    def for_device(device, **changes):
        asked.append(torch.device(device))
        return sized

    def spy(*args, settings=None, **kwargs):
        used.append(settings)
        return real(*args, settings=settings, **kwargs)

    real = methods.verify_bab
    monkeypatch.setattr(methods.BabSettings, "for_device", staticmethod(for_device))
    monkeypatch.setattr(methods, "verify_bab", spy)
    verify_json(capsys, str(ckpts["linear"]), "--eps", "0.02", "--n", "3", "--method", "bab")
    assert asked and all(d.type == "cpu" for d in asked)
    assert len(used) == 1 and all(u is sized for u in used)  # one call: a batched pre-check


@pytest.mark.parametrize("method", ["crown", "milp"])
def test_start_decides_the_same_points_as_the_tail_of_a_longer_run(
    ckpts: dict[str, Path],
    digits: Dataset,
    capsys: pytest.CaptureFixture[str],
    method: str,
) -> None:
    """--start K --n M decides test images K..K+M-1: the same statuses and margins as
    those images in a run over the first K+M, indexed by the image's place in the split
    (so shards of one run can be joined), and the last shard may be short."""
    ck = str(ckpts["lenet300"])
    common = ["--eps", "0.05", "--method", method, "--time-limit", "10"]
    whole = verify_json(capsys, ck, *common, "--n", "30")["epsilons"][0]["points"]
    part = verify_json(capsys, ck, *common, "--n", "12", "--start", "18")
    points = part["epsilons"][0]["points"]
    assert part["start"] == 18 and part["n"] == 12
    assert [p["index"] for p in points] == list(range(18, 30))
    keys = ("label", "status")
    assert [[p[k] for k in keys] for p in points] == [[p[k] for k in keys] for p in whole[18:]]
    # the same bounds up to float summation order (a batch of 12, not 30)
    for p, q in zip(points, whole[18:], strict=True):
        if q["margin_lower"] is None:
            assert p["margin_lower"] is None
        else:
            assert p["margin_lower"] == pytest.approx(q["margin_lower"], rel=1e-6, abs=1e-6)
    assert {p["status"] for p in whole[18:]} != {"verified"}  # the shard has mixed statuses
    size = len(digits.test)
    tail = verify_json(capsys, ck, *common, "--n", "50", "--start", str(size - 3))
    assert tail["n"] == 3
    assert [p["index"] for p in tail["epsilons"][0]["points"]] == list(range(size - 3, size))


def test_progress_goes_to_stderr_and_json_stays_clean(
    ckpts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["verify", str(ckpts["linear"]), "--eps", "0.02", "--n", "5", "--method", "ibp"]
    assert main([*args, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n"] == 5 and "verify ibp" in err
    assert main([*args, "--json", "--no-progress"]) == 0
    assert "verify ibp" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def unsupported_ckpt(tmp_path_factory: pytest.TempPathFactory, digits: Dataset) -> Path:
    """A sequential model with a dilated max-pool, which no bound handles."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, stride=2, dilation=2),
        nn.Flatten(), nn.Linear(18, 10),
    )  # fmt: skip
    path = tmp_path_factory.mktemp("unsupported") / "pool.st"
    return _save(model, "custom", digits, path, compact={"layers": sequential_spec(model)})


@pytest.mark.parametrize(
    "args,text",
    [
        (["--eps", "0.1,x"], "--eps needs numbers"),
        (["--eps", ""], "--eps needs"),
        (["--eps", "1.5"], "--eps"),  # an l_inf radius above 1
        (["--eps", "-0.1"], ">= 0"),
        (["--eps", "nan"], "finite"),
        (["--eps", "0.1", "--method", "nope"], "unknown verification method"),
        (["--eps", "0.5", "--norm", "2", "--method", "milp"], "use --method ibp or crown or alpha"),
        (["--eps", "0.5", "--norm", "2", "--method", "bab"], "handles the l_inf norm only"),
        (["--eps", "0.1", "--n", "0"], "--n must be >= 1"),
        (["--eps", "0.1", "--time-limit", "0"], "--time-limit"),
        (["--eps", "0.1", "--time-limit", "nan"], "--time-limit"),
        (["--eps", "0.1", "--method", ""], "unknown verification method ''"),
        (["--eps", "0.1", "--norm", "1"], "'1' is not one of 'inf', '2'"),
        (["--eps", "0.1", "--device", "tpu"], "unknown device 'tpu'"),
        (["--eps", "0.1", "--seed", "-1"], "--seed: a seed must be in"),
        (["--eps", "0.1", "--start", "-1"], "--start: must be >= 0"),
        (["--eps", "0.1", "--start", "100000"], "--start must be in [0, "),
    ],
)
def test_bad_arguments_are_one_line_errors(
    ckpts: dict[str, Path], capsys: pytest.CaptureFixture[str], args: list[str], text: str
) -> None:
    one_line_error(capsys, main(["verify", str(ckpts["linear"]), *args, "--no-progress"]), text)


def test_bad_checkpoint_and_unsupported_model_are_one_line_errors(
    tmp_path: Path, unsupported_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.st"
    junk.write_text("not a checkpoint")
    one_line_error(capsys, main(["verify", str(junk), "--eps", "0.1"]), "not a valid")
    one_line_error(capsys, main(["verify", str(tmp_path / "none.st"), "--eps", "0.1"]), "exist")
    code = main(["verify", str(unsupported_ckpt), "--eps", "0.1", "--no-progress"])
    one_line_error(capsys, code, "cannot bound MaxPool2d")


def test_a_timeout_is_never_verified(
    ckpts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """With no time for the solver, every point the bounds and the attack leave open
    is a timeout; the verified ones are CROWN's, which needs no solver."""
    args = [str(ckpts["lenet300"]), "--eps", "0.05", "--n", "30", "--time-limit", "0.001"]
    res = verify_json(capsys, *args, "--method", "milp")
    crown = verify_json(capsys, *args, "--method", "crown")
    points = res["epsilons"][0]["points"]
    open_points = [p for p in points if p["by"] == "milp"]
    assert open_points and all(p["status"] == "timeout" for p in open_points)
    assert [p["status"] == "verified" for p in points] == [
        p["status"] == "verified" for p in crown["epsilons"][0]["points"]
    ]
    assert res["epsilons"][0]["counts"]["timeout"] == len(open_points)


def test_readme_verify_lines_run(
    ckpts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's fresh-clone verify commands, on the fixture checkpoint and 5 points."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    lines = [ln for ln in readme.splitlines() if ln.startswith("sparserobust verify runs/digits")]
    assert len(lines) == 2
    for line in lines:
        args = line.split("#")[0].split(">")[0].split()[2:]
        args[0] = str(ckpts["lenet300"])
        args[args.index("--n") + 1] = "5"
        assert main(["verify", *args, "--no-progress"]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        if "--json" in args:
            assert json.loads(out)["method"] == "crown"
        else:
            assert out.startswith("bab (complete) l_inf on 5 test images")


def test_the_summary_says_how_far_the_timeouts_are_from_a_proof() -> None:
    from sparserobust.api import format_verification

    def point(status: str, lower: float | None) -> dict:
        return {"status": status, "margin_lower": lower}

    points = [point("timeout", v) for v in (-3.0, -0.5, None, -1.0)]
    points += [point("verified", 0.2), point("not_certified", -9.0)]
    record = {"complete": True, "method": "bab", "norm": "inf", "n": 6, "model": "m",
              "dataset": "d", "clean_accuracy": 1.0, "seconds": 1.0,
              "epsilons": [{"epsilon": 0.05, "counts": {"verified": 1, "timeout": 4},
                            "verified_accuracy": 1 / 6, "robust_accuracy_upper": 1.0,
                            "seconds": 1.0, "points": points}]}  # fmt: skip
    lines = format_verification(record)
    assert lines[-1] == (
        "  timeouts: proven margin >= -1 logits (median; closest to a proof -0.5, farthest -3)"
    )
    record["epsilons"][0]["points"] = points[4:]  # no timeout: no such line
    assert len(format_verification(record)) == 2
