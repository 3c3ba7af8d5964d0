"""Endpoint checks from the private side: does each remote's target answer here?

The connector dials every app connection's target itself, so what matters is
what *this* host sees: the name resolves with this host's DNS and the port
accepts TCP. UDP has no handshake: a remote is only resolved, unless a probe
datagram was asked for; then an answer passes, an ICMP "port unreachable"
fails, and silence passes with a caution (many UDP services ignore stray
datagrams).
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from qanat.ops import explain
from qanat.ops.report import StepFailed, StepResult
from qanat.wire.remotes import Remote


def step_name(remote: Remote) -> str:
    """``endpoint:8081`` (``/udp`` appended): a remote's gateway port is unique per connector."""
    suffix = "/udp" if remote.remote_proto == "udp" else ""
    return f"endpoint:{remote.local_port}{suffix}"


class _UdpAnswer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def check_endpoint(
    remote: Remote, timeout_s: float, udp_probe: bytes | None = None, udp_wait_s: float = 2.0
) -> StepResult:
    """Check one remote's target; never raises."""
    started = time.perf_counter()
    try:
        detail = await _check(remote, timeout_s, udp_probe, udp_wait_s)
    except StepFailed as exc:
        ms = (time.perf_counter() - started) * 1e3
        return StepResult(step_name(remote), False, ms, f"{remote.target}: {exc.detail}", exc.fix)
    except Exception as exc:
        ms = (time.perf_counter() - started) * 1e3
        return StepResult(
            step_name(remote), False, ms, f"{remote.target}: unexpected error: {exc!r}", ""
        )
    ms = (time.perf_counter() - started) * 1e3
    return StepResult(step_name(remote), True, ms, f"{remote.target}: {detail}")


async def _check(
    remote: Remote, timeout_s: float, udp_probe: bytes | None, udp_wait_s: float
) -> str:
    if remote.socks or remote.stdio:
        return "socks/stdio remote: no endpoint to check"
    host = remote.remote_host.strip("[]")
    port = int(remote.remote_port)
    udp = remote.remote_proto == "udp"
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
            )
    except TimeoutError:
        raise StepFailed(
            f"resolving {host!r} took longer than {timeout_s:g}s (the DNS server did not answer)",
            "check this host's resolver and its DNS server",
        ) from None
    except socket.gaierror as exc:
        raise explain.resolve_failure(host, exc, private_side=True) from None
    family, _, _, _, sockaddr = infos[0]
    ip = str(sockaddr[0])
    resolved = "" if ip == host else f"resolves to {ip}, "
    where = f"{ip}:{port}" if ":" not in ip else f"[{ip}]:{port}"
    if udp:
        if udp_probe is None:
            return f"{resolved}UDP not probed (--udp-probe sends a datagram)"
        return resolved + await _udp_probe(family, sockaddr, udp_probe, udp_wait_s)
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(ip, port, family=family)
    except TimeoutError:
        raise StepFailed(
            f"no answer from {where} within {timeout_s:g}s: a firewall between this host and "
            "the endpoint drops the traffic, or the host is down",
            f"allow TCP from the connector host to {where}, or check that the host is up",
        ) from None
    except ConnectionRefusedError:
        raise StepFailed(
            f"{resolved}refused the connection: nothing listens on port {port} (service down "
            "or wrong port)",
            f"start the service, or correct the port in R:{remote.local_port}:{remote.target}",
        ) from None
    except OSError as exc:
        raise explain.connect_failure(where, exc, what="the endpoint") from None
    took = (time.perf_counter() - start) * 1e3
    writer.close()
    return f"{resolved}TCP accepted in {took:.1f} ms"


async def _udp_probe(family: int, sockaddr: Any, payload: bytes, wait_s: float) -> str:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _UdpAnswer, remote_addr=sockaddr[:2], family=family
    )
    try:
        start = time.perf_counter()
        transport.sendto(payload)
        try:
            async with asyncio.timeout(wait_s):
                answer = await proto.done
        except TimeoutError:
            return (
                f"sent {len(payload)} bytes, no answer within {wait_s:g}s and no ICMP error "
                "(open but silent, or filtered)"
            )
        except ConnectionRefusedError:
            raise StepFailed(
                "ICMP port unreachable: nothing listens on that UDP port",
                "start the service, or correct the port in the remote",
            ) from None
        took = (time.perf_counter() - start) * 1e3
        return f"UDP answer of {len(answer)} bytes in {took:.1f} ms"
    finally:
        transport.close()
