"""`make mutation`: mutmut over attacks/ metrics/ verify/ pruning/ report/ (docs/testing.md).

Run from the repository root. Config: [tool.mutmut] in pyproject.toml (files to mutate, the
test selection). This wrapper does three things mutmut's own CLI does not:

1. It drops mutations not counted (see ``SKIPPED`` and docs/testing.md): string
   literals (error messages, HTML, labels; mutmut's string operator makes three mutants
   per literal), the arguments of exception, warning, print and log calls, and the
   ``device=``/``desc=``/``strict=``/``frozen=``/``stacklevel=`` keywords (equivalent on
   a CPU run).
2. It runs a random sample (fixed seed, sizes in DEFAULT_SAMPLE) of the mutants of
   each package: the full sets (12,416 mutants, about 3.5 hours at ~1 mutant/s on 2
   shared cores) are too slow for a routine hand run.
3. It prints the counts per package (killed / survived / timeout / no tests / score),
   and the surviving mutants, and writes them to mutants/summary.json.

    python mutation/run.py [--sample-pruning N] [--sample-attacks N] [--sample-metrics N]
                           [--sample-verify N] [--sample-report N] [--seed S]
    python mutation/run.py --resume [--packages pruning ...]  # the survivors again
                           (after a change of [tool.mutmut], mutmut forgets all results)
    python mutation/run.py --summary      # counts of the last run, without running
    python mutation/run.py --module-sample verify.bab=40  # a sample of one module's mutants
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import json
import os
import random
import subprocess
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
PACKAGES = ("attacks", "metrics", "verify", "pruning", "report")
DEFAULT_SAMPLE = {"pruning": 500, "attacks": 300, "metrics": 100, "verify": 100, "report": 100}


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
    # sparserobust.pruning.magnitude.x_fn__mutmut_3 / sparserobust.report.study.x_fn__mutmut_1
    parts = mutant_name.split(".")
    if parts[1:3] == ["measurements", "verify"]:
        return "verify"  # verify_points: the study's combination of the verifiers
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
    """A seeded random sample of each package's mutants (all of them where n is None)."""
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


def sample_modules(names: list[str], specs: list[str], seed: int) -> list[str]:
    """A seeded random sample of N mutants of each ``MODULE=N`` (``verify.bab=40``: of
    ``sparserobust.verify.bab``), for modules too big to run whole by hand."""
    chosen: list[str] = []
    for spec in specs:
        module, _, n = spec.partition("=")
        if not n.isdigit():
            raise SystemExit(f"--module-sample {spec!r}: write MODULE=N, e.g. verify.bab=40")
        group = sorted(x for x in names if x.startswith(f"sparserobust.{module}.x"))
        if not group:
            raise SystemExit(f"--module-sample: no mutants of sparserobust.{module}")
        chosen += random.Random(f"{seed}-{module}").sample(group, min(int(n), len(group)))
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


def generate(mm) -> None:
    """What mutmut's run does before its stats: copy src/ and tests/ to mutants/, mutate."""
    from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths

    mm.set_mutant_under_test("mutant_generation")
    Path("mutants").mkdir(exist_ok=True)
    copy_src_dir()
    copy_also_copy_files()
    setup_source_paths()
    stats = mm.create_mutants(1)
    print(f"{stats.mutated} files mutated, {stats.ignored} copied")


