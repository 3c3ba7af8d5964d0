"""``/metrics``, ``/healthz`` and ``/readyz``: one tiny HTTP/1.1 responder.

The gateway's front door hands a connection over (:func:`hand_over`) once
its request line names one of :data:`OPS_PATHS`; the connector runs the same
protocol on its own ``--metrics`` address (:func:`serve`). One request per
connection, answered and closed; the head is bounded in size and time.

``/metrics`` may expose stage names and ports, so on the gateway (whose
listener faces the internet) it is answered only to sources in
``metrics_allow_cidrs`` (private ranges by default); the health paths
reveal nothing and are open to every load balancer.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from qanat.telemetry.counters import Exposition
from qanat.telemetry.health import Health

log = logging.getLogger("qanat.telemetry.http")

OPS_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_S = 10.0

Spawn = Callable[[Coroutine[Any, Any, Any]], Any]


def source_allowed(cidrs: Iterable[str]) -> Callable[[str], bool]:
    """A predicate: is this peer address inside one of ``cidrs``?"""
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def allowed(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in nets)

    return allowed


@dataclass(frozen=True, slots=True)
class OpsRoutes:
    """What one process serves on the operations paths."""

    health: Health
    metrics: Exposition
    metrics_allowed: Callable[[str], bool] = lambda _address: True


class OpsHttp(asyncio.Protocol):
    """Reads one request head, answers it, closes."""

    def __init__(self, routes: OpsRoutes, spawn: Spawn) -> None:
        self.routes = routes
        self.spawn = spawn
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.peer = ""
        self.timer: asyncio.TimerHandle | None = None
        self.started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        self.timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT_S, transport.abort)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.started:
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            end = self.buffer.find(b"\n\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self._answer(431, b"request head too large\n")
            return
        self.started = True
        if self.timer is not None:
            self.timer.cancel()
        lines = bytes(self.buffer[:end]).decode("latin-1").splitlines()
        parts = lines[0].split() if lines else []
        if len(parts) != 3:
            self._answer(400, b"bad request\n")
            return
        method, target = parts[0], parts[1]
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        self.spawn(self._handle(method, target.split("?", 1)[0], accept))

    async def _handle(self, method: str, path: str, accept: str) -> None:
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            self._answer(405, b"only GET and HEAD\n", headers={"Allow": "GET, HEAD"})
            return
        routes = self.routes
        if path == "/healthz":
            self._answer(200, b"ok\n", head_only=head_only)
        elif path == "/readyz":
            ready, checks = await routes.health.readiness()
            body = "".join(f"{name}: {state}\n" for name, state in checks.items()).encode()
            self._answer(200 if ready else 503, body, head_only=head_only)
        elif path == "/metrics":
            if not routes.metrics_allowed(self.peer):
                log.info("%s: /metrics refused (not in the metrics allowlist)", self.peer)
                self._answer(403, b"metrics are served to allowed sources only\n")
                return
            try:
                body, content_type = routes.metrics.render(accept)
            except Exception:
                # A collector's bug must answer, not hang the scraper.
                log.exception("/metrics failed")
                self._answer(500, b"metrics collection failed; see the log\n")
                return
            self._answer(200, body, content_type, head_only=head_only)
        else:
            self._answer(404, b"not found\n")

    def _answer(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        *,
        head_only: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        lines = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            "Server: qanat",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            transport.write(body)
        transport.close()


def hand_over(
    routes: OpsRoutes,
    spawn: Spawn,
    transport: asyncio.BaseTransport,
    head: bytes,
    client: str = "",
) -> None:
    """Let the operations responder take a connection whose head was already read.

    ``client`` is the source the ``/metrics`` check applies to (behind a
    trusted proxy, the client it names); default the TCP peer.
    """
    protocol = OpsHttp(routes, spawn)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if client:
        protocol.peer = client
    protocol.data_received(head)


async def serve(host: str, port: int, routes: OpsRoutes, spawn: Spawn) -> asyncio.Server:
    """Serve the operations paths on their own address (the connector's --metrics)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: OpsHttp(routes, spawn), host, port, reuse_address=True)
