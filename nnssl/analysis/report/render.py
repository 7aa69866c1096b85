"""Rendering the report: Markdown (figures linked as ``figures/*.png``) and one self-contained HTML page (figures
embedded as base64, so it can be mailed or archived alone)."""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from nnssl.analysis.report.blocks import Figure, Heading, Para, Report, Table


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, out_dir: Path) -> str:
    """The report as Markdown; figures are linked relative to ``out_dir``, where the file is written."""
    lines: list[str] = []
    for b in report.blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [("> **Note:** " + b.text) if b.note else b.text, ""]
        elif isinstance(b, Table):
            if b.caption:
                lines += [f"*{b.caption}*", ""]
            lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            lines.append("|" + "|".join("---" for _ in b.header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif isinstance(b, Figure):
            rel = os.path.relpath(b.path, out_dir).replace(os.sep, "/")
            lines += [f"![{b.caption}]({rel})", "", f"*{b.caption}*", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f0f0f0}caption{caption-side:top;text-align:left;font-style:italic;padding:4px 0}
.note{background:#fff6d5;border-left:4px solid #e0b000;padding:6px 10px}img{max-width:100%}
figure{margin:1em 0}figcaption{font-style:italic;font-size:13px}code{background:#f4f4f4;padding:0 3px}"""


def _inline(text: str) -> str:
    """Escape HTML and turn `code` spans into <code>."""
    parts = str(text).split("`")
    return "".join(html.escape(p) if i % 2 == 0 else f"<code>{html.escape(p)}</code>" for i, p in enumerate(parts))


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (figures embedded as base64 PNGs)."""
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(report.title)}</title>",
           f"<style>{_CSS}</style></head><body>"]
    for b in report.blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p class='note'><b>Note:</b> {_inline(b.text)}</p>" if b.note else f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            out.append("<table>")
            if b.caption:
                out.append(f"<caption>{_inline(b.caption)}</caption>")
            out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b.header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in b.rows]
            out.append("</table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(Path(b.path).read_bytes()).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(b.caption)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)
