"""Pruning: exact counts, masks through save/load and retraining, DNS splicing,
random control, global vs layer-wise, sweep resume, CLI prune + evaluate."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from sparserobust.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from sparserobust.cli import main
from sparserobust.data import Dataset
from sparserobust.errors import ConfigError, SparseRobustError
from sparserobust.models import build_model
from sparserobust.pruning import (
    DNSSettings,
    get_masks,
    global_magnitude_prune,
    magnitude_prune,
    make_permanent,
    prunable_layers,
    prune_model,
    random_prune,
    sparsity_report,
    sparsity_sweep,
    validate_targets,
)
from sparserobust.pruning import base as base_module
from sparserobust.pruning import dns as dns_module
from sparserobust.pruning import hydra as hydra_module
from sparserobust.pruning import sweep as sweep_module
from sparserobust.pruning.dns import SurgeryHook, calibrate, straight_through
from sparserobust.pruning.hydra import HydraSettings
from sparserobust.pruning.masks import dense_weight, effective_weight, set_weight_mask
from sparserobust.training import TrainSettings, evaluate_accuracy, train_model

METHODS = ["magnitude", "global-magnitude", "random", "dns"]
RETRAIN = TrainSettings(epochs=1, lr=0.01, seed=0)


def tiny_cnn() -> nn.Module:
    """Conv + Linear model for 8x8 digits: 3*1*3*3=27 (+) 10*3*6*6=1080 weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 10))


def digits_meta(model: str = "lenet300") -> dict:
    return {
        "model": model,
        "dataset": "digits",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "mean": [0.305],
        "std": [0.3779],
    }


def pruned(model: nn.Module, method: str, sparsity: float, digits: Dataset) -> nn.Module:
    model = copy.deepcopy(model)
    prune_model(model, method, sparsity, train=digits.train, retrain=RETRAIN, seed=3)
    return model


@pytest.fixture(scope="module")
def pruned_models(digits_lenet300: nn.Module, digits: Dataset) -> dict[str, nn.Module]:
    return {m: pruned(digits_lenet300, m, 0.9, digits) for m in METHODS}


@pytest.mark.parametrize("method", METHODS)
def test_masks_have_weight_shapes_and_exact_counts(
    method: str, pruned_models: dict[str, nn.Module]
) -> None:
    model = pruned_models[method]
    report = sparsity_report(model)
    # lenet300 on 8x8 digits: 64*300 + 300*100 + 100*10 weights
    assert report.total == 19200 + 30000 + 1000
    assert report.pruned == round(0.9 * report.total) == 45180
    for (name, module), layer in zip(prunable_layers(model), report.layers, strict=True):
        mask = module.weight_mask
        assert mask.shape == module.weight.shape == dense_weight(module).shape
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert layer.pruned == int((mask == 0).sum()) == int((effective_weight(module) == 0).sum())
        if method in ("magnitude", "random"):
            assert layer.pruned == round(0.9 * layer.total), name
    assert all(b.numel() > 0 and (b != 0).all() for n, b in model.named_parameters() if "bias" in n)


def test_counts_on_conv_and_linear_layers() -> None:
    model = tiny_cnn()
    report = magnitude_prune(model, 0.75)
    assert [(x.name, x.total, x.pruned) for x in report.layers] == [
        ("0", 27, 20),
        ("3", 1080, 810),  # round(0.75*27)=round(20.25)=20
    ]
    report = global_magnitude_prune(tiny_cnn(), 0.75)
    assert report.pruned == round(0.75 * 1107) == 830
    assert sparsity_report(model).as_dict()["note"].startswith("sparsity = fraction of Linear/Conv")


