"""The BaBSR split choice against its closed form, computed here by hand per neuron.

Branch and bound stays sound and complete whatever neuron it splits, so the agreement
tests (tests/verify/test_bab.py) cannot see a wrong score; these can (mutation testing
of branching.py left the score's arithmetic alive before them, docs/testing.md)."""

from __future__ import annotations

import torch

from sparserobust.verify.branching import _BACKUP, babsr_candidates, babsr_choice, babsr_scores


def expected(lo: float, hi: float, coef: float) -> float:
    if not (lo < 0 < hi):
        return -1.0
    gap = -hi * lo / (hi - lo)  # intercept of the upper relaxation
    return max(-coef, 0.0) * gap + _BACKUP * abs(coef) * gap + 1e-9 * min(hi, -lo)


LO = [-1.0, -2.0, -0.5, 0.5, -3.0, -1.0, -4.0]
HI = [3.0, 1.0, 0.5, 2.0, -1.0, 1.0, 0.25]
COEF = [-2.0, -0.5, 4.0, -9.0, -9.0, 0.0, -1.5]


def test_scores_equal_the_closed_form() -> None:
    got = babsr_scores(torch.tensor([LO]), torch.tensor([HI]), torch.tensor([COEF]))
    want = torch.tensor([[expected(a, b, c) for a, b, c in zip(LO, HI, COEF, strict=True)]])
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-6, atol=1e-12)


def test_ties_go_to_the_more_balanced_split() -> None:
    # same intercept -hi*lo/(hi-lo) = 0.5 for both neurons, coefficient 0: the tie term
    lo, hi = torch.tensor([[-1.0, -2.0]]), torch.tensor([[1.0, 2.0 / 3.0]])
    s = babsr_scores(lo, hi, torch.zeros(1, 2))
    assert float(s[0, 0]) > float(s[0, 1]) > 0


def test_choice_takes_the_best_layer_and_index_and_leaves_stable_domains() -> None:
    relus = [1, 3]
    bounds = {
        1: (torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), torch.tensor([[1.0, 1.0], [2.0, 2.0]])),
        3: (torch.tensor([[-1.0, -3.0], [1.0, 1.0]]), torch.tensor([[1.0, 3.0], [2.0, 2.0]])),
    }
    coefs = {1: torch.tensor([[-1.0, -2.0], [-1.0, -1.0]]),
             3: torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])}  # fmt: skip
    layer, index = babsr_choice(relus, bounds, coefs, 2)
    # domain 0: scores 0.5, 1.0 (layer 1) and 0.5, 1.5 (layer 3): layer 3, index 1;
    # domain 1: nothing unstable: a leaf (layer -1)
    assert layer.tolist() == [3, -1] and index[0].item() == 1
    assert layer.dtype == torch.long and index.dtype == torch.long


def test_equal_scores_keep_the_earlier_layer() -> None:
    bounds = {i: (torch.tensor([[-1.0]]), torch.tensor([[1.0]])) for i in (1, 3)}
    coefs = {i: torch.tensor([[-1.0]]) for i in (1, 3)}
    layer, index = babsr_choice([1, 3], bounds, coefs, 1)
    assert layer.tolist() == [1] and index.tolist() == [0]


def test_a_net_without_relus_is_all_leaves() -> None:
    layer, index = babsr_choice([], {}, {}, 3)
    assert layer.tolist() == [-1, -1, -1] and index.tolist() == [0, 0, 0]
    assert layer.dtype == torch.long and index.dtype == torch.long


def test_candidates_of_a_net_without_relus_are_one_leaf_column() -> None:
    """FSB's filter on a ReLU-free net: one column of leaves per domain, both (n, 1) long
    tensors (the search gathers along that column)."""
    layer, index = babsr_candidates([], {}, {}, 3, 4)
    assert layer.shape == (4, 1) and index.shape == (4, 1)
    assert layer.tolist() == [[-1]] * 4 and index.tolist() == [[0]] * 4
    assert layer.dtype == torch.long and index.dtype == torch.long
