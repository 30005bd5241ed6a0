"""A new pruning method is one class (with its own settings) plus one registry line.

The toy method below is registered inside the test only; a config names it and sets
its settings in ``pruning.params``, and a whole study runs it: validation, the sweep,
its stored identity, the store and the measurements all go through the registry, with
no other file knowing its name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from sparserobust.checkpoint import load_checkpoint, read_metadata
from sparserobust.config import config_from_dict
from sparserobust.errors import ConfigError
from sparserobust.pipeline import run_study
from sparserobust.pruning import OneShotMethod, prunable_layers, set_weight_mask, weight_mask
from sparserobust.pruning.registry import METHODS
from sparserobust.store import ResultStore


@dataclasses.dataclass(frozen=True)
class FirstWeightsSettings:
    """``from_end``: remove the last weights of each layer instead of the first."""

    from_end: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.from_end, bool):
            raise ConfigError("from_end must be true or false")


class FirstWeightsMethod(OneShotMethod):
    """Removes the first (or last) ``round(level * n)`` weights of every layer, in
    flattened order: a pruning rule whose masks the test can predict exactly."""

    name = "first-weights"
    description = "toy: the first weights of every layer"
    settings_type = FirstWeightsSettings

    def prune_once(
        self, model: nn.Module, level: float, seed: int, settings: FirstWeightsSettings
    ) -> None:
        for _, module in prunable_layers(model):
            n = module.weight.numel()
            k = round(level * n)
            keep = torch.ones(n)
            if settings.from_end:
                keep[n - k :] = 0
            else:
                keep[:k] = 0
            set_weight_mask(module, keep.reshape(module.weight.shape))

    def sweep_identity(self, settings: FirstWeightsSettings) -> dict[str, object]:
        return {"first-weights": dataclasses.asdict(settings)}


STUDY = {
    "name": "toy-method",
    "dataset": "digits",
    "model": "lenet300",
    "seeds": [0],
    "train": {"epochs": 1},
    "pruning": {
        "methods": ["first-weights"],
        "sparsities": [0.5, 0.75],
        "retrain_epochs": 0,
        "params": {"first-weights": {"from_end": True}},
    },
    "eval": {"n": 40, "bounds": False},
}


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> FirstWeightsMethod:
    method = FirstWeightsMethod()
    monkeypatch.setitem(METHODS, method.name, method)  # the one registry line
    return method


def test_a_registered_method_runs_through_a_study(
    registered: FirstWeightsMethod, tmp_path: Path
) -> None:
    config = config_from_dict(STUDY)
    assert config.pruning.method_settings("first-weights") == FirstWeightsSettings(from_end=True)
    run_study(config, tmp_path / "run", progress=False)
    with ResultStore(tmp_path / "run", create=False) as store:
        models = {m.model_key: m for m in store.models()}
        results = store.results()
    assert set(models) == {"s0/dense/0.0000", "s0/first-weights/0.5000", "s0/first-weights/0.7500"}
    row = models["s0/first-weights/0.7500"]
    assert (row.pruned_weights, row.total_weights) == (37650, 50200)  # round(0.75 n) per layer
    model, meta = load_checkpoint(tmp_path / "run" / row.checkpoint)
    for _, module in prunable_layers(model):  # the settings reached the method: last weights
        flat = weight_mask(module).flatten()
        k = round(0.75 * flat.numel())
        assert float(flat[flat.numel() - k :].sum()) == 0.0
        assert float(flat[: flat.numel() - k].min()) == 1.0
    assert meta["sweep"]["first-weights"] == {"from_end": True}  # its identity, as it says
    assert read_metadata(tmp_path / "run" / row.checkpoint)["method"] == "first-weights"
    measured = {r["model_key"] for r in results}
    assert measured == set(models)  # every model measured like any other method's
    assert {r["measurement"] for r in results} == {"checks", "activations"}


def test_a_registered_method_owns_its_settings_checks(registered: FirstWeightsMethod) -> None:
    bad = {**STUDY["pruning"], "params": {"first-weights": {"from_start": True}}}
    with pytest.raises(ConfigError, match=r"^pruning.params.first-weights.from_start: unknown key"):
        config_from_dict({**STUDY, "pruning": bad})
    bad = {**STUDY["pruning"], "params": {"first-weights": {"from_end": "yes"}}}
    with pytest.raises(ConfigError, match=r"^pruning.params.first-weights.from_end: expected true"):
        config_from_dict({**STUDY, "pruning": bad})


def test_an_unregistered_method_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"pruning.methods\[0\]: unknown method 'first-weights'"):
        config_from_dict(STUDY)
