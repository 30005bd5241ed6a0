"""Structured pruning: remove whole neurons (Linear rows) and channels (Conv filters).

:func:`structured_prune` removes, in every Linear/Conv layer except the final
classifier (the last Linear/Conv layer, whose outputs are the logits), the
``round(f * n)`` output units of smallest l1 (or l2) weight norm, with
``torch.nn.utils.prune.ln_structured`` (``dim=0``: rows of a Linear weight,
output channels of a Conv weight); at least one unit per layer stays. A
removed unit also loses its bias (a ``prune`` custom mask on ``bias``), so it
outputs exactly 0 and can be dropped physically. Units already removed stay
removed (they rank first), so rising fractions give nested masks and
iterative pruning with retraining works as for magnitude pruning.

:func:`compact` builds the equivalent physically smaller ``nn.Sequential``
(removed units dropped, with the matching input columns / input channels of
the next layer, through ReLU, pooling and Flatten), and
:func:`structured_report` gives the weight sparsity, the share of units
removed, and the parameters and FLOPs of that smaller model.

Conventions: a unit counts as removed when its effective weights (mask
applied) are all 0 and its effective bias is 0 (or absent): such a unit
outputs 0 whatever the input. MACs count multiply-accumulates of Linear/Conv
layers for one input (biases, activations and pooling excluded); FLOPs are
``2 * MACs``. Parameters count every parameter entry of the model (weights and
biases, zero or not; masks and the normalisation buffers excluded).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from sparserobust.errors import ConfigError, ModelError
from sparserobust.models.compact import build_sequential, sequential_spec
from sparserobust.pruning.base import OneShotMethod
from sparserobust.pruning.masks import (
    SparsityReport,
    check_sparsity,
    effective_weight,
    prunable_layers,
    pruned_count,
    refresh_pruned_weight,
    sparsity_report,
    weight_mask,
    zero_pruned_weights,
)
from sparserobust.utils import eval_mode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StructuredSettings:
    """Settings of method ``structured``: ``norm`` 1 or 2, the l_p norm of a
    unit's weights that ranks it (smallest removed first)."""

    norm: int = 1

    def __post_init__(self) -> None:
        if self.norm not in (1, 2) or isinstance(self.norm, bool):
            raise ConfigError(f"structured pruning norm must be 1 or 2, got {self.norm!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def unit_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear/Conv layers whose output units may be removed: all but the last
    (the classifier, whose outputs are the logits)."""
    return prunable_layers(model)[:-1]


def _unit_kind(module: nn.Module) -> str:
    return "neurons" if isinstance(module, nn.Linear) else "channels"


def effective_bias(module: nn.Module) -> torch.Tensor | None:
    """The bias the forward pass uses (``bias_orig * bias_mask`` when masked), or None."""
    orig = getattr(module, "bias_orig", None)
    mask = getattr(module, "bias_mask", None)
    if isinstance(orig, torch.Tensor) and isinstance(mask, torch.Tensor):
        return orig * mask
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


@torch.no_grad()
def removed_units(module: nn.Module) -> torch.Tensor:
    """Bool ``(out_units,)``: units whose effective weights and bias are all 0."""
    weight = effective_weight(module).detach()
    dead = (weight.flatten(1) == 0).all(1)
    bias = effective_bias(module)
    if bias is not None:
        dead &= bias.detach() == 0
    return dead


def _masked_rows(module: nn.Module) -> torch.Tensor:
    """Bool ``(out_units,)``: units whose weight mask row is all 0."""
    return (weight_mask(module).flatten(1) == 0).all(1)


def structured_counts(model: nn.Module, fraction: float) -> dict[str, int]:
    """Units to remove per layer at ``fraction``: ``round(f * n)`` of each layer's
    ``n`` output units (round half up), at most ``n - 1``."""
    check_sparsity(fraction)
    counts = {}
    for name, module in unit_layers(model):
        n = int(effective_weight(module).shape[0])
        counts[name] = min(pruned_count(n, fraction), n - 1)
    return counts


@torch.no_grad()
def _mask_bias(module: nn.Module, keep: torch.Tensor) -> None:
    """Give the bias the 0/1 ``keep`` mask (a ``prune`` custom mask) and zero its
    removed entries in ``bias_orig``."""
    if getattr(module, "bias", None) is None and getattr(module, "bias_orig", None) is None:
        return
    mask = getattr(module, "bias_mask", None)
    if isinstance(mask, torch.Tensor):
        mask.copy_(keep.to(mask.dtype))
    else:
        bias = module.bias
        assert isinstance(bias, torch.Tensor)
        prune.custom_from_mask(module, "bias", keep.to(device=bias.device, dtype=bias.dtype))
    orig, mask = module.bias_orig, module.bias_mask
    assert isinstance(orig, torch.Tensor) and isinstance(mask, torch.Tensor)
    orig.mul_(mask)
    refresh_pruned_weight(module)


@torch.no_grad()
def structured_prune(model: nn.Module, fraction: float, norm: int = 1) -> SparsityReport:
    """Remove ``round(fraction * n)`` output units (at most ``n - 1``) of every
    Linear/Conv layer but the classifier, by smallest l_``norm`` weight norm.

    ``fraction`` is the share of units removed per layer (not the weight
    sparsity, which the returned report gives: Linear/Conv weights removed,
    biases excluded). Units already removed stay removed; asking for fewer
    than are already removed is a ConfigError. Changes ``model`` in place.
    """
    settings = StructuredSettings(norm)
    counts = structured_counts(model, fraction)
    layers = dict(unit_layers(model))
    if not layers:
        log.warning("structured: the model has no layer before its classifier; nothing pruned")
    for name, target in counts.items():
        module = layers[name]
        already = int(_masked_rows(module).sum())
        if target < already:
            raise ConfigError(
                f"structured pruning cannot lower the share of removed units: layer {name} "
                f"already has {already} removed and the target removes {target}; start from "
                "a denser checkpoint"
            )
        if target > already:
            # on an already masked layer prune combines masks and ranks only the units
            # still alive, so the amount is the number of further units to remove
            prune.ln_structured(
                module,
                "weight",
                amount=target - already,
                n=settings.norm,
                dim=0,
                importance_scores=effective_weight(module).detach(),
            )
        _mask_bias(module, ~_masked_rows(module))
    zero_pruned_weights(model)
    report = sparsity_report(model)
    log.info(
        "structured: %.4f of units removed, weight sparsity %.4f (%d/%d)",
        structured_fraction(model),
        report.sparsity,
        report.pruned,
        report.total,
    )
    return report


@dataclass
class UnitCount:
    """Output units of one layer: ``total`` and how many are ``removed``."""

    name: str
    kind: str
    total: int
    removed: int


def unit_counts(model: nn.Module) -> list[UnitCount]:
    """Removed/total output units of every layer but the classifier."""
    return [
        UnitCount(
            name, _unit_kind(m), int(effective_weight(m).shape[0]), int(removed_units(m).sum())
        )
        for name, m in unit_layers(model)
    ]


def structured_fraction(model: nn.Module) -> float:
    """Share of output units (neurons and channels) removed, over all layers but
    the classifier; 0.0 for a model without such layers."""
    counts = unit_counts(model)
    total = sum(c.total for c in counts)
    return sum(c.removed for c in counts) / total if total else 0.0


def _compact_layer(
    module: nn.Module, keep_in: torch.Tensor | None, keep_out: torch.Tensor | None
) -> nn.Module:
    """A plain copy of a Linear/Conv2d layer restricted to input ``keep_in`` and
    output ``keep_out`` indices (None: all), with its effective weights."""
    weight = effective_weight(module).detach()
    bias = effective_bias(module)
    bias = None if bias is None else bias.detach()
    if keep_in is not None:
        weight = weight.index_select(1, keep_in)
    if keep_out is not None:
        weight = weight.index_select(0, keep_out)
        bias = None if bias is None else bias.index_select(0, keep_out)
    record = sequential_spec(nn.Sequential(module))[0]
    if isinstance(module, nn.Linear):
        record.update(in_features=weight.shape[1], out_features=weight.shape[0])
    else:
        record.update(in_channels=weight.shape[1], out_channels=weight.shape[0])
    new = build_sequential([record])[0].to(device=weight.device, dtype=weight.dtype)
    new_weight, new_bias = new.weight, new.bias
    assert isinstance(new_weight, torch.Tensor)
    new_weight.copy_(weight)
    if bias is not None:
        assert isinstance(new_bias, torch.Tensor)
        new_bias.copy_(bias)
    return new


_PASS_THROUGH = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Identity)
"""Layers that keep channels apart and map an all-zero channel to zeros."""


@torch.no_grad()
def compact(model: nn.Module) -> nn.Sequential:
    """The physically smaller equivalent of a (structurally) pruned ``model``.

    Drops every removed unit (see :func:`removed_units`) of each layer but the
    classifier, and the matching input columns (Linear) or input channels
    (Conv2d) of the next Linear/Conv layer; a Flatten between a Conv and a
    Linear layer maps each removed channel to its ``H*W`` columns. The result
    has plain layers (no masks; unstructured zeros stay as zeros), the same
    child names, and gives the same logits as ``model`` up to float rounding.
    ``model`` must be a flat ``nn.Sequential`` of Normalize, Linear, Conv2d
    (groups 1), ReLU, MaxPool2d, AvgPool2d, Dropout, Identity and Flatten
    layers (lenet300, lenet5, linear); ModelError otherwise. ``model`` is unchanged.
    """
    sequential_spec(model)  # ModelError for anything unsupported
    classifier = prunable_layers(model)[-1][1] if prunable_layers(model) else None
    children: OrderedDict[str, nn.Module] = OrderedDict()
    alive: torch.Tensor | None = None  # alive channels / features of the activation
    width = 0  # channels / features of the activation in the original model
    flattened: tuple[torch.Tensor, int] | None = None  # (alive channels, channels) at Flatten
    seen_prunable = False
    for name, child in model.named_children():
        if isinstance(child, nn.Linear | nn.Conv2d):
            keep_in = alive
            if flattened is not None:
                if not isinstance(child, nn.Linear) or child.in_features % flattened[1]:
                    raise ModelError(f"cannot compact: layer {name} does not follow Flatten")
                channels, total = flattened
                spatial = child.in_features // total
                offsets = torch.arange(spatial, device=channels.device)
                keep_in = (channels[:, None] * spatial + offsets[None, :]).flatten()
                flattened = None
            keep_out = None
            if child is not classifier:
                dead = removed_units(child)
                if bool(dead.any()):
                    keep_out = (~dead).nonzero().flatten()
            children[name] = _compact_layer(child, keep_in, keep_out)
            alive, width = keep_out, int(effective_weight(child).shape[0])
            seen_prunable = True
        elif isinstance(child, nn.Flatten):
            if child.start_dim != 1 or child.end_dim != -1:
                raise ModelError("cannot compact: only Flatten(start_dim=1) is supported")
            if alive is not None:
                flattened, alive = (alive, width), None
            children[name] = nn.Flatten()
        elif isinstance(child, _PASS_THROUGH) or not seen_prunable:
            children[name] = build_sequential(sequential_spec(nn.Sequential(child)))[0]
            children[name].load_state_dict(child.state_dict())
        else:
            raise ModelError(
                f"cannot compact: layer {name} ({type(child).__name__}) after a pruned layer"
            )
    out = nn.Sequential(children)
    out.train(model.training)
    return out


@torch.no_grad()
def model_cost(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """``(parameters, MACs)`` of ``model`` for one input of ``input_shape`` (C,H,W).

    Parameters: all parameter entries (a masked layer counts its full
    ``weight_orig``). MACs: multiply-accumulates of Linear and Conv layers
    (dense count, masks ignored), from one forward pass on zeros.
    """
    params = sum(p.numel() for p in model.parameters())
    macs = 0

    def count(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal macs
        weight = effective_weight(module)
        per_output = weight[0].numel()  # in_features, or in_channels/groups * kernel
        macs += int(output[0].numel()) * int(per_output)

    handles = [m.register_forward_hook(count) for _, m in prunable_layers(model)]
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with eval_mode(model):
            model(torch.zeros(1, *[int(s) for s in input_shape], device=device))
    finally:
        for handle in handles:
            handle.remove()
    return int(params), macs


@dataclass
class StructuredReport:
    """Weight sparsity, removed units and the cost of the equivalent compact model.

    ``params_*``/``macs_*`` are for one input; ``*_compact`` are None when the
    architecture cannot be compacted (see :func:`compact`).
    """

    sparsity: SparsityReport
    units: list[UnitCount] = field(default_factory=list)
    params_dense: int = 0
    macs_dense: int = 0
    params_compact: int | None = None
    macs_compact: int | None = None

    @property
    def removed_share(self) -> float:
        """Share of neurons/channels removed over all layers but the classifier."""
        total = sum(u.total for u in self.units)
        return sum(u.removed for u in self.units) / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        def flops(macs: int | None) -> int | None:
            return None if macs is None else 2 * macs

        return {
            "weight_sparsity": self.sparsity.sparsity,
            "units_removed_share": self.removed_share,
            "units": {
                u.name: {"kind": u.kind, "total": u.total, "removed": u.removed} for u in self.units
            },
            "params_dense": self.params_dense,
            "params_compact": self.params_compact,
            "macs_dense": self.macs_dense,
            "macs_compact": self.macs_compact,
            "flops_dense": flops(self.macs_dense),
            "flops_compact": flops(self.macs_compact),
            "note": "units: output neurons/channels of all Linear/Conv layers but the "
            "classifier; MACs of Linear/Conv layers per input, FLOPs = 2 MACs; params: "
            "weights and biases; weight sparsity excludes biases",
        }


def structured_report(model: nn.Module, input_shape: Sequence[int]) -> StructuredReport:
    """Weight sparsity, share of units removed, and parameters/MACs of ``model``
    (dense) and of its :func:`compact` form, for inputs of ``input_shape``."""
    params, macs = model_cost(model, input_shape)
    report = StructuredReport(sparsity_report(model), unit_counts(model), params, macs)
    try:
        report.params_compact, report.macs_compact = model_cost(compact(model), input_shape)
    except ModelError as exc:
        log.warning("no compact model cost: %s", exc)
    return report


def compact_checkpoint(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str]
) -> dict[str, Any]:
    """Write the :func:`compact` form of checkpoint ``checkpoint`` to ``out``.

    The file is an ordinary sparserobust checkpoint whose metadata also holds
    the layer list (``compact.layers``), so :func:`~sparserobust.checkpoint.load_checkpoint`
    (and every command that takes a checkpoint) loads it. ``out`` follows the
    output-path policy (:func:`~sparserobust.rundir.check_output`). The input and
    the compact model pass the checks of ``evaluate`` (finite weights, masks of 0 and
    1 only; CheckpointError), and before writing, the compact model's logits are
    checked against the masked model's on 32 random inputs (ModelError if either is
    not finite or they differ by more than 1e-4 relative to the logit scale).
    Returns the structured report (see :func:`structured_report`) with
    ``path``, ``source`` and ``max_logit_difference``.
    """
    from sparserobust.checkpoint import check_model_finite, load_checkpoint, save_checkpoint
    from sparserobust.rundir import check_output

    src, dst = Path(checkpoint), check_output(out, what="the compact checkpoint (--out)")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ConfigError("--out must differ from the checkpoint: write the export to a new file")
    model, meta = load_checkpoint(src)
    check_model_finite(model, src)  # as evaluate: finite weights, masks of 0 and 1 only
    shape = [int(s) for s in meta["input_shape"]]
    report = structured_report(model, shape)
    small = compact(model).eval()
    check_model_finite(small, f"the compact model of {src}")
    gen = torch.Generator().manual_seed(0)
    probe = torch.rand(32, *shape, generator=gen)
    with torch.no_grad():
        expected, got = model(probe), small(probe)
    for logits, whose in ((expected, f"{src}: the model's"), (got, "the compact model's")):
        if not bool(torch.isfinite(logits).all()):
            raise ModelError(
                f"{whose} logits are NaN or inf (a diverged model, or a zero normalisation "
                "std): nothing to compact; re-create the checkpoint"
            )
    diff = float((expected - got).abs().max())
    if not diff <= 1e-4 * max(1.0, float(expected.abs().max())):  # NaN fails too
        raise ModelError(
            f"the compact model's logits differ from the pruned model's by {diff:.3g}: "
            "this architecture cannot be compacted exactly"
        )
    record = report.as_dict()
    save_checkpoint(
        dst,
        small,
        {
            **meta,
            "compact": {
                "layers": sequential_spec(small),
                "source": src.name,
                "report": record,
            },
        },
    )
    log.info(
        "compact: %s -> %s (%d -> %s parameters)",
        src,
        dst,
        report.params_dense,
        report.params_compact,
    )
    return {**record, "path": str(dst), "source": str(src), "max_logit_difference": diff}


class StructuredMethod(OneShotMethod):
    """``structured``: :func:`structured_prune`; its target is the share of units removed
    per layer (:func:`structured_fraction`), ranked by ``settings.norm``."""

    name = "structured"
    description = (
        "structured pruning: whole neurons (Linear) and channels (Conv) by l1 norm, never "
        "the classifier's outputs; the target is the share of units removed per layer"
    )
    settings_type = StructuredSettings
    targets_weights = False

    def level(self, model: nn.Module) -> float:
        return structured_fraction(model)

    def prune_once(
        self, model: nn.Module, level: float, seed: int, settings: StructuredSettings
    ) -> None:
        structured_prune(model, level, norm=settings.norm)

    def sweep_identity(self, settings: StructuredSettings) -> dict[str, Any]:
        return {"structured": settings.as_dict()}
