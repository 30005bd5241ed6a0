"""The report: verdict rows, Pareto front, warnings summary, intervals, compare, browser."""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from sparserobust.config import config_from_dict
from sparserobust.errors import ConfigError
from sparserobust.measurements import Record
from sparserobust.pipeline import run_study
from sparserobust.report.study import CLEAN, StudyData
from sparserobust.report.verdicts import (
    headlines,
    pareto_front,
    security_curve,
    verdict_rows,
    warning_summary,
)
from tests.conftest import _MUTATION_RUN, kept
from tests.engine.test_pipeline import SMALL

SEEDED = {
    **SMALL,
    "eval": {
        **SMALL["eval"],
        "attacks": [
            {"name": "fgsm", "eps": [0.05, 0.1, 0.2]},
            {"name": "ddn", "norm": "2", "eps": [0.5, 1.0], "steps": 20},
        ],
    },
}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two one-seed studies (seeds 0 and 1) with a fixed-epsilon and a minimal-norm attack.

    Under mutation testing the two studies are run once, in a folder of their own (see
    ``kept`` in conftest.py), and only their reports are written again each time."""
    configs = [config_from_dict({**SEEDED, "seeds": [s], "name": f"s{s}"}) for s in (0, 1)]

    def build() -> tuple[Path, Path]:
        root = Path(tempfile.mkdtemp(prefix="report-")) if _MUTATION_RUN else None
        root = root or tmp_path_factory.mktemp("report")
        for seed, config in enumerate(configs):
            run_study(config, root / f"s{seed}", progress=False)
        return root / "s0", root / "s1"

    runs = kept("report_two_runs", build)
    if _MUTATION_RUN:
        from sparserobust.report import write_report

        for run, config in zip(runs, configs, strict=True):
            shutil.rmtree(run / "report")
            write_report(run, config.report.max_accuracy_drop)
    return runs


def _study(rob: dict[float, list[float]], clean: dict[float, list[float]]) -> StudyData:
    """A hand-made study of one method over three seeds (Student-t intervals)."""
    from sparserobust.report.study import seed_cell

    data = StudyData("hand", {}, {}, ["rob"], {})
    data.info["rob"] = Record("rob", 0.0, "robust_accuracy", "pgd", "inf", 0.1)
    for label, per in ((CLEAN, clean), ("rob", rob)):
        for target, vals in per.items():
            seeds = {s: (v, target, None) for s, v in enumerate(vals)}
            key = (label, "m", target)
            data.table.setdefault(label, {}).setdefault("m", {})[target] = seed_cell(
                data, key, seeds, clip=True
            )
            data.seed_values[key] = dict(enumerate(vals))
    return data


def test_verdict_row_picks_best_sparsity_in_budget_and_its_change() -> None:
    clean = {0.0: [0.98, 0.98, 0.98], 0.5: [0.975, 0.976, 0.974], 0.9: [0.90, 0.90, 0.90]}
    rob = {0.0: [0.20, 0.21, 0.19], 0.5: [0.30, 0.32, 0.31], 0.9: [0.60, 0.61, 0.62]}
    (row,) = verdict_rows(_study(rob, clean), "rob", max_drop=0.01)
    assert row.best == 0.5  # 0.9 is more robust but 8 points less accurate
    d, low, high = row.change
    assert d == pytest.approx(0.11) and 0 < low < d < high  # paired over seeds
    assert row.verdict == "better than dense" and row.below_from is None
    assert "50%" in row.sentence and "+0.110" in row.sentence
    # a larger budget admits 0.9
    (row,) = verdict_rows(_study(rob, clean), "rob", max_drop=0.1)
    assert row.best == 0.9
    # robustness that falls below dense: "worse" at the best level, and where it falls
    rob = {0.0: [0.50, 0.51, 0.49], 0.5: [0.40, 0.41, 0.39], 0.9: [0.2, 0.21, 0.2]}
    (row,) = verdict_rows(_study(rob, clean), "rob", max_drop=0.01)
    assert row.verdict == "worse than dense" and row.below_from == 0.5
    # no pruned model in budget
    clean[0.5] = [0.5, 0.5, 0.5]
    clean[0.9] = [0.5, 0.5, 0.5]
    (row,) = verdict_rows(_study(rob, clean), "rob", max_drop=0.01)
    assert row.best is None and "no pruned model keeps" in row.sentence


def test_verdict_of_a_method_with_no_pruned_value_says_not_measured() -> None:
    """An incomplete run: the dense model is measured, no pruned model is yet. The row
    must not claim that no pruned model is within the accuracy budget (0.5 is)."""
    from sparserobust.report.verdicts import NOT_MEASURED, below_text

    clean = {0.0: [0.98] * 3, 0.5: [0.975] * 3}
    rob = {0.0: [0.20, 0.21, 0.19], 0.5: [math.nan] * 3}
    (row,) = verdict_rows(_study(rob, clean), "rob", max_drop=0.01)
    assert row.best is None and row.verdict == NOT_MEASURED
    assert "budget" not in row.sentence and "no verdict" in row.sentence
    assert below_text(row) == ""
    # one finite pruned value is enough for a verdict
    rob[0.5] = [0.30, 0.31, 0.29]
    (row,) = verdict_rows(_study(rob, clean), "rob", max_drop=0.01)
    assert row.best == 0.5 and row.verdict == "better than dense"


def test_noisy_change_is_no_gain() -> None:
    clean = {0.0: [0.98] * 3, 0.5: [0.98] * 3}
    rob = {0.0: [0.2, 0.4, 0.3], 0.5: [0.35, 0.25, 0.33]}
    (row,) = verdict_rows(_study(rob, clean), "rob", max_drop=0.01)
    assert row.best == 0.5 and row.verdict == "no gain"


def _methods_study(per_method: dict[str, dict[float, list[float]]], grids: dict) -> StudyData:
    """A hand-made study of several methods over three seeds (robust accuracy "rob")."""
    from sparserobust.report.study import seed_cell

    data = StudyData("hand", {"pruning": {"grids": grids}}, {}, ["rob"], {})
    data.info["rob"] = Record("rob", 0.0, "robust_accuracy", "pgd", "inf", 0.1)
    for method, rob in per_method.items():
        for label in (CLEAN, "rob"):
            for target, vals in rob.items():
                vals = [0.97] * 3 if label == CLEAN else vals
                seeds = {s: (v, target, None) for s, v in enumerate(vals)}
                key = (label, method, target)
                data.table.setdefault(label, {}).setdefault(method, {})[target] = seed_cell(
                    data, key, seeds, clip=True
                )
                data.seed_values[key] = dict(enumerate(vals))
    return data


def test_methods_ranked_per_sparsity_with_a_paired_lead() -> None:
    from sparserobust.report.verdicts import method_rankings, ranking_sentence

    dense = [0.2, 0.3, 0.25]
    data = _methods_study(
        {
            "hydra": {0.0: dense, 0.5: [0.40, 0.50, 0.45], 0.9: [0.30, 0.40, 0.20]},
            "magnitude": {0.0: dense, 0.5: [0.30, 0.41, 0.34], 0.9: [0.35, 0.25, 0.31]},
            # own grid: higher still, but its 0.5 is a share of neurons, never ranked
            "structured": {0.0: dense, 0.5: [0.9, 0.9, 0.9]},
            "random": {0.0: dense, 0.9: [0.1, 0.1, 0.1]},
        },
        {"structured": [0.5]},
    )
    at50, at90 = method_rankings(data, "rob")
    assert at50.target == 0.5 and [m for m, _, _ in at50.order] == ["hydra", "magnitude"]
    d, low, high = at50.lead  # paired over seeds: +0.10, +0.09, +0.11
    assert d == pytest.approx(0.1) and 0.07 < low < 0.1 < high < 0.13 and at50.clear
    assert "hydra keeps the most rob" in ranking_sentence(at50, "rob")
    # at 90%: magnitude 0.303 vs hydra 0.300, the paired difference is noisy
    assert [m for m, _, _ in at90.order] == ["magnitude", "hydra", "random"]
    assert at90.lead[0] == pytest.approx(0.01 / 3) and not at90.clear
    assert "not distinguishable" in ranking_sentence(at90, "rob")
    # lower is better for a norm-like label: the order flips
    data.info["rob"] = Record("rob", 0.0, "median_norm", "ddn", "2", None, higher_is_better=False)
    assert [m for m, _, _ in method_rankings(data, "rob")[1].order][0] == "random"


def test_pareto_front_on_a_hand_made_table() -> None:
    pts = [(0.98, 0.2), (0.97, 0.3), (0.96, 0.25), (0.90, 0.5), (0.90, 0.4), (math.nan, 0.9)]
    assert pareto_front(pts) == [True, True, False, True, False, False]
    assert pareto_front([(0.5, 0.5), (0.5, 0.5)]) == [True, True]  # ties dominate nothing


def test_security_curve_from_minimal_norms() -> None:
    # misclassified (0), broken at 0.5, never broken (inf): robust at eps > ...
    d = np.array([0.0, 0.5, math.inf])
    got = security_curve([d], np.array([0.0, 0.4, 0.6]))
    assert got.tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3])


def test_warnings_summarised_per_method_and_kind() -> None:
    data = StudyData("w", {}, {}, [], {})
    text = "ddn l2: failed on {} of 50 correctly classified points; raise its budget"
    data.flags = [
        ("random", 0.98, "s0/random/0.98", "attack:ddn:l2", text.format(3)),
        ("random", 0.99, "s0/random/0.99", "attack:ddn:l2", text.format(37)),
        ("random", 0.99, "s1/random/0.99", "attack:ddn:l2", text.format(5)),
        ("global-magnitude", 0.9, "s0/g/0.9", "checks", "vanishing input gradients on 12%"),
    ]
    lines = warning_summary(data)
    assert len(lines) == 2
    assert lines[1] == (
        "random 98%–99%: ddn l2: failed on 3–37 of 50 correctly classified points; "
        "raise its budget (3 results)"
    )


def test_intervals_with_few_seeds_are_bootstrap_and_clipped(two_runs: tuple[Path, Path]) -> None:
    from sparserobust.report import load_study

    data = load_study(two_runs[0])
    heads = headlines(data)
    # the strongest l_inf attack's robust accuracy at the middle epsilon; l2: median norm
    assert heads == {"inf": "fgsm_linf robust_acc@0.1", "2": "ddn_l2 median_norm"}
    for label in (CLEAN, "fgsm_linf robust_acc@0.1", "ddn_l2 robust_acc@0.5"):
        for cells in data.table[label].values():
            for cell in cells.values():
                assert cell.kind == "bootstrap"
                assert 0 <= cell.low <= cell.high <= 1
    dense = data.table["ddn_l2 robust_acc@0.5"]["random"][0.0]
    assert dense.low < dense.mean < dense.high
    # a diagnostic has no per-image data: no interval, one seed's value
    relu = data.table["active_relu_fraction (not robustness)"]["random"][0.5]
    assert relu.kind == "none" and len(relu.values) == 1
    bad = {**data.config, "report": {"headline_linf": "pgd_linf robust_acc@9"}}
    data.config = bad
    with pytest.raises(ConfigError, match="report.headline_linf: no stored record"):
        headlines(data)


def test_report_opens_with_the_verdict(two_runs: tuple[Path, Path]) -> None:
    md = (two_runs[0] / "report" / "report.md").read_text()
    sections = [ln for ln in md.splitlines() if ln.startswith("## ")]
    assert sections[:3] == ["## Verdict", "## Which method at each sparsity", "## Overview"]
    assert sections[-1] == "## Details"
    # global-magnitude vs random at 50% and 90%, under each headline
    ranking = md[md.index("## Which method") : md.index("## Overview")]
    assert ranking.count("| 50% |") == 2 and ranking.count("| 90% |") == 2
    first_table = next(ln for ln in md.splitlines() if ln.startswith("| "))
    assert first_table.startswith("| method | best sparsity")
    assert md.index("### l_inf") < md.index("### l2") < md.index("## Diagnostics")
    html = (two_runs[0] / "report" / "report.html").read_text()
    # one self-contained file: no external source or link
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)
    if "## Evaluation warnings\n\nNone raised." not in md:
        assert html.count("<details>") == 1
    for name in ("overview", "tradeoff", "security_ddn_l2", "diagnostics"):
        assert f'alt="{name}"' in html


def test_compare_cli(two_runs: tuple[Path, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from sparserobust.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", str(two_runs[0]), str(two_runs[1]), "--out", str(out)]) == 0
    md = (out / "compare.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| s")]
    assert {r.split("|")[1].strip() for r in rows} == {"s0", "s1"} and len(rows) == 8
    assert (out / "overview.png").stat().st_size > 1000
    assert "data:image/png;base64," in (out / "compare.html").read_text()
    capsys.readouterr()
    assert main(["compare", str(two_runs[0]), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a run directory" in err
    assert main(["compare", str(two_runs[0])]) == 2
    assert "two or more" in capsys.readouterr().err


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_in_a_real_browser(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    """Headless Chromium opens the HTML report: every image loads, the verdict table is
    the first table, no console errors; the screenshot is kept in pytest's tmp dir."""
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = _chromium()
    if exe is None:
        pytest.skip("no system chromium (apt-get install chromium)")
    page_path = two_runs[0] / "report" / "report.html"
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        first = page.eval_on_selector("table", "t => t.rows[0].innerText")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
        browser.close()
    assert len(widths) >= 5 and all(w > 0 for w in widths)
    assert "best sparsity" in first
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


