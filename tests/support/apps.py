"""The app side of the process tests: blocking sockets with deadlines."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterable

from support.timing import scaled


def app_socket(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((host, port), timeout=scaled(timeout_s))


def exchange(
    port: int,
    command: bytes,
    payload: Iterable[bytes] = (),
    *,
    timeout_s: float = 30.0,
    host: str = "127.0.0.1",
) -> tuple[int, str, bytes]:
    """Send ``command`` and ``payload`` (from a thread), half-close, read to EOF.

    Returns (bytes received, their sha256, the first 4 KiB of them).
    """
    digest = hashlib.sha256()
    count = 0
    head = b""
    failure: list[BaseException] = []
    with app_socket(port, timeout_s, host) as sock:

        def send() -> None:
            try:
                sock.sendall(command)
                for chunk in payload:
                    sock.sendall(chunk)
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:  # reported by the reader's assertion
                failure.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        while data := sock.recv(256 * 1024):
            digest.update(data)
            if len(head) < 4096:
                head += data[: 4096 - len(head)]
            count += len(data)
        sender.join(scaled(timeout_s))
    assert not failure, f"sending failed: {failure[0]!r}"
    return count, digest.hexdigest(), head


def echo_ok(port: int, payload: bytes = b"still working\n", host: str = "127.0.0.1") -> bool:
    """One ECHO exchange through ``port``; True when the bytes came back exactly."""
    count, sha, _ = exchange(port, b"ECHO\n", [payload], host=host)
    return count == len(payload) and sha == hashlib.sha256(payload).hexdigest()


def connection_refused(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=scaled(2)):
            return False
    except ConnectionRefusedError:
        return True


def udp_exchange(port: int, payload: bytes, *, sock: socket.socket | None = None) -> bytes | None:
    """Send one datagram to 127.0.0.1:``port``; the answer, or None after a
    short wait (UDP: the caller retries within its own deadline)."""
    own = sock is None
    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
    try:
        sock.settimeout(scaled(0.5))
        sock.sendto(payload, ("127.0.0.1", port))
        try:
            return sock.recv(65536)
        except TimeoutError:
            return None
    finally:
        if own:
            sock.close()
