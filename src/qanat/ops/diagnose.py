"""``qanat diagnose``: the connector's path to its gateway, one step at a time.

Same arguments as ``qanat connect``. The gateway chain runs in order and
stops at the first failure (later steps would only repeat it)::

    dns       the gateway's host name (the proxy's, with --proxy)
    tcp       a connection to it
    proxy     the proxy's answer to CONNECT            (only with --proxy)
    tls       certificate chain, name and expiry        (https addresses)
    address   the plain GET outsystemscc sends first, and any redirect
    upgrade   the WebSocket upgrade: 101, or who answered instead
    token     accepted, rejected, renewed, stage inactive, rate-limited
    ssh       chisel's SSH handshake, host key fingerprint (and --fingerprint)
    config    the remotes: accepted, or the gateway's refusal text

then every remote is checked from this host, whatever happened before
(``endpoint:<port>``: resolves, accepts TCP; UDP probed on request).

Nothing keeps serving afterwards: ``config`` makes the gateway bind the
remotes' ports, so the tunnel is closed right after its answer, and any
channel the gateway opens meanwhile is refused (the gateway then tries
another connector of the pool).

A step is a coroutine returning its detail text or raising
:class:`~qanat.ops.report.StepFailed`; :meth:`Diagnosis.plan` lists them, so
a step (the proxy's, with ``--proxy`` or a proxy from the environment) is one
more entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from qanat import __version__
from qanat.connector.options import ConnectOptions
from qanat.connector.proxies import choose_proxy
from qanat.connector.session import tunnel_url
from qanat.errors import (
    ChannelOpenFailed,
    ConfigError,
    HandshakeError,
    ProxyError,
    RemotesRejected,
    TunnelError,
)
from qanat.net.proxy import open_proxied_socket
from qanat.net.ssh import SshTunnel, connect_tunnel, same_fingerprint, send_config
from qanat.net.websocket import client_handshake
from qanat.ops import explain
from qanat.ops.endpoints import check_endpoint
from qanat.ops.httphead import NotHttp, ResponseHead, parse_response_head
from qanat.ops.report import Report, StepFailed, StepResult
from qanat.tls import client_context
from qanat.wire.configmsg import encode_config
from qanat.wire.handshake import new_client_id

Step = Callable[[], Awaitable[str]]

#: Certificates expiring sooner than this are called out (the step still passes).
CERT_WARN_DAYS = 14
MAX_HEAD_BYTES = 64 * 1024
#: How long the address GET waits for body bytes after the head.
BODY_WAIT_S = 1.0


@dataclass(frozen=True, slots=True)
class DiagnoseSettings:
    """Bounds of one run.

    Attributes:
        step_timeout_s: longest one step (and one endpoint check) may take.
        udp_probe: datagram sent to UDP endpoints, or None to only resolve them.
        udp_wait_s: how long to wait for a UDP answer.
    """

    step_timeout_s: float = 10.0
    udp_probe: bytes | None = None
    udp_wait_s: float = 2.0


async def _refuse_channel(target: str) -> Any:
    raise ChannelOpenFailed(
        "diagnose", reason="qanat diagnose is checking this connector's path and carries no traffic"
    )


class _Relay(asyncio.Protocol):
    """Holds the upgraded stream between the upgrade step and the SSH step."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.pending: list[bytes] = []
        self.lost: tuple[Exception | None] | None = None
        self.upper: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.upper is not None:
            self.upper.data_received(data)
        else:
            # A view of the link's shared read buffer: kept, it must be copied.
            self.pending.append(bytes(data))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upper is not None:
            self.upper.connection_lost(exc)
        else:
            self.lost = (exc,)

    def pause_writing(self) -> None:
        if self.upper is not None:
            self.upper.pause_writing()

    def resume_writing(self) -> None:
        if self.upper is not None:
            self.upper.resume_writing()

    async def attach(self, upper: asyncio.Protocol) -> asyncio.BaseTransport:
        assert self.transport is not None
        upper.connection_made(self.transport)
        for chunk in self.pending:
            upper.data_received(chunk)
        self.pending.clear()
        if self.lost is not None:
            upper.connection_lost(self.lost[0])
        self.upper = upper
        return self.transport


