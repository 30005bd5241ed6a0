"""The report's HTML page: its markdown rendered by markdown-it-py (CommonMark with
tables; the ``<details>`` blocks pass through) into one self-contained page, the plots
inlined as base64 PNG, so it opens offline."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

from markdown_it import MarkdownIt

from sparserobust.report.text import slug

STYLE = (
    "body{font-family:sans-serif;max-width:1150px;margin:2em auto;line-height:1.35}"
    "table{border-collapse:collapse;font-size:12px;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:2px 6px}th{background:#f2f2f2;text-align:left}"
    "img{max-width:48%;margin:4px}img.overview,img.tradeoff,img.diagnostics,"
    "img.security{max-width:100%}li{font-size:14px}summary{cursor:pointer}"
)
"""The page's CSS: compact tables, two plots per row, the wide figures full width."""


def _markdown(images: dict[str, bytes]) -> MarkdownIt:
    """CommonMark with tables and raw HTML, whose images named in ``images`` (by their
    alt text, the plot's name) become inline base64 PNG with the name's first word as
    their class."""
    md = MarkdownIt("commonmark", {"html": True}).enable("table")

    def image(renderer: Any, tokens: Sequence[Any], idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        name = token.content
        src = str(token.attrGet("src") or "")
        if name in images:
            src = "data:image/png;base64," + base64.b64encode(images[name]).decode()
        return (
            f'<img alt="{html.escape(name)}" class="{slug(name).split("_")[0]}" '
            f'src="{html.escape(src)}">'
        )

    md.add_render_rule("image", image)
    return md


def html_page(md: str, images: dict[str, bytes], title: str = "sparserobust report") -> str:
    """A self-contained page of the report's markdown ``md``, with the plots of
    ``images`` (plot name -> PNG bytes, referenced as ``![name](name.png)``) inlined."""
    body = _markdown(images).render(md)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<link rel='icon' href='data:,'>"
        f"<style>{STYLE}</style></head><body>\n{body}</body></html>\n"
    )


__all__ = ["STYLE", "html_page"]