@pytest.mark.parametrize("method", METHODS)
def test_save_load_restores_masks_exactly(
    method: str, pruned_models: dict[str, nn.Module], tmp_path: Path, digits: Dataset
) -> None:
    model = pruned_models[method]
    path = save_checkpoint(tmp_path / "p.st", model, digits_meta())
    loaded, _ = load_checkpoint(path)
    assert sparsity_report(loaded).as_dict() == sparsity_report(model).as_dict()
    for (_, a), (_, b) in zip(prunable_layers(model), prunable_layers(loaded), strict=True):
        assert torch.equal(a.weight_mask, b.weight_mask)
        assert torch.equal(a.weight_orig, b.weight_orig)
        # the cached pruned weight is right even before any forward pass
        assert torch.equal(b.weight, a.weight_orig * a.weight_mask)
    x = digits.test.x[:50]
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("method", ["magnitude", "random", "dns"])
def test_pruned_weights_stay_zero_through_retraining(
    method: str, pruned_models: dict[str, nn.Module], digits: Dataset
) -> None:
    model = copy.deepcopy(pruned_models[method])
    masks = get_masks(model)
    before = sparsity_report(model).pruned
    # momentum and a large weight decay: neither may move a pruned weight
    train_model(
        model,
        digits.train,
        TrainSettings(epochs=2, lr=0.05, momentum=0.9, weight_decay=0.01, seed=5),
        progress=False,
    )
    assert sparsity_report(model).pruned == before
    for name, module in prunable_layers(model):
        assert torch.equal(module.weight_mask, masks[name])
        assert (effective_weight(module)[masks[name] == 0] == 0).all()
        if method != "dns":  # magnitude/random store exact zeros in weight_orig too
            assert (module.weight_orig[masks[name] == 0] == 0).all()
    make_permanent(model)
    assert all(not hasattr(m, "weight_orig") for _, m in prunable_layers(model))
    assert sparsity_report(model).pruned == before


def test_dns_splices_a_weight_back() -> None:
    # one linear unit, four weights; weight 1 is pruned but the loss wants it large
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    layer = model[0]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.05, 0.8, 0.6]]))
    set_weight_mask(layer, torch.tensor([[1.0, 0.0, 1.0, 1.0]]))
    hook = SurgeryHook(model, {"0": 1}, {"0": 1}, DNSSettings(gamma=0.0), ramp_steps=0, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    with straight_through(model):
        for step in range(1, 11):
            loss = -model(x).sum()  # dL/dW_1 = -1 for the *masked* weight
            opt.zero_grad()
            loss.backward()
            assert layer.weight_orig.grad[0, 1] == -1.0  # straight-through reaches it
            opt.step()
            hook(step, model)
    assert hook.spliced >= 1
    assert layer.weight_mask[0, 1] == 1.0  # spliced back: |W_1| = 1.05 > b
    # 0.6 is the layer's 1-quantile t but lies in [0.9t, 1.1t]: it keeps its state
    assert layer.weight_mask.tolist() == [[1.0, 1.0, 1.0, 1.0]]
    # calibration then cuts the smallest live weight to reach the count exactly
    assert calibrate(model, {"0": 1}) == 1
    assert layer.weight_mask.tolist() == [[1.0, 1.0, 1.0, 0.0]]
    # outside straight_through prune's usual masked gradient is back
    set_weight_mask(layer, torch.tensor([[1.0, 0.0, 1.0, 1.0]]))
    opt.zero_grad()
    (-model(x).sum()).backward()
    assert layer.weight_orig.grad[0, 1] == 0.0


def test_dns_calibration_hits_counts_and_prefers_mask_state() -> None:
    model = nn.Sequential(nn.Linear(5, 1, bias=False))
    layer = model[0]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, 0.4, 0.3, 0.2, 0.1]]))
    set_weight_mask(layer, torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]]))
    # 3 alive, want 2 alive: cut the smallest alive (0.1), keep 0.5 cut
    assert calibrate(model, {"0": 3}) == 1
    assert layer.weight_mask.tolist() == [[0.0, 1.0, 1.0, 0.0, 0.0]]
    # want 4 alive: splice back the largest cut ones (0.5 then 0.2)
    assert calibrate(model, {"0": 1}) == 2
    assert layer.weight_mask.tolist() == [[1.0, 1.0, 1.0, 1.0, 0.0]]


