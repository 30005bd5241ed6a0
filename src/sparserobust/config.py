"""Typed experiment configuration: YAML in, validated, hashable.

A study config names the dataset, the model, the seeds, how the dense model is
trained, which pruning methods and sparsity levels to produce, and which
attacks and metrics to run on every model. Unknown keys and bad values raise
:class:`ConfigError` naming the key (``pruning.sparsities[2]: ...``). The
config's hash (:meth:`StudyConfig.config_hash`) identifies its results; fields
that do not change the numbers (device, data_dir, report options) are left out
of the hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparserobust.data import dataset_names
from sparserobust.errors import ConfigError
from sparserobust.measurements.attack import AttackSettings
from sparserobust.measurements.clever import CleverSettings
from sparserobust.measurements.masking import MaskingSettings
from sparserobust.measurements.registry import check_eval_settings
from sparserobust.models import model_names
from sparserobust.pruning.registry import method_names, pruning_method
from sparserobust.settings import (
    MAX_COUNT,
    MAX_DEPTH,
    MAX_EPOCHS,
    MAX_LR,
    NAME_PATTERN,
    NEW_FIELD,
    SEED_LIMIT,
    StrictLoader,
    build,
    build_settings,
    check_positive,
    check_shape,
    short,
)
from sparserobust.store import FRONT as FRONT  # re-exported: dense-front models' method name
from sparserobust.training import AdversarialTrainingSettings


@dataclass(frozen=True)
class DenseTrainSettings:
    """Dense training recipe; ``None`` fields take the model's registry defaults.

    ``adversarial`` (``{method: pgd|trades, eps, steps, beta, norm, rel_stepsize}``, see
    :class:`sparserobust.training.AdversarialTrainingSettings`) trains the dense model and, unless
    ``pruning.adversarial`` says otherwise, every retraining and fine-tuning inside the
    pruning methods on adversarial examples."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float | None = None
    adversarial: AdversarialTrainingSettings | None = field(default=None, metadata=NEW_FIELD)


@dataclass(frozen=True)
class PruningSettings:
    """Which sparsity sweeps to produce from each dense model.

    ``sparsities`` are fractions of Linear/Conv weights removed, in [0,1), unique;
    0 (the dense model) is always evaluated and need not be listed.
    ``retrain_lr`` defaults to the dense recipe's learning rate (it retrained
    better than 0.01 for every method measured in docs/pruning.md).
    ``params`` maps a method name to its own settings (e.g. ``dns: {hysteresis: 0.2}``),
    validated against that method's settings dataclass
    (:func:`sparserobust.pruning.registry.pruning_method`). ``adversarial`` makes the
    retraining and fine-tuning of every method adversarial (default: ``train.adversarial``),
    e.g. adversarial fine-tuning of a naturally trained model, to compare with HYDRA.
    ``grids`` maps a method name to its own sparsity levels instead of ``sparsities``
    (e.g. ``structured: [0.5, 0.75, 0.9]``, levels in the method's own unit).
    """

    methods: tuple[str, ...] = ("global-magnitude", "random")
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)
    retrain_epochs: int = 2
    retrain_lr: float | None = None
    iterative: bool = True
    params: dict[str, dict[str, Any]] = field(default_factory=dict, metadata=NEW_FIELD)
    adversarial: AdversarialTrainingSettings | None = field(default=None, metadata=NEW_FIELD)
    grids: dict[str, tuple[float, ...]] = field(default_factory=dict, metadata=NEW_FIELD)

    def grid(self, method: str) -> tuple[float, ...]:
        """The sparsity levels of ``method``: its entry in ``grids``, else ``sparsities``."""
        return tuple(self.grids.get(method, self.sparsities))

    def method_settings(self, method: str) -> Any:
        """The settings dataclass instance of pruning ``method`` (its defaults where
        ``params`` does not set it)."""
        return build_settings(
            pruning_method(method).settings_type,
            self.params.get(method, {}),
            f"pruning.params.{method}",
        )


