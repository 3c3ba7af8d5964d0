"""The gateway's public listener: one HTTP request decides what a connection is.

For each accepted connection the front door reads the request line (bounded
in size and time) and routes:

- ``GET /sg_<id>`` is ours. Without an upgrade it is a status probe (or the
  address resolution outsystemscc does first) and gets a small JSON answer,
  or a 302 when a redirect is configured. With an upgrade it must ask for the
  ``chisel-v3`` subprotocol and present a valid ``token`` header, checked
  before the 101 answer; then the connection becomes a tunnel.
- ``GET /metrics``, ``/healthz``, ``/readyz`` go to :mod:`qanat.ops.httpd`.
- Anything else goes to the HTTP application when one is configured (the
  portal), otherwise gets 404.
- Bytes that are not HTTP get a 400 and the connection is closed.

After the token check, a connector that opens tunnels in a tight loop is
answered 429 with Retry-After (see qanat.gateway.flapping). The 101 answer
carries ``X-Qanat-Features`` so a qanat connector knows it may use qanat's
extras (draining); stock clients ignore the header.

Token failures never say whether the address exists: an unknown address and
a wrong token get the same 401. Only a *valid* token learns that its stage is
inactive or that it was renewed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from websockets.http11 import Request

from qanat import __version__
from qanat.gateway.stages import StageConfig, TokenVerdict, check_token
from qanat.gateway.tunnel import ConnectorInfo, Tunnel
from qanat.net.ssh import serve_tunnel
from qanat.net.websocket import attach_server, http_response, new_server_protocol
from qanat.ops import httpd, metrics
from qanat.wire.describe import FEATURE_DESCRIBE
from qanat.wire.handshake import (
    FEATURE_DRAIN,
    FEATURES_HEADER,
    IDENTITY_HEADER,
    SUBPROTOCOL,
    TOKEN_HEADER,
    parse_tunnel_query,
    valid_connector_id,
)
from qanat.wire.tokens import MAX_TOKEN_CHARS

if TYPE_CHECKING:
    from qanat.gateway.server import Gateway

log = logging.getLogger("qanat.gateway.frontdoor")

_REQUEST_LINE = re.compile(rb"([A-Z]{3,10}) (\S{1,8192}) HTTP/1\.[01]\r?\Z")
_TUNNEL_PATH = re.compile(r"/(sg_[0-9a-f-]{36})/?\Z")

HttpFallback = Callable[[], asyncio.Protocol]


def _refusal_words(verdict: TokenVerdict, stage: StageConfig | None, had_token: bool) -> str:
    """Why a tunnel request was refused, in words for the gateway's log."""
    if stage is None:
        return "no stage has this address (unknown or deleted); token not checked"
    if verdict is TokenVerdict.RENEWED:
        return f"the token is an old one of stage {stage.key}, renewed since"
    if verdict is TokenVerdict.INACTIVE:
        return f"stage {stage.key} is inactive"
    if not had_token:
        return "no token header"
    return "wrong token (not a token of this address)"