class Diagnosis:
    """One run of the checks for one ``qanat connect`` command line."""

    def __init__(self, options: ConnectOptions, settings: DiagnoseSettings, report: Report) -> None:
        self.options = options
        self.settings = settings
        self.report = report
        parts = urlsplit(options.address)
        self.secure = parts.scheme in ("https", "wss")
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.secure else 80)
        # dns and tcp reach the first hop: the gateway, or the proxy with --proxy
        # (only its host and port: the URL may carry credentials).
        self.hop_host, self.hop_port, self.hop_what = self.host, self.port, "the gateway"
        self.proxy = choose_proxy(
            parts.scheme, self.host, self.port, options.proxy, options.proxy_env
        )
        if self.proxy is not None:
            self.hop_host, self.hop_port = self.proxy.host, self.proxy.port
            self.hop_what = "the proxy"
        self.path = parts.path or "/"
        self.client_id = new_client_id()
        self.url = tunnel_url(options.address, self.client_id, options)
        # Filled in by the steps, in order.
        self.addresses: list[tuple[int, Any]] = []
        self.peer: tuple[int, Any] | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ws_tcp: asyncio.BaseTransport | None = None
        self.relay = _Relay()
        self.refusal: HandshakeError | None = None
        self.tunnel: SshTunnel | None = None

    # -- the plan ---------------------------------------------------------------

    @property
    def where(self) -> str:
        return _host_port(self.host, self.port)

    @property
    def hop(self) -> str:
        return _host_port(self.hop_host, self.hop_port)

    def plan(self) -> list[tuple[str, Step]]:
        steps: list[tuple[str, Step]] = [("dns", self.dns), ("tcp", self.tcp)]
        steps += self.proxy_steps()
        if self.secure:
            steps.append(("tls", self.tls))
        steps += [
            ("address", self.address),
            ("upgrade", self.upgrade),
            ("token", self.token),
            ("ssh", self.ssh),
            ("config", self.config),
        ]
        return steps

    def proxy_steps(self) -> list[tuple[str, Step]]:
        """The proxy's answer, between ``tcp`` and ``tls``.

        dns and tcp checked the proxy itself; this step asks it for a tunnel
        to the gateway (CONNECT or SOCKS5) with the code ``qanat connect``
        uses, and the later steps run through that tunnel.
        """
        proxy_spec = self.proxy
        if proxy_spec is None:
            return []

        async def proxy() -> str:
            if self.writer is not None:  # tcp only proved that the proxy listens
                self.writer.close()
                self.reader = self.writer = None
            try:
                sock = await open_proxied_socket(proxy_spec, self.host, self.port)
            except ProxyError as exc:
                raise StepFailed(
                    str(exc), f"check {proxy_spec.source} and the proxy's rules for {self.where}"
                ) from None
            self.reader, self.writer = await asyncio.open_connection(
                sock=sock, limit=MAX_HEAD_BYTES
            )
            return f"{proxy_spec} (from {proxy_spec.source}) opened a tunnel to {self.where}"

        return [("proxy", proxy)]

    async def run(self) -> Report:
        chain = self.plan()
        try:
            for index, (name, step) in enumerate(chain):
                if not await self._run_step(name, step):
                    self.report.not_run = [n for n, _ in chain[index + 1 :]]
                    break
        finally:
            await self.disconnect()
        s = self.settings
        results = await asyncio.gather(
            *(
                check_endpoint(r, s.step_timeout_s, s.udp_probe, s.udp_wait_s)
                for r in self.options.remotes
            )
        )
        for result in results:
            self.report.add(result)
        return self.report

    async def _run_step(self, name: str, step: Step) -> bool:
        timeout_s = self.settings.step_timeout_s
        started = time.perf_counter()
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                detail = await step()
        except StepFailed as exc:
            result = StepResult(name, False, _ms(started), exc.detail, exc.fix)
        except TimeoutError:
            if not deadline.expired():
                raise
            failed = self._timed_out(name, timeout_s)
            result = StepResult(name, False, _ms(started), failed.detail, failed.fix)
        except Exception as exc:
            result = StepResult(name, False, _ms(started), f"unexpected error: {exc!r}", "")
        else:
            result = StepResult(name, True, _ms(started), detail)
        self.report.add(result)
        return result.ok

    def _timed_out(self, name: str, timeout_s: float) -> StepFailed:
        host = self.host
        if name == "tcp":
            return explain.connect_timeout(self._peer_text(), timeout_s)
        hints = {
            "dns": (
                f"resolving {self.hop_host!r} took longer than {timeout_s:g}s (the DNS server "
                "did not answer)",
                "check this host's resolver and that it reaches its DNS server",
            ),
            "tls": (
                f"the TLS handshake did not finish within {timeout_s:g}s: the port accepts TCP "
                "but does not answer TLS, or a middlebox holds the handshake",
                "check the port (http:// or https://?) and any TLS inspection on the way",
            ),
            "address": (
                f"no HTTP answer to the address GET within {timeout_s:g}s: the port does not "
                "speak HTTP, or a proxy holds the request",
                "check the address's port and what listens there",
            ),
            "upgrade": (
                f"no answer to the WebSocket upgrade within {timeout_s:g}s: a proxy or firewall "
                "holds upgrade requests",
                f"let WebSocket upgrades to {host} through, {explain.PROXY_HINT}",
            ),
            "ssh": (
                f"the SSH handshake did not finish within {timeout_s:g}s: the upgraded "
                "connection carries nothing (a proxy that accepted the upgrade but does not pass "
                "WebSocket frames, or a server that is not a qanat/chisel gateway)",
                "check that the address points at the gateway itself, without an L7 proxy that "
                "buffers the connection",
            ),
            "config": (
                f"the gateway did not answer the remotes within {timeout_s:g}s",
                "check the gateway's log for this connector id",
            ),
        }
        detail, fix = hints.get(name, (f"no result within {timeout_s:g}s", ""))
        return StepFailed(detail, fix)

    def _peer_text(self) -> str:
        if self.peer is None:
            return self.hop
        ip = str(self.peer[1][0])
        if ip == self.hop_host:
            return self.hop
        return f"{self.hop_host} ({_host_port(ip, self.hop_port)})"

    # -- steps --------------------------------------------------------------------

    async def dns(self) -> str:
        host = self.hop_host
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.addresses = [(family, (host, self.hop_port))]
            return f"{host} is an IP address (no lookup)"
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, self.hop_port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise explain.resolve_failure(host, exc, what=self.hop_what) from None
        seen: list[str] = []
        for family, _, _, _, sockaddr in infos:
            if str(sockaddr[0]) not in seen:
                seen.append(str(sockaddr[0]))
                self.addresses.append((family, sockaddr))
        return f"{host} -> {', '.join(seen)}"

    async def tcp(self) -> str:
        errors: list[OSError] = []
        for family, sockaddr in self.addresses:
            start = time.perf_counter()
            try:
                self.reader, self.writer = await asyncio.open_connection(
                    str(sockaddr[0]), self.hop_port, family=family, limit=MAX_HEAD_BYTES
                )
            except OSError as exc:
                errors.append(exc)
                continue
            self.peer = (family, sockaddr)
            took = (time.perf_counter() - start) * 1e3
            skipped = f" ({len(errors)} other address(es) failed first)" if errors else ""
            return f"connected to {self._peer_text()} in {took:.1f} ms{skipped}"
        raise explain.connect_failure(self.hop, errors[-1], what=self.hop_what) from None

    async def tls(self) -> str:
        assert self.writer is not None
        try:
            context = self._tls_context()
        except ConfigError as exc:
            raise StepFailed(
                f"cannot load the TLS files (--tls-ca/--tls-cert/--tls-key): {exc}",
                "check the paths and that the files are PEM",
            ) from None
        try:
            await self.writer.start_tls(context, server_hostname=self.host)
        except (ssl.SSLError, OSError, EOFError) as exc:
            raise explain.tls_failure(self.host, exc, self.options.tls_ca, self.port) from None
        cert = self.writer.get_extra_info("peercert") or {}
        ssl_object = self.writer.get_extra_info("ssl_object")
        version = ssl_object.version() if ssl_object is not None else "TLS"
        subject = _name(cert.get("subject", ()))
        issuer = _name(cert.get("issuer", ()))
        detail = f"{version}, chain verified, certificate for {subject or '?'} by {issuer or '?'}"
        not_after = cert.get("notAfter")
        if not_after:
            expires = ssl.cert_time_to_seconds(not_after)
            days = (expires - time.time()) / 86400
            detail += f", expires {time.strftime('%Y-%m-%d', time.gmtime(expires))}"
            detail += f" (in {days:.0f} days)"
            if days < CERT_WARN_DAYS:
                detail += " - renew it soon"
        return detail

    async def address(self) -> str:
        reader, writer = self.reader, self.writer
        assert reader is not None
        assert writer is not None
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self._host_header()}\r\n"
            f"User-Agent: qanat/{__version__} (diagnose)\r\nAccept: */*\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            response = parse_response_head(head[:-4])
            response = parse_response_head(head[:-4], await self._body_preview(reader, response))
        except asyncio.IncompleteReadError as exc:
            raise StepFailed(
                "the connection closed without an HTTP answer"
                + (f" (got {exc.partial[:40]!r})" if exc.partial else "")
                + ": a firewall or proxy dropped the request, or the port does not speak HTTP",
                "check the address's port and the firewall's logs",
            ) from None
        except (asyncio.LimitOverrunError, ValueError, NotHttp) as exc:
            raise StepFailed(
                f"the answer is not HTTP ({exc}): something else listens on {self.where}",
                "check the port in the address",
            ) from None
        except OSError as exc:
            raise StepFailed(
                f"the connection failed during the address GET: {exc.strerror or exc}",
                "a firewall may cut connections to the gateway; check its logs",
            ) from None
        finally:
            writer.close()
            self.reader = self.writer = None
        return self._explain_address(response)

    @staticmethod
    async def _body_preview(reader: asyncio.StreamReader, head: ResponseHead) -> bytes:
        """Up to 2 KiB of body, without waiting on a server that keeps the connection open."""
        length = head.header("content-length")
        wanted = min(int(length), 2048) if length.isdigit() else 2048
        body = b""
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(BODY_WAIT_S):
                while len(body) < wanted and (chunk := await reader.read(wanted - len(body))):
                    body += chunk
        return body

    def _explain_address(self, response: ResponseHead) -> str:
        qanat = response.header("server").lower().startswith("qanat")
        status = response.status
        if status in (301, 302, 303, 307, 308):
            location = response.header("location") or "?"
            if status == 302:
                return (
                    f"HTTP {response.status_line} to {location}: qanat connect and "
                    "outsystemscc tunnel there; this check goes on with the address as given"
                )
            return (
                f"HTTP {response.status_line} to {location}: only a 302 redirects a "
                "connector; qanat connect and outsystemscc use the address as given"
            )
        if qanat and status == 200:
            doc = _json(response.body)
            state = doc.get("status", "?")
            extra = " (the token step will say more)" if state == "inactive" else ""
            return f"qanat gateway {doc.get('version', '?')}, stage {state}{extra}"
        if qanat and status == 404:
            raise StepFailed(
                f"the gateway does not know the address {self.path}",
                "copy the address again from the portal (…/sg_<id>); the stage may have been "
                "removed",
            )
        if status >= 500:
            raise explain.upgrade_not_switched(status, response.body_text, self.host)
        if not qanat and (status in (401, 403, 407) or (status >= 400 and status != 404)):
            raise explain.blocked_by_middlebox(response, self.host, "the address GET")
        server = response.header("server") or "unknown server"
        return f"HTTP {response.status_line} from {server} (not a qanat gateway; continuing)"

    def _tls_context(self) -> ssl.SSLContext:
        opts = self.options
        return client_context(opts.tls_ca, opts.tls_cert, opts.tls_key)

    def _host_header(self) -> str:
        default = 443 if self.secure else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    async def upgrade(self) -> str:
        assert self.peer is not None
        loop = asyncio.get_running_loop()
        family, sockaddr = self.peer
        try:
            context = self._tls_context() if self.secure else None
            if self.proxy is not None:
                sock = await open_proxied_socket(self.proxy, self.host, self.port)
                tcp, _ = await loop.create_connection(
                    asyncio.Protocol,
                    sock=sock,
                    ssl=context,
                    server_hostname=self.host if self.secure else None,
                )
            else:
                tcp, _ = await loop.create_connection(
                    asyncio.Protocol,
                    str(sockaddr[0]),
                    self.port,
                    family=family,
                    ssl=context,
                    server_hostname=self.host if self.secure else None,
                )
        except (OSError, ssl.SSLError, ConfigError, ProxyError) as exc:
            raise StepFailed(
                f"a second connection to {self.where} failed: {exc}",
                "the gateway accepted the first one; check for connection limits or a flapping "
                "network on the way",
            ) from None
        self.ws_tcp = tcp
        headers = [("User-Agent", f"qanat/{__version__} (diagnose)"), *self.options.headers]
        try:
            _, response = await client_handshake(
                tcp,
                self.url,
                headers,
                self.relay,
                timeout_s=self.settings.step_timeout_s,
            )
        except HandshakeError as exc:
            tcp.abort()
            self.ws_tcp = None
            if exc.status == 0:
                raise StepFailed(
                    f"no WebSocket answer: {exc}; a firewall or proxy drops upgrade requests",
                    f"let WebSocket upgrades to {self.host} through, {explain.PROXY_HINT}",
                ) from None
            if explain.token_verdict(exc.status, exc.body) is None:
                raise explain.upgrade_not_switched(exc.status, exc.body, self.host) from None
            self.refusal = exc
            return (
                f"the gateway answered the upgrade itself (HTTP {exc.status}): it checks the "
                "token before switching"
            )
        offered = response.headers.get("Sec-WebSocket-Protocol", "")
        protocol = "chisel-v3" if offered == "chisel-v3" else "subprotocol not echoed"
        return f"101 Switching Protocols ({protocol})"

    async def token(self) -> str:
        refusal = self.refusal
        if refusal is None:
            return "accepted"
        verdict = explain.token_verdict(refusal.status, refusal.body) or "rejected"
        raise explain.token_failure(verdict, refusal.status, refusal.body)

    async def ssh(self) -> str:
        user, _, password = self.options.auth.partition(":")
        try:
            self.tunnel = await connect_tunnel(
                self.relay.attach,
                _refuse_channel,
                username=user,
                password=password,
                timeout_s=self.settings.step_timeout_s,
            )
        except TunnelError as exc:
            text = str(exc)
            if "auth" in text.lower() or "permission denied" in text.lower():
                raise StepFailed(
                    f"{text}: the server wants SSH user authentication (chisel --authfile)",
                    "give the right --auth user:pass",
                ) from None
            raise StepFailed(
                f"{text}: the server behind the upgrade does not speak chisel's SSH (not a "
                "qanat/chisel gateway, or a proxy that alters WebSocket frames)",
                "check that the address reaches the gateway itself",
            ) from None
        fingerprint = self.tunnel.server_fingerprint
        version = self.tunnel.peer_version or "?"
        pinned = self.options.fingerprint
        if pinned and not same_fingerprint(pinned, fingerprint):
            raise StepFailed(
                f"{version}, host key fingerprint {fingerprint} does not match --fingerprint "
                f"{pinned}: the gateway's key changed, or this is not the right gateway",
                "if the gateway's key was replaced on purpose, update --fingerprint; otherwise "
                "do not connect and ask the gateway's operators",
            )
        if pinned:
            return f"{version}, host key {fingerprint} matches --fingerprint"
        return f"{version}, host key {fingerprint} (pin it with --fingerprint {fingerprint})"

    async def config(self) -> str:
        assert self.tunnel is not None
        payload = encode_config(f"qanat-{__version__}-diagnose", self.options.remotes)
        try:
            await send_config(self.tunnel, payload)
        except RemotesRejected as exc:
            text = str(exc).removeprefix("gateway refused the remotes: ")
            raise explain.config_refused(text) from None
        finally:
            await self.disconnect()
        served = ", ".join(r.describe() for r in self.options.remotes)
        return f"accepted: {served} (released again: this check carries no traffic)"

    async def disconnect(self) -> None:
        """Close whatever is still open (bounded); safe to call twice."""
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.close()
            try:
                async with asyncio.timeout(2.0):
                    await tunnel.wait_closed()
            except TimeoutError:
                tunnel.abort()
        elif self.ws_tcp is not None:
            self.ws_tcp.abort()  # type: ignore[attr-defined]
        self.ws_tcp = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def diagnose(
    options: ConnectOptions,
    settings: DiagnoseSettings | None = None,
    on_step: Callable[[StepResult], None] | None = None,
) -> Report:
    """Run every check for ``options``; never raises for a failed check."""
    report = Report("diagnose", options.address, on_step=on_step)
    await Diagnosis(options, settings or DiagnoseSettings(), report).run()
    return report


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1e3


def _name(rdns: Any) -> str:
    """``CN=gw.example.com`` (or O=...) from ssl's nested RDN tuples."""
    fields = {k: v for rdn in rdns for (k, v) in rdn}
    for key, label in (("commonName", "CN"), ("organizationName", "O")):
        if key in fields:
            return f"{label}={fields[key]}"
    return ""


def _json(body: bytes) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        doc = json.loads(body)
        if isinstance(doc, dict):
            return doc
    return {}