def describe(names: list[str]) -> list[str]:
    """``file:line  -old  +new`` for each mutant (the first changed line of its diff)."""
    import re

    from mutmut.__main__ import find_mutant, get_diff_for_mutant

    out = []
    for name in names:
        try:
            diff = get_diff_for_mutant(name, path=find_mutant(name).path).splitlines()
        except Exception as exc:  # noqa: BLE001 - a description is best effort
            out.append(f"{name}: no diff ({exc})")
            continue
        path = next((d[4:] for d in diff if d.startswith("--- ")), "?")
        removed = [d[1:].strip() for d in diff if d.startswith("-") and not d.startswith("---")]
        added = [d[1:].strip() for d in diff if d.startswith("+") and not d.startswith("+++")]
        body = [d for d in diff if d[:1] in (" ", "-", "+") and d[:3] not in ("---", "+++")]
        offset = next((i for i, d in enumerate(body) if d[:1] in "-+"), 0)
        line = "?"
        func = re.search(r"x[_ǁ](?:[A-Za-z0-9_]+ǁ)?([A-Za-z0-9_]+?)__mutmut_\d+$", name)
        source = Path(path)
        if func and source.is_file():
            text = source.read_text().splitlines()
            first = body[0].strip() if body else ""
            hits = [i for i, t in enumerate(text) if t.strip() == first]
            if hits:
                line = str(hits[0] + 1 + offset)
        out.append(
            f"{path}:{line} {name.rsplit('.', 1)[-1]}: "
            f"-{' / '.join(removed)[:90]}  +{' / '.join(added)[:90]}"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sample-pruning", type=int, default=DEFAULT_SAMPLE["pruning"])
    ap.add_argument("--sample-attacks", type=int, default=DEFAULT_SAMPLE["attacks"])
    ap.add_argument("--sample-metrics", type=int, default=DEFAULT_SAMPLE["metrics"])
    ap.add_argument("--sample-verify", type=int, default=DEFAULT_SAMPLE["verify"])
    ap.add_argument("--sample-report", type=int, default=DEFAULT_SAMPLE["report"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--summary", action="store_true", help="only print the last run's counts")
    ap.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--resume",
        action="store_true",
        help="run again the selected mutants not killed yet (or not run yet)",
    )
    ap.add_argument("--packages", nargs="*", choices=PACKAGES, help="with --resume: only these")
    ap.add_argument("--only", nargs="*", help="run only these mutant names (globs allowed)")
    ap.add_argument(
        "--module-sample",
        nargs="+",
        action="extend",  # repeated flags add up (a plain nargs list kept only the last)
        metavar="MODULE=N",
        help="run a seeded sample of N mutants of each module (e.g. verify.bab=40)",
    )
    args = ap.parse_args()
    samples = {
        "pruning": args.sample_pruning,
        "attacks": args.sample_attacks,
        "metrics": args.sample_metrics,
        "verify": args.sample_verify,
        "report": args.sample_report,
    }

    _patch_operators()
    from mutmut import __main__ as mm

    start = time.time()
    if args.generate:
        generate(mm)
        return
    if not args.summary:
        with contextlib.suppress(RuntimeError):  # already set (to fork, on Linux)
            mm.set_start_method("fork")
        if not Path("mutants/src").is_dir():
            subprocess.run([sys.executable, __file__, "--generate"], check=True)
        # mutmut puts mutants/src first on sys.path. If that folder was already on the
        # path when it did not exist yet (PYTHONPATH=mutants/src before a fresh run),
        # Python has cached "nothing there" for it and imports the original source (here
        # the editable install) instead: mutmut then records no test as covering any
        # mutant, the failure of the first try (docs/testing.md). Forget those entries.
        for entry in [k for k, v in sys.path_importer_cache.items() if v is None]:
            del sys.path_importer_cache[entry]
        importlib.invalidate_caches()
        selected = Path("mutants/selected.txt")
        if args.only:
            chosen = args.only  # a rerun of some mutants; the selection stays as it was
        elif args.module_sample:
            chosen = sample_modules(list(all_mutants()), args.module_sample, args.seed)
            selected.write_text("\n".join(chosen) + "\n")
        elif args.resume and selected.exists():
            # the mutants of the selection not run yet or not killed (after adding tests)
            codes = all_mutants()
            chosen = [
                n
                for n in selected.read_text().split()
                if status(codes.get(n)) in ("not run", "survived", "no tests", "suspicious")
                and package_of(n) in (args.packages or PACKAGES)
            ]
        else:
            chosen = select(list(all_mutants()), samples, args.seed)
            selected.write_text("\n".join(chosen) + "\n")
        if not chosen:
            print("nothing to run")
            chosen = []
        try:
            if chosen:
                mm._run(chosen, max_children=1)
        except SystemExit as e:
            if e.code not in (0, None):
                raise
    selected = Path("mutants/selected.txt")
    if args.only and not selected.exists():  # only these were run: summarise them
        chosen = [n for n in all_mutants() if any(fnmatch.fnmatch(n, g) for g in args.only)]
    else:
        chosen = selected.read_text().split()
    result = summary(chosen, all_mutants())
    result["wall_s"] = round(time.time() - start)
    result["samples"] = samples
    result["seed"] = args.seed
    Path("mutants/summary.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["packages"], indent=1))
    print(f"{len(result['survivors'])} not killed:")
    not_killed = [line.split(": ", 1)[1] for line in result["survivors"]]
    for status_line, text in zip(result["survivors"], describe(not_killed), strict=True):
        print(f"{status_line.split(':')[0]:9} {text}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