def _fake_store(dists: dict[float, list[float]], clean: dict[float, float]):  # type: ignore[no-untyped-def]
    """A store-like object: one seed of method ``m`` with a DDN l2 result per sparsity."""
    import json
    from types import SimpleNamespace

    models = [
        SimpleNamespace(
            model_key=f"s0/m/{t}",
            seed=0,
            method="dense" if t == 0 else "m",
            target_sparsity=t,
            sparsity=t,
            accuracy=clean[t],
        )
        for t in sorted(clean)
    ]
    results = []
    for t, d in dists.items():
        arr = np.array(d)
        rec = Record(
            "ddn_l2 robust_acc@1", float((arr > 1.0).mean()), "robust_accuracy", "ddn", "2", 1.0
        )
        results.append(
            {
                "model_key": f"s0/m/{t}",
                "seed": 0,
                "method": "dense" if t == 0 else "m",
                "target_sparsity": t,
                "sparsity": t,
                "measurement": "attack:ddn:l2",
                "numbers": {
                    "records": [rec.to_dict()],
                    "flags": [],
                    "summary": {"n": len(d)},
                    "distances": ["inf" if math.isinf(x) else x for x in d],
                },
            }
        )
    meta = {"config": json.dumps({"name": "fake", "dataset": "digits"})}
    return SimpleNamespace(models=lambda: models, results=lambda: results, get_meta=meta.get)


