"""Address resolution, as outsystemscc does it before every tunnel.

The connector sends one plain ``GET`` to the address it was given (no query
string, no token, redirects not followed), over the same proxy and TLS path
as the tunnel. When the answer is ``302 Found`` its ``Location`` becomes the
URL to tunnel to; any other answer leaves the address as it is (a stock
chisel server says 404). A gateway uses this to steer connectors to the node
that serves their stage.

Only the status line and the headers are read (bounded), never the body.
Failing to *reach* the gateway fails the attempt with the usual message;
an answer that is not HTTP, or none within the time limit, is logged and the
address is used unchanged: the tunnel attempt then says what is wrong.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from urllib.parse import urljoin, urlsplit, urlunsplit

from qanat import __version__
from qanat.connector.egress import Egress, endpoint_of
from qanat.errors import TlsError
from qanat.tls import describe_tls_failure

log = logging.getLogger("qanat.connector")

#: Longest response head read.
MAX_HEAD_BYTES = 16 * 1024
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r?\n")
_REDIRECT_SCHEMES = ("http", "https", "ws", "wss")


class _HeadReader(asyncio.Protocol):
    """Collects a response head; the future resolves with it (or b"" on EOF)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.buffer += data
        for end in (self.buffer.find(b"\r\n\r\n"), self.buffer.find(b"\n\n")):
            if end >= 0:
                self.done.set_result(bytes(self.buffer[:end]))
                return
        if len(self.buffer) > MAX_HEAD_BYTES:
            self.done.set_result(bytes(self.buffer[:MAX_HEAD_BYTES]))

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(bytes(self.buffer))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if exc is not None:
            self.done.set_exception(exc)
        else:
            self.done.set_result(bytes(self.buffer))


def request_bytes(address: str) -> bytes:
    """The GET outsystemscc sends: the address path, no query, no token."""
    parts = urlsplit(address)
    netloc = parts.netloc.rpartition("@")[2]
    return (
        f"GET {parts.path or '/'} HTTP/1.1\r\n"
        f"Host: {netloc}\r\n"
        f"User-Agent: qanat/{__version__}\r\n"
        "Accept-Encoding: identity\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


def redirect_target(address: str, head: bytes) -> str | None:
    """The tunnel URL a response head names, or None to keep ``address``.

    Only ``302`` with a usable ``Location`` counts; a relative Location is
    resolved against the address.
    """
    match = _STATUS.match(head)
    if match is None or int(match.group(1)) != 302:
        return None
    for line in head.split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"location":
            location = value.strip().decode("latin-1")
            if not location:
                return None
            target = urljoin(address, location)
            parts = urlsplit(target)
            if parts.scheme.lower() not in _REDIRECT_SCHEMES or not parts.hostname:
                return None
            return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))
    return None


async def resolve_address(address: str, egress: Egress, *, timeout_s: float) -> str:
    """GET ``address`` once; return the URL to tunnel to.

    Raises:
        ProxyError / TlsError / TunnelError: the gateway could not be reached.
    """
    plain = urlsplit(address)
    scheme = {"ws": "http", "wss": "https"}.get(plain.scheme.lower(), plain.scheme.lower())
    url = urlunsplit((scheme, plain.netloc, plain.path, "", ""))
    transport, reader = await egress.open(url, _HeadReader, timeout_s=timeout_s)
    try:
        transport.write(request_bytes(url))
        async with asyncio.timeout(timeout_s):
            head = await reader.done
    except TimeoutError:
        log.warning(
            "address %s: no answer to the address GET within %gs; using it as is",
            address,
            timeout_s,
        )
        return address
    except ssl.SSLError as exc:
        _, host, port = endpoint_of(url)
        raise TlsError(describe_tls_failure(exc, host, port)) from None
    except OSError as exc:
        log.warning("address %s: the address GET failed (%s); using it as is", address, exc)
        return address
    finally:
        transport.abort()
    target = redirect_target(url, head)
    if target is None:
        if not head:
            log.debug("address %s: closed without an answer to the address GET", address)
        elif not _STATUS.match(head):
            log.warning("address %s: the answer to the address GET is not HTTP", address)
        return address
    return target
