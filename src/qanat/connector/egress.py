"""How the connector reaches a gateway URL: TCP or a proxy, then TLS.

Both the address GET (:mod:`qanat.connector.resolve`) and the tunnel go
through :meth:`Egress.open`, so they take the same path through the same
proxy with the same certificate checks::

    url -> proxy for this host? (--proxy, else HTTPS_PROXY/NO_PROXY)
        -> TCP to the gateway, or to the proxy + CONNECT / SOCKS5
        -> TLS for https/wss (verified; SNI and name check on the gateway host)
        -> an asyncio transport with the caller's protocol

Failures become :class:`~qanat.errors.TunnelError` subclasses worded for the
operator: :class:`~qanat.errors.ProxyError` for the proxy,
:class:`~qanat.errors.TlsError` for certificates, plain ``TunnelError`` for
names, refusals and timeouts.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from qanat.connector.options import ConnectOptions
from qanat.connector.proxies import choose_proxy
from qanat.errors import ProxyError, TlsError, TunnelError
from qanat.net.proxy import ProxySpec, open_proxied_socket
from qanat.tls import client_context, describe_tls_failure

P = TypeVar("P", bound=asyncio.BaseProtocol)

_SECURE = ("https", "wss")


def endpoint_of(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of a gateway URL, with the scheme's default port."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = parts.port or (443 if scheme in _SECURE else 80)
    return scheme, host, port


def _file_state(path: str | None) -> object:
    """What tells a changed file: its identity, size and modification time."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.errno  # missing now: client_context says so
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class Egress:
    """The connector's way out; one per run, used by every session.

    Creating it checks the TLS files (``--tls-ca``, ``--tls-cert``,
    ``--tls-key``), so a bad file stops the connector at start.

    Raises:
        ConfigError: from the constructor, for unusable TLS files.
    """

    def __init__(self, options: ConnectOptions) -> None:
        self.options = options
        self._tls: tuple[tuple[object, ...], ssl.SSLContext] | None = None
        self.tls_context()

    def tls_context(self) -> ssl.SSLContext:
        """The client context, made again when a TLS file changed (a rotated
        client certificate is picked up by the next session).

        Kept otherwise: loading the system's trust store costs ~17 ms of CPU
        (more on a busy machine), on the path of every reconnect.
        """
        opts = self.options
        key = tuple(_file_state(f) for f in (opts.tls_ca, opts.tls_cert, opts.tls_key))
        if self._tls is None or self._tls[0] != key:
            self._tls = (key, client_context(opts.tls_ca, opts.tls_cert, opts.tls_key))
        return self._tls[1]

    def proxy_for(self, url: str) -> ProxySpec | None:
        scheme, host, port = endpoint_of(url)
        return choose_proxy(scheme, host, port, self.options.proxy, self.options.proxy_env)

    async def open(
        self, url: str, protocol_factory: Callable[[], P], *, timeout_s: float
    ) -> tuple[asyncio.Transport, P]:
        """Connect to the host of ``url`` (TLS for https/wss) and return the
        transport with its protocol.

        Raises:
            ProxyError / TlsError / TunnelError: what failed and the fix.
        """
        scheme, host, port = endpoint_of(url)
        secure = scheme in _SECURE
        proxy = self.proxy_for(url)
        via = f" through proxy {proxy} ({proxy.source})" if proxy is not None else ""
        loop = asyncio.get_running_loop()
        ctx: ssl.SSLContext | None = None
        transport: asyncio.Transport
        try:
            ctx = self.tls_context() if secure else None
            async with asyncio.timeout(timeout_s):
                if proxy is None:
                    transport, protocol = await loop.create_connection(
                        protocol_factory,
                        host,
                        port,
                        ssl=ctx,
                        server_hostname=host if secure else None,
                    )
                else:
                    sock = await open_proxied_socket(proxy, host, port)
                    try:
                        transport, protocol = await loop.create_connection(
                            protocol_factory,
                            sock=sock,
                            ssl=ctx,
                            server_hostname=host if secure else None,
                        )
                    except BaseException:
                        sock.close()
                        raise
        except TimeoutError:
            raise TunnelError(
                f"cannot reach {host}:{port}{via}: no answer within {timeout_s:g}s"
            ) from None
        except (ProxyError, TunnelError):
            raise
        except ssl.SSLError as exc:
            raise TlsError(describe_tls_failure(exc, host, port)) from None
        except socket.gaierror as exc:
            raise TunnelError(f"cannot resolve gateway host {host!r}: {exc.strerror}") from None
        except ConnectionResetError:
            raise TunnelError(
                f"connection to {host}:{port}{via} was reset during the "
                + ("TLS handshake: a firewall may block TLS to this host" if secure else "connect")
            ) from None
        except OSError as exc:
            raise TunnelError(
                f"cannot connect to {host}:{port}{via}: {exc.strerror or exc}"
            ) from None
        return transport, protocol
