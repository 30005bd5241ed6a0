"""Time per epoch of natural, PGD adversarial and TRADES training (one run).

For LeNet-300-100 and LeNet-5 on MNIST: one full epoch (60,000 images, batch 128) of
each training method, from the same seeded initialisation, and the test accuracy after
it. Adversarial settings: l_inf eps 0.1 with 10 inner steps (step 2.5 eps / steps),
TRADES beta 6.

    python benchmarks/training_cost.py --data-dir ../shared/data --json-out runs/training_cost.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sparserobust.data import load_dataset
from sparserobust.models import build_model
from sparserobust.training import (
    AdversarialTrainingSettings,
    TrainSettings,
    evaluate_accuracy,
    train_model,
)

METHODS = {
    "natural": None,
    "pgd-at": AdversarialTrainingSettings(method="pgd", eps=0.1, steps=10),
    "trades": AdversarialTrainingSettings(method="trades", eps=0.1, steps=10, beta=6.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--models", default="lenet300,lenet5")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    data = load_dataset("mnist", args.data_dir)
    info = data.info
    rows = []
    for name in args.models.split(","):
        for method, adv in METHODS.items():
            torch.manual_seed(0)
            model = build_model(name, info.input_shape, info.num_classes, info.mean, info.std)
            config = TrainSettings(epochs=1, batch_size=128, lr=0.05, seed=0, adversarial=adv)
            start = time.perf_counter()
            train_model(model, data.train, config, progress=False)
            seconds = time.perf_counter() - start
            row = {
                "model": name,
                "method": method,
                "seconds_per_epoch": round(seconds, 1),
                "test_accuracy": round(evaluate_accuracy(model, data.test), 4),
                "threads": torch.get_num_threads(),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
