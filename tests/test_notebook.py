"""examples/your_model.ipynb runs top to bottom (nbclient) on digits: its own nn.Module
through a sparsity sweep, the results as a DataFrame, and a plot."""

from __future__ import annotations

from pathlib import Path

import pytest

import sparserobust

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "your_model.ipynb"


def test_notebook_runs_its_own_model_through_a_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    run = tmp_path / "run"
    monkeypatch.setenv("SPARSEROBUST_NOTEBOOK_RUN", str(run))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # kept clean
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]

    # the study ran the notebook's own model: dense + 2 methods x 3 levels, all attacked
    models = sparserobust.models(run)
    assert len(models) == 7 and set(models.method) == {"dense", "global-magnitude", "random"}
    df = sparserobust.results(run)
    assert df.trusted.all() and (df.label == "pgd_linf robust_acc@0.1").sum() == 7
    masked = models[models.method != "dense"]
    assert (masked.sparsity - masked.target_sparsity).abs().max() < 0.01

    # the DataFrame is shown as a table of its first 8 rows
    tables = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(tables) == 1 and tables[0].count("<tr") == 9 and "clean_accuracy" in tables[0]
    # the plot: one PNG
    pngs = [o.data["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1 and len(pngs[0]) > 10_000
    # the printed curves are the DataFrame's numbers (dense at 0 starts both curves)
    printed = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    pgd = df[df.label == "pgd_linf robust_acc@0.1"]
    expected = []
    for method in ("global-magnitude", "random"):
        rows = pgd[pgd.method.isin(["dense", method])].sort_values("target_sparsity")
        for row in rows.itertuples():
            expected.append(
                f"{method} {row.target_sparsity:g} clean {row.clean_accuracy:.4f} "
                f"pgd {row.value:.4f}"
            )
    assert printed.strip().splitlines() == expected
    dense_clean = float(models[models.method == "dense"].clean_accuracy.iloc[0])
    assert dense_clean > 0.8  # the notebook's model learned the digits
