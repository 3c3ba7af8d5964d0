"""The load generator: plain blocking sockets in the benchmark's own process.

Blocking sockets are the cheapest client Python has: a round trip is one
``sendall`` and one ``recv_into`` with no event loop in between, and a bulk
``sendall`` of a 1 MiB buffer releases the GIL for the whole copy. The same
code drives every path (direct, OpenSSH, qanat), so its own cost cancels out
of the overhead figures.

Every loop here is bounded twice: by a count, and by a wall-clock limit
after which it stops and raises :class:`PhaseTimeout`. Every socket has a
timeout, so a stuck path fails the phase instead of hanging the benchmark.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from dataclasses import dataclass

from endpoints import HEADER

#: Per-operation socket timeout: a path that stalls this long is broken.
SOCKET_TIMEOUT_S = 10.0
MSG_BYTES = 64
CHUNK_BYTES = 1 << 20
MiB = 1 << 20


class PhaseTimeout(RuntimeError):
    """A measurement loop hit its wall-clock limit."""


def connect(host: str, port: int, timeout_s: float = SOCKET_TIMEOUT_S) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exact_into(sock: socket.socket, view: memoryview) -> None:
    got = 0
    want = len(view)
    while got < want:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("peer closed the connection mid-message")
        got += n


def roundtrip(sock: socket.socket, msg: bytes, view: memoryview) -> None:
    sock.sendall(msg)
    _recv_exact_into(sock, view)
    if view != msg:
        raise ConnectionError("echo returned different bytes")


def sink_probe(sock: socket.socket) -> None:
    """A zero-byte transfer: proves the sink path is up end to end."""
    sock.sendall(HEADER.pack(0))
    ack = bytearray(HEADER.size)
    _recv_exact_into(sock, memoryview(ack))


def wait_ready(host: str, echo_port: int, sink_port: int | None, timeout_s: float) -> None:
    """Poll until an echo round trip (and a sink probe) succeed, or raise."""
    deadline = time.monotonic() + timeout_s
    msg = os.urandom(MSG_BYTES)
    buf = memoryview(bytearray(MSG_BYTES))
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with connect(host, echo_port, timeout_s=2.0) as sock:
                roundtrip(sock, msg, buf)
            if sink_port is not None:
                with connect(host, sink_port, timeout_s=2.0) as sock:
                    sink_probe(sock)
            return
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"path not ready after {timeout_s:.0f}s: {last}")


# ---------------------------------------------------------------- bulk


def bulk_once(host: str, port: int, nbytes: int, limit_s: float, payload: memoryview) -> float:
    """Send ``nbytes`` to the sink on a fresh connection; return seconds.

    The clock starts after a zero-byte probe (so the tunnel channel is open
    and only streaming is timed) and stops when the sink's acknowledgement
    of the last byte arrives.
    """
    with connect(host, port) as sock:
        sink_probe(sock)
        ack = memoryview(bytearray(HEADER.size))
        start = time.perf_counter()
        sock.sendall(HEADER.pack(nbytes))
        left = nbytes
        while left > 0:
            n = min(left, len(payload))
            sock.sendall(payload[:n])
            left -= n
            if time.perf_counter() - start > limit_s:
                raise PhaseTimeout(
                    f"bulk: {nbytes - left} of {nbytes} bytes in {limit_s:.0f}s, gave up"
                )
        _recv_exact_into(sock, ack)
        elapsed = time.perf_counter() - start
        (got,) = struct.unpack("!Q", ack)
        if got != nbytes:
            raise ConnectionError(f"sink acknowledged {got} of {nbytes} bytes")
        return elapsed


@dataclass(frozen=True)
class BulkPlan:
    """How much to send: a warm-up, then ``reps`` transfers sized to take
    about ``target_s`` each at the warm-up's rate, clamped to [min, max]."""

    warmup_bytes: int = 16 * MiB
    target_s: float = 1.5
    min_bytes: int = 16 * MiB
    max_bytes: int = 1024 * MiB
    reps: int = 5
    limit_s: float = 20.0


