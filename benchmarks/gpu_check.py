"""GPU check (``make gpu-check``): attacks and measurements on CUDA agree with CPU.

1. Every registered attack (every norm it supports) and every registered measurement
   on a digits LeNet-300-100 (trained here, seeded) on CPU and on the GPU, on the same
   images: robust accuracies within 2 points, median norms within 2%, or within twice
   what another seed changes on the CPU (random attacks: CPU and CUDA generators differ).
2. The quick study with ``device: cuda`` against the same study on CPU: every stored
   record within the same tolerances.
3. alpha-CROWN and branch and bound (:func:`sparserobust.verify.verify_bab`) on the
   digits LeNet-300-100 at l_inf 0.08: the same certified points and margins (1e-6), the
   same decision on every point both devices decide, and the seconds of each.
4. The LeNet-5 measurement cells (FGSM, PGD-40, DeepFool, DDN on 500 MNIST images when
   ``--data-dir`` has MNIST, else digits-sized random data): seconds on CPU and GPU.

Runs on CPU alone too (``--device cpu``: a self-check of the script). Writes a JSON
summary with ``--json-out`` and exits 1 when any comparison fails.

    python benchmarks/gpu_check.py --device cuda --data-dir ../shared/data --json-out gpu.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import math
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sparserobust.attacks import attack_names, attack_norms, get_attack, is_fixed_epsilon
from sparserobust.config import config_from_dict, quick_config
from sparserobust.data import load_dataset
from sparserobust.measurements import plan_cells, run_cell, values_of
from sparserobust.metrics.robustness import summarize
from sparserobust.models import build_model
from sparserobust.pipeline import run_study
from sparserobust.store import ResultStore
from sparserobust.training import TrainSettings, train_model

ACC_TOL = 0.02
NORM_TOL = 0.02


def is_fraction(metric: str) -> bool:
    """A share of images (compared in absolute points), not a norm (compared relatively)."""
    return any(w in metric for w in ("robust_acc", "fraction", "share", "missed by"))


def close(a: float, b: float, metric: str, spread: float = 0.0) -> bool:
    """``a`` (CPU) and ``b`` (GPU) agree: within the fixed tolerance, or within twice the
    CPU's own seed-to-seed ``spread`` (random attacks and CLEVER draw their noise from a
    generator on the device, and CPU and CUDA generators give different streams, so a
    random method can only be held to what other seeds do on the CPU)."""
    if any(map(math.isnan, (a, b))):
        return math.isnan(a) and math.isnan(b)
    if is_fraction(metric):
        return abs(a - b) <= max(ACC_TOL, 2 * spread) + 1e-6  # float32 shares
    scale = max(abs(a), abs(b), 1e-9)
    return abs(a - b) <= max(NORM_TOL * scale, 2 * spread) + 1e-6


def compare(
    a: dict[str, float], b: dict[str, float], other_seeds: tuple[dict[str, float], ...] = ()
) -> list[str]:
    """Mismatches of ``b`` (GPU) against ``a`` (CPU, seed 0); ``other_seeds``: the CPU with
    other seeds, whose largest distance from ``a`` widens the tolerance of that metric."""
    out = []
    for k in a:
        others = [o[k] for o in other_seeds if k in o and not math.isnan(o[k])]
        spread = max((abs(a[k] - v) for v in others), default=0.0)
        if not close(a[k], b.get(k, math.nan), k, spread):
            note = f" (cpu other seeds: {', '.join(f'{v:.4g}' for v in others)})" if others else ""
            out.append(f"{k}: cpu {a[k]:.4g} vs gpu {b.get(k, math.nan):.4g}{note}")
    return out


Values = dict[str, float]


def calibrated(a: Values, b: Values, other_seeds: Callable[[], tuple[Values, ...]]) -> list[str]:
    """:func:`compare`, running the other CPU seeds (``other_seeds()``) only where CPU and
    GPU differ: they cost two more CPU runs each and matter only to widen a tolerance."""
    bad = compare(a, b)
    return compare(a, b, other_seeds()) if bad else bad


def attack_other_seeds(model: torch.nn.Module, a: Values, run: tuple) -> tuple[Values, ...]:
    """The CPU attack ``run`` with seeds 1 (and 2, if seed 1 differs from ``a``, seed 0's)."""
    cpu = torch.device("cpu")
    first = attack_once(model, cpu, 1, *run)[0]
    if first == a:  # deterministic: seed 2 would say the same
        return (first,)
    return first, attack_once(model, cpu, 2, *run)[0]


def cells_other_seeds(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cells: list
) -> tuple[Values, ...]:
    """The measurement cells planned with the other seeds, on the CPU."""
    return tuple(values_of(run_cell(model, x, y, c)) for c in cells)


def digits_model() -> tuple[torch.nn.Module, Any]:
    data = load_dataset("digits")
    info = data.info
    torch.manual_seed(0)
    model = build_model("lenet300", info.input_shape, info.num_classes, info.mean, info.std)
    train_model(model, data.train, TrainSettings(epochs=20, seed=0), progress=False)
    return model.eval(), data


def attack_once(
    model: torch.nn.Module,
    dev: torch.device,
    seed: int,
    name: str,
    norm: float,
    kwargs: dict[str, Any],
    eps: list[float] | None,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[dict[str, float], float]:
    """Robust accuracies (and the median norm of a minimal attack) of one attack run, and
    its seconds."""
    start = time.perf_counter()
    res = get_attack(name, norm, **kwargs).run(model, x.to(dev), y.to(dev), epsilons=eps, seed=seed)
    s = summarize(res, eps or [0.5, 1.0])
    flat = {f"robust_acc@{e}": v for e, v in s["robust_accuracy"].items()}
    if not is_fixed_epsilon(name) and s["median_norm"] is not None:
        flat["median_norm"] = s["median_norm"]
    return flat, time.perf_counter() - start


def check_attacks(device: torch.device) -> dict[str, Any]:
    model, data = digits_model()
    gpu = copy.deepcopy(model).to(device)
    x, y = data.test.x[:300], data.test.y[:300]
    out: dict[str, Any] = {}
    for name in attack_names():
        for norm in attack_norms(name):
            eps = (
                ([0.05, 0.1] if math.isinf(norm) else [0.5, 1.0])
                if is_fixed_epsilon(name)
                else None
            )
            kwargs = {"steps": 100} if name == "square" else {}
            cpu = torch.device("cpu")
            run = (name, norm, kwargs, eps, x, y)
            (a, t_cpu), (b, t_gpu) = (
                attack_once(model, cpu, 0, *run),
                attack_once(gpu, device, 0, *run),
            )
            bad = calibrated(a, b, functools.partial(attack_other_seeds, model, a, run))
            key = f"{name}-l{'inf' if math.isinf(norm) else 2}"
            out[key] = {"cpu_s": round(t_cpu, 2), "gpu_s": round(t_gpu, 2), "mismatches": bad}
            print(f"{key}: cpu {t_cpu:.1f}s gpu {t_gpu:.1f}s {bad or 'agree'}", flush=True)
    cfg = config_from_dict(
        {
            "name": "g",
            "dataset": "digits",
            "model": "lenet300",
            "eval": {
                "n": 200,
                "attacks": [{"name": "fgsm", "eps": [0.1]}],
                "clever": {"n": 5, "n_batches": 5, "batch_size": 20},
                "masking": [{"eps": [0.1], "n": 100, "steps": 200, "against": ["fgsm"]}],
            },
        }
    )
    seeds = [plan_cells(cfg.eval, seed) for seed in (0, 1, 2)]
    for cell, *other_cells in zip(*seeds, strict=True):
        a = values_of(run_cell(model, x, y, cell))
        b = values_of(run_cell(gpu, x.to(device), y.to(device), cell))
        bad = calibrated(a, b, functools.partial(cells_other_seeds, model, x, y, other_cells))
        out[f"measure {cell.key}"] = {"mismatches": bad}
        print(f"measure {cell.key}: {bad or 'agree'}", flush=True)
    return out


def check_verifiers(device: torch.device) -> dict[str, Any]:
    """alpha-CROWN and branch and bound on CPU and on ``device``: same answers."""
    from sparserobust.verify import alpha_certify, verify_bab

    model, data = digits_model()
    gpu = copy.deepcopy(model).to(device)
    x, y = data.test.x[:16], data.test.y[:16]
    eps = 0.08
    out: dict[str, Any] = {}
    runs = []
    for m, dev in ((model, torch.device("cpu")), (gpu, device)):
        start = time.perf_counter()
        alpha = alpha_certify(m, x.to(dev), y.to(dev), epsilon=eps)
        mid = time.perf_counter()
        results = verify_bab(m, x.to(dev), y.to(dev), epsilon=eps, time_limit=10)
        runs.append((alpha, results, mid - start, time.perf_counter() - mid))
    (a_cpu, b_cpu, ta_cpu, tb_cpu), (a_gpu, b_gpu, ta_gpu, tb_gpu) = runs
    fin = torch.isfinite(a_cpu.margins)
    gap = float((a_cpu.margins[fin] - a_gpu.margins[fin]).abs().max()) if fin.any() else 0.0
    alpha_bad = []
    if not torch.equal(a_cpu.certified, a_gpu.certified):
        alpha_bad.append("alpha-CROWN certifies different points")
    if gap > 1e-6:
        alpha_bad.append(f"alpha-CROWN margins differ by {gap:.3g}")
    out["alpha"] = {"cpu_s": round(ta_cpu, 2), "gpu_s": round(ta_gpu, 2),
                    "mismatches": alpha_bad}  # fmt: skip
    decided = ("verified", "counterexample")
    bab_bad = [
        f"point {c.index}: cpu {c.status} vs gpu {g.status}"
        for c, g in zip(b_cpu, b_gpu, strict=True)
        if c.status in decided and g.status in decided and c.status != g.status
    ]
    out["bab"] = {
        "cpu_s": round(tb_cpu, 2), "gpu_s": round(tb_gpu, 2), "mismatches": bab_bad,
        "cpu_statuses": [r.status for r in b_cpu], "gpu_statuses": [r.status for r in b_gpu],
    }  # fmt: skip
    return out


def check_quick_study(device: str, out: Path) -> dict[str, Any]:
    runs = {}
    for dev in ("cpu", device):
        cfg = dataclasses.replace(quick_config(), device=dev)
        run = out / f"quick-{dev}"
        shutil.rmtree(run, ignore_errors=True)
        start = time.perf_counter()
        run_study(cfg, run, progress=False)
        seconds = time.perf_counter() - start
        with ResultStore(run, create=False) as store:
            vals = {
                f"{r['model_key']} {label}": v
                for r in store.results()
                for label, v in values_of(r["numbers"]).items()
            }
        runs[dev] = (vals, seconds)
    return {
        "cpu_s": round(runs["cpu"][1], 1),
        "gpu_s": round(runs[device][1], 1),
        "records": len(runs["cpu"][0]),
        "mismatches": compare(runs["cpu"][0], runs[device][0]),
    }


def lenet5_cells(device: torch.device, data_dir: str | None) -> dict[str, Any]:
    try:
        data = load_dataset("mnist", data_dir)
        x, y = data.test.x[:500], data.test.y[:500]
        info = data.info
        model = build_model("lenet5", info.input_shape, info.num_classes, info.mean, info.std)
        train_model(model, data.train.head(5000), TrainSettings(epochs=1, seed=0), progress=False)
    except Exception as exc:  # noqa: BLE001 - no MNIST: say so, skip the timing
        return {"skipped": f"no MNIST ({exc})"}
    cfg = config_from_dict(
        {
            "name": "l5",
            "dataset": "mnist",
            "model": "lenet5",
            "eval": {
                "n": 500,
                "attacks": [
                    {"name": "fgsm", "eps": [0.1]},
                    {"name": "pgd", "eps": [0.1], "steps": 40},
                    {"name": "deepfool", "norm": "2"},
                    {"name": "ddn", "steps": 100},
                ],
                "activations": False,
                "bounds": False,
            },
        }
    )
    out: dict[str, Any] = {}
    gpu = copy.deepcopy(model).to(device).eval()
    model.eval()
    for cell in plan_cells(cfg.eval, 0):
        times = []
        for m, dev in ((model, torch.device("cpu")), (gpu, device)):
            start = time.perf_counter()
            run_cell(m, x.to(dev), y.to(dev), cell)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        out[cell.key] = {"cpu_s": round(times[0], 2), "gpu_s": round(times[1], 2)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--out", default="runs/gpu-check")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: no CUDA device here: run on a GPU machine or pass --device cpu", file=sys.stderr
        )
        return 2
    device = torch.device(args.device)
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    parts = {
        "attacks_and_measurements": lambda: check_attacks(device),
        "quick_study": lambda: check_quick_study(args.device, Path(args.out)),
        "verifiers": lambda: check_verifiers(device),
        "lenet5_cells": lambda: lenet5_cells(device, args.data_dir),
    }
    crashed = []
    for name, fn in parts.items():
        # a part that crashes is recorded and the others still run (one GPU session
        # is short: a bug in one part must not hide the results of the rest)
        print(f"part {name}", flush=True)
        try:
            report[name] = fn()
        except Exception as err:  # noqa: BLE001
            report[name] = {"crashed": f"{type(err).__name__}: {err}"}
            crashed.append(name)
            traceback.print_exc()
        text = json.dumps(report, indent=1)
        if args.json_out:
            Path(args.json_out).write_text(text)
    print(text)
    bad = [f"{name} crashed" for name in crashed]
    if "attacks_and_measurements" not in crashed:
        bad += [k for k, v in report["attacks_and_measurements"].items() if v["mismatches"]]
    if "quick_study" not in crashed and report["quick_study"]["mismatches"]:
        bad.append("quick_study")
    if "verifiers" not in crashed:
        bad += [f"verifiers {k}" for k, v in report["verifiers"].items() if v["mismatches"]]
    print(f"gpu-check: {'FAIL ' + ', '.join(bad) if bad else 'all comparisons within tolerance'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