def test_verdict_from_a_constructed_store_pairs_images() -> None:
    from sparserobust.report import gather

    dense = [0.0] * 20 + [0.8] * 90 + [1.5] * 90
    half = [0.0] * 20 + [0.8] * 60 + [1.5] * 120  # 30 points harder to break
    ninety = [0.0] * 40 + [math.inf] * 160  # very robust, but 10 points less accurate
    store = _fake_store({0.0: dense, 0.5: half, 0.9: ninety}, {0.0: 0.9, 0.5: 0.9, 0.9: 0.8})
    data = gather(store)
    label = "ddn_l2 robust_acc@1"
    assert headlines(data) == {"2": label}
    (row,) = verdict_rows(data, label, max_drop=0.01)
    assert row.best == 0.5 and row.cell is not None and row.cell.mean == pytest.approx(0.6)
    d, low, high = row.change
    assert d == pytest.approx(0.15) and 0.05 < low < d < high < 0.25
    # paired over the same images: narrower than two independent binomials (~0.19 wide)
    assert high - low < 0.14
    assert row.verdict == "better than dense" and row.below_from is None
    # the clean accuracy's bootstrap is the binomial over the 364 digits test images
    cell = data.table[CLEAN]["m"][0.5]
    assert cell.kind == "bootstrap" and 0.86 < cell.low < 0.9 < cell.high < 0.94


