"""One connector session: from TCP connect to the end of the tunnel."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from qanat import __version__
from qanat.connector.dialer import DeclaredTargets, Dialer
from qanat.connector.egress import Egress, endpoint_of
from qanat.connector.options import ConnectOptions
from qanat.connector.refusals import LoggedDialer
from qanat.connector.resolve import resolve_address
from qanat.connector.udp import UdpLimits
from qanat.errors import ChannelOpenFailed, HandshakeError, TlsError, TunnelError
from qanat.logs import ContextLogger
from qanat.net.proxy import ProxySpec
from qanat.net.splice import Splice
from qanat.net.ssh import (
    SshTunnel,
    connect_tunnel,
    send_config,
    send_describe,
    send_drain,
)
from qanat.net.websocket import client_handshake
from qanat.runtime import TaskOwner
from qanat.tls import describe_silent_close, describe_tls_failure
from qanat.wire.configmsg import encode_config
from qanat.wire.describe import FEATURE_DESCRIBE
from qanat.wire.describe import encode as encode_declaration
from qanat.wire.handshake import (
    FEATURE_DRAIN,
    FEATURE_EARLY_OPEN,
    FEATURES_HEADER,
    IDENTITY_HEADER,
    parse_features,
    tunnel_query,
)
from qanat.wire.remotes import ports_query

log = logging.getLogger("qanat.connector")


@dataclass
class Stats:
    """Counters printed on SIGUSR2 and kept across sessions."""

    started_at: float = field(default_factory=time.time)
    attempts: int = 0
    sessions: int = 0
    connected_since: float | None = None
    last_rtt_s: float | None = None
    channels_open: int = 0
    channels_total: int = 0
    channels_refused: int = 0
    #: Of channels_total, confirmed before the dial (early-open); a failed
    #: dial of one counts in channels_refused too.
    channels_early: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


def tunnel_url(address: str, client_id: str, options: ConnectOptions) -> str:
    """The WebSocket URL of the tunnel: ws(s)://host/path?id=..&ports=.."""
    parts = urlsplit(address)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = tunnel_query(client_id, ports_query(options.remotes).split(","))
    return urlunsplit((scheme, parts.netloc, parts.path or "/", query, ""))


class _Placeholder(asyncio.Protocol):
    """Owns the socket between connect and the WebSocket handshake."""