@dataclass(frozen=True)
class EvalSettings:
    """What is measured on every model: attacks on the first ``n`` test images,
    CLEVER, active-ReLU fractions and margin/gradient-norm bounds, and any other
    registered measurement switched on in ``measurements`` (name -> its settings,
    see :mod:`sparserobust.measurements`)."""

    n: int = 500
    attacks: tuple[AttackSettings, ...] = ()
    clever: CleverSettings = field(default_factory=CleverSettings)
    masking: tuple[MaskingSettings, ...] = ()
    activations: bool = True
    bounds: bool = True
    batch_size: int = 500
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict, metadata=NEW_FIELD)


@dataclass(frozen=True)
class ReportSettings:
    """Report options: the verdict's best sparsity is the one with the best headline
    value among pruned models whose clean accuracy is within ``max_accuracy_drop`` of
    the dense model. ``headline_linf`` / ``headline_l2`` name the record label (e.g.
    ``"pgd_linf robust_acc@0.1"``) of each norm's verdict table; None picks the default:
    the strongest l_inf attack's robust accuracy at its middle epsilon, and the smallest
    median minimal l2 norm."""

    max_accuracy_drop: float = 0.01
    headline_linf: str | None = field(default=None, metadata=NEW_FIELD)
    headline_l2: str | None = field(default=None, metadata=NEW_FIELD)


@dataclass(frozen=True)
class ControlSettings:
    """Control models measured beside the pruned ones.

    ``dense_front``: dense models trained to a lower clean accuracy by another route
    than pruning, one per entry; each entry overrides fields of ``train`` (e.g.
    ``{weight_decay: 0.01}`` or ``{epochs: 1}``). They are measured like every model,
    and with the dense model they draw a clean-vs-robust accuracy front: the report says
    whether each pruned model lies above it (sparsity helps beyond the accuracy-robustness
    trade-off), on it, or below (:mod:`sparserobust.report.front`)."""

    dense_front: tuple[DenseTrainSettings, ...] = ()

    def front_models(self) -> dict[str, DenseTrainSettings]:
        """The dense-front entries by their id (:func:`front_id`), in config order."""
        return {front_id(v): v for v in self.dense_front}


def front_id(variant: DenseTrainSettings) -> str:
    """A dense-front model's identity: its overrides in short (``weight_decay=0.01``),
    so the order of ``control.dense_front`` never changes which stored model is which."""
    view = _hash_view(variant)
    return ",".join(f"{k}={_front_value(view[k])}" for k in sorted(view) if view[k] is not None)