def test_overview_has_a_panel_for_exact_values() -> None:
    from sparserobust.report.figures import overview

    def width(png: bytes) -> int:
        return int.from_bytes(png[16:20], "big")

    clean = {0.0: [0.98] * 3, 0.5: [0.98] * 3}
    rob = {0.0: [0.2, 0.4, 0.3], 0.5: [0.35, 0.25, 0.33]}
    data = _study(rob, clean)
    three = overview([(data, {"inf": "rob"})])
    data.table["certified_accuracy@0.1"] = data.table["rob"]
    data.metrics.append("certified_accuracy@0.1")
    data.info["certified_accuracy@0.1"] = Record("c", 0.0, "certified_accuracy", "ibp", "inf", 0.1)
    four = overview([(data, {"inf": "rob"})])
    assert three is not None and four is not None and width(four) > width(three) * 1.2


def test_headline_setting_is_validated() -> None:
    with pytest.raises(ConfigError, match="report.headline_l2"):
        config_from_dict({**SMALL, "report": {"headline_l2": " "}})
    cfg = config_from_dict({**SMALL, "report": {"headline_linf": "fgsm_linf robust_acc@0.2"}})
    assert cfg.config_hash() == config_from_dict(SMALL).config_hash()


def _bracket_study(values: dict[str, float], config: dict | None = None) -> StudyData:
    """One model ("m" at 0.9) with the verify records at eps 0.05 and two attacks."""
    from sparserobust.report import Cell

    metrics = {
        "ibp": "certified_accuracy_ibp",
        "crown": "certified_accuracy_crown",
        "exact": "exact_robust_accuracy",
        "upper": "exact_robust_accuracy_upper",
        "pgd": "robust_accuracy",
        "aa": "robust_accuracy",
    }
    data = StudyData("b", config or {}, {}, list(values), {})
    for label, v in values.items():
        source = "verify" if label in ("ibp", "crown", "exact", "upper") else label
        data.info[label] = Record(label, v, metrics[label], source, "inf", 0.05)
        data.table[label] = {"m": {0.9: Cell(v, math.nan, math.nan, 1, 0.9)}}
    return data


