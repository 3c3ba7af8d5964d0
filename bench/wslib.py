"""WebSocket libraries on qanat's data path: websockets (sans-IO) vs aiohttp.

qanat carries its SSH byte stream in binary WebSocket messages, so the
library's per-message cost is part of every tunnel byte. This compares:

- **websockets**, the way qanat drives it: ``websockets.server.ServerProtocol``
  and ``websockets.client.ClientProtocol`` inside a bare ``asyncio.Protocol``
  (``receive_data`` -> ``events_received``; ``send_binary`` ->
  ``data_to_send`` -> ``transport.writelines``), no streams, no tasks;
- **aiohttp**: ``ClientSession.ws_connect`` and ``web.WebSocketResponse``,
  its ordinary high-level API.

Each pair (client and server of the same library) runs over loopback TCP,
the server in its own process (``python bench/wslib.py serve --lib X``), the
client in the calling process, both on uvloop, no compression. Measured:

- throughput of a client->server stream of 32 KiB binary messages (masked,
  as client frames must be), timed until the server confirms it has received
  every byte; the server's CPU time per MiB received rides along, since the
  gateway is the receiving side of a connector's upload;
- p50/p99 round trip of a 64-byte binary message echoed by the server.

Tiny application protocol, same for both: a text message ``bulk <N>``
announces N bytes of binary messages to count, answered by text ``ok <N>``
when all have arrived; any other binary message is echoed.

Run alone: ``python bench/wslib.py [--quick]``; ``bench/run.py`` runs it as
its last section.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import psutil
import uvloop
from loadgen import percentile
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

BENCH_DIR = Path(__file__).resolve().parent
MSG_BYTES = 64
BULK_MSG_BYTES = 32 * 1024
MiB = 1 << 20
MAX_MESSAGE_BYTES = 1 << 20
PHASE_LIMIT_S = 60.0
LIBS = ("websockets", "aiohttp")


# ------------------------------------------------------------ websockets


class _WsPeer(asyncio.Protocol):
    """What the websockets client and server adapters share: feeding the
    protocol object, flushing its output, and write flow control."""

    def __init__(self, proto: Any) -> None:
        self.ws = proto
        self.transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def flush(self) -> None:
        assert self.transport is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()  # b"" is the protocol's "half-close now"
        if self.ws.close_expected():
            self.transport.close()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drain(self) -> None:
        await self._writable.wait()


class WsServer(_WsPeer):
    def __init__(self) -> None:
        super().__init__(ServerProtocol(max_size=MAX_MESSAGE_BYTES))
        self.want = 0
        self.got = 0

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                ws.send_response(ws.accept(event))
            elif isinstance(event, Frame):
                if event.opcode is Opcode.BINARY:
                    if self.want:
                        self.got += len(event.data)
                        if self.got >= self.want:
                            ws.send_text(f"ok {self.got}".encode())
                            self.want = self.got = 0
                    else:
                        ws.send_binary(event.data)
                elif event.opcode is Opcode.TEXT:
                    self.want, self.got = int(bytes(event.data).split()[1]), 0
        self.flush()


class WsClient(_WsPeer):
    def __init__(self, url: str) -> None:
        super().__init__(ClientProtocol(parse_uri(url), max_size=MAX_MESSAGE_BYTES))
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self._inbox: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.ws.send_request(self.ws.connect())
        self.flush()

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Response):
                if ws.handshake_exc is not None:
                    self.opened.set_exception(ws.handshake_exc)
                else:
                    self.opened.set_result(None)
            elif isinstance(event, Frame) and event.opcode in (Opcode.TEXT, Opcode.BINARY):
                self._inbox.append(bytes(event.data))
                if self._waiter is not None and not self._waiter.done():
                    self._waiter.set_result(None)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during handshake: {exc}"))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("connection lost"))

    async def send(self, data: bytes, *, text: bool = False) -> None:
        if text:
            self.ws.send_text(data)
        else:
            self.ws.send_binary(data)
        self.flush()
        if not self._writable.is_set():
            await self.drain()

    async def recv(self) -> bytes:
        while not self._inbox:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._inbox.popleft()

    async def close(self) -> None:
        self.ws.send_close()
        self.flush()
        if self.transport is not None:
            self.transport.close()


async def _serve_websockets(port_out: Callable[[int], None], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(WsServer, "127.0.0.1", 0)
    port_out(server.sockets[0].getsockname()[1])
    await stop.wait()
    server.close()


class _WsClientConn:
    """Uniform client interface over the sans-IO adapter."""

    def __init__(self, proto: WsClient) -> None:
        self.proto = proto

    async def send_bytes(self, data: bytes) -> None:
        await self.proto.send(data)

    async def send_str(self, text: str) -> None:
        await self.proto.send(text.encode(), text=True)

    async def recv(self) -> bytes:
        return await self.proto.recv()

    async def close(self) -> None:
        await self.proto.close()


async def _connect_websockets(port: int) -> _WsClientConn:
    loop = asyncio.get_running_loop()
    url = f"ws://127.0.0.1:{port}/bench"
    _, proto = await loop.create_connection(lambda: WsClient(url), "127.0.0.1", port)
    await asyncio.wait_for(proto.opened, 10)
    return _WsClientConn(proto)


# ------------------------------------------------------------ aiohttp


async def _serve_aiohttp(port_out: Callable[[int], None], stop: asyncio.Event) -> None:
    from aiohttp import WSMsgType, web

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, compress=False)
        await ws.prepare(request)
        want = got = 0
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                if want:
                    got += len(msg.data)
                    if got >= want:
                        await ws.send_str(f"ok {got}")
                        want = got = 0
                else:
                    await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.TEXT:
                want, got = int(msg.data.split()[1]), 0
        return ws

    app = web.Application()
    app.router.add_get("/bench", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    port_out(sock.getsockname()[1])
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


class _AiohttpClientConn:
    def __init__(self, session: Any, ws: Any) -> None:
        self.session = session
        self.ws = ws

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def send_str(self, text: str) -> None:
        await self.ws.send_str(text)

    async def recv(self) -> bytes:
        from aiohttp import WSMsgType

        msg = await self.ws.receive()
        if msg.type is WSMsgType.BINARY:
            return bytes(msg.data)
        if msg.type is WSMsgType.TEXT:
            return str(msg.data).encode()
        raise ConnectionError(f"aiohttp: unexpected {msg.type}")

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


async def _connect_aiohttp(port: int) -> _AiohttpClientConn:
    import aiohttp

    session = aiohttp.ClientSession()
    try:
        ws = await session.ws_connect(
            f"http://127.0.0.1:{port}/bench",
            max_msg_size=MAX_MESSAGE_BYTES,
            compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_close=5),
        )
    except BaseException:
        await session.close()
        raise
    return _AiohttpClientConn(session, ws)


# ------------------------------------------------------------ measuring


@dataclass(frozen=True)
class WsPlan:
    warmup_bytes: int = 32 * MiB
    target_s: float = 1.5
    min_bytes: int = 32 * MiB
    max_bytes: int = 1024 * MiB
    reps: int = 5
    rtt_count: int = 5000
    rtt_warmup: int = 500

    @classmethod
    def quick(cls) -> WsPlan:
        return cls(warmup_bytes=16 * MiB, target_s=0.5, max_bytes=256 * MiB, reps=3,
                   rtt_count=1000, rtt_warmup=100)  # fmt: skip


async def _bulk_once(conn: Any, nbytes: int) -> float:
    payload = os.urandom(BULK_MSG_BYTES)
    count = nbytes // BULK_MSG_BYTES
    start = time.perf_counter()
    await conn.send_str(f"bulk {count * BULK_MSG_BYTES}")
    for i in range(count):
        await conn.send_bytes(payload)
        if i % 256 == 0 and time.perf_counter() - start > PHASE_LIMIT_S:
            raise TimeoutError(f"bulk: gave up after {PHASE_LIMIT_S:.0f}s")
    reply = await asyncio.wait_for(conn.recv(), PHASE_LIMIT_S)
    elapsed = time.perf_counter() - start
    if reply != f"ok {count * BULK_MSG_BYTES}".encode():
        raise ConnectionError(f"unexpected reply {reply[:40]!r}")
    return elapsed


async def _measure(lib: str, port: int, server_pid: int, plan: WsPlan) -> dict[str, Any]:
    connect: Callable[[int], Awaitable[Any]] = (
        _connect_websockets if lib == "websockets" else _connect_aiohttp
    )
    conn = await connect(port)
    server = psutil.Process(server_pid)
    me = psutil.Process()
    try:
        warm = await _bulk_once(conn, plan.warmup_bytes)
        size = int(plan.warmup_bytes / warm * plan.target_s)
        size = max(plan.min_bytes, min(plan.max_bytes, size)) // MiB * MiB
        rates, server_cpu, client_cpu = [], 0.0, 0.0
        for _ in range(plan.reps):
            s0, c0 = sum(server.cpu_times()[:2]), sum(me.cpu_times()[:2])
            rates.append(size / await _bulk_once(conn, size))
            server_cpu += sum(server.cpu_times()[:2]) - s0
            client_cpu += sum(me.cpu_times()[:2]) - c0
        rates.sort()
        mib_total = size * plan.reps / MiB

        msg = os.urandom(MSG_BYTES)
        clock = time.perf_counter_ns
        samples: list[float] = []
        deadline = time.monotonic() + PHASE_LIMIT_S
        for i in range(plan.rtt_warmup + plan.rtt_count):
            t0 = clock()
            await conn.send_bytes(msg)
            # No wait_for here: on 3.11 it wraps each await in a task, which
            # would add its own cost to every round trip. run() bounds the whole.
            back = await conn.recv()
            t1 = clock()
            if back != msg:
                raise ConnectionError("echo returned different bytes")
            if i >= plan.rtt_warmup:
                samples.append((t1 - t0) / 1000)
            if time.monotonic() > deadline:
                raise TimeoutError(f"rtt: gave up after {PHASE_LIMIT_S:.0f}s")
        samples.sort()
    finally:
        await conn.close()
    return {
        "status": "ok",
        "message_bytes": BULK_MSG_BYTES,
        "bytes_per_transfer": size,
        "transfers": plan.reps,
        "MBps_median": rates[len(rates) // 2] / 1e6,
        "MBps_min": rates[0] / 1e6,
        "MBps_max": rates[-1] / 1e6,
        "server_cpu_us_per_MiB": server_cpu / mib_total * 1e6,
        "client_cpu_us_per_MiB": client_cpu / mib_total * 1e6,
        "rtt_n": len(samples),
        "rtt_p50_us": percentile(samples, 50),
        "rtt_p99_us": percentile(samples, 99),
    }


def run(procs: Any, plan: WsPlan, libs: tuple[str, ...] = LIBS) -> dict[str, Any]:
    """Measure each library; a failure is recorded, never raised."""
    results: dict[str, Any] = {}
    for lib in libs:
        child = None
        try:
            child = procs.start(
                f"wslib-{lib}", [sys.executable, BENCH_DIR / "wslib.py", "serve", "--lib", lib]
            )
            line = child.wait_for_line("READY", 20)
            port = int(line.split("port=")[1])
            measure = _measure(lib, port, child.pid, plan)
            results[lib] = uvloop.run(asyncio.wait_for(measure, 4 * PHASE_LIMIT_S))
            results[lib]["versions"] = _versions(lib)
        except Exception as exc:  # a broken library must not stop the others
            results[lib] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        finally:
            if child is not None:
                procs.stop(child)
        _progress(lib, results[lib])
    return results


def _versions(lib: str) -> str:
    from importlib.metadata import version

    return f"{lib} {version(lib)}, uvloop {version('uvloop')}"


def _progress(lib: str, res: dict[str, Any]) -> None:
    if res.get("status") == "ok":
        print(
            f"  wslib {lib}: {res['MBps_median']:.0f} MB/s, rtt p50 {res['rtt_p50_us']:.0f} us",
            file=sys.stderr,
            flush=True,
        )
    else:
        print(f"  wslib {lib}: {res.get('reason')}", file=sys.stderr, flush=True)


def render(results: dict[str, Any]) -> str:
    lines = [
        "WebSocket libraries, client->server 32 KiB binary messages and 64 B echo (loopback)",
        f"{'library':<12} {'MB/s':>8} {'min-max':>13} {'srv CPU us/MiB':>15} "
        f"{'cli CPU us/MiB':>15} {'RTT p50 us':>11} {'p99 us':>8}",
    ]
    for lib, res in results.items():
        if res.get("status") != "ok":
            lines.append(f"{lib:<12} failed: {res.get('reason')}")
            continue
        spread = f"{res['MBps_min']:.0f}-{res['MBps_max']:.0f}"
        lines.append(
            f"{lib:<12} {res['MBps_median']:>8.0f} {spread:>13} "
            f"{res['server_cpu_us_per_MiB']:>15.0f} {res['client_cpu_us_per_MiB']:>15.0f} "
            f"{res['rtt_p50_us']:>11.0f} {res['rtt_p99_us']:>8.0f}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------ entry points


def _serve(lib: str) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def ready(port: int) -> None:
            print(f"READY port={port}", flush=True)

        serve = _serve_websockets if lib == "websockets" else _serve_aiohttp
        task = asyncio.create_task(serve(ready, stop), name=f"serve-{lib}")
        parent = os.getppid()
        while not stop.is_set() and os.getppid() == parent and not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        stop.set()
        await task

    uvloop.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    serve = sub.add_parser("serve", help="run one library's server (used by the benchmark)")
    serve.add_argument("--lib", choices=LIBS, required=True)
    parser.add_argument("--quick", action="store_true", help="shorter run")
    args = parser.parse_args()
    if args.cmd == "serve":
        _serve(args.lib)
        return
    from procs import ProcessSet

    procs = ProcessSet()
    try:
        results = run(procs, WsPlan.quick() if args.quick else WsPlan())
    finally:
        procs.stop_all()
    print(render(results))


if __name__ == "__main__":
    main()