def _front_value(value: Any) -> str:
    if isinstance(value, dict):
        return _digest(value)[:8]
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: dense training, pruning sweeps, evaluation, report."""

    name: str
    dataset: str
    model: str
    seeds: tuple[int, ...] = (0,)
    train: DenseTrainSettings = field(default_factory=DenseTrainSettings)
    pruning: PruningSettings = field(default_factory=PruningSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    control: ControlSettings = field(default_factory=ControlSettings, metadata=NEW_FIELD)
    data_dir: str | None = None
    device: str = "auto"
    # evaluate convolutional models in channels-last layout (measurements about 1.5x
    # faster on CPU; float32 rounding differs, like another thread count: recorded in
    # the provenance, not hashed)
    channels_last: bool = False

    NOT_HASHED: typing.ClassVar[tuple[str, ...]] = (
        "data_dir",
        "device",
        "channels_last",
        "report",
        "name",
    )

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def config_hash(self) -> str:
        """First 16 hex digits of the SHA-256 of the fields that decide the numbers.

        Fields added after version 0.1 (:data:`NEW_FIELD`) count only when they differ
        from their default, so a new setting leaves every existing hash unchanged."""
        return _digest({k: v for k, v in _hash_view(self).items() if k not in self.NOT_HASHED})

    MEASUREMENT_FIELDS: typing.ClassVar[tuple[str, ...]] = (
        "attacks",
        "clever",
        "masking",
        "activations",
        "bounds",
        "measurements",
    )
    """The ``eval`` fields that only choose measurements: each result stores its own
    identity (its cell's params, with ``n`` and the seed), so they are left out of
    :meth:`models_hash`."""

    def models_hash(self) -> str:
        """:meth:`config_hash` without the eval fields that only choose measurements and
        without the dense-front models: equal for two configs that train and prune the
        same models and measure them on the same images with the same batch size."""
        data = {
            k: v for k, v in _hash_view(self).items() if k not in self.NOT_HASHED and k != "control"
        }
        data["eval"] = {k: v for k, v in data["eval"].items() if k not in self.MEASUREMENT_FIELDS}
        return _digest(data)


def _digest(data: dict[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of ``data`` as canonical JSON."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _hash_view(value: Any) -> Any:
    """``value`` as plain data for hashing: dataclasses as dicts without the new
    fields that still hold their defaults."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.metadata.get("hash_default") is False and v == _default(f):
                continue
            out[f.name] = _hash_view(v)
        return out
    if isinstance(value, dict):
        return {k: _hash_view(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_hash_view(v) for v in value]
    return value


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def check_name(name: str) -> str:
    """A study name confined to its run folder: letters, digits, ``.``, ``_``, ``-``,
    starting with a letter or digit, at most 100 characters; ConfigError otherwise."""
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"name: {short(name)} is not a valid study name: use letters, digits, '.', '_' "
            "and '-' (at most 100, starting with a letter or digit); it names runs/<name>-<hash>"
        )
    return name


def _check_train(t: DenseTrainSettings, where: str) -> None:
    """The ranges of a dense training recipe (``train`` or a dense-front entry)."""
    check_positive(t.epochs, f"{where}.epochs", allow_zero=True, maximum=MAX_EPOCHS)
    check_positive(t.lr, f"{where}.lr", maximum=MAX_LR)
    check_positive(t.batch_size, f"{where}.batch_size", maximum=MAX_COUNT)
    check_positive(t.weight_decay, f"{where}.weight_decay", allow_zero=True, maximum=1.0)


def validate(config: StudyConfig) -> StudyConfig:
    """Check names and ranges; returns the config or raises ConfigError naming the key.
    Each component checks its own settings: a pruning method through its settings
    dataclass, the measurements through
    :func:`~sparserobust.measurements.registry.check_eval_settings`."""
    if config.dataset not in dataset_names():
        raise ConfigError(
            f"dataset: unknown dataset {config.dataset!r}; "
            f"choose one of {', '.join(dataset_names())}"
        )
    if config.model not in model_names():
        raise ConfigError(
            f"model: unknown model {config.model!r}; choose one of {', '.join(model_names())}"
        )
    check_name(config.name)
    if not config.seeds:
        raise ConfigError("seeds: give at least one seed")
    for i, seed in enumerate(config.seeds):
        if not 0 <= seed < SEED_LIMIT:
            raise ConfigError(f"seeds[{i}]: must be in [0, 2**32), got {short(seed)}")
    if len(set(config.seeds)) != len(config.seeds):
        raise ConfigError("seeds: duplicate seeds")
    _check_train(config.train, "train")
    for i, variant in enumerate(config.control.dense_front):
        where = f"control.dense_front[{i}]"
        _check_train(variant, where)
        if variant == DenseTrainSettings():
            raise ConfigError(
                f"{where}: sets nothing, so it is the dense model itself: give the train "
                "settings this front model changes (e.g. weight_decay: 0.01)"
            )
    if len(set(config.control.dense_front)) != len(config.control.dense_front):
        raise ConfigError("control.dense_front: duplicate entries")
    p = config.pruning
    for i, m in enumerate(p.methods):
        if m not in method_names():
            raise ConfigError(
                f"pruning.methods[{i}]: unknown method {m!r}; "
                f"choose from {', '.join(method_names())}"
            )
    if len(set(p.methods)) != len(p.methods):
        raise ConfigError("pruning.methods: duplicate methods")
    for m in p.params:
        if m not in p.methods:
            raise ConfigError(
                f"pruning.params.{m}: {m!r} is not among pruning.methods "
                f"({', '.join(p.methods)}): add it there or remove its settings"
            )
        p.method_settings(m)
    check_sparsities(p.sparsities, "pruning.sparsities")
    for m, levels in p.grids.items():
        if m not in p.methods:
            raise ConfigError(
                f"pruning.grids.{m}: {m!r} is not among pruning.methods "
                f"({', '.join(p.methods)}): add it there or remove its grid"
            )
        check_sparsities(levels, f"pruning.grids.{m}")
    check_positive(p.retrain_epochs, "pruning.retrain_epochs", allow_zero=True, maximum=MAX_EPOCHS)
    check_positive(p.retrain_lr, "pruning.retrain_lr", maximum=MAX_LR)
    e = config.eval
    check_positive(e.n, "eval.n", maximum=MAX_COUNT)
    check_positive(e.batch_size, "eval.batch_size", maximum=MAX_COUNT)
    check_eval_settings(e)
    drop = config.report.max_accuracy_drop
    if not 0 <= drop <= 1:
        raise ConfigError(f"report.max_accuracy_drop: must be in [0,1], got {drop}")
    for key in ("headline_linf", "headline_l2"):
        label = getattr(config.report, key)
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise ConfigError(f"report.{key}: must be a stored record label or null, got {label!r}")
    return config


MAX_SPARSITY = 0.9999
"""Sparsity levels are named with 4 decimals; a larger one would read as 1.0000."""


def check_sparsities(values: typing.Sequence[float], where: str = "sparsity") -> tuple[float, ...]:
    """Validate a list of sparsity levels: non-empty, each in [0,1), no duplicates."""
    if len(values) == 0:
        raise ConfigError(f"{where}: give at least one sparsity level")
    for i, s in enumerate(values):
        if not (0 <= s < 1):
            raise ConfigError(f"{where}[{i}]: sparsity must be in [0,1), got {s}")
        if s > MAX_SPARSITY:
            raise ConfigError(
                f"{where}[{i}]: sparsity {s} rounds to 1.0000 (every weight removed): "
                f"give at most {MAX_SPARSITY}"
            )
    if len(set(values)) != len(values):
        dup = next(s for s in values if list(values).count(s) > 1)
        raise ConfigError(f"{where}: duplicate sparsity level {dup}")
    return tuple(values)


def config_from_dict(data: dict[str, Any]) -> StudyConfig:
    """Build and validate a :class:`StudyConfig` from a plain mapping."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a YAML mapping of keys to values")
    check_shape(data)
    return validate(build(StudyConfig, data, ""))


def load_config(path: str | os.PathLike[str]) -> StudyConfig:
    """Read, parse and validate a YAML study config."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist: check the path")
    try:
        data = yaml.load(p.read_text(), Loader=StrictLoader)  # noqa: S506 - a SafeLoader
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    except RecursionError:
        raise ConfigError(
            f"{p} nests too deeply: flatten it (at most {MAX_DEPTH} levels)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p} is not valid YAML{where}: fix the syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {p}: {exc}") from None
    if data is None:
        raise ConfigError(f"config file {p} is empty: see configs/ for examples")
    check_shape(data, str(p))
    return config_from_dict(data)


def quick_config() -> StudyConfig:
    """The built-in quick study on the embedded digits data (the README's main job)."""
    return config_from_dict(
        {
            "name": "quick-digits",
            "dataset": "digits",
            "model": "lenet300",
            "seeds": [0, 1],
            "train": {"epochs": 30},
            "pruning": {
                "methods": ["global-magnitude", "random"],
                "sparsities": [0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99],
                "retrain_epochs": 3,
            },
            "eval": {
                "n": 364,
                "attacks": [
                    {"name": "fgsm", "norm": "inf", "eps": [0.05, 0.1, 0.2, 0.3]},
                    {"name": "pgd", "norm": "inf", "eps": [0.05, 0.1, 0.2, 0.3], "steps": 20},
                    {"name": "deepfool", "norm": "2", "eps": [0.5, 1.0, 2.0]},
                    {"name": "ddn", "norm": "2", "eps": [0.5, 1.0, 2.0], "steps": 100},
                ],
                "clever": {"n": 0},
            },
        }
    )
