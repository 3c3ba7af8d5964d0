"""Reaching the gateway through a corporate proxy: HTTP CONNECT or SOCKS5.

:func:`open_proxied_socket` returns a connected, non-blocking socket whose
far end is the gateway; the caller puts TLS and the WebSocket on top exactly
as on a direct connection. Two kinds of proxy:

- ``http``: ``CONNECT host:port HTTP/1.1`` with ``Proxy-Authorization:
  Basic`` when the URL has credentials. Written here: it is a few lines and
  the answer's status is what the operator needs to see.
- ``socks5``: RFC 1928 with RFC 1929 user/password authentication, through
  python-socks (the only module that imports it). The gateway's host name
  is always sent to the proxy (remote DNS): inside a corporate network the
  connector often cannot resolve public names itself.

Every failure is a :class:`~qanat.errors.ProxyError` whose message names the
proxy (never its password), what it said, and what to change. Cancellation
(the caller's timeout) closes the socket.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
from dataclasses import dataclass, field

from python_socks import ProxyConnectionError, ProxyTimeoutError, ProxyType
from python_socks import ProxyError as SocksError
from python_socks.async_.asyncio import Proxy as SocksProxy

from qanat import __version__
from qanat.errors import ProxyError

#: Longest CONNECT answer head we read.
MAX_CONNECT_RESPONSE_BYTES = 16 * 1024

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?\r?\n")

# RFC 1928 reply codes, in the operator's words.
_SOCKS_REPLIES = {
    1: "general failure",
    2: "connection not allowed by the proxy's rules",
    3: "network unreachable from the proxy",
    4: "host unreachable from the proxy",
    5: "connection refused by the gateway host",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """One proxy, parsed from ``--proxy`` or the environment.

    Attributes:
        scheme: ``http`` (HTTP CONNECT) or ``socks5``.
        host / port: where the proxy listens.
        username / password: credentials, empty when none.
        source: where it came from (``--proxy``, ``HTTPS_PROXY``), for messages.
    """

    scheme: str
    host: str
    port: int
    username: str = ""
    password: str = field(default="", repr=False)
    source: str = "--proxy"

    def __str__(self) -> str:
        """The proxy URL without its password."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}"


async def open_proxied_socket(proxy: ProxySpec, host: str, port: int) -> socket.socket:
    """Connect to ``host:port`` through ``proxy``.

    Raises:
        ProxyError: the proxy cannot be reached, refuses the credentials or
            the destination, or breaks its protocol.
    """
    if proxy.scheme == "socks5":
        return await _socks5(proxy, host, port)
    return await _http_connect(proxy, host, port)


# -- HTTP CONNECT -----------------------------------------------------------------


async def _dial(proxy: ProxySpec) -> socket.socket:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ProxyError(
            f"cannot resolve proxy host {proxy.host!r} ({exc.strerror}): check {proxy.source}"
        ) from None
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    why = _os_reason(last) if last is not None else "no address"
    raise ProxyError(f"cannot connect to proxy {proxy} ({why}): check {proxy.source}")


