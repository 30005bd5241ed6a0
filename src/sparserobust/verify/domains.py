"""The subdomains branch and bound keeps for one point (:mod:`~sparserobust.verify.bab`):
stacked per-domain tensors, and the root's domains (the whole ball, one per open class).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparserobust.verify.alpha import Bounds, relu_indices
from sparserobust.verify.network import Layer

__all__ = ["Domains", "root_domains"]


@dataclass
class Domains:
    """``D`` subdomains of one point, as stacked tensors (per ReLU layer index ``i``):
    ``lo``/``hi`` its input bounds ``(D, *shape)``, ``sign`` the split (+1 active, -1
    inactive, 0 none), ``alpha``/``beta`` ``(D, 1, *shape)``; ``cls`` the margin's other
    class, ``bound`` the proven lower bound, ``layer``/``index`` the next split (layer
    -1: a leaf)."""

    cls: torch.Tensor
    bound: torch.Tensor
    lo: dict[int, torch.Tensor]
    hi: dict[int, torch.Tensor]
    sign: dict[int, torch.Tensor]
    alpha: dict[int, torch.Tensor]
    beta: dict[int, torch.Tensor]
    layer: torch.Tensor
    index: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.cls.shape[0])

    def take(self, idx: torch.Tensor) -> Domains:
        def sub(d: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
            return {i: v[idx] for i, v in d.items()}

        return Domains(self.cls[idx], self.bound[idx], sub(self.lo), sub(self.hi),
                        sub(self.sign), sub(self.alpha), sub(self.beta), self.layer[idx],
                        self.index[idx])  # fmt: skip

    @staticmethod
    def cat(a: Domains, b: Domains) -> Domains:
        def join(x: dict[int, torch.Tensor], y: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
            return {i: torch.cat([x[i], y[i]]) for i in x}

        return Domains(torch.cat([a.cls, b.cls]), torch.cat([a.bound, b.bound]),
                        join(a.lo, b.lo), join(a.hi, b.hi), join(a.sign, b.sign),
                        join(a.alpha, b.alpha), join(a.beta, b.beta),
                        torch.cat([a.layer, b.layer]), torch.cat([a.index, b.index]))  # fmt: skip


def root_domains(
    layers: list[Layer], pre: Bounds, best: torch.Tensor, rows: torch.Tensor,
    alpha: dict[int, torch.Tensor], y: int,
) -> Domains:  # fmt: skip
    """One domain (the whole ball) per class whose margin bound ``best`` ``(K,)`` is not
    above 0; ``rows``: the classes of ``alpha``'s rows ``(1, len(rows), ...)``."""
    open_rows = (best[rows] <= 0).nonzero().flatten()  # positions in rows
    classes = rows[open_rows]
    n, dev, dtype = len(classes), best.device, best.dtype
    rl = relu_indices(layers)
    assert y not in classes.tolist()
    return Domains(
        classes, best[classes],
        {i: pre[i][0].expand(n, *pre[i][0].shape[1:]).clone() for i in rl},
        {i: pre[i][1].expand(n, *pre[i][1].shape[1:]).clone() for i in rl},
        {i: torch.zeros(n, *layers[i].in_shape, dtype=torch.int8, device=dev) for i in rl},
        {i: v[0, open_rows].unsqueeze(1) for i, v in alpha.items()},
        {i: torch.zeros(n, 1, *layers[i].in_shape, dtype=dtype, device=dev) for i in rl},
        torch.full((n,), -1, dtype=torch.long, device=dev),
        torch.zeros(n, dtype=torch.long, device=dev),
    )  # fmt: skip
