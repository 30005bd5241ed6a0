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
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparserobust.errors import ConfigError
from sparserobust.settings import (
    MAX_COUNT,
    MAX_DEPTH,
    MAX_EPOCHS,
    MAX_EPS,
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
from sparserobust.training import AdversarialTraining


@dataclass(frozen=True)
class TrainSettings:
    """Dense training recipe; ``None`` fields take the model's registry defaults.

    ``adversarial`` (``{method: pgd|trades, eps, steps, beta, norm, rel_stepsize}``, see
    :class:`sparserobust.training.AdversarialTraining`) trains the dense model and, unless
    ``pruning.adversarial`` says otherwise, every retraining and fine-tuning inside the
    pruning methods on adversarial examples."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float | None = None
    adversarial: AdversarialTraining | None = field(default=None, metadata=NEW_FIELD)


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
    adversarial: AdversarialTraining | None = field(default=None, metadata=NEW_FIELD)
    grids: dict[str, tuple[float, ...]] = field(default_factory=dict, metadata=NEW_FIELD)

    def grid(self, method: str) -> tuple[float, ...]:
        """The sparsity levels of ``method``: its entry in ``grids``, else ``sparsities``."""
        return tuple(self.grids.get(method, self.sparsities))

    def method_settings(self, method: str) -> Any:
        """The settings dataclass instance of pruning ``method`` (its defaults where
        ``params`` does not set it)."""
        from sparserobust.pruning.registry import pruning_method

        return build_settings(
            pruning_method(method).settings_type,
            self.params.get(method, {}),
            f"pruning.params.{method}",
        )


@dataclass(frozen=True)
class AttackSettings:
    """One attack to run on every model.

    ``eps`` (fixed-epsilon attacks fgsm/pgd/square, and thresholds at which minimal-norm
    attacks report robust accuracy) are perturbation budgets in [0,1] pixel space
    in the attack's norm. ``steps``/``restarts``/``search_steps`` set the budget;
    ``params`` sets any other constructor argument of the attack (validated against
    :func:`sparserobust.attacks.registry.attack_settings`).
    """

    name: str
    norm: str | None = None
    eps: tuple[float, ...] = ()
    steps: int | None = None
    restarts: int | None = None
    search_steps: int | None = None
    params: dict[str, Any] = field(default_factory=dict, metadata=NEW_FIELD)


@dataclass(frozen=True)
class CleverSettings:
    """CLEVER scores on the first ``n`` test images (0 turns CLEVER off)."""

    n: int = 0
    norms: tuple[str, ...] = ("2", "inf")
    n_batches: int = 20
    batch_size: int = 50
    radius: float | None = None


@dataclass(frozen=True)
class MaskingSettings:
    """A gradient-masking check: the gradient-free Square attack (``steps`` queries
    per point) at ``eps`` in ``norm`` on the first ``n`` test images, against the
    gradient attacks named in ``against`` (entries of ``eval.attacks`` with the same
    norm, with their settings), on the same images. A model is flagged where Square
    breaks more than 1% of the points that every gradient attack left robust."""

    norm: str = "inf"
    eps: tuple[float, ...] = ()
    n: int = 500
    steps: int = 1000
    against: tuple[str, ...] = ("pgd",)


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


FRONT = "dense-front"
"""The method name of dense-front models in the results store (never a pruning method)."""


@dataclass(frozen=True)
class ControlSettings:
    """Control models measured beside the pruned ones.

    ``dense_front``: dense models trained to a lower clean accuracy by another route
    than pruning, one per entry; each entry overrides fields of ``train`` (e.g.
    ``{weight_decay: 0.01}`` or ``{epochs: 1}``). They are measured like every model,
    and with the dense model they draw a clean-vs-robust accuracy front: the report says
    whether each pruned model lies above it (sparsity helps beyond the accuracy-robustness
    trade-off), on it, or below (:mod:`sparserobust.report.front`)."""

    dense_front: tuple[TrainSettings, ...] = ()

    def front_models(self) -> dict[str, TrainSettings]:
        """The dense-front entries by their id (:func:`front_id`), in config order."""
        return {front_id(v): v for v in self.dense_front}


def front_id(variant: TrainSettings) -> str:
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
    train: TrainSettings = field(default_factory=TrainSettings)
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


def _check_train(t: TrainSettings, where: str) -> None:
    """The ranges of a dense training recipe (``train`` or a dense-front entry)."""
    check_positive(t.epochs, f"{where}.epochs", allow_zero=True, maximum=MAX_EPOCHS)
    check_positive(t.lr, f"{where}.lr", maximum=MAX_LR)
    check_positive(t.batch_size, f"{where}.batch_size", maximum=MAX_COUNT)
    check_positive(t.weight_decay, f"{where}.weight_decay", allow_zero=True, maximum=1.0)


def validate(config: StudyConfig) -> StudyConfig:
    """Check names and ranges; returns the config or raises ConfigError naming the key."""
    from sparserobust.data import dataset_names
    from sparserobust.models import model_names

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
        if variant == TrainSettings():
            raise ConfigError(
                f"{where}: sets nothing, so it is the dense model itself: give the train "
                "settings this front model changes (e.g. weight_decay: 0.01)"
            )
    if len(set(config.control.dense_front)) != len(config.control.dense_front):
        raise ConfigError("control.dense_front: duplicate entries")
    p = config.pruning
    from sparserobust.pruning.registry import method_names

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
    from sparserobust.attacks.registry import attack_names, is_fixed_epsilon

    for i, a in enumerate(e.attacks):
        key = f"eval.attacks[{i}]"
        if a.name not in attack_names():
            raise ConfigError(
                f"{key}.name: unknown attack {a.name!r}; choose from {', '.join(attack_names())}"
            )
        if a.norm is not None and a.norm not in ("inf", "2"):
            raise ConfigError(f"{key}.norm: must be inf or 2, got {a.norm!r}")
        for j, eps in enumerate(a.eps):
            check_positive(eps, f"{key}.eps[{j}]", maximum=MAX_EPS[attack_norm(a)])
        if is_fixed_epsilon(a.name) and not a.eps:
            raise ConfigError(f"{key}.eps: {a.name} needs at least one epsilon")
        check_positive(a.steps, f"{key}.steps", maximum=MAX_COUNT)
        check_positive(a.restarts, f"{key}.restarts", maximum=MAX_COUNT)
        check_positive(a.search_steps, f"{key}.search_steps", maximum=MAX_COUNT)
        _check_attack_builds(a, key)
    _check_measurements(e)
    for i, mask in enumerate(e.masking):
        key = f"eval.masking[{i}]"
        if mask.norm not in ("inf", "2"):
            raise ConfigError(f"{key}.norm: must be inf or 2, got {mask.norm!r}")
        if not mask.eps:
            raise ConfigError(f"{key}.eps: give at least one epsilon")
        for j, eps in enumerate(mask.eps):
            check_positive(eps, f"{key}.eps[{j}]", maximum=MAX_EPS[mask.norm])
        check_positive(mask.n, f"{key}.n", maximum=MAX_COUNT)
        check_positive(mask.steps, f"{key}.steps", maximum=MAX_COUNT)
        if not mask.against:
            raise ConfigError(f"{key}.against: name at least one gradient attack of eval.attacks")
        masking_references(e, mask, key)
    c = e.clever
    check_positive(c.n, "eval.clever.n", allow_zero=True, maximum=MAX_COUNT)
    check_positive(c.n_batches, "eval.clever.n_batches", maximum=MAX_COUNT)
    check_positive(c.batch_size, "eval.clever.batch_size", maximum=MAX_COUNT)
    check_positive(c.radius, "eval.clever.radius", maximum=MAX_EPS["2"])
    for i, norm in enumerate(c.norms):
        if norm not in ("inf", "2"):
            raise ConfigError(f"eval.clever.norms[{i}]: must be inf or 2, got {norm!r}")
    drop = config.report.max_accuracy_drop
    if not 0 <= drop <= 1:
        raise ConfigError(f"report.max_accuracy_drop: must be in [0,1], got {drop}")
    for key in ("headline_linf", "headline_l2"):
        label = getattr(config.report, key)
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise ConfigError(f"report.{key}: must be a stored record label or null, got {label!r}")
    return config


_SHORTCUTS = (("steps", "steps"), ("restarts", "restarts"), ("search_steps", "binary_search_steps"))
"""AttackSettings shortcut fields -> the attack constructor argument they set."""


def attack_params(a: AttackSettings) -> dict[str, Any]:
    """Keyword hyperparameters for the attack's constructor: the shortcut fields
    (steps, restarts, search_steps) that are set, then ``params``."""
    params: dict[str, Any] = {}
    for field_name, arg in _SHORTCUTS:
        value = getattr(a, field_name)
        if value is not None:
            params[arg] = value
    return {**params, **a.params}


def attack_cell_params(a: AttackSettings) -> dict[str, Any]:
    """The settings of ``a`` as stored with its results (every field; ``params`` only
    when set, so results stored before it existed keep their identity)."""
    out: dict[str, Any] = {
        "name": a.name,
        "norm": a.norm,
        "eps": list(a.eps),
        "steps": a.steps,
        "restarts": a.restarts,
        "search_steps": a.search_steps,
    }
    if a.params:
        out["params"] = dict(a.params)
    return out


def attack_from_cell_params(params: dict[str, Any]) -> AttackSettings:
    """The :class:`AttackSettings` back from :func:`attack_cell_params`' dict."""
    return AttackSettings(
        name=str(params["name"]),
        norm=None if params.get("norm") is None else str(params["norm"]),
        eps=tuple(float(e) for e in params.get("eps", ())),
        steps=params.get("steps"),
        restarts=params.get("restarts"),
        search_steps=params.get("search_steps"),
        params=dict(params.get("params") or {}),
    )


def build_attack(a: AttackSettings) -> Any:
    """The configured attack object of ``a``."""
    from sparserobust.attacks import get_attack

    return get_attack(a.name, attack_norm(a), **attack_params(a))


def attack_norm(a: AttackSettings) -> str:
    """The attack's norm as "inf" or "2": the configured one, else the attack's default."""
    if a.norm is not None:
        return a.norm
    from sparserobust.attacks import attack_norms

    return "inf" if math.isinf(attack_norms(a.name)[0]) else "2"


def masking_references(
    e: EvalSettings, m: MaskingSettings, key: str = "eval.masking"
) -> list[AttackSettings]:
    """The ``eval.attacks`` entries a masking check compares Square with (same norm)."""
    refs = []
    for j, name in enumerate(m.against):
        found = [a for a in e.attacks if a.name == name and attack_norm(a) == m.norm]
        if not found:
            raise ConfigError(
                f"{key}.against[{j}]: {name!r} with norm {m.norm} is not among eval.attacks; "
                "add it there or remove it here"
            )
        if name == "square":
            raise ConfigError(f"{key}.against[{j}]: compare with a gradient attack, not square")
        refs.append(found[0])
    return refs


def _check_attack_builds(a: AttackSettings, key: str) -> None:
    """Check ``params`` against the attack's settings dataclass (unknown keys and
    types named) and build the attack now, so a setting it does not take fails at
    load, not hours in."""
    from sparserobust.attacks import get_attack
    from sparserobust.attacks.registry import attack_settings
    from sparserobust.errors import AttackError

    build_settings(attack_settings(a.name), a.params, f"{key}.params")  # names, types
    for field_name, arg in _SHORTCUTS:
        if getattr(a, field_name) is not None and arg in a.params:
            raise ConfigError(f"{key}.params.{arg}: also set by {key}.{field_name}; set it once")
    try:
        get_attack(a.name, a.norm, **attack_params(a))
    except AttackError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _check_measurements(e: EvalSettings) -> None:
    """``eval.measurements``: registered names whose settings build and validate."""
    from sparserobust.measurements import MEASUREMENTS

    for name, block in e.measurements.items():
        where = f"eval.measurements.{name}"
        m = MEASUREMENTS.get(name)
        if m is None:
            extra = [k for k, v in MEASUREMENTS.items() if v.config_key is None]
            raise ConfigError(
                f"{where}: unknown measurement {name!r}; choose from {', '.join(extra) or 'none'}"
            )
        if m.config_key is not None:
            raise ConfigError(f"{where}: {name} is set with {m.config_key}, not here")
        m.validate(build_settings(m.settings_type, block, where), e, where)


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
