"""The benchmark's endpoints, run as their own process: an echo and a sink.

``python bench/endpoints.py`` listens on two ports of 127.0.0.1, prints
``READY echo=<port> sink=<port>`` and serves until SIGTERM, or until its
parent process goes away (checked every half second), so a killed benchmark
leaves no endpoint behind.

- **echo**: every byte received is written back. asyncio on uvloop with a
  bare ``asyncio.Protocol`` (no streams), TCP_NODELAY: the cheapest echo
  Python has, and it holds thousands of idle connections for the memory test.
- **sink**: a small framed protocol so the sender learns when the *sink* has
  everything, not merely when its own kernel buffer took the bytes. The client
  sends an 8-byte big-endian length N, then N bytes; the sink answers with an
  8-byte big-endian count once it has received all N. Repeatable on one
  connection; N = 0 is a cheap "is the path up" probe. Each connection is
  served by a thread doing ``recv_into`` a preallocated 1 MiB buffer, which
  releases the GIL and copies nothing in Python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import struct
import sys
import threading
from typing import cast

import uvloop

HEADER = struct.Struct("!Q")
RECV_BYTES = 1 << 20


class Echo(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close our side too


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _serve_sink_conn(conn: socket.socket) -> None:
    buf = bytearray(RECV_BYTES)
    view = memoryview(buf)
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = _recv_exact(conn, HEADER.size)
                if head is None:
                    return
                (want,) = HEADER.unpack(head)
                got = 0
                while got < want:
                    n = conn.recv_into(view, min(RECV_BYTES, want - got))
                    if n == 0:
                        return
                    got += n
                conn.sendall(HEADER.pack(got))
        except OSError:
            return


def _sink_accept_loop(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_serve_sink_conn, args=(conn,), daemon=True).start()


async def _main(host: str) -> None:
    loop = asyncio.get_running_loop()
    echo = await loop.create_server(Echo, host, 0, backlog=4096)
    echo_port = echo.sockets[0].getsockname()[1]

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sink = socket.socket(family, socket.SOCK_STREAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sink.bind((host, 0))
    sink.listen(256)
    sink_port = sink.getsockname()[1]
    threading.Thread(target=_sink_accept_loop, args=(sink,), daemon=True).start()

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY echo={echo_port} sink={sink_port}", flush=True)
    parent = os.getppid()
    while not stop.is_set() and os.getppid() == parent:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    echo.close()
    sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1"])
    args = parser.parse_args()
    uvloop.run(_main(args.host))
    sys.exit(0)


if __name__ == "__main__":
    main()
