"""Two ways to end an app connection that the app side can tell apart.

``qanat probe`` (and any app's error) must distinguish "refused by the stage
allowlist" from "no connector could reach the endpoint". A plain abort sends
FIN or RST depending on whether unread bytes happen to sit in the socket, so
the gateway ends them deliberately:

- :func:`reset`: RST at once (SO_LINGER 0), for sources it will not serve.
- :func:`close_after_refusal`: FIN first, then close, so the app reads a
  clean end of stream without data before anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

_LINGER_ZERO = struct.pack("ii", 1, 0)


def reset(transport: asyncio.BaseTransport) -> None:
    """Abort with an RST, whatever is buffered."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()  # type: ignore[attr-defined]


def close_after_refusal(transport: asyncio.BaseTransport) -> None:
    """Send FIN (the app sees end of stream without data), then drop the connection."""
    with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
        if transport.can_write_eof() and not transport.is_closing():  # type: ignore[attr-defined]
            transport.write_eof()  # type: ignore[attr-defined]
    transport.abort()  # type: ignore[attr-defined]
