"""The report's HTML page: its markdown rendered into one self-contained page, the
plots inlined as base64 PNG (it opens offline).
"""

from __future__ import annotations

import base64
import html
import re

from sparserobust.report.text import slug

_INLINE_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    return _INLINE_CODE.sub(r"<code>\1</code>", html.escape(text))


def html_page(md: str, images: dict[str, bytes], title: str = "sparserobust report") -> str:
    """A self-contained page from the report's markdown: tables (first row a header),
    headings, lists, <details> blocks, with the plots inlined as base64 PNG."""
    body: list[str] = []
    in_table = in_list = False
    for line in md.splitlines():
        m = re.match(r"!\[(.*)\]\((.*)\)", line)
        if in_list and not line.startswith("- "):
            body.append("</ul>")
            in_list = False
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if m and m.group(1) in images:
            data = base64.b64encode(images[m.group(1)]).decode()
            body.append(
                f'<img alt="{html.escape(m.group(1))}" class="{slug(m.group(1)).split("_")[0]}" '
                f'src="data:image/png;base64,{data}">'
            )
        elif line.startswith(("<details>", "</details>")):
            body.append(line)
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    if in_list:
        body.append("</ul>")
    style = (
        "body{font-family:sans-serif;max-width:1150px;margin:2em auto;line-height:1.35}"
        "table{border-collapse:collapse;font-size:12px;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px}th{background:#f2f2f2;text-align:left}"
        "img{max-width:48%;margin:4px}img.overview,img.tradeoff,img.diagnostics,"
        "img.security{max-width:100%}li{font-size:14px}summary{cursor:pointer}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<link rel='icon' href='data:,'>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


__all__ = ["html_page"]
