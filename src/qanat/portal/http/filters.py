"""Jinja2 filters of the pages: one timestamp format, byte counts, sparklines.

Timestamps: the server writes ``<time datetime="<ISO UTC>">2026-12-01
22:14:05 UTC</time>``; ``portal.js`` rewrites each into the browser's local
time with its zone (``2026-12-01 23:14:05 CET``), the same format, so every
time on every page reads alike with or without JavaScript.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from markupsafe import Markup, escape


def timestamp(value: str | datetime | None) -> Markup:
    """``<time>`` in the one format of the portal; a dash for no time."""
    if value is None or value == "":
        return Markup('<span class="muted">&ndash;</span>')
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return escape(value)
    else:
        parsed = value
    iso = parsed.isoformat(timespec="seconds").replace("+00:00", "Z")
    text = parsed.strftime("%Y-%m-%d %H:%M:%S") + " UTC"
    return Markup('<time datetime="{}">{}</time>').format(iso, text)


def human_bytes(value: int | float | None) -> str:
    """``1.5 MB``-style (powers of 1000, as network counters usually are)."""
    amount = float(value or 0)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if amount < 1000 or unit == "TB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{amount:.1f} TB"


def sparkline(series: Sequence[int], width: int = 120, height: int = 24) -> Markup:
    """Connections per minute as a small bar chart (inline SVG, no script)."""
    if not series:
        return Markup("")
    top = max(series) or 1
    bar = width / len(series)
    rects = []
    for i, value in enumerate(series):
        if value <= 0:
            continue
        h = max(1.0, height * value / top)
        rects.append(
            Markup('<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}"></rect>').format(
                i * bar, height - h, max(bar - 0.5, 0.5), h
            )
        )
    label = f"connections per minute over the last {len(series)} minutes, at most {max(series)}"
    return Markup(
        '<svg class="spark" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img"'
        ' aria-label="{label}"><rect class="base" x="0" y="{base}" width="{w}" height="1">'
        "</rect>{rects}</svg>"
    ).format(w=width, h=height, base=height - 1, label=label, rects=Markup("").join(rects))


FILTERS: dict[str, Callable[..., Any]] = {
    "ts": timestamp,
    "bytes": human_bytes,
    "sparkline": sparkline,
}