def test_random_control_has_magnitude_layer_rates(pruned_models: dict[str, nn.Module]) -> None:
    mag = sparsity_report(pruned_models["magnitude"]).as_dict()["layers"]
    rnd = sparsity_report(pruned_models["random"]).as_dict()["layers"]
    assert mag == rnd
    masks_m, masks_r = get_masks(pruned_models["magnitude"]), get_masks(pruned_models["random"])
    overlap = float((masks_m["2"] * masks_r["2"]).sum() / masks_m["2"].sum())
    assert overlap < 0.3  # random keeps ~10% of what magnitude keeps, not the same weights


def test_random_is_seeded() -> None:
    a, b, c = tiny_cnn(), tiny_cnn(), tiny_cnn()
    random_prune(a, 0.5, seed=1)
    random_prune(b, 0.5, seed=1)
    random_prune(c, 0.5, seed=2)
    assert torch.equal(a[3].weight_mask, b[3].weight_mask)
    assert not torch.equal(a[3].weight_mask, c[3].weight_mask)


def test_global_and_layerwise_differ_as_expected() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 20))
    with torch.no_grad():
        model[2].weight.mul_(10.0)  # second layer's weights are 10x larger
    glob = copy.deepcopy(model)
    layer = global_magnitude_prune(glob, 0.5)
    assert layer.layers[0].pruned > layer.layers[1].pruned  # small layer loses more
    assert layer.pruned == 400
    kept = torch.cat(
        [effective_weight(m)[m.weight_mask == 1].abs() for _, m in prunable_layers(glob)]
    )
    cut = torch.cat([dense_weight(m) for _, m in prunable_layers(model)])
    # one threshold: every kept |W| >= every pruned |W| (in the original weights)
    orig = torch.cat([m.weight.abs().flatten() for _, m in prunable_layers(model)])
    gmask = torch.cat([m.weight_mask.flatten() for _, m in prunable_layers(glob)])
    assert kept.min() >= orig[gmask == 0].max() and cut.numel() == 800
    lw = copy.deepcopy(model)
    report = magnitude_prune(lw, 0.5)
    assert [x.pruned for x in report.layers] == [200, 200]
    lmask = torch.cat([m.weight_mask.flatten() for _, m in prunable_layers(lw)])
    assert orig[lmask == 1].min() < orig[lmask == 0].max()  # no single threshold


def test_iterative_pruning_is_nested_and_exact(digits_lenet300: nn.Module, digits: Dataset) -> None:
    model = copy.deepcopy(digits_lenet300)
    prune_model(model, "magnitude", 0.5, train=digits.train, retrain=RETRAIN)
    first = get_masks(model)
    report = prune_model(model, "magnitude", 0.95, train=digits.train, retrain=RETRAIN, steps=3)
    assert [x.pruned for x in report.layers] == [18240, 28500, 950]
    for name, mask in get_masks(model).items():
        assert (mask <= first[name]).all()  # nothing pruned comes back
    with pytest.raises(ConfigError, match="cannot lower sparsity"):
        prune_model(model, "magnitude", 0.5)


@pytest.mark.parametrize(
    "targets", [[], [1.0], [-0.1], [0.5, 0.5], [0.9, float("nan")], [0.12341, 0.12344]]
)
def test_bad_targets_are_config_errors(targets: list[float]) -> None:
    with pytest.raises(ConfigError):
        validate_targets(targets)


def test_targets_sorted_and_unknown_method() -> None:
    assert validate_targets([0.9, 0.0, 0.5]) == [0.0, 0.5, 0.9]
    with pytest.raises(ConfigError, match="unknown pruning method 'bogus'"):
        prune_model(tiny_cnn(), "bogus", 0.5)
    with pytest.raises(ConfigError, match="dns prunes while it trains"):
        prune_model(tiny_cnn(), "dns", 0.5)


def _sweep(model: nn.Module, out: Path, method: str, digits: Dataset) -> list[dict]:
    return sparsity_sweep(
        copy.deepcopy(model),
        method,
        [0.5, 0.8, 0.9],
        train=digits.train,
        test=digits.test,
        retrain=RETRAIN,
        seed=4,
        settings={
            "dns": DNSSettings(finetune_epochs=1),
            "hydra": HydraSettings(score_epochs=1),
        }.get(method),
        out_dir=out,
        metadata=digits_meta(),
        parent="dense.st",
        progress=False,
    )