def _drop_oversized_token(data: bytes) -> tuple[bytes, bool]:
    """Take token header lines longer than a token can be out of a request head.

    websockets refuses any header line over 8 KiB as a malformed request
    (400), but an oversized token is simply a wrong token: it must get the
    same 401 as any other, and count as a failed attempt. Returns the head
    without such lines (bytes after the head untouched) and whether any was
    dropped.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    head, rest = (data, b"") if end < 0 else (data[: end + 2], data[end + 2 :])
    lines = head.split(b"\n")
    kept = [
        line
        for line in lines
        if len(line) <= MAX_TOKEN_CHARS + 16
        or line.partition(b":")[0].strip().lower() != TOKEN_HEADER.encode()
    ]
    if len(kept) == len(lines):
        return data, False
    return b"\n".join(kept) + rest, True


def _short(ports: tuple[str, ...]) -> str:
    """The declared ports as a bounded key (a hash when the list is long)."""
    text = ",".join(ports)
    return text if len(text) <= 64 else hashlib.sha256(text.encode()).hexdigest()[:16]


class FrontDoor(asyncio.Protocol):
    """Reads the first request of a connection and hands it to its owner."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.peer = "?"
        self.routed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(
            self.gateway.settings.request_head_timeout_s, self._head_timeout
        )

    def _head_timeout(self) -> None:
        if not self.routed and self.transport is not None:
            log.info("%s: no complete HTTP request within the timeout; closing", self.peer)
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.routed:  # late bytes before the new protocol took over
            return
        self.buffer += data
        limit = self.gateway.settings.max_request_head_bytes
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) > limit and not self._too_long():
                self._bad("request line too long or not HTTP")
            return
        match = _REQUEST_LINE.match(bytes(self.buffer[:end]))
        if match is None:
            if not self._too_long():
                self._bad("not an HTTP request")
            return
        method, target = match.group(1).decode(), match.group(2).decode("ascii", "replace")
        path = target.split("?", 1)[0]
        tunnel_path = _TUNNEL_PATH.match(path)
        if method == "GET" and tunnel_path:
            if b"\r\n\r\n" not in self.buffer and b"\n\n" not in self.buffer:
                if len(self.buffer) > limit:
                    self._bad("request head too large")
                return
            self._route_done()
            self._tunnel_request(tunnel_path.group(1))
            return
        if path in httpd.OPS_PATHS:  # operations paths, before the portal
            self._route_done()
            assert self.transport is not None
            httpd.hand_over(self.gateway, self.transport, bytes(self.buffer))
            return
        factory = self.gateway.http_fallback
        if factory is None:
            self._route_done()
            self._respond(404, b"not found\n")
            return
        self._route_done()
        assert self.transport is not None
        protocol = factory()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(bytes(self.buffer))

    def _route_done(self) -> None:
        self.routed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _too_long(self) -> bool:
        """A tunnel upgrade whose URL is too long: almost always thousands of
        declared ports (the ``ports=`` query lists them all). Say so."""
        if not self.buffer.startswith(b"GET /sg_"):
            return False
        self._route_done()
        log.info("%s: tunnel request URL too long (thousands of ports?); answered 414", self.peer)
        self._respond(
            414,
            b"tunnel request URL too long: it lists every declared port, and a connector "
            b"may declare at most 1000 remotes; split them over several connectors\n",
        )
        return True

    def _bad(self, why: str) -> None:
        self._route_done()
        log.info("%s: %s; answered 400", self.peer, why)
        self._respond(400, f"bad request: {why}\n".encode())

    def _respond(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        assert self.transport is not None
        self.transport.write(http_response(status, body, content_type, headers).serialize())
        self.transport.close()

    # -- tunnel requests ------------------------------------------------------

    def _tunnel_request(self, address_id: str) -> None:
        assert self.transport is not None
        gateway = self.gateway
        ws = new_server_protocol(gateway.settings.max_frame_bytes)
        head, oversized_token = _drop_oversized_token(bytes(self.buffer))
        ws.receive_data(head)
        events = ws.events_received()
        if ws.handshake_exc is not None or not events or not isinstance(events[0], Request):
            self._bad(f"malformed request head ({ws.handshake_exc or 'incomplete'})")
            return
        request: Request = events[0]
        headers = request.headers
        stage = gateway.stages.lookup(address_id)
        source_ip = self.peer.rsplit(":", 1)[0]

        if "websocket" not in headers.get("Upgrade", "").lower():
            self._status_probe(stage)
            return
        offered = [
            p.strip() for p in ",".join(headers.get_all("Sec-WebSocket-Protocol")).split(",")
        ]
        if SUBPROTOCOL not in offered:
            self._respond(
                400,
                b"not a tunnel request: Sec-WebSocket-Protocol must offer chisel-v3\n",
            )
            log.info("%s: upgrade without the chisel-v3 subprotocol; answered 400", self.peer)
            return
        if not gateway.auth_limiter.allow(source_ip):
            self._respond(
                429, b"too many failed token attempts; retry later\n", headers={"Retry-After": "60"}
            )
            log.warning("%s: token attempts rate-limited", self.peer)
            metrics.token_failure("rate_limited")
            return
        tokens = headers.get_all(TOKEN_HEADER)
        token = tokens[0] if len(tokens) == 1 else ""
        if len(token) > MAX_TOKEN_CHARS:
            token = ""
        verdict = check_token(stage, token) if stage is not None else TokenVerdict.BAD
        if verdict is not TokenVerdict.OK:
            self._refuse(verdict, stage, bool(tokens) or oversized_token, source_ip, address_id)
            return

        assert stage is not None
        client_id, ports = parse_tunnel_query(request.path.partition("?")[2])
        identities = headers.get_all(IDENTITY_HEADER)
        identity = identities[0].strip() if identities else ""
        if len(identities) > 1 or (identities and not valid_connector_id(identity)):
            self._respond(
                400,
                f"{IDENTITY_HEADER} must be given once, 1-64 characters of "
                "A-Z a-z 0-9 . _ : @ -\n".encode(),
            )
            log.info("%s: malformed %s; answered 400", self.peer, IDENTITY_HEADER)
            return
        flap_key = f"{stage.key}/" + (identity or f"{source_ip} ports={_short(ports)}")
        now = time.monotonic()
        flap = gateway.flaps.check(flap_key, now)
        if not flap.allowed:
            self._respond(
                429,
                b"this connector reconnects too often; retry after the time in Retry-After\n",
                headers={"Retry-After": flap.retry_after_header},
            )
            if flap.refused == 1 or flap.refused % 100 == 0:
                log.warning(
                    "%s: connector %s backed off (flapping, strike %d): upgrade answered 429, "
                    "retry after %ss (%d refused in this back-off)",
                    self.peer,
                    identity or f"from {source_ip}",
                    flap.strike,
                    flap.retry_after_header,
                    flap.refused,
                )
            return
        info = ConnectorInfo(
            client_id=client_id,
            peer=self.peer,
            user_agent=headers.get("User-Agent", "")[:200],
            ports=ports,
            identity=identity,
        )
        response = ws.accept(request)
        if response.status_code != 101:
            ws.send_response(response)
            for chunk in ws.data_to_send():
                self.transport.write(chunk)
            self.transport.close()
            return
        features = [FEATURE_DRAIN]
        if gateway.describe_sink is not None:
            features.append(FEATURE_DESCRIBE)
        response.headers[FEATURES_HEADER] = ",".join(features)
        strike = gateway.flaps.connected(flap_key, now, source_ip)
        if not strike.allowed:
            log.warning(
                "%s: connector %s is flapping: more than %d tunnels within %gs; its next "
                "upgrades are answered 429 for %ss (strike %d)",
                self.peer,
                identity or f"from {source_ip} (ports {','.join(ports) or '-'})",
                gateway.flaps.max_connects,
                gateway.flaps.window_s,
                strike.retry_after_header,
                strike.strike,
            )
        ws.send_response(response)
        for chunk in ws.data_to_send():
            self.transport.write(chunk)
        tunnel = Tunnel(gateway, stage, info)
        gateway.tunnel_started(tunnel)
        tcp = self.transport
        tunnel.ssh = serve_tunnel(
            lambda upper: attach_server(tcp, ws, upper),
            gateway.host_key,
            tunnel,
            login_timeout_s=gateway.settings.setup_timeout_s,
            window_bytes=gateway.settings.ssh_window_bytes,
        )
        tunnel.start_setup_timer()
        tunnel.log.info("tunnel upgrade accepted (%s)", info.user_agent or "no user agent")

    def _refuse(
        self,
        verdict: TokenVerdict,
        stage: StageConfig | None,
        had_token: bool,
        source_ip: str,
        address_id: str,
    ) -> None:
        if verdict is TokenVerdict.RENEWED:
            body = b"token rejected: this token was renewed; use the new token from the portal\n"
            status = 401
        elif verdict is TokenVerdict.INACTIVE:
            body = b"private gateway of this stage is inactive; activate it in the portal\n"
            status = 403
        else:
            self.gateway.auth_limiter.failed(source_ip)
            body = (
                b"token rejected: check the token header\n"
                if had_token
                else b'token missing: send it as --header "token: <token>"\n'
            )
            status = 401
        reason = verdict.value if had_token or verdict is not TokenVerdict.BAD else "missing"
        metrics.token_failure(reason)
        # The answer is the same for an unknown address and a wrong token (no
        # probing for addresses); the operator's log tells them apart.
        log.warning(
            "%s: tunnel refused for address %s: %s",
            self.peer,
            address_id,
            _refusal_words(verdict, stage, had_token),
        )
        self._respond(status, body)

    def _status_probe(self, stage: StageConfig | None) -> None:
        redirect = self.gateway.settings.redirect_url
        if stage is None:
            self._respond(404, b"not found\n")
            return
        if redirect:
            self._respond(
                302, b"", headers={"Location": redirect.rstrip("/") + "/" + stage.address_id}
            )
            return
        doc = {
            "service": "qanat-gateway",
            "version": __version__,
            "status": "active" if stage.active else "inactive",
            "time": int(time.time()),
        }
        self._respond(200, json.dumps(doc).encode() + b"\n", "application/json")