def test_brackets_pick_the_strongest_attack_and_catch_unsound_bounds() -> None:
    from sparserobust.report.brackets import brackets

    same = {"eval": {"n": 50, "measurements": {"verify": {"n_exact": 50}}}}
    good = {"ibp": 0.2, "crown": 0.5, "exact": 0.6, "upper": 0.7, "pgd": 0.8, "aa": 0.65}
    (row,) = brackets(_bracket_study(good, same))[("inf", 0.05)]
    assert (row.ibp, row.crown, row.exact, row.exact_upper) == (0.2, 0.5, 0.6, 0.7)
    assert (row.attacked, row.attack) == (0.65, "aa")  # the lower of the two attacks
    assert row.broken is None  # an attack below "exact upper" is fine (timeouts)
    for bad, text in [
        ({"crown": 0.61}, "CROWN 0.610 > exact 0.600"),
        ({"ibp": 0.62}, "IBP 0.620 > exact 0.600"),
        ({"aa": 0.55}, "exact 0.600 > aa 0.550"),
        ({"exact": math.nan, "aa": 0.45}, "CROWN 0.500 > aa 0.450"),
    ]:
        (row,) = brackets(_bracket_study({**good, **bad}, same))[("inf", 0.05)]
        assert row.broken == text
    # exact on fewer points than the attacks: no verdict on the inequalities
    fewer = {"eval": {"n": 50, "measurements": {"verify": {"n_exact": 20}}}}
    (row,) = brackets(_bracket_study({**good, "aa": 0.55}, fewer))[("inf", 0.05)]
    assert row.broken is None


def test_sound_bounds_take_the_lowest_upper_bound_per_seed() -> None:
    from sparserobust.report.brackets import sound_bounds

    data = _bracket_study({"exact": 0.6, "upper": 0.7, "pgd": 0.8, "aa": 0.65})
    per_seed = {  # seed 1: AutoAttack below the exact upper share; seed 2: no AutoAttack
        "exact": {1: 0.6, 2: 0.5},
        "upper": {1: 0.7, 2: 0.55},
        "pgd": {1: 0.8, 2: 0.9},
        "aa": {1: 0.65},
    }
    for label, seeds in per_seed.items():
        data.seed_values[(label, "m", 0.9)] = seeds
    assert sound_bounds(data, "inf", 0.05) == {("m", 0.9): {1: (0.6, 0.65), 2: (0.5, 0.55)}}
    assert sound_bounds(data, "inf", 0.1) == {}  # no exact value at that epsilon
    del data.seed_values[("upper", "m", 0.9)]
    assert sound_bounds(data, "inf", 0.05)[("m", 0.9)][2] == (0.5, 0.9)


def test_sound_change_table_compares_with_dense_and_the_level_before() -> None:
    from sparserobust.report import Cell
    from sparserobust.report.verify_tables import sound_change_table

    same = {"eval": {"n": 50, "measurements": {"verify": {"n_exact": 50}}}}
    data = _bracket_study({"exact": 0.0, "upper": 0.0, "aa": 0.0}, same)
    bounds = {0.0: (0.10, 0.40), 0.5: (0.45, 0.50), 0.9: (0.30, 0.35)}  # (exact, aa)
    for label, k in (("exact", 0), ("upper", 1), ("aa", 1)):
        for t, b in bounds.items():
            data.table[label].setdefault("m", {})[t] = Cell(b[k], math.nan, math.nan, 1, t)
            data.seed_values[(label, "m", t)] = {0: b[k]}
    lines = sound_change_table(data)
    assert "| dense | 0 | [0.100, 0.400] | - | - |" in lines
    # 50%: from dense [0.45 - 0.40, 0.50 - 0.10], proven up; 90%: from dense [-0.10, +0.25]
    # open, from 50% [0.30 - 0.50, 0.35 - 0.45] proven down
    assert "| m | 0.5 | [0.450, 0.500] | [+0.050, +0.400] up | [+0.050, +0.400] up |" in lines
    assert "| m | 0.9 | [0.300, 0.350] | [-0.100, +0.250] | [-0.200, -0.100] down |" in lines
    assert sound_change_table(_bracket_study({"exact": 0.5}, {})) == []  # other points


