"""A response-head parser for the checks: pure, small, tolerant.

The diagnose and probe commands only need the status line, a few headers and
the start of the body, from servers that may not be what they should be (a
captive proxy, an L7 firewall's block page). So this parser accepts anything
that looks like ``HTTP/x.y NNN reason`` and never raises on odd headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_STATUS_LINE = re.compile(rb"HTTP/(\d)(?:\.(\d))? (\d{3})(?: (.*))?\Z")

#: Bytes of body kept for explanations.
BODY_PREVIEW_BYTES = 2048


class NotHttp(ValueError):
    """The bytes do not start with an HTTP status line."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names, last wins
    body: bytes = b""

    @property
    def status_line(self) -> str:
        return f"{self.status} {self.reason}".strip()

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    @property
    def body_text(self) -> str:
        return self.body[:BODY_PREVIEW_BYTES].decode("utf-8", "replace")

    @property
    def looks_like_html(self) -> bool:
        if "html" in self.header("content-type").lower():
            return True
        start = self.body[:512].lstrip().lower()
        return start.startswith((b"<!doctype html", b"<html")) or b"<title" in start


def split_head(data: bytes) -> tuple[bytes, bytes] | None:
    """(head, rest) when ``data`` holds a complete head, else None."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        idx = data.find(sep)
        if idx >= 0:
            return data[:idx], data[idx + len(sep) :]
    return None


def parse_response_head(head: bytes, body: bytes = b"") -> ResponseHead:
    """Parse a response head (without the blank line).

    Raises:
        NotHttp: the first line is not an HTTP status line.
    """
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    match = _STATUS_LINE.match(lines[0].rstrip(b"\r"))
    if match is None:
        raise NotHttp(f"not an HTTP response: {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip():
            key = name.strip().decode("latin-1").lower()
            headers[key] = value.strip().decode("latin-1")
    reason = (match.group(4) or b"").decode("latin-1").strip()
    return ResponseHead(int(match.group(3)), reason, headers, body[:BODY_PREVIEW_BYTES])


def first_line(text: str, limit: int = 120) -> str:
    """The first non-empty line of ``text``, shortened; HTML reduced to its title."""
    lowered = text.lower()
    start = lowered.find("<title>")
    if start >= 0:
        end = lowered.find("</title>", start)
        if end > start:
            text = text[start + 7 : end]
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""
