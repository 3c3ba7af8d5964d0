"""Can this host bind a stage's address? Asked when stages are loaded.

A stage whose bind address is not an address of the gateway host cannot
serve any port. The connector of that stage learns it from the ``config``
refusal (see :meth:`qanat.gateway.ports.PortTable.bind`); the operator learns
it earlier, from a warning naming the stage when the stage file is loaded.
Other stages are unaffected either way.
"""

from __future__ import annotations

import errno
import socket


def bind_problem(host: str) -> str | None:
    """Why ``host`` cannot be bound here, or None when it can.

    Binds a TCP socket to ``(host, 0)`` and closes it at once: no traffic, no
    port kept.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
    except OSError as exc:
        return unbindable_text(host, exc)
    return None


def unbindable_text(host: str, exc: OSError) -> str:
    """One sentence about a failed bind on ``host``, with the fix."""
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"bind address {host} is not an address of the gateway host; add it to an "
            "interface or change the stage's bind address"
        )
    if exc.errno == errno.EACCES:
        return f"bind address {host}: permission denied"
    return f"bind address {host}: {exc.strerror or exc}"