def test_verify_study_report_reads_as_a_bracket(tmp_path: Path) -> None:
    """A real study with the verify measurement and two attacks on the same points:
    each report line holds the stored numbers, and they are ordered."""
    from sparserobust.report import gather, write_report
    from sparserobust.report.brackets import brackets
    from sparserobust.store import ResultStore

    cfg = {
        **SMALL,
        "name": "bracket",
        "pruning": {**SMALL["pruning"], "methods": ["global-magnitude"], "sparsities": [0.9]},
        "eval": {
            **SMALL["eval"],
            "n": 30,
            "attacks": [
                {"name": "pgd", "eps": [0.02, 0.05], "steps": 20},
                {"name": "fgsm", "eps": [0.02, 0.05]},
            ],
            "measurements": {"verify": {"epsilons": [0.02, 0.05], "n_exact": 30, "time_limit": 1}},
            "clever": {"n": 20, "norms": ["inf"], "n_batches": 5, "batch_size": 20},
        },
    }
    run = tmp_path / "run"
    run_study(config_from_dict(cfg), run, progress=False)
    with ResultStore(run, readonly=True) as store:
        table = brackets(gather(store))
    assert sorted(table) == [("inf", 0.02), ("inf", 0.05)]
    md = write_report(run).read_text()
    assert "## Certified, exact and attacked robust accuracy" in md
    assert "a bug" not in md and "| dense | " in md
    for rows in table.values():
        assert [(r.method, r.sparsity) for r in rows] == [("dense", 0.0), ("global-magnitude", 0.9)]
        for r in rows:
            assert r.broken is None and r.attack in ("pgd_linf", "fgsm_linf")
            assert max(r.ibp, r.crown) <= r.exact + 1e-6 and r.exact <= r.attacked + 1e-6
            line = f"{r.ibp:.3f} <= {r.crown:.3f} <= "
            assert line in md

    # the tables script: the MILP's solve times and timeout rates as stored, and a plot
    import importlib.util
    import json
    import sqlite3

    path = Path(__file__).resolve().parents[2] / "scripts" / "reproduction_tables.py"
    spec = importlib.util.spec_from_file_location("reproduction_tables", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(run), str(tmp_path / "tables")]) == 0
    text = (tmp_path / "tables" / "tables.md").read_text()
    assert (tmp_path / "tables" / "verify_solve_time.png").stat().st_size > 1000
    con = sqlite3.connect(run / "results.sqlite")
    rows = con.execute(
        "SELECT model_key, numbers, seconds FROM results WHERE measurement = 'verify:linf'"
    ).fetchall()
    con.close()
    assert len(rows) == 2
    section = text.split("## Exact verification cost (MILP)")[1].split("\n## ")[0]
    for key, raw, seconds in rows:
        numbers = json.loads(raw)
        method, target = key.split("/")[1], float(key.split("/")[2])
        per_model = section.split("#### Seconds per model")[1].split("####")[0]
        row = next(ln for ln in per_model.splitlines() if ln.startswith("| global-magnitude |"))
        cell = row.strip("| ").split(" | ")[1 if target == 0 else 2]  # columns: 0, 0.9
        assert cell == f"{seconds:.0f} [{seconds:.0f}]"
        for eps in ("0.02", "0.05"):
            t = numbers["solve_time"][eps]
            (timeouts,) = [
                r["value"]
                for r in numbers["records"]
                if r["metric"] == "timeouts" and r["eps"] == float(eps)
            ]
            block = section.split(f"#### eps {eps}")[1].split("####")[0]
            row = (
                f"| {method} | {target:g} | {t['median_s']:.2f} [{t['median_s']:.2f}] | "
                f"{t['p95_s']:.2f} [{t['p95_s']:.2f}] | "
                f"{timeouts / 30:.3f} [{timeouts / 30:.3f}] |"
            )
            assert row in block

    # distance from the exact answer: attacks minus exact, CLEVER's misses counted by hand
    gaps = text.split("## Distance from the exact answer (verify)")[1].split("\n## ")[0]
    con = sqlite3.connect(run / "results.sqlite")
    got = {
        (key, meas): json.loads(raw)
        for key, meas, raw in con.execute("SELECT model_key, measurement, numbers FROM results")
    }
    con.close()
    checked = 0
    for key in ("s0/dense/0.0000", "s0/global-magnitude/0.9000"):
        name, target = key.split("/")[1], float(key.split("/")[2])
        scores = got[(key, "clever:linf")]["scores"]
        assert len(scores) == 20
        for entry in got[(key, "verify:linf")]["detail"]["epsilons"]:
            eps = entry["epsilon"]
            ex = entry["exact"]["robust_accuracy"]
            pgd = [
                r["value"]
                for r in got[(key, "attack:pgd:linf")]["records"]
                if r["label"] == f"pgd_linf robust_acc@{eps:g}"
            ][0]
            over = under = 0
            for p in entry["exact"]["points"][:20]:
                says_robust = scores[p["index"]] > eps
                if says_robust and p["status"] == "counterexample" and p["by"] != "clean":
                    over += 1
                if not says_robust and p["status"] == "verified":
                    under += 1
            block = gaps.split(f"#### eps {eps:g}")[1].split("####")[0]
            line = next(
                ln for ln in block.splitlines() if ln.startswith(f"| {name} | {target:g} |")
            )
            assert f"| {round(pgd - ex, 3) + 0.0:+.3f} |" in line
            assert line.endswith(f"| {over} / {under} of 20 |")
            checked += 1
    assert checked == 4

    # sound bounds: lower = verified share, upper = min(exact upper, every attack), and the
    # change from dense is [lower - dense upper, upper - dense lower], all by hand
    sound = text.split("## Sound bounds and changes (verify)")[1].split("\n## ")[0]

    def bounds(key: str, eps: float) -> tuple[float, float]:
        (entry,) = [
            e for e in got[(key, "verify:linf")]["detail"]["epsilons"] if e["epsilon"] == eps
        ]
        ex = entry["exact"]
        attacked = [
            r["value"]
            for meas in ("attack:pgd:linf", "attack:fgsm:linf")
            for r in got[(key, meas)]["records"]
            if r["label"].endswith(f"robust_acc@{eps:g}")
        ]
        assert len(attacked) == 2
        return ex["robust_accuracy"], min([ex["robust_accuracy_upper"], *attacked])

    for eps in (0.02, 0.05):
        block = sound.split(f"#### eps {eps:g}")[1].split("####")[0]
        dl, du = bounds("s0/dense/0.0000", eps)
        pl, pu = bounds("s0/global-magnitude/0.9000", eps)
        assert f"| dense | 0 | [{dl:.3f}, {du:.3f}] | - | - |" in block
        lo, hi = round(pl - du, 6) + 0.0, round(pu - dl, 6) + 0.0
        word = " up" if lo > 0 else " down" if hi < 0 else ""
        change = f"[{lo:+.3f}, {hi:+.3f}]{word}"
        row = f"| global-magnitude | 0.9 | [{pl:.3f}, {pu:.3f}] | {change} | {change} |"
        assert row in block, (row, block)
        # the report's bracket line carries the same proven change from dense
        part = md.split(f"### l_inf, eps {eps:g}")[1].split("###")[0]
        line = next(ln for ln in part.splitlines() if ln.startswith("| global-magnitude 90% |"))
        assert f"| {change} |" in line, line


