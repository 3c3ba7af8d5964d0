"""``qanat probe secure-gateway:<port>``: the app's view of one endpoint.

Steps::

    resolve   the name (secure-gateway) from this host
    connect   TCP to the stage's listener, with the time it took
    http      --http /path: a GET, the status line and the time to first byte
    send      --send TEXT: the bytes, and the time to the first answer
    watch     otherwise: a short look at the open connection (a banner, a
              close, a reset, or silence)

How the gateway ends a connection it cannot serve tells the cases apart
(see qanat/net/tcpclose.py):

- refused: no listener, so no connector serves the port (or the stage was
  deactivated and its listeners closed);
- reset right after connect: the source is not in the stage's allowlist;
- closed without data: no connector could open the channel, i.e. the
  connector cannot reach the endpoint.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from qanat.errors import ConfigError
from qanat.ops import explain
from qanat.ops.httphead import NotHttp, first_line, parse_response_head
from qanat.ops.report import Report, StepFailed, StepResult

DEFAULT_HOST = "secure-gateway"


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """What to do once connected, and how long to wait.

    Attributes:
        timeout_s: bound of resolving, connecting and waiting for an answer.
        http_path: send ``GET <path>`` and read the status line.
        send: send these bytes and wait for the first answer.
        watch_s: without --http/--send, how long to watch the open connection.
    """

    timeout_s: float = 5.0
    http_path: str | None = None
    send: bytes | None = None
    watch_s: float = 2.0


def parse_target(text: str) -> tuple[str, int]:
    """``secure-gateway:8081``, ``10.0.0.7:8081``, ``[::1]:8081`` or ``8081``.

    Raises:
        ConfigError: not HOST:PORT.
    """
    text = text.strip()
    if text.isdigit():
        host, port = DEFAULT_HOST, text
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            host, port = "", ""
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(
            f"probe target {text!r}: expected HOST:PORT, e.g. secure-gateway:8081 (or just 8081)"
        )
    return host, int(port)


class Probe:
    def __init__(self, host: str, port: int, settings: ProbeSettings, report: Report) -> None:
        self.host = host
        self.port = port
        self.settings = settings
        self.report = report
        self.sockaddr: tuple[int, str] | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connected_at = 0.0

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def run(self) -> Report:
        s = self.settings
        steps: list[tuple[str, Callable[[], Awaitable[str]]]] = [
            ("resolve", self.resolve),
            ("connect", self.connect),
        ]
        if s.http_path is not None:
            steps.append(("http", self.http))
        elif s.send is not None:
            steps.append(("send", self.send))
        else:
            steps.append(("watch", self.watch))
        try:
            for index, (name, step) in enumerate(steps):
                started = time.perf_counter()
                try:
                    detail = await step()
                except StepFailed as exc:
                    ms = (time.perf_counter() - started) * 1e3
                    self.report.add(StepResult(name, False, ms, exc.detail, exc.fix))
                    self.report.not_run = [n for n, _ in steps[index + 1 :]]
                    break
                ms = (time.perf_counter() - started) * 1e3
                self.report.add(StepResult(name, True, ms, detail))
        finally:
            if self.writer is not None:
                self.writer.close()
        return self.report

    async def resolve(self) -> str:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            pass
        else:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            self.sockaddr = (family, self.host)
            return f"{self.host} is an IP address (no lookup)"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise StepFailed(
                f"resolving {self.host!r} took longer than {self.settings.timeout_s:g}s",
                "check this host's resolver",
            ) from None
        except socket.gaierror as exc:
            raise StepFailed(
                f"{self.host!r} does not resolve from this host ({exc.strerror})",
                f"apps of the stage reach endpoints by this name: add it to this host's resolver "
                f"(a DNS record, or an /etc/hosts line '<stage address> {self.host}'), or probe "
                f"<stage address>:{self.port} directly",
            ) from None
        family, _, _, _, sockaddr = infos[0]
        self.sockaddr = (family, str(sockaddr[0]))
        return f"{self.host} -> {sockaddr[0]}"

    async def connect(self) -> str:
        assert self.sockaddr is not None
        family, ip = self.sockaddr
        where = self.target if ip == self.host else f"{self.target} ({ip})"
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                self.reader, self.writer = await asyncio.open_connection(
                    ip, self.port, family=family
                )
        except TimeoutError:
            raise StepFailed(
                f"no answer from {where} within {self.settings.timeout_s:g}s: a firewall between "
                "this app and the gateway drops the traffic, or the name points elsewhere",
                "check the address the name resolves to and the network path to it",
            ) from None
        except ConnectionRefusedError:
            raise StepFailed(
                f"{where} refused the connection: no connector serves port {self.port} of this "
                "stage right now (connector stopped or declaring another port, or the stage's "
                "private gateway is inactive)",
                f"start a connector with R:{self.port}:<host>:<port> and check it with qanat "
                "diagnose on its host; check the stage is active in the portal",
            ) from None
        except OSError as exc:
            raise explain.connect_failure(where, exc, what="the stage's gateway") from None
        self.connected_at = time.perf_counter()
        took = (self.connected_at - started) * 1e3
        return f"connected to {where} in {took:.1f} ms"

    # -- after connect -------------------------------------------------------------

    def _local_address(self) -> str:
        assert self.writer is not None
        sockname = self.writer.get_extra_info("sockname")
        return str(sockname[0]) if sockname else "?"

    def _reset(self) -> StepFailed:
        since = (time.perf_counter() - self.connected_at) * 1e3
        source = self._local_address()
        return StepFailed(
            f"the gateway reset the connection {since:.0f} ms after accepting it: this host "
            f"({source}) is not in the stage's source allowlist",
            f"add this app's address as the gateway sees it ({source}, unless NAT changes it) to "
            "the stage's allowlist, or probe from an app host of this stage",
        )

    def _closed_without_data(self) -> StepFailed:
        since = (time.perf_counter() - self.connected_at) * 1e3
        return StepFailed(
            f"the gateway closed the connection without data after {since:.0f} ms: it accepted, "
            "but no connector could open a channel to the endpoint (the connector cannot reach "
            "it: service down, wrong host or port in the remote, or a firewall on the private "
            "side)",
            "run qanat diagnose with the connector's arguments on the connector host; the "
            "gateway's status lists the reasons under recent failures",
        )

    async def _first_bytes(self, what: str) -> tuple[bytes, float]:
        """Wait for the first answer; (data, ms since sent). Explains EOF and reset."""
        assert self.reader is not None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                data = await self.reader.read(4096)
        except TimeoutError:
            raise StepFailed(
                f"no answer to {what} within {self.settings.timeout_s:g}s: the connection is "
                "open (the gateway accepted it) but nothing came back; the endpoint is slow or "
                "the gateway is still trying connectors",
                "check the endpoint itself, or probe with a longer --timeout",
            ) from None
        except ConnectionResetError:
            raise self._reset() from None
        if not data:
            raise self._closed_without_data()
        return data, (time.perf_counter() - started) * 1e3

    def _write(self, data: bytes) -> None:
        assert self.writer is not None
        try:
            self.writer.write(data)
        except ConnectionResetError:
            raise self._reset() from None

    async def http(self) -> str:
        assert self.reader is not None
        path = self.settings.http_path or "/"
        if not path.startswith("/"):
            path = "/" + path
        self._write(
            f"GET {path} HTTP/1.1\r\nHost: {self.target}\r\nUser-Agent: qanat-probe\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n".encode("latin-1")
        )
        data, ttfb = await self._first_bytes(f"GET {path}")
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                while b"\n" not in data and len(data) < 8192:
                    more = await self.reader.read(4096)
                    if not more:
                        break
                    data += more
        except (TimeoutError, ConnectionResetError):
            pass
        line = data.split(b"\n", 1)[0]
        try:
            parse_response_head(line)
        except NotHttp:
            raise StepFailed(
                f"the endpoint answered after {ttfb:.1f} ms, but not with HTTP: "
                f"{first_line(data.decode('utf-8', 'replace'))!r}",
                "the tunnel works; the endpoint is not an HTTP server (probe without --http)",
            ) from None
        return f"{line.decode('latin-1').strip()} (first byte after {ttfb:.1f} ms)"

    async def send(self) -> str:
        payload = self.settings.send or b""
        self._write(payload)
        data, ttfb = await self._first_bytes(f"{len(payload)} bytes sent")
        text = first_line(data.decode("utf-8", "replace"))
        return f"answer after {ttfb:.1f} ms: {text!r}"

    async def watch(self) -> str:
        assert self.reader is not None
        wait_s = self.settings.watch_s
        try:
            async with asyncio.timeout(wait_s):
                data = await self.reader.read(4096)
        except TimeoutError:
            return (
                f"connection open for {wait_s:g}s without reset or close; the endpoint waits for "
                "the client to speak (--http /path or --send TEXT tests a round trip)"
            )
        except ConnectionResetError:
            raise self._reset() from None
        if not data:
            raise self._closed_without_data()
        since = (time.perf_counter() - self.connected_at) * 1e3
        text = first_line(data.decode("utf-8", "replace"))
        return f"the endpoint spoke first after {since:.1f} ms: {text!r}"


async def probe(
    host: str,
    port: int,
    settings: ProbeSettings | None = None,
    on_step: Callable[[StepResult], None] | None = None,
) -> Report:
    """Run the probe; never raises for a failed check."""
    report = Report("probe", f"{host}:{port}", on_step=on_step)
    await Probe(host, port, settings or ProbeSettings(), report).run()
    return report
