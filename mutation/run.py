"""`make mutation`: mutmut over attacks/, metrics/, pruning/ and report.py (docs/testing.md).

Run from the repository root. Config: [tool.mutmut] in pyproject.toml (files to mutate, the
test selection). This wrapper does three things mutmut's own CLI does not:

1. It drops mutations that cannot change what the oracles compute (see ``SKIPPED``):
   string literals (error messages, HTML, labels; mutmut's string operator makes three
   mutants per literal), the arguments of exception, warning, print and log calls, and the
   ``device=``/``desc=``/``strict=``/``frozen=`` keywords (equivalent on a CPU run).
2. It runs every mutant of pruning/ and report.py, and a random sample (fixed seed) of
   attacks/ and metrics/, whose full sets do not fit in an hour on 2 cores.
3. It prints the counts per package (killed / survived / timeout / no tests / score),
   and the surviving mutants, and writes them to mutants/summary.json.

    python mutation/run.py [--sample-attacks N] [--sample-metrics N] [--seed S]
    python mutation/run.py --summary      # counts of the last run, without running
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import libcst as cst
import libcst.matchers as m
from mutmut.mutation import mutators

SKIPPED = {
    "keywords": {"device", "desc", "strict", "frozen", "stacklevel"},
    "calls": ("Error", "Exception", "Warning", "warn", "echo", "print"),
    "loggers": {"log", "logger", "logging"},
}
PACKAGES = ("attacks", "metrics", "pruning", "report")
DEFAULT_SAMPLE = {"attacks": 700, "metrics": 500}


def _call_name(node: cst.Call) -> str:
    func = node.func
    if isinstance(func, cst.Attribute):
        return func.attr.value
    if isinstance(func, cst.Name):
        return func.value
    return ""


def _is_message(node: cst.Call) -> bool:
    """An exception, a warning, a print or a log call: its arguments are only a message."""
    if _call_name(node).endswith(SKIPPED["calls"]):
        return True
    func = node.func
    return (
        isinstance(func, cst.Attribute)
        and isinstance(func.value, cst.Name)
        and func.value.value in SKIPPED["loggers"]
    )


def _arg_removal(node: cst.Call):
    """mutmut's operator_arg_removal, less the arguments in SKIPPED."""
    if _is_message(node):
        return
    args = node.args

    def skip(arg: cst.Arg) -> bool:
        return arg.keyword is not None and arg.keyword.value in SKIPPED["keywords"]

    for i, arg in enumerate(args):
        if skip(arg):
            continue
        if arg.star == "" and not m.matches(arg.value, m.Name("None")):
            mutated = arg.with_changes(value=cst.Name("None"))
            yield node.with_changes(args=[*args[:i], mutated, *args[i + 1 :]])
    if len(args) > 1:
        for i, arg in enumerate(args):
            if skip(arg):
                continue
            yield node.with_changes(args=[*args[:i], *args[i + 1 :]])


def _patch_operators() -> None:
    ops = []
    for node_type, op in mutators.mutation_operators:
        if op is mutators.operator_string:
            continue
        if op is mutators.operator_arg_removal:
            op = _arg_removal
        ops.append((node_type, op))
    mutators.mutation_operators[:] = ops  # file_mutation holds the same list object


def package_of(mutant_name: str) -> str | None:
    # sparserobust.pruning.magnitude.x_fn__mutmut_3 / sparserobust.report.x_fn__mutmut_1
    parts = mutant_name.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in PACKAGES else None


def all_mutants() -> dict[str, int | None]:
    """Every generated mutant and its exit code (None: not run), from mutmut's .meta files."""
    out: dict[str, int | None] = {}
    for meta in sorted(Path("mutants/src").rglob("*.py.meta")):
        rel = meta.relative_to("mutants/src").with_suffix("").with_suffix("")
        module = ".".join(rel.parts)
        data = json.loads(meta.read_text())
        for key, code in data["exit_code_by_key"].items():
            name = key if key.startswith("sparserobust.") else f"{module}.{key}"
            out[name] = code
    return out


def select(names: list[str], samples: dict[str, int], seed: int) -> list[str]:
    """All mutants of pruning/ and report.py; a seeded sample of the other packages."""
    by_pkg: dict[str, list[str]] = {p: [] for p in PACKAGES}
    for name in sorted(names):
        pkg = package_of(name)
        if pkg:
            by_pkg[pkg].append(name)
    chosen: list[str] = []
    for pkg in PACKAGES:
        group = by_pkg[pkg]
        n = samples.get(pkg)
        if n is not None and n < len(group):
            group = random.Random(f"{seed}-{pkg}").sample(group, n)
        chosen += group
    return chosen


STATUS = {1: "killed", 3: "killed", 0: "survived", 33: "no tests", 5: "no tests", None: "not run"}


def status(code: int | None) -> str:
    if code in STATUS:
        return STATUS[code]
    if code in (36, 24, -24, 152, 255):
        return "timeout"
    if code in (-9, -11):
        return "killed"  # crashed the test process
    return "suspicious"


def summary(selected: list[str], generated: dict[str, int | None]) -> dict:
    total = Counter(package_of(n) for n in generated if package_of(n))
    per: dict[str, Counter] = {p: Counter() for p in PACKAGES}
    survivors = []
    for name in selected:
        s = status(generated.get(name))
        per[package_of(name)][s] += 1
        if s in ("survived", "no tests", "suspicious", "not run"):
            survivors.append(f"{s}: {name}")
    rows = {}
    for pkg in PACKAGES:
        c = per[pkg]
        run = sum(c.values())
        detected = c["killed"] + c["timeout"]
        rows[pkg] = {
            "generated": total[pkg],
            "run": run,
            **dict(c),
            "score": round(100 * detected / run, 1) if run else None,
        }
    return {"packages": rows, "survivors": sorted(survivors)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sample-attacks", type=int, default=DEFAULT_SAMPLE["attacks"])
    ap.add_argument("--sample-metrics", type=int, default=DEFAULT_SAMPLE["metrics"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--summary", action="store_true", help="only print the last run's counts")
    ap.add_argument("--only", nargs="*", help="run only these mutant names (globs allowed)")
    args = ap.parse_args()
    samples = {"attacks": args.sample_attacks, "metrics": args.sample_metrics}

    _patch_operators()
    from mutmut import __main__ as mm

    start = time.time()
    if not args.summary:
        with contextlib.suppress(RuntimeError):  # already set (to fork, on Linux)
            mm.set_start_method("fork")
        if not Path("mutants/src").is_dir():
            # generate the mutants only (mutmut does it at the start of a run); an unknown
            # mutant name stops mutmut right after generation
            with contextlib.suppress(AssertionError):
                mm._run(["sparserobust.__no_such_mutant__*"], max_children=1)
        if args.only:
            chosen = args.only  # a rerun of some mutants; the selection stays as it was
        else:
            chosen = select(list(all_mutants()), samples, args.seed)
            Path("mutants/selected.txt").write_text("\n".join(chosen) + "\n")
        try:
            mm._run(chosen, max_children=1)
        except SystemExit as e:
            if e.code not in (0, None):
                raise
    chosen = Path("mutants/selected.txt").read_text().split()
    result = summary(chosen, all_mutants())
    result["wall_s"] = round(time.time() - start)
    result["samples"] = samples
    result["seed"] = args.seed
    Path("mutants/summary.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["packages"], indent=1))
    print(f"{len(result['survivors'])} not killed:")
    print("\n".join(result["survivors"]))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