def _connect_request(proxy: ProxySpec, host: str, port: int) -> bytes:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [
        f"CONNECT {authority} HTTP/1.1",
        f"Host: {authority}",
        f"User-Agent: qanat/{__version__}",
    ]
    if proxy.username or proxy.password:
        token = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
        lines.append(f"Proxy-Authorization: Basic {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _http_connect(proxy: ProxySpec, host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = await _dial(proxy)
    try:
        await loop.sock_sendall(sock, _connect_request(proxy, host, port))
        head = bytearray()
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                raise ProxyError(
                    f"proxy {proxy} closed the connection without answering CONNECT to "
                    f"{host}:{port}: check that {proxy.source} names an HTTP proxy"
                )
            head += chunk
            if len(head) > MAX_CONNECT_RESPONSE_BYTES:
                raise ProxyError(f"proxy {proxy} sent an oversized answer to CONNECT")
        match = _STATUS_LINE.match(head)
        if match is None:
            raise ProxyError(
                f"proxy {proxy} did not answer CONNECT with HTTP ({bytes(head[:40])!r}): "
                f"check that {proxy.source} names an HTTP proxy (or use socks5://)"
            )
        status = int(match.group(1))
        reason = (match.group(2) or b"").decode("latin-1").strip()
        if 200 <= status < 300:
            end = head.find(b"\r\n\r\n")
            rest = head[end + 4 :] if end >= 0 else head[head.find(b"\n\n") + 2 :]
            if rest:
                # Nothing may come before our first byte; the stream would be corrupt.
                raise ProxyError(f"proxy {proxy} sent data right after accepting CONNECT")
            return sock
        raise _connect_refused(proxy, host, port, status, reason)
    except BaseException:
        sock.close()
        raise


def _connect_refused(
    proxy: ProxySpec, host: str, port: int, status: int, reason: str
) -> ProxyError:
    said = f"{status} {reason}".strip()
    if status in (401, 407):
        # 401 is not standard for a proxy, but tinyproxy answers it to a wrong password.
        if proxy.username or proxy.password:
            fix = f"check the user name and password in {proxy.source}"
            what = "rejected the user name or password"
        else:
            fix = f"put them in {proxy.source}: http://USER:PASSWORD@{proxy.host}:{proxy.port}"
            what = "requires a user name and password"
        return ProxyError(f"proxy {proxy} {what} ({said}): {fix}", status=status)
    if status == 403:
        return ProxyError(
            f"proxy {proxy} refused CONNECT to {host}:{port} ({said}): its policy does not "
            f"allow this destination or port; ask its administrators to allow CONNECT to "
            f"{host}:{port} (many proxies only allow port 443)",
            status=status,
        )
    if status in (502, 503, 504) or status == 500:
        return ProxyError(
            f"proxy {proxy} could not reach the gateway {host}:{port} ({said}): check the "
            "address and that the gateway is up",
            status=status,
        )
    return ProxyError(f"proxy {proxy} answered CONNECT to {host}:{port} with {said}", status=status)


def _os_reason(exc: OSError) -> str:
    # uvloop's sock_connect says "Connect call failed (...)"; the errno says more.
    return os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))


# -- SOCKS5 (python-socks) --------------------------------------------------------


async def _socks5(proxy: ProxySpec, host: str, port: int) -> socket.socket:
    client = SocksProxy(
        ProxyType.SOCKS5,
        proxy.host,
        proxy.port,
        username=proxy.username or None,
        password=proxy.password or None,
        rdns=True,
        loop=asyncio.get_running_loop(),
    )
    try:
        # Our caller bounds the whole connect; this only satisfies the library.
        return await client.connect(host, port, timeout=3600)
    except ProxyTimeoutError:
        raise ProxyError(f"SOCKS5 proxy {proxy} did not answer in time") from None
    except ProxyConnectionError as exc:
        raise ProxyError(
            f"cannot connect to SOCKS5 proxy {proxy} ({_os_reason(exc)}): check {proxy.source}"
        ) from None
    except SocksError as exc:
        raise _socks_refused(proxy, host, port, exc) from None
    except OSError as exc:
        raise ProxyError(f"SOCKS5 proxy {proxy} failed: {exc.strerror or exc}") from None


def _socks_refused(proxy: ProxySpec, host: str, port: int, exc: SocksError) -> ProxyError:
    text = str(exc)
    lowered = text.lower()
    if "authentication" in lowered and ("failure" in lowered or "failed" in lowered):
        return ProxyError(
            f"SOCKS5 proxy {proxy} rejected the user name or password ({text}): "
            f"check them in {proxy.source}"
        )
    if "no acceptable authentication" in lowered:
        fix = (
            f"put a user name and password in {proxy.source}: "
            f"socks5://USER:PASSWORD@{proxy.host}:{proxy.port}"
            if not proxy.username
            else "the proxy wants an authentication method other than user/password"
        )
        return ProxyError(f"SOCKS5 proxy {proxy} refused to authenticate us ({text}): {fix}")
    code = exc.error_code
    if isinstance(code, int) and code in _SOCKS_REPLIES:
        hint = "; ask its administrators to allow this destination and port" if code == 2 else ""
        return ProxyError(
            f"SOCKS5 proxy {proxy} could not connect to {host}:{port}: {_SOCKS_REPLIES[code]}{hint}"
        )
    return ProxyError(f"SOCKS5 proxy {proxy} failed: {text}")
