"""Every tensor the verifiers make lives on the model's device.

CI has no GPU, so a tensor created on the CPU inside a bound pass would only fail on a
user's CUDA machine (it did: ``make gpu-check`` caught ``crown_lower``'s bias on the
CPU). Two checks: a static one that runs everywhere (every tensor factory call in
``verify/`` names its device, except in the functions below that work on the CPU by
design), and the CPU/CUDA agreement of every method where a GPU is present.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import sparserobust.verify as verify_pkg
from sparserobust.verify import alpha_certify, certify, verify_bab

FACTORIES = {"zeros", "ones", "full", "eye", "arange", "tensor", "empty", "as_tensor",
             "linspace", "rand", "randn", "randint"}  # fmt: skip
# (file, function): CPU on purpose
CPU_BY_DESIGN = {
    ("leaf.py", "leaf_lp"),  # builds an LP for HiGHS; moved to the device where used
    ("certification.py", "eps_vector"),  # radii kept on the CPU, moved per batch
    ("certification.py", "certified_radius"),  # bisection bookkeeping on the CPU
    ("distance.py", "minimal_distance"),  # per-point radii, read with float()
}


def _undeviced_factories(tree: ast.AST, fname: str) -> list[str]:
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef) or (fname, fn.name) in CPU_BY_DESIGN:
            continue
        for node in ast.walk(fn):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
                and node.func.attr in FACTORIES
                and not any(k.arg == "device" for k in node.keywords)
            ):
                out.append(f"{fname}:{node.lineno} {fn.name}: torch.{node.func.attr}")
    return out


def test_every_tensor_factory_in_verify_names_its_device() -> None:
    root = Path(verify_pkg.__file__).parent
    found = []
    for path in sorted(root.glob("*.py")):
        found += _undeviced_factories(ast.parse(path.read_text()), path.name)
    assert found == []


def test_the_static_check_finds_a_cpu_tensor() -> None:
    src = "def f(x):\n    return torch.zeros(3) + torch.ones(3, device=x.device)\n"
    assert _undeviced_factories(ast.parse(src), "crown.py") == ["crown.py:2 f: torch.zeros"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_agrees_with_cpu() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                        nn.Linear(12, 3)).double()  # fmt: skip
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    y = net(x).argmax(1)
    for fn in (certify, alpha_certify):
        cpu = fn(net, x, y, epsilon=0.05)
        gpu = fn(net.cuda(), x, y, epsilon=0.05)
        net.cpu()
        assert torch.allclose(cpu.margins, gpu.margins, atol=1e-6)
    cpu_res = verify_bab(net, x, y, epsilon=0.05, time_limit=20.0)
    gpu_res = verify_bab(net.cuda(), x, y, epsilon=0.05, time_limit=20.0)
    assert [r.status for r in cpu_res] == [r.status for r in gpu_res]
    assert "error" not in [r.status for r in gpu_res]
    assert not math.isnan(sum(r.seconds for r in gpu_res))
