"""Does AutoAttack find the counterexamples only the MILP found? Ours and the official code.

For each model of a finished verify study, take the points whose exact verdict at
``--eps`` is a counterexample found by the MILP (not by the clean check or the PGD
pre-check), run our AutoAttack and the official one (``pyautoattack``, standard version,
l_inf) on them, and print how many each leaves robust. A point left robust is one the
attack misses: the MILP's counterexample was re-checked by our forward pass. The
official code's warnings go to stderr.

    python benchmarks/autoattack_vs_exact.py runs/mnist_lenet300_verify \\
        s2/magnitude/0.9980 s2/magnitude/0.9950 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch

from sparserobust.attacks.autoattack import AutoAttack
from sparserobust.checkpoint import load_checkpoint
from sparserobust.data import load_dataset
from sparserobust.errors import StoreError
from sparserobust.rundir import checkpoint_path
from sparserobust.store import ResultStore, sha256_file


def _milp_counterexamples(store: ResultStore, key: str, eps: float) -> list[int]:
    verify = [r for r in store.results()
              if r["model_key"] == key and r["measurement"] == "verify:linf"]  # fmt: skip
    if not verify:
        sys.exit(
            f"error: {key} has no verify:linf result in {store.run_dir}: give a model key "
            "of a verify study (e.g. s0/dns/0.9900)"
        )
    for e in verify[0]["numbers"]["detail"]["epsilons"]:
        if abs(e["epsilon"] - eps) < 1e-12:
            return [
                p["index"]
                for p in e["exact"]["points"]
                if p["by"] == "milp" and p["status"] == "counterexample"
            ]
    sys.exit(f"error: {key} was not verified at eps {eps}: choose one of the study's epsilons")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("models", nargs="+", help="model keys, e.g. s2/magnitude/0.9980")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--dataset", default="mnist")
    args = ap.parse_args()
    from pyautoattack import AutoAttack as Official

    torch.set_num_threads(1)
    try:
        store = ResultStore(args.run, readonly=True)
    except StoreError as exc:
        sys.exit(f"error: {exc}")
    test = load_dataset(args.dataset, args.data_dir).test
    print("| model | MILP-only counterexamples | missed by ours | missed by official |")
    print("| --- | --- | --- | --- |")
    for key in args.models:
        found = store.get_model(key)
        if found is None:
            sys.exit(f"error: {args.run} has no model {key}: see `sparserobust report {args.run}`")
        idx = _milp_counterexamples(store, key, args.eps)
        if not idx:
            print(f"| {key} | 0 | - | - |")
            continue
        path = checkpoint_path(args.run, found.checkpoint)  # confined by get_model too
        if not path.is_file() or sha256_file(path) != found.checkpoint_sha256:
            sys.exit(f"error: {path} is missing or not the file the study measured: re-run it")
        model, _ = load_checkpoint(path)
        x, y = test.x[idx], test.y[idx]
        res = AutoAttack(norm="inf").run(model, x, y, epsilons=[args.eps], seed=0)
        ours = int((res.clean_correct & ~res.success[0]).sum())
        official = Official(model, eps=args.eps, norm="Linf", seed=0, version="standard")
        with contextlib.redirect_stdout(sys.stderr):  # its warnings, apart from the table
            x_adv, _ = official.run_standard_evaluation(x, y, batch_size=1000)
        with torch.no_grad():
            theirs = int((model(x_adv).argmax(1) == y).sum())
        print(f"| {key} | {len(idx)} | {ours} | {theirs} |", flush=True)


if __name__ == "__main__":
    main()
