"""Logging: operator-readable lines by default, JSON lines on request.

Every line about a tunnel carries its context (stage, tunnel id, connector
id) through :class:`ContextLogger`; secrets are never passed to a logger.

Peers supply many of the strings logged (a connector's version, remotes, a
channel's target, a refusal reason): the human format therefore escapes
every control character (newline, carriage return, ANSI escape ...) of the
message and of the context, so no peer can forge or hide a line. JSON lines
are escaped by JSON itself.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any


def escape(text: str) -> str:
    """``text`` with control and other non-printable characters as ``\\xNN`` escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class ContextLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that prefixes ``[key=value ...]`` and keeps the fields for JSON."""

    def __init__(self, logger: logging.Logger, **context: Any) -> None:
        super().__init__(logger, context)

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra["ctx"] = self.extra
        kwargs["extra"] = extra
        return msg, kwargs

    def bind(self, **more: Any) -> ContextLogger:
        merged = dict(self.extra or {})
        merged.update(more)
        return ContextLogger(self.logger, **merged)


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ctx = getattr(record, "ctx", None)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        prefix = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} "
        if ctx:
            prefix += "[" + " ".join(f"{k}={escape(str(v))}" for k, v in ctx.items()) + "] "
        text = prefix + escape(record.getMessage())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = getattr(record, "ctx", None)
        if ctx:
            doc.update(ctx)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(verbose: int = 0, fmt: str = "human") -> None:
    """Configure the root logger once, at the CLI edge."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    logging.getLogger("qanat").setLevel(logging.DEBUG if verbose >= 1 else logging.INFO)
    # websockets is chatty at INFO; its news reaches the operator through
    # our own messages. -vvv adds the SSH adapter's debug lines
    # (qanat.net.ssh.debug_packets, called by the CLI).
    logging.getLogger("websockets").setLevel(logging.WARNING)