def measure_bulk(host: str, port: int, plan: BulkPlan) -> dict[str, float | int]:
    payload = memoryview(os.urandom(CHUNK_BYTES))  # incompressible
    warm = bulk_once(host, port, plan.warmup_bytes, plan.limit_s, payload)
    rate = plan.warmup_bytes / warm
    size = int(min(plan.max_bytes, max(plan.min_bytes, rate * plan.target_s)))
    size = max(MiB, size // MiB * MiB)
    rates = sorted(
        size / bulk_once(host, port, size, plan.limit_s, payload) for _ in range(plan.reps)
    )
    return {
        "bytes_total": plan.warmup_bytes + size * plan.reps,
        "bytes_per_transfer": size,
        "transfers": plan.reps,
        "MBps_median": rates[len(rates) // 2] / 1e6,
        "MBps_min": rates[0] / 1e6,
        "MBps_max": rates[-1] / 1e6,
    }


# ---------------------------------------------------------------- latency


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize_ns(samples_ns: list[int]) -> dict[str, float | int]:
    us = sorted(s / 1000 for s in samples_ns)
    return {
        "n": len(us),
        "p50_us": percentile(us, 50),
        "p90_us": percentile(us, 90),
        "p99_us": percentile(us, 99),
        "min_us": us[0] if us else math.nan,
        "mean_us": sum(us) / len(us) if us else math.nan,
    }


def measure_rtt(host: str, port: int, count: int, warmup: int, limit_s: float) -> list[int]:
    """``count`` round trips of 64 bytes on one connection, after ``warmup``."""
    msg = os.urandom(MSG_BYTES)
    view = memoryview(bytearray(MSG_BYTES))
    clock = time.perf_counter_ns
    samples: list[int] = []
    deadline = clock() + int(limit_s * 1e9)
    with connect(host, port) as sock:
        for _ in range(warmup):
            roundtrip(sock, msg, view)
        for _ in range(count):
            t0 = clock()
            roundtrip(sock, msg, view)
            t1 = clock()
            samples.append(t1 - t0)
            if t1 > deadline:
                raise PhaseTimeout(f"rtt: {len(samples)} of {count} in {limit_s:.0f}s, gave up")
    return samples


def measure_connect(host: str, port: int, count: int, warmup: int, limit_s: float) -> list[int]:
    """``count`` fresh connections, each timed from ``connect()`` to the end
    of its first 64-byte round trip (for a tunnel: local accept, channel open,
    the connector's dial of the endpoint, and the data both ways)."""
    msg = os.urandom(MSG_BYTES)
    view = memoryview(bytearray(MSG_BYTES))
    clock = time.perf_counter_ns
    samples: list[int] = []
    deadline = clock() + int(limit_s * 1e9)
    for i in range(warmup + count):
        t0 = clock()
        sock = connect(host, port)
        try:
            roundtrip(sock, msg, view)
            t1 = clock()
        finally:
            sock.close()
        if i >= warmup:
            samples.append(t1 - t0)
        if t1 > deadline:
            raise PhaseTimeout(f"connect: {len(samples)} of {count} in {limit_s:.0f}s, gave up")
    return samples


def open_idle(host: str, port: int, count: int, limit_s: float, into: list[socket.socket]) -> None:
    """Open ``count`` connections, one verified round trip each, kept open in
    ``into`` (the caller closes them, also when this raises)."""
    msg = os.urandom(MSG_BYTES)
    view = memoryview(bytearray(MSG_BYTES))
    deadline = time.monotonic() + limit_s
    for _ in range(count):
        sock = connect(host, port)
        into.append(sock)
        roundtrip(sock, msg, view)
        if time.monotonic() > deadline:
            raise PhaseTimeout(f"idle: {len(into)} of {count} open in {limit_s:.0f}s, gave up")