@pytest.mark.parametrize("method", ["magnitude", "dns", "hydra"])
def test_sweep_resume_matches_uninterrupted(
    method: str,
    digits_lenet300: nn.Module,
    digits: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    full = _sweep(digits_lenet300, tmp_path / "a", method, digits)
    assert [r["target_sparsity"] for r in full] == [0.5, 0.8, 0.9]
    assert [r["pruned_weights"] for r in full] == [25100, 40160, 45180]
    real = sweep_module._prune_level
    calls = {"n": 0}

    def interrupt(*args: object, **kwargs: object) -> dict:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sweep_module, "_prune_level", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _sweep(digits_lenet300, tmp_path / "b", method, digits)
    assert sorted(p.name for p in (tmp_path / "b").glob("*.st")) == [
        f"{method}-s0.5000.st",
        f"{method}-s0.8000.st",
    ]
    monkeypatch.setattr(sweep_module, "_prune_level", real)
    # what a kill mid-write leaves: mkstemp's name (8 random characters) for this level
    stale = tmp_path / "b" / f".{method}-s0.9000.st.abc123de.tmp"
    stale.write_bytes(b"half a file")
    resumed = _sweep(digits_lenet300, tmp_path / "b", method, digits)
    assert not stale.exists()
    assert [r["resumed"] for r in resumed] == [True, True, False]
    # a resumed level reports the seconds it took when it ran, not 0 or None
    for r in resumed[:2]:
        side = Path(r["path"]).parent / f".{Path(r['path']).name}.seconds"
        assert r["seconds"] == float(side.read_text()) and r["seconds"] > 0
    for r_full, r_res in zip(full, resumed, strict=True):
        a, b = Path(r_full["path"]), Path(r_res["path"])
        assert read_metadata(a) == read_metadata(b)
        ta, tb = load_file(str(a)), load_file(str(b))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    meta = read_metadata(tmp_path / "b" / f"{method}-s0.9000.st")
    assert meta["parent"] == f"{method}-s0.8000.st" and meta["source"] == "dense.st"
    assert meta["method"] == method and meta["retrain"]["epochs"] == 1
    assert meta["pruned_weights"] == 45180 and math.isclose(meta["sparsity"], 0.9)
    assert 0.0 < meta["accuracy"] <= 1.0


def test_sweep_refuses_a_folder_of_another_sweep(
    digits_lenet300: nn.Module, digits: Dataset, tmp_path: Path
) -> None:
    sparsity_sweep(
        copy.deepcopy(digits_lenet300),
        "magnitude",
        [0.5],
        out_dir=tmp_path,
        metadata=digits_meta(),
        progress=False,
    )
    with pytest.raises(ConfigError, match="other settings"):
        sparsity_sweep(
            copy.deepcopy(digits_lenet300),
            "magnitude",
            [0.5],
            seed=9,
            out_dir=tmp_path,
            metadata=digits_meta(),
            progress=False,
        )


def test_cli_prune_then_evaluate(
    digits_lenet300: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dense = save_checkpoint(tmp_path / "dense.st", digits_lenet300, digits_meta())
    out = tmp_path / "sweep"
    code = main(
        [
            "prune",
            "--checkpoint",
            str(dense),
            "--method",
            "global-magnitude",
            "--sparsity",
            "0.9,0.5",
            "--retrain-epochs",
            "1",
            "--out",
            str(out),
            "--json",
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    levels = json.loads(captured.out)["levels"]
    assert [lv["target_sparsity"] for lv in levels] == [0.5, 0.9]
    code = main(["evaluate", "--checkpoint", str(out / "global-magnitude-s0.9000.st"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["sparsity"] == 45180 / 50200 and result["pruned_weights"] == 45180
    assert result["accuracy"] == pytest.approx(levels[1]["accuracy"])
    assert result["metadata"]["parent"] == "global-magnitude-s0.5000.st"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sparsity", "0.5,1.2"], "sparsity must be in [0, 1)"),
        (["--sparsity", "0.5,0.5"], "duplicate sparsity targets"),
        (["--sparsity", ""], "--sparsity needs"),
        (["--method", "prune-all"], "unknown pruning method"),
        (["--checkpoint", "nowhere.st"], "does not exist"),
    ],
)
def test_cli_prune_errors_are_one_line(
    args: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    digits_lenet300: nn.Module,
) -> None:
    dense = save_checkpoint(tmp_path / "dense.st", digits_lenet300, digits_meta())
    base = {"--checkpoint": str(dense), "--method": "magnitude", "--sparsity": "0.5"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = ["prune", "--out", str(tmp_path / "o")] + [x for kv in base.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_errors_are_in_the_family() -> None:
    assert issubclass(ConfigError, SparseRobustError)


@pytest.mark.slow
def test_mnist_lenet300_magnitude_keeps_accuracy(mnist_root: Path) -> None:
    """Real MNIST: LeNet-300-100 2 epochs dense, magnitude to 90% with 1 retrain
    epoch stays within half a point of dense (about a minute on 2 CPU cores)."""
    from sparserobust.data import load_dataset

    torch.set_num_threads(2)
    data = load_dataset("mnist", mnist_root)
    info = data.info
    model = build_model("lenet300", info.input_shape, 10, info.mean, info.std)
    train_model(model, data.train, TrainSettings(epochs=2, lr=0.05, seed=0), progress=False)
    dense_acc = evaluate_accuracy(model, data.test)
    assert dense_acc > 0.97
    report = prune_model(
        model,
        "magnitude",
        0.9,
        train=data.train,
        retrain=TrainSettings(epochs=1, lr=0.05, seed=0),
        seed=0,
    )
    assert report.pruned == sum(round(0.9 * n) for n in (235200, 30000, 1000))
    assert evaluate_accuracy(model, data.test) > dense_acc - 0.005


def test_one_shot_sweep_with_own_training_loop(digits_lenet300: nn.Module, digits: Dataset) -> None:
    import torch.nn.functional as F

    calls: list[int] = []

    def my_loop(model: nn.Module, after_step: object) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for step in range(1, 11):
            xb, yb = (
                digits.train.x[(step - 1) * 64 : step * 64],
                digits.train.y[(step - 1) * 64 : step * 64],
            )
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if callable(after_step):
                after_step(step, model)
        calls.append(step)

    model = copy.deepcopy(digits_lenet300)
    with torch.no_grad():
        before = model(digits.test.x[:20])
    records = sparsity_sweep(
        model,
        "dns",
        [0.8, 0.5],
        retrain=my_loop,
        chain=False,
        progress=False,
        evaluate=lambda m: evaluate_accuracy(m, digits.test),
    )
    assert calls == [10, 10]  # one surgery per level, no TrainSettings fine-tune
    assert [r["pruned_weights"] for r in records] == [25100, 40160]
    assert all(r["parent"] == "dense" and r["accuracy"] > 0.5 for r in records)
    assert not any(hasattr(m, "weight_orig") for _, m in prunable_layers(model))  # untouched
    with torch.no_grad():
        assert torch.equal(model(digits.test.x[:20]), before)


def test_sweep_refuses_a_folder_pruned_from_another_model(
    digits_lenet300: nn.Module, digits: Dataset, tmp_path: Path
) -> None:
    kwargs = {"out_dir": tmp_path, "metadata": digits_meta(), "progress": False}
    sparsity_sweep(copy.deepcopy(digits_lenet300), "magnitude", [0.5], **kwargs)
    other = copy.deepcopy(digits_lenet300)
    with torch.no_grad():
        other[2].weight.mul_(1.001)  # same architecture, settings and names; other weights
    with pytest.raises(ConfigError, match="other settings"):
        sparsity_sweep(other, "magnitude", [0.5], **kwargs)
    # the very same starting model resumes without recomputing
    (record,) = sparsity_sweep(copy.deepcopy(digits_lenet300), "magnitude", [0.5], **kwargs)
    assert record["resumed"]


def test_prune_checkpoint_passes_its_settings_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prune_checkpoint is glue: what it hands to sparsity_sweep, load_dataset and
    resolve_device, defaults and explicit values alike (mutation testing found the CLI
    test passes every argument, so defaults and pass-throughs went unchecked)."""
    import sparserobust.data
    import sparserobust.utils
    from sparserobust.models import model_spec
    from sparserobust.training import AdversarialTrainingSettings

    model = build_model("lenet300", (1, 8, 8), 10, [0.305], [0.3779])
    dense = save_checkpoint(tmp_path / "dense.st", model, digits_meta())
    calls: list[tuple[str, tuple, dict]] = []

    def spy(name: str, result: object):
        def fn(*args: object, **kwargs: object) -> object:
            calls.append((name, args, kwargs))
            return result(*args, **kwargs) if callable(result) else result

        return fn

    real_device = sparserobust.utils.resolve_device
    monkeypatch.setattr(sweep_module, "sparsity_sweep", spy("sweep", ["records"]))
    monkeypatch.setattr(sparserobust.data, "load_dataset", spy("data", "DATA"))
    monkeypatch.setattr(sparserobust.utils, "resolve_device", spy("device", real_device))
    monkeypatch.setattr(sweep_module.torch, "manual_seed", spy("seed", None))

    class Split:
        train, test = "TRAIN", "TEST"

    monkeypatch.setattr(sparserobust.data, "load_dataset", spy("data", Split()))
    spec = model_spec("lenet300")

    # defaults
    out = sweep_module.prune_checkpoint(dense, "magnitude", [0.5, 0.2], out_dir=tmp_path / "o")
    assert out == ["records"]
    by_name = {name: (args, kwargs) for name, args, kwargs in calls}
    assert by_name["device"] == (("auto",), {})
    assert by_name["data"] == (("digits", None), {})
    assert by_name["seed"] == ((0,), {})
    args, kwargs = by_name["sweep"]
    assert args[1:] == ("magnitude", [0.2, 0.5])
    assert kwargs == {
        "train": "TRAIN",
        "test": "TEST",
        "retrain": TrainSettings(
            epochs=1,
            lr=spec.lr,
            batch_size=spec.batch_size,
            weight_decay=spec.weight_decay,
            seed=0,
            adversarial=None,
        ),
        "steps_per_level": 1,
        "seed": 0,
        "settings": None,
        "chain": True,
        "out_dir": tmp_path / "o",
        "metadata": read_metadata(dense),
        "parent": "dense.st",
        "progress": True,
    }

    # every setting given
    calls.clear()
    settings = DNSSettings(hysteresis=0.2)
    adversarial = AdversarialTrainingSettings(method="pgd", eps=0.1, steps=2)
    sweep_module.prune_checkpoint(
        dense,
        "dns",
        [0.3],
        out_dir=tmp_path / "p",
        data_dir=tmp_path / "data",
        retrain_epochs=3,
        lr=0.123,
        batch_size=17,
        weight_decay=0.5,
        steps_per_level=4,
        seed=9,
        adversarial=adversarial,
        chain=False,
        device="cpu",
        progress=False,
        settings=settings,
    )
    by_name = {name: (args, kwargs) for name, args, kwargs in calls}
    assert by_name["device"] == (("cpu",), {})
    assert by_name["data"] == (("digits", tmp_path / "data"), {})
    assert by_name["seed"] == ((9,), {})
    kwargs = by_name["sweep"][1]
    assert kwargs["retrain"] == TrainSettings(
        epochs=3, lr=0.123, batch_size=17, weight_decay=0.5, seed=9, adversarial=adversarial
    )
    assert (kwargs["steps_per_level"], kwargs["seed"], kwargs["chain"], kwargs["progress"]) == (
        4,
        9,
        False,
        False,
    )
    assert kwargs["settings"] is settings

    # weight decay 0 is a value, not "use the default"; no retraining passes None
    calls.clear()
    sweep_module.prune_checkpoint(
        dense, "random", [0.3], out_dir=tmp_path / "q", retrain_epochs=0, weight_decay=0.0
    )
    assert calls[-1][2]["retrain"] is None
    calls.clear()
    sweep_module.prune_checkpoint(dense, "random", [0.3], out_dir=tmp_path / "q", weight_decay=0.0)
    assert calls[-1][2]["retrain"].weight_decay == 0.0

    # only a negative epoch count is an error, and 0 only for the methods that train
    with pytest.raises(ConfigError, match="--retrain-epochs: must be >= 0"):
        sweep_module.prune_checkpoint(
            dense, "magnitude", [0.3], out_dir=tmp_path, retrain_epochs=-1
        )
    for method in ("dns", "hydra"):
        with pytest.raises(ConfigError, match="prunes while it trains"):
            sweep_module.prune_checkpoint(dense, method, [0.3], out_dir=tmp_path, retrain_epochs=0)
    for method in ("dns", "hydra", "magnitude"):
        sweep_module.prune_checkpoint(dense, method, [0.3], out_dir=tmp_path, retrain_epochs=1)


def test_dns_counts_allocations_and_dns_prune_schedule() -> None:
    """dns_counts: "layer" is the layer-wise count, "global" one |W| threshold; dns_prune
    starts its ramp from the current pruned counts and takes DNSSettings() by default."""
    from sparserobust.pruning.dns import dns_counts, dns_prune
    from sparserobust.pruning.magnitude import global_counts, layer_counts

    model = tiny_cnn()
    with torch.no_grad():
        model[0].weight.mul_(100.0)  # the conv's |W| all above the linear's
    assert dns_counts(model, 0.5, "layer") == layer_counts(model, 0.5) == {"0": 14, "3": 540}
    scores = {n: dense_weight(m).abs() for n, m in prunable_layers(model)}
    assert dns_counts(model, 0.5, "global") == global_counts(model, 0.5, scores)
    assert dns_counts(model, 0.5, "global") == {"0": 0, "3": 554}

    # ramp over 4 of 8 steps (DNSSettings().ramp = 0.5) from 0 pruned to the target: after
    # step 1 the scheduled count is 1 - (3/4)^3 = 58% of the way
    seen: list[dict[str, int]] = []

    def train(net: nn.Module, after_step) -> None:  # noqa: ANN001
        seen.append(after_step.scheduled(1))  # after_step is the SurgeryHook
        after_step(1, net)

    report = dns_prune(model, 0.5, train, steps=8)
    assert report.pruned == 554
    assert seen == [{"0": 0, "3": round(554 * (1 - 0.75**3))}]  # 320

    # an already masked layer keeps its mask as the starting point
    model = tiny_cnn()
    set_weight_mask(model[3], (torch.arange(1080) >= 100).float().reshape(10, 108))
    seen.clear()
    dns_prune(model, 0.5, train, steps=8, config=DNSSettings(allocation="layer"))
    assert seen[0]["3"] == round(100 + (540 - 100) * (1 - 0.75**3))


def test_prune_model_hands_dns_and_hydra_their_settings(
    digits: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The glue between prune_model and dns_prune / hydra_prune: seeds, fine-tuning,
    step counts (spies; the training itself is tested above and in test_robust_pruning)."""
    calls: list[tuple[str, tuple, dict]] = []
    real_train_fn = base_module.make_trainer

    def spy_train_fn(*args: object):  # noqa: ANN202
        calls.append(("train_fn", args, {}))
        return real_train_fn(*args)

    def spy(name: str):  # noqa: ANN202
        def fn(*args: object, **kwargs: object) -> str:
            calls.append((name, args, kwargs))
            return name

        return fn

    monkeypatch.setattr(base_module, "make_trainer", spy_train_fn)
    monkeypatch.setattr(dns_module, "make_trainer", spy_train_fn)
    monkeypatch.setattr(dns_module, "dns_prune", spy("dns"))
    monkeypatch.setattr(hydra_module, "hydra_prune", spy("hydra"))
    model = tiny_cnn()
    retrain = TrainSettings(epochs=2, batch_size=100, seed=3)
    steps = 2 * math.ceil(len(digits.train) / 100)

    dns = DNSSettings(finetune_epochs=1)
    assert prune_model(model, "dns", 0.5, train=digits.train, retrain=retrain, seed=5, settings=dns)
    (_, a1, _), (_, a2, _), (_, args, kwargs) = calls
    assert a1 == (retrain, digits.train, 5, False, "dns 0.5000")
    ft = TrainSettings(epochs=1, batch_size=100, seed=3)
    assert a2 == (ft, digits.train, 5 + 7919, False, "dns finetune")
    assert args[:2] == (model, 0.5) and callable(args[2])
    assert kwargs["steps"] == steps and kwargs["config"] is dns and kwargs["seed"] == 5
    assert callable(kwargs["finetune"])

    calls.clear()  # no fine-tuning epochs: no fine-tuning; progress is passed on
    prune_model(
        model,
        "dns",
        0.5,
        train=digits.train,
        retrain=retrain,
        settings=DNSSettings(finetune_epochs=0),
        progress=True,
    )
    assert [c[0] for c in calls] == ["train_fn", "dns"]
    assert calls[0][1][3] is True and calls[1][2]["finetune"] is None
    assert calls[1][2]["config"] == DNSSettings(finetune_epochs=0)

    calls.clear()  # a callable trainer: the step count comes from retrain_steps (0 if not given)
    prune_model(model, "dns", 0.5, retrain=lambda m, hook: None, retrain_steps=37)
    assert calls[-1][2]["steps"] == 37 and calls[-1][2]["finetune"] is None
    assert calls[-1][2]["config"] == DNSSettings()
    prune_model(model, "dns", 0.5, retrain=lambda m, hook: None)
    assert calls[-1][2]["steps"] == 0

    calls.clear()  # hydra: k = 1 - sparsity, the run seed added to the recipe's
    hydra = HydraSettings()
    prune_model(
        model,
        "hydra",
        0.7,
        train=digits.train,
        retrain=retrain,
        seed=5,
        settings=hydra,
        progress=True,
    )
    (_, args, kwargs) = calls[-1]
    assert args == (model, pytest.approx(0.3), digits.train, TrainSettings(2, 100, seed=8), hydra)
    assert kwargs == {"progress": True}


def test_surgery_hook_schedule_probability_and_counters() -> None:
    """SurgeryHook's cubic ramp, its update probability and its counters in closed form."""
    from sparserobust.pruning.dns import _kth_smallest

    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    set_weight_mask(model[0], torch.ones(10, 10))
    config = DNSSettings(gamma=0.5, power=2.0)
    hook = SurgeryHook(model, {"0": 10}, {"0": 90}, config, ramp_steps=4, seed=0)
    assert (hook.updates, hook.spliced) == (0, 0)
    # start + (target - start) * (1 - (1 - step/4)^3), rounded
    assert [hook.scheduled(s)["0"] for s in range(6)] == [10, 56, 80, 89, 90, 90]
    assert [hook.probability(s) for s in range(5)] == [1.0] * 5
    assert hook.probability(6) == pytest.approx((1 + 0.5 * 6) ** -2.0)
    no_ramp = SurgeryHook(model, {"0": 10}, {"0": 90}, config, ramp_steps=0, seed=0)
    assert no_ramp.scheduled(0) == {"0": 90} and no_ramp.probability(1) == 1 / 2.25
    hook.update({"0": 30})
    assert hook.updates == 1 and int((model[0].weight_mask == 0).sum()) <= 30

    # the draws come from the hook's own generator: same seed, same updates, whatever
    # the global RNG does
    def updates(global_seed: int) -> list[int]:
        torch.manual_seed(global_seed)
        h = SurgeryHook(model, {"0": 0}, {"0": 50}, config, ramp_steps=0, seed=7)
        seen = []
        for step in range(1, 40):
            torch.rand(3)
            h(step, model)
            seen.append(h.updates)
        return seen

    assert updates(0) == updates(1) == updates(2)

    assert _kth_smallest(torch.tensor([3.0, 1.0, 2.0]), 0) == -math.inf
    assert _kth_smallest(torch.tensor([3.0, 1.0, 2.0]), 2) == 2.0
    assert _kth_smallest(torch.tensor([3.0, 1.0, 2.0]), 5) == 3.0
