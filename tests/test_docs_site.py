"""The API reference site's hook (scripts/mkdocs_hooks.py): the README is the home page
and links that leave docs/ are rewritten, so `mkdocs build --strict` (in `make test`)
passes without losing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hooks() -> ModuleType:
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts/mkdocs_hooks.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def page(src_uri: str, generated: bool = False) -> SimpleNamespace:
    file = SimpleNamespace(src_uri=src_uri, generated_by="hook" if generated else None)
    return SimpleNamespace(file=file)


def test_links_that_leave_docs_are_rewritten(hooks: ModuleType) -> None:
    md = (
        "See [the config](../configs/quick.yaml), [design](design.md#layout), "
        "[up and back](../docs/metrics.md), [web](https://example.org/x.md), "
        "[anchor](#top) and ![plot](results/linear/a.png)."
    )
    out = hooks.on_page_markdown(md, page("training.md"), None, None)
    assert "the config (`configs/quick.yaml`)" in out and "](../configs" not in out
    assert "[design](design.md#layout)" in out and "[up and back](metrics.md)" in out
    assert "[web](https://example.org/x.md)" in out and "[anchor](#top)" in out
    assert "![plot](results/linear/a.png)" in out
    # from a page one folder down, a docs page is reached with ../
    out = hooks.on_page_markdown("[d](../design.md)", page("reference/api.md"), None, None)
    assert out == "[d](../design.md)"


def test_the_readme_as_home_page_links_into_docs(hooks: ModuleType) -> None:
    md = "Read [the design](docs/design.md) and [the Makefile](Makefile)."
    out = hooks.on_page_markdown(md, page("index.md", generated=True), None, None)
    assert out == "Read [the design](design.md) and the Makefile (`Makefile`)."
