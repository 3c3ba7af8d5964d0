"""Private endpoints for the process tests, served from threads.

:class:`CommandEndpoint` reads one command line per connection:

- ``ECHO``: echo every byte; half-close after the client's EOF.
- ``SINK``: read to EOF, answer ``<bytes> <sha256>``, close (half-close test).
- ``SOURCE <bytes> <seed>``: send :func:`pattern` bytes, then close.

:class:`HttpEndpoint` answers every GET with a fixed body.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import random
import socket
import socketserver
import threading
from collections.abc import Iterator
from typing import Any, Self

from support.timing import scaled

CHUNK = 64 * 1024


def pattern(size: int, seed: int) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes, in chunks, for byte-exact checks."""
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n


def pattern_sha256(size: int, seed: int) -> str:
    digest = hashlib.sha256()
    for chunk in pattern(size, seed):
        digest.update(chunk)
    return digest.hexdigest()


class _CommandHandler(socketserver.BaseRequestHandler):
    server: CommandEndpoint

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(scaled(60))
        self.server.track(sock, True)
        try:
            line = b""
            while not line.endswith(b"\n"):
                data = sock.recv(1)
                if not data:
                    return
                line += data
            command, *args = line.decode().split()
            getattr(self, f"do_{command.lower()}")(sock, *args)
        except OSError:
            pass
        finally:
            self.server.track(sock, False)

    def do_echo(self, sock: socket.socket) -> None:
        while data := sock.recv(CHUNK):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    def do_sink(self, sock: socket.socket) -> None:
        digest = hashlib.sha256()
        count = 0
        while data := sock.recv(CHUNK):
            digest.update(data)
            count += len(data)
        sock.sendall(f"{count} {digest.hexdigest()}\n".encode())
        sock.shutdown(socket.SHUT_WR)

    def do_source(self, sock: socket.socket, size: str, seed: str) -> None:
        for chunk in pattern(int(size), int(seed)):
            sock.sendall(chunk)
            self.server.sent += len(chunk)
        sock.shutdown(socket.SHUT_WR)


class CommandEndpoint(socketserver.ThreadingTCPServer):
    """The command endpoint on 127.0.0.1, an ephemeral port; a context manager."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CommandHandler)
        self.sent = 0
        self.accepted = 0  # connections handled so far
        self.open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def track(self, sock: socket.socket, is_open: bool) -> None:
        with self._lock:
            self.accepted += is_open
            (self.open.add if is_open else self.open.discard)(sock)

    def __enter__(self) -> CommandEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        with self._lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self.server_close()
        self._thread.join(scaled(5))


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from the private side, path {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ServedInThread(socketserver.BaseServer):
    """Serves in a thread of its own while entered; a context manager."""

    daemon_threads = True
    _thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(scaled(5))


class HttpEndpoint(_ServedInThread, http.server.ThreadingHTTPServer):
    """Answers every GET with a fixed body; a context manager."""

    def __init__(self) -> None:
        http.server.ThreadingHTTPServer.__init__(self, ("127.0.0.1", 0), _HttpHandler)


class UdpEchoEndpoint(_ServedInThread, socketserver.ThreadingUDPServer):
    """Echoes every datagram to its sender, prefixed with ``echo:``; a context manager."""

    def __init__(self) -> None:
        socketserver.ThreadingUDPServer.__init__(self, ("127.0.0.1", 0), _UdpEchoHandler)


class _UdpEchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(b"echo:" + data, self.client_address)
