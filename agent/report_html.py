"""A self-contained static HTML report: tables plus bar charts drawn as inline SVG.

No plotting library: a bar chart of counts is a few rectangles, and a report that opens offline in
any browser, with nothing fetched, is what an operator can attach to an incident ticket.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f3f3f3}h2{margin-top:1.5em}
.bar{fill:#3b6ea8}.lbl{font-size:12px}"""


LABEL_WIDTH = 360  # px: room for "chain / wallet uuid" at 12 px
VALUE_WIDTH = 80  # px: room for the number after the longest bar


def bar_chart(title: str, values: Mapping[str, int | float], *, width: int = 860, bar: int = 22) -> str:
    """One horizontal bar per label, scaled to the largest value."""
    items = list(values.items())
    top = max((v for _, v in items), default=0) or 1
    height = bar * len(items) + 10
    span = width - LABEL_WIDTH - VALUE_WIDTH
    parts = [
        f'<h2>{html.escape(title)}</h2><svg width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)}">'
    ]
    for i, (label, value) in enumerate(items):
        y = i * bar + 5
        w = max(int(span * value / top), 1)
        text = str(label) if len(str(label)) <= 52 else str(label)[:51] + "…"
        parts.append(
            f'<text class="lbl" x="0" y="{y + 15}">{html.escape(text)}</text>'
            f'<rect class="bar" x="{LABEL_WIDTH}" y="{y}" width="{w}" height="{bar - 6}"/>'
            f'<text class="lbl" x="{LABEL_WIDTH + w + 6}" y="{y + 15}">{value}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def count_by(rows: Iterable[dict[str, Any]], *keys: str) -> dict[str, int]:
    return dict(sorted(Counter(" / ".join(str(r.get(k, "")) for k in keys) for r in rows).items()))


def render(title: str, rows: list[dict[str, Any]], charts: list[tuple[str, Mapping[str, int | float]]]) -> str:
    body = "".join(bar_chart(t, v) for t, v in charts if v)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}"
        f"<h2>Rows ({len(rows)})</h2>{table(rows)}</body></html>\n"
    )
