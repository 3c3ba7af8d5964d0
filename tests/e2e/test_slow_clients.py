"""Slow headers and idle connections cannot starve a gateway of descriptors.

Observed: about 1000 connections that send a request line for a portal path
and then nothing stayed open for an hour (the 10 s head timer was cancelled
once the path was not a tunnel's); app connections, upgrades and the API
then failed, with nothing logged. Here ``qanat up`` runs with RLIMIT_NOFILE
1024 and 1100 such clients arrive from one address: they are closed (each
connection has a head deadline, a source has at most 64 unproven ones),
the pressure is logged once per interval, and the tunnel established before
keeps carrying its apps' connections; the portal keeps answering.

A standalone ``qanat portal`` (the form used with several gateway nodes)
has the same door: before, it was aiohttp alone and 1100 slow clients used
up its descriptors, so the API stopped answering.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from support.apps import echo_ok
from support.endpoints import CommandEndpoint
from support.processes import ProcessGroup, QanatProcess
from support.servers import free_port
from support.timing import scaled

pytestmark = pytest.mark.slow

CLIENTS = 1100
ATTACKER = "127.0.0.50"


@contextlib.contextmanager
def nofile(limit: int) -> Iterator[None]:
    """Children started inside inherit a soft RLIMIT_NOFILE of ``limit``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _api(base: str, key: str, method: str, path: str, body: bytes = b"{}") -> dict[str, object]:
    request = urllib.request.Request(base + "/api/v1" + path, method=method, data=body)
    request.add_header("Authorization", f"Bearer {key}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=scaled(10)) as answer:
        doc: dict[str, object] = json.loads(answer.read() or b"{}")
        return doc


def _slow_clients(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((ATTACKER, 0))
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        socks.append(sock)
    deadline = time.monotonic() + scaled(10)
    for sock in socks:
        while time.monotonic() < deadline:
            try:
                sock.send(b"GET /orgs HTTP/1.1\r\nHost: x\r\n")  # and never the rest
                break
            except (BlockingIOError, OSError) as exc:
                if not isinstance(exc, BlockingIOError):
                    break  # closed by the gateway already: fine
                time.sleep(0.001)
    return socks


def _still_open(socks: list[socket.socket]) -> int:
    alive = 0
    for sock in socks:
        try:
            data = sock.recv(1)
            alive += data != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def test_1100_slow_clients_cannot_starve_established_tunnels(
    tmp_path: Path, procs: ProcessGroup
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * CLIENTS:
        pytest.skip(f"needs a descriptor limit of {4 * CLIENTS} for the clients (hard {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4 * CLIENTS), hard))
    data = tmp_path / "data"
    with nofile(1024):
        up: QanatProcess = procs.start(
            "up", "up", "--data-dir", str(data), "--listen", "127.0.0.1:0", "--plain-http"
        )
    base = up.wait_for(r"up: portal and gateway on (http://127\.0\.0\.1:\d+)").group(1)
    up.wait_for(r"Ctrl-C", timeout_s=20)
    gw_port = int(base.rsplit(":", 1)[1])
    key = json.loads((data / "local-admin.json").read_text())["api_key"]
    _api(base, key, "POST", "/orgs", b'{"name": "acme"}')
    activation = _api(base, key, "POST", "/orgs/acme/stages/Development/activate")
    port = free_port()
    with CommandEndpoint() as endpoint:
        procs.start(
            "connector",
            "connect",
            "--header",
            f"token: {activation['token']}",
            str(activation["address"]),
            f"R:{port}:127.0.0.1:{endpoint.port}",
        ).wait_for(r"Connected \(latency")
        up.wait_for(rf"serving secure-gateway:{port}=>")
        assert echo_ok(port)
        gw = psutil.Process(up.pid)
        baseline = gw.memory_info().rss

        socks = _slow_clients(gw_port, CLIENTS)
        try:
            # Apps of the established tunnel, and the portal, keep working.
            slowest = 0.0
            for _ in range(20):
                start = time.perf_counter()
                assert echo_ok(port), "app connection failed under slow-header pressure"
                slowest = max(slowest, time.perf_counter() - start)
            growth = (gw.memory_info().rss - baseline) / 2**20
            print(
                f"slow clients: other tenants' slowest echo {slowest * 1000:.1f} ms,"
                f" RSS +{growth:.1f} MiB"
            )
            with urllib.request.urlopen(base + "/api/v1/openapi.json", timeout=10) as r:
                assert r.status == 200
            up.wait_for(r"connection pressure: closed \d+ unproven connections", timeout_s=20)
            assert _still_open(socks) <= 64
            # After the head deadline none of them is left.
            deadline = time.monotonic() + scaled(20)
            while _still_open(socks) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _still_open(socks) == 0
            assert echo_ok(port)
        finally:
            for sock in socks:
                sock.close()
    assert len(up.find(r"connection pressure:")) <= 3


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_a_standalone_portal_has_the_same_door(tmp_path: Path, procs: ProcessGroup) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * CLIENTS:
        pytest.skip(f"needs a descriptor limit of {4 * CLIENTS} for the clients (hard {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4 * CLIENTS), hard))
    data = tmp_path / "portal"
    with nofile(1024):
        portal: QanatProcess = procs.start(
            "portal", "portal", "--data-dir", str(data), "--listen", "127.0.0.1:0"
        )
    base = portal.wait_for(r"qanat portal on (http://127\.0\.0\.1:\d+)/", timeout_s=20).group(1)
    port = int(base.rsplit(":", 1)[1])
    key = json.loads((data / "local-admin.json").read_text())["api_key"]
    # A client that sends nothing at all, from the normal clients' address.
    silent = socket.create_connection(("127.0.0.1", port), timeout=scaled(5))
    silent.setblocking(False)
    socks = _slow_clients(port, CLIENTS)
    try:
        # The API answers a normal client (another loopback address).
        _api(base, key, "POST", "/orgs", b'{"name": "acme"}')
        with urllib.request.urlopen(base + "/api/v1/openapi.json", timeout=scaled(10)) as r:
            assert r.status == 200
        portal.wait_for(r"connection pressure: closed \d+ unproven connections", timeout_s=20)
        assert _still_open(socks) <= 64
        # The head deadline closes the silent client and every slow one.
        deadline = time.monotonic() + scaled(20)
        while (_still_open(socks) or not _closed_by_peer(silent)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _closed_by_peer(silent), "a client sending nothing was not closed"
        assert _still_open(socks) == 0
        assert portal.find(r"no complete HTTP request within the timeout")
        doc = _api(base, key, "GET", "/orgs", b"")
        assert "acme" in json.dumps(doc)
    finally:
        silent.close()
        for sock in socks:
            sock.close()