def test_sound_change_pairs_seeds_and_proves_only_when_bounds_exclude_zero() -> None:
    from sparserobust.report.brackets import sound_change

    a = {0: (0.30, 0.30), 1: (0.20, 0.40), 2: (0.9, 0.9)}
    b = {0: (0.10, 0.25), 1: (0.10, 0.15)}
    lo, hi, n = sound_change(a, b)  # type: ignore[misc]
    # seeds 0 and 1 only: lower = mean(0.30-0.25, 0.20-0.15), upper = mean(0.30-0.10, 0.40-0.10)
    assert n == 2 and lo == pytest.approx(0.05) and hi == pytest.approx(0.25)
    lo, hi, _ = sound_change(b, a)  # type: ignore[misc]
    assert lo == pytest.approx(-0.25) and hi == pytest.approx(-0.05)
    assert sound_change(a, {5: (0.0, 1.0)}) is None


def test_metric_info_has_one_record_per_label(two_runs: tuple[Path, Path]) -> None:
    from sparserobust.report import load_study, metric_info
    from sparserobust.store import ResultStore

    with ResultStore(two_runs[0], readonly=True) as store:
        info = metric_info(store)
    assert sorted(info) == sorted(load_study(two_runs[0]).metrics)
    assert all(rec.label == label for label, rec in info.items())


