"""Speed and strength of our attacks against foolbox, ART and torchattacks.

One run, one model, the same images for every attack: LeNet-300-100 on the
first N MNIST test images. For each attack: wall-clock seconds, images per
second, success rate over the correctly classified images, and the median
perturbation norm over the correctly classified, successfully attacked images.
Every peer's adversarials are re-verified with our own forward pass
(:func:`sparserobust.attacks.result_from_adversarials`), so all rows are measured
the same way. Slow peers can run on fewer images (``--art-n``); their time is
then extrapolated linearly to N and marked as such.

    python benchmarks/attacks.py --checkpoint /tmp/lenet300.st \
        --data-dir /work/shared/data --n 1000 --json-out /tmp/bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from sparserobust.attacks import (
    DDN,
    FGSM,
    PGD,
    AttackResult,
    CarliniWagnerL2,
    DeepFool,
    MinL2,
    result_from_adversarials,
)
from sparserobust.checkpoint import load_checkpoint
from sparserobust.data import load_dataset
from sparserobust.metrics import median_norm, robust_accuracy, success_rate

Runner = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def row(name: str, res: AttackResult, seconds: float, n_run: int, n_total: int) -> dict:
    extrapolated = n_run < n_total
    total = seconds * n_total / n_run
    out = {
        "attack": name,
        "images": n_run,
        "seconds": round(total, 2),
        "extrapolated": extrapolated,
        "images_per_s": round(n_run / seconds, 1),
        "success": round(success_rate(res), 4),
        "median_l2": None if math.isnan(median_norm(res)) else round(median_norm(res), 4),
    }
    print(json.dumps(out), flush=True)
    return out


def peer(name: str, fn: Runner, model, x, y, n_total: int, norm: float = 2.0) -> dict:
    start = time.perf_counter()
    adv = fn(model, x, y)
    seconds = time.perf_counter() - start
    res = result_from_adversarials(model, x, y, torch.as_tensor(adv), norm=norm, attack=name)
    return row(name, res, seconds, x.shape[0], n_total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--art-n", type=int, default=50, help="images for ART C&W (extrapolated)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated attack names to run")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, meta = load_checkpoint(args.checkpoint, device="cpu")
    model.eval()
    test = load_dataset(meta["dataset"], args.data_dir).test.head(args.n)
    x, y = test.x.contiguous(), test.y
    n = x.shape[0]
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    rows: list[dict] = []

    def want(name: str) -> bool:
        return not only or name in only

    def ours(name: str, attack, **kw) -> AttackResult | None:
        if not want(name):
            return None
        start = time.perf_counter()
        res = attack.run(model, x, y, seed=0, **kw)
        rows.append(row(name, res, time.perf_counter() - start, n, n))
        return res

    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))

    def fool(attack) -> Runner:
        return lambda m, xx, yy: attack(fmodel, xx, yy, epsilons=None)[1]

    # -- DeepFool
    ours("ours DeepFool (50 steps; overshoot 0.02)", DeepFool())
    if want("foolbox DeepFool"):
        rows.append(
            peer("foolbox DeepFool", fool(fb.attacks.L2DeepFoolAttack(steps=50)), model, x, y, n)
        )
    # -- DDN / FMN
    for steps in (100, 1000):
        ours(f"ours DDN ({steps} steps; abort early)", DDN(steps=steps))
        if want(f"foolbox DDN ({steps} steps)"):
            rows.append(
                peer(
                    f"foolbox DDN ({steps} steps)",
                    fool(fb.attacks.DDNAttack(steps=steps)),
                    model,
                    x,
                    y,
                    n,
                )
            )
        if want(f"foolbox FMN ({steps} steps)"):
            rows.append(
                peer(
                    f"foolbox FMN ({steps} steps)",
                    fool(fb.attacks.L2FMNAttack(steps=steps)),
                    model,
                    x,
                    y,
                    n,
                )
            )
    # -- minimal-l2 estimate
    ours("ours min-l2 (DeepFool + DDN 1000; line search)", MinL2())
    # -- C&W
    ours("ours C&W (9 x 1000)", CarliniWagnerL2(binary_search_steps=9, steps=1000))
    if want("foolbox C&W (9 x 1000)"):
        cw = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=9, steps=1000)
        rows.append(peer("foolbox C&W (9 x 1000)", fool(cw), model, x, y, n))
    # -- ART
    if want("ART DeepFool") or want("ART C&W (9 x 1000)"):
        from art.attacks.evasion import CarliniL2Method
        from art.attacks.evasion import DeepFool as ArtDeepFool
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(
            model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
            nb_classes=int(meta["num_classes"]), clip_values=(0.0, 1.0), device_type="cpu",
        )  # fmt: skip

        def art(attack) -> Runner:
            return lambda m, xx, yy: torch.from_numpy(attack.generate(xx.numpy()))

        if want("ART DeepFool"):
            rows.append(
                peer(
                    "ART DeepFool",
                    art(ArtDeepFool(clf, batch_size=n, verbose=False)),
                    model,
                    x,
                    y,
                    n,
                )
            )
        if want("ART C&W (9 x 1000)"):
            k = args.art_n
            cw_art = CarliniL2Method(
                clf, binary_search_steps=9, max_iter=1000, batch_size=k, verbose=False
            )
            rows.append(peer("ART C&W (9 x 1000)", art(cw_art), model, x[:k], y[:k], n))
    # -- torchattacks
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
    if torchattacks is not None:
        if want("torchattacks DeepFool"):
            ta = torchattacks.DeepFool(model, steps=50, overshoot=0.02)
            rows.append(
                peer(
                    "torchattacks DeepFool (50 steps)", lambda m, xx, yy: ta(xx, yy), model, x, y, n
                )
            )
        if want("torchattacks CW"):
            tc = torchattacks.CW(model, c=1, kappa=0, steps=1000, lr=0.01)
            rows.append(
                peer(
                    "torchattacks CW (c=1, 1000 steps)",
                    lambda m, xx, yy: tc(xx, yy),
                    model,
                    x,
                    y,
                    n,
                )
            )
    # -- fixed-epsilon (ours only; l_inf)
    eps = [0.05, 0.1, 0.2, 0.3]
    for name, attack in (("ours FGSM", FGSM()), ("ours PGD linf (40 steps)", PGD())):
        if want(name):
            start = time.perf_counter()
            res = attack.run(model, x, y, epsilons=eps, seed=0)
            sec = time.perf_counter() - start
            acc = robust_accuracy(res)
            rounded = {str(k): round(v, 4) for k, v in acc.items()}
            rows.append(
                {"attack": name, "images": n, "seconds": round(sec, 2),
                 "images_per_s": round(n / sec, 1), "robust_accuracy": rounded}
            )  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    info = {
        "n": n, "threads": args.threads, "torch": torch.__version__,
        "clean_accuracy": float((model(x).argmax(1) == y).float().mean()),
        "median_definition": "over correctly classified, successfully attacked images",
        "rows": rows, "np": np.__version__,
    }  # fmt: skip
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(info, fh, indent=1)


if __name__ == "__main__":
    main()
