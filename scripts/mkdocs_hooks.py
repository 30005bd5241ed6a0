"""mkdocs hooks (mkdocs.yml): the README becomes the site's home page, and links that
leave docs/ still build in strict mode.

- ``on_files``: ``README.md`` (repository root) is added as ``index.md``;
- ``on_page_markdown``: a relative link whose target lies outside ``docs/`` (``../configs/
  x.yaml``, or ``docs/design.md`` from the README) is rewritten: into a link to the page
  when the target is a page of the site, else into the path in backticks (the site
  publishes only docs/).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def on_files(files: Files, config: Any) -> Files:
    """Add the README as the home page (unless docs/index.md exists)."""
    if files.get_file_from_path("index.md") is None:
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        files.append(File.generated(config, "index.md", content=readme))
    return files


def _source(page: Any) -> str:
    """The page's source path relative to the repository root."""
    if page.file.src_uri == "index.md" and page.file.generated_by:
        return "README.md"
    return posixpath.join("docs", page.file.src_uri)


def outside_link(target: str, source: str) -> tuple[str, bool]:
    """Where ``target`` (a relative link in the file ``source``, both relative to the
    repository root) points: (the path relative to the repository root, whether that
    lies inside docs/)."""
    path = posixpath.normpath(posixpath.join(posixpath.dirname(source), target))
    return path, path.startswith("docs/")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Rewrite the links of ``page`` that leave docs/ (see the module docstring)."""
    source = _source(page)
    here = posixpath.dirname(page.file.src_uri)

    def fix(m: re.Match[str]) -> str:
        bang, text, target = m.groups()
        if re.match(r"[a-z]+:|#|/", target):
            return m.group(0)
        path, fragment = (target.split("#", 1) + [""])[:2]
        repo_path, inside = outside_link(path, source)
        if inside:
            rel = posixpath.relpath(repo_path.removeprefix("docs/"), here or ".")
            if rel == path:
                return m.group(0)
            return f"{bang}[{text}]({rel}{'#' + fragment if fragment else ''})"
        return f"{text} (`{repo_path}`)" if text and text != repo_path else f"`{repo_path}`"

    return LINK.sub(fix, markdown)