def test_report_of_some_seeds(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    """RunReader reads runs of one study as one, or some of its seeds: the merged
    reader restricted to seed 1 is seed 1's own run, number for number."""
    from sparserobust.report import RunReader, gather, load_study, write_report
    from sparserobust.store import ResultStore

    with RunReader(two_runs) as both, RunReader(two_runs, [1]) as first:
        merged, one = gather(both), gather(first)
    own = load_study(two_runs[1])
    accs = []
    for seed, run in enumerate(two_runs):
        with ResultStore(run, readonly=True) as store:
            accs.append(store.get_model(f"s{seed}/random/0.5000"))
    assert merged.config["seeds"] == [0, 1] and one.config["seeds"] == [1]
    assert merged.table[CLEAN]["random"][0.5].mean == pytest.approx(
        (accs[0].accuracy + accs[1].accuracy) / 2  # type: ignore[union-attr]
    )
    assert merged.table[CLEAN]["random"][0.5].n == 2
    for label in own.table:
        for method, cells in own.table[label].items():
            assert [c.mean for c in cells.values()] == pytest.approx(
                [c.mean for c in one.table[label][method].values()], nan_ok=True
            )
    assert sorted(one.table) == sorted(own.table)
    with pytest.raises(ConfigError, match="seeds are 0, 1"):
        RunReader(two_runs, [2])
    # on a real run: the header names the seed; an unknown one is a one-line error
    md = write_report(two_runs[0], out_dir=tmp_path / "r", seeds=[0]).read_text()
    assert "seeds [0]" in md
    with pytest.raises(ConfigError, match="--seed 1: this study's seeds are 0"):
        write_report(two_runs[0], out_dir=tmp_path / "r2", seeds=[1])


def test_interval_note_names_the_interval_each_cell_shows() -> None:
    """Three seeds give Student-t intervals; the few cells where fewer seeds have a value
    (e.g. a median norm that is infinite for two seeds) must not make the note claim a
    bootstrap for every bracket (it once did, on the 3-seed LeNet-300-100 study)."""
    from sparserobust.report import Cell as VCell
    from sparserobust.report import StudyData

    def study(kinds: list[str]) -> StudyData:
        cells = {0.1 * i: VCell(0.5, 0.4, 0.6, 3, 0.1 * i, kind=k) for i, k in enumerate(kinds)}
        return StudyData("s", {}, {"m": {"a": cells}}, ["m"], {})

    assert study(["t", "t"]).interval_note() == (
        "brackets: 95% Student-t interval of the mean over seeds"
    )
    mixed = study(["t", "t", "bootstrap", "none"]).interval_note()
    assert mixed.startswith(
        "brackets: 95% Student-t interval of the mean over seeds; in the 2 of 4"
    )
    only = study(["bootstrap", "none"]).interval_note()
    assert only.startswith("brackets (fewer than 3 seeds): 95% bootstrap interval")


def test_html_page_renders_the_markdown_and_inlines_the_plots() -> None:
    """report.html comes from markdown-it-py: headings, tables with a header row, lists,
    the folded warnings, inline code and the plots as base64 PNG (no file reference)."""
    import base64

    from sparserobust.report.html import html_page

    md = (
        "# Title\n\nSome `code`, **bold** and a < b.\n\n| a | b |\n| --- | --- |\n"
        "| 1 | `x` |\n\n- one\n- two\n\n<details><summary>All 2 warnings</summary>\n\n"
        "- w1\n\n</details>\n\n![overview](overview.png)\n"
        "![security_pgd_linf](security_pgd_linf.png)\n"
    )
    page = html_page(md, {"overview": b"PNG1", "security_pgd_linf": b"PNG2"}, title="t & u")
    assert "<title>t &amp; u</title>" in page and "<h1>Title</h1>" in page
    assert "<code>code</code>" in page and "<strong>bold</strong>" in page
    assert "a &lt; b" in page
    assert "<th>a</th>" in page and "<td><code>x</code></td>" in page
    assert page.count("<table>") == 1 and page.count("<li>") == 3
    assert "<details><summary>All 2 warnings</summary>" in page and "</details>" in page
    png1 = base64.b64encode(b"PNG1").decode()
    assert f'alt="overview" class="overview" src="data:image/png;base64,{png1}"' in page
    assert 'class="security"' in page and ".png" not in page


def test_figures_leave_the_matplotlib_state_alone() -> None:
    """A study run from a notebook must not switch its plotting backend or keep figures:
    the report draws without pyplot."""
    import matplotlib
    import matplotlib.pyplot as plt

    from sparserobust.report import Cell
    from sparserobust.report.figures import metric_plot

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        plt.figure()  # the user's own figure
        cells = {0.0: Cell(0.9, 0.85, 0.95, 3, 0.0), 0.5: Cell(0.8, 0.7, 0.9, 3, 0.5)}
        png = metric_plot("m", {"m": {"a": cells}, CLEAN: {"a": cells}})
        assert png.startswith(b"\x89PNG") and len(png) > 5000
        assert matplotlib.get_backend() == "svg" and len(plt.get_fignums()) == 1
    finally:
        plt.close("all")
        matplotlib.use(before)