class Session:
    """One attempt: connect, authenticate, declare remotes, serve until the end."""

    def __init__(
        self,
        options: ConnectOptions,
        client_id: str,
        stats: Stats,
        egress: Egress,
        *,
        logger: ContextLogger | None = None,
    ) -> None:
        self.log = logger or ContextLogger(log, connector=client_id)
        self.options = options
        self.client_id = client_id
        self.stats = stats
        self.egress = egress
        self.url = ""
        self.proxy: ProxySpec | None = None
        self.dialer: Dialer | None = None
        self.tunnel: SshTunnel | None = None
        self.splices: set[Splice] = set()
        self.tasks = TaskOwner("session")
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        #: qanat extras the gateway announced in its 101 answer (empty for chisel).
        self.gateway_features: frozenset[str] = frozenset()
        self.dialing = 0
        self.idle = asyncio.Event()

    async def connect(self) -> float:
        """Resolve the address, establish the tunnel; return the handshake latency.

        Raises:
            HandshakeError / AuthError / RemotesRejected / ProxyError / TlsError /
            TunnelError: what failed, worded for the operator.
        """
        opts = self.options
        base = await resolve_address(opts.address, self.egress, timeout_s=opts.connect_timeout_s)
        if base != opts.address:
            self.log.info("address %s redirects to %s", opts.address, base)
        start = time.perf_counter()
        self.url = tunnel_url(base, self.client_id, opts)
        self.proxy = self.egress.proxy_for(self.url)
        scheme, host, port = endpoint_of(self.url)
        tcp, _ = await self.egress.open(self.url, _Placeholder, timeout_s=opts.connect_timeout_s)

        headers = [("User-Agent", f"qanat/{__version__}"), *opts.headers]
        if opts.connector_id and not any(k.lower() == IDENTITY_HEADER.lower() for k, _ in headers):
            headers.append((IDENTITY_HEADER, opts.connector_id))
        user, _, password = opts.auth.partition(":")
        raw_dialer = Dialer(
            opts.dial_timeout_s,
            self._splice_started,
            self._splice_done,
            udp=UdpLimits(opts.udp_idle_timeout_s, opts.udp_max_flows),
        )
        self.dialer = raw_dialer
        checked: Callable[[str], Awaitable[Any]] = raw_dialer
        declared: DeclaredTargets | None = None
        if not opts.allow_any_target:
            checked = declared = DeclaredTargets(
                raw_dialer, (r.channel_extra.decode() for r in opts.remotes)
            )
        dialer = LoggedDialer(checked, self.log, self.stats)

        async def dial(target: str) -> Any:
            # Counted so that draining also waits for channels still dialling.
            self.dialing += 1
            try:
                return await dialer(target)
            finally:
                self.dialing -= 1
                self._check_idle()

        def early(target: str) -> tuple[Any, asyncio.Future[None]] | None:
            # A TCP channel to a declared target, on a gateway that takes a
            # failed dial back: confirmed now, dialled meanwhile. Anything
            # else (and a malformed target) is dialled first and answered
            # with the outcome.
            if (
                FEATURE_EARLY_OPEN not in self.gateway_features
                or target.endswith("/udp")
                or (declared is not None and not declared.allows(target))
            ):
                return None
            splice = raw_dialer.splice()
            try:
                dialing = raw_dialer.start(splice, target)
            except ChannelOpenFailed:
                return None
            self._splice_started(splice)
            self.stats.channels_early += 1
            self.dialing += 1

            def dialled(outcome: asyncio.Future[None]) -> None:
                self.dialing -= 1
                exc = outcome.exception()
                if isinstance(exc, ChannelOpenFailed):
                    dialer.refused(target, exc)
                self._check_idle()

            dialing.add_done_callback(dialled)
            return splice.chan_end, dialing

        async def attach(upper: asyncio.Protocol) -> asyncio.BaseTransport:
            transport, response = await client_handshake(
                tcp, self.url, headers, upper, timeout_s=opts.connect_timeout_s
            )
            self.gateway_features = parse_features(response.headers.get(FEATURES_HEADER, ""))
            return transport

        try:
            self.tunnel = await connect_tunnel(
                attach,
                dial,
                early=early,
                fingerprint=opts.fingerprint or "",
                username=user,
                password=password,
                timeout_s=opts.connect_timeout_s,
            )
        except HandshakeError as exc:
            tcp.abort()
            # A gateway wanting a client certificate says so with a TLS alert,
            # which TLS 1.3 delivers only once the upgrade request is sent.
            if isinstance(exc.__cause__, ssl.SSLError):
                raise TlsError(describe_tls_failure(exc.__cause__, host, port)) from None
            if exc.no_answer and scheme == "wss":
                has_cert = bool(opts.tls_cert)
                raise TlsError(describe_silent_close(host, has_cert)) from None
            raise
        except BaseException:
            tcp.abort()
            raise
        try:
            await send_config(self.tunnel, encode_config(f"qanat-{__version__}", opts.remotes))
        except BaseException:
            self.tunnel.abort()
            raise
        if opts.declarations and FEATURE_DESCRIBE in self.gateway_features:
            # Only a qanat gateway that keeps a catalogue said it understands
            # this; a stock server is never sent a request it would not answer.
            self.tasks.spawn(self._describe(), name="describe")
        latency = time.perf_counter() - start
        self.tasks.spawn(self._watch_closed(), name="watch-closed")
        if opts.keepalive_s > 0:
            self.tasks.spawn(self._keepalive(), name="keepalive")
        return latency

    async def _watch_closed(self) -> None:
        assert self.tunnel is not None
        await self.tunnel.wait_closed()
        if self.proxy is None:
            self._end("tunnel closed by the gateway or the network")
        else:
            self._end(
                f"tunnel closed by the gateway, the network or the proxy {self.proxy} "
                "(proxies often close connections they think idle: a shorter --keepalive "
                "keeps the tunnel busy)"
            )

    async def _keepalive(self) -> None:
        opts = self.options
        assert self.tunnel is not None
        while True:
            await asyncio.sleep(opts.keepalive_s)
            try:
                self.stats.last_rtt_s = await self.tunnel.ping(opts.keepalive_timeout_s)
            except TimeoutError:
                self._end(
                    f"keepalive: no answer from the gateway within {opts.keepalive_timeout_s:g}s"
                )
                return
            except TunnelError as exc:
                self._end(f"keepalive failed: {exc}")
                return
            self.log.debug("keepalive round trip %.1fms", self.stats.last_rtt_s * 1e3)

    async def _describe(self) -> None:
        assert self.tunnel is not None
        for declaration in self.options.declarations:
            for payload in encode_declaration(declaration):
                try:
                    error = await send_describe(self.tunnel, payload, timeout_s=10.0)
                except TunnelError:
                    return
                if error is not None:
                    self.log.warning(
                        "gateway did not take the description of port %d: %s",
                        declaration.port,
                        error,
                    )
                    break
            else:
                self.log.info("described port %d in the portal's catalogue", declaration.port)

    async def drain(self, timeout_s: float) -> tuple[bool, int]:
        """Stop new channels (if the gateway can be told) and wait for open ones.

        Returns (whether the gateway agreed to send no new channels, how many
        connections were still open at the deadline). New channels that
        still arrive are served: a qanat gateway only sends them when no
        other connector can take them, and a stock server cannot be told.
        """
        assert self.tunnel is not None
        told = False
        if FEATURE_DRAIN in self.gateway_features:
            try:
                told = await send_drain(self.tunnel, max(1.0, min(5.0, timeout_s)))
            except TunnelError:
                return False, self._busy()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._busy() and not self.ended.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self.idle.clear()
            waiter = asyncio.ensure_future(self.idle.wait())
            waiters: set[asyncio.Future[Any]] = {waiter, self.ended}
            try:
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        return told, self._busy()

    def _busy(self) -> int:
        return len(self.splices) + self.dialing

    def _check_idle(self) -> None:
        if not self._busy():
            self.idle.set()

    def _end(self, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)

    def _splice_started(self, splice: Splice) -> None:
        self.splices.add(splice)
        self.stats.channels_open += 1
        self.stats.channels_total += 1

    def _splice_done(self, splice: Splice) -> None:
        self.splices.discard(splice)
        self.stats.channels_open -= 1
        self.stats.bytes_up += splice.sent
        self.stats.bytes_down += splice.received
        self._check_idle()

    async def close(self) -> None:
        """Tear the session down (bounded)."""
        if self.tunnel is not None:
            self.tunnel.close()
            try:
                async with asyncio.timeout(2.0):
                    await self.tunnel.wait_closed()
            except TimeoutError:
                self.tunnel.abort()
        for splice in list(self.splices):
            splice.close()
        if self.dialer is not None:
            self.dialer.close()
        await self.tasks.close()
        self._end("closed")
