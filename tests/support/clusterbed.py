"""Several gateway nodes on this machine, as an operator runs them, for tests and the demo.

:class:`ClusterBed` starts, all on loopback with free ports: PostgreSQL
(pgserver.py), nats-server (natsserver.py), one ``qanat portal --nats``,
``count`` ``qanat gateway --database-url ... --nats ...`` nodes (node *i*'s
stage endpoints on 127.0.1.*i* through ``--bind-map``, since the nodes share
one host), HAProxy in TCP mode in front of the nodes' front doors and of the
stage's endpoint port, a command endpoint (the private side) and connectors
(``qanat connect`` through the balancer). :class:`Load` makes app
connections at a fixed rate and counts every failure with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.haproxy import HaProxy, running_haproxy
from support.natsserver import NatsServer, nats_server_binary
from support.pgserver import PgServer, find_bindir
from support.processes import ProcessGroup, QanatProcess
from support.servers import stable_port
from support.timing import scaled, wait_until

SECRET = "0123456789abcdef" * 4
#: How the gateway names a connector without an identity header (the Go peer).
GO_IDENTITY = r"src-[0-9a-f]{12}"


def missing_parts() -> str | None:
    """Why the bed cannot run here, or None."""
    import shutil

    if find_bindir() is None:
        return "no PostgreSQL server binary (Debian package postgresql)"
    if nats_server_binary() is None:
        return "nats-server is not installed (Debian package nats-server)"
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        return "haproxy is not installed (Debian package haproxy)"
    return None


@dataclass
class NodeProc:
    index: int
    name: str
    front_port: int
    link_port: int
    bind: str
    process: QanatProcess | None = None


@dataclass
class ClusterBed:
    root: Path
    count: int = 3
    node_flags: tuple[str, ...] = ()
    group: ProcessGroup = field(init=False)
    pg: PgServer | None = None
    nats: NatsServer | None = None
    haproxy: HaProxy | None = None
    portal: QanatProcess | None = None
    nodes: list[NodeProc] = field(default_factory=list)
    connectors: list[Any] = field(default_factory=list)
    endpoint: EchoProcess | None = None
    app_port: int = 0
    db_url: str = ""
    api: str = ""
    key: str = ""
    address: str = ""
    token: str = ""
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __post_init__(self) -> None:
        self.group = ProcessGroup(self.root)

    # -- start -------------------------------------------------------------------

    def start(self) -> None:
        bindir = find_bindir()
        assert bindir is not None
        self.pg = PgServer.start(bindir)
        self._stack.callback(self.pg.stop)
        self.db_url = self.pg.create_schema()
        binary = nats_server_binary()
        assert binary is not None
        self.nats = NatsServer(binary)
        self._stack.callback(self.nats.close)
        self.nats.start()
        self.endpoint = self._stack.enter_context(EchoProcess(self.root / "echo.log"))
        self._stack.callback(self.group.close)
        # Nodes are restarted on the same ports: ports outside the ephemeral
        # range, so that no outgoing connection takes one while a node is down.
        self.app_port = stable_port()
        self.nodes = [
            NodeProc(i, f"n{i}", stable_port(), stable_port(), f"127.0.1.{i + 1}")
            for i in range(self.count)
        ]
        self.haproxy = self._stack.enter_context(
            running_haproxy(
                {
                    "front": [("127.0.0.1", n.front_port) for n in self.nodes],
                    "app": [(n.bind, self.app_port) for n in self.nodes],
                },
                # Both backends follow the node's readiness (503 while draining).
                checks={
                    name: [("127.0.0.1", n.front_port) for n in self.nodes]
                    for name in ("front", "app")
                },
            )
        )
        (self.root / "cluster-secret").write_text(SECRET)
        self._start_portal()
        for node in self.nodes:
            self.start_node(node, wait=False)
        for node in self.nodes:
            self.wait_node(node)
        self._activate()

    @property
    def front_url(self) -> str:
        assert self.haproxy is not None
        return f"http://127.0.0.1:{self.haproxy.listens['front']}"

    @property
    def app_address(self) -> tuple[str, int]:
        """The balancer's port for the stage endpoint (what apps dial)."""
        assert self.haproxy is not None
        return "127.0.0.1", self.haproxy.listens["app"]

    def _start_portal(self) -> None:
        assert self.nats is not None
        data = self.root / "portal"
        self.portal = self.group.start(
            "portal",
            "portal",
            "--data-dir", str(data),
            "--listen", "127.0.0.1:0",
            "--public-url", self.front_url,
            "--database-url", self.db_url,
            "--nats", self.nats.url,
        )  # fmt: skip
        local = data / "local-admin.json"
        wait_until(local.exists, "the portal's local admin key", 30)
        doc = json.loads(local.read_text())
        self.api, self.key = doc["url"] + "/api/v1", doc["api_key"]

    def start_node(self, node: NodeProc, *, wait: bool = True) -> QanatProcess:
        assert self.nats is not None
        node.process = self.group.start(
            node.name,
            "gateway",
            "--listen", f"127.0.0.1:{node.front_port}",
            "--data-dir", str(self.root / node.name),
            "--database-url", self.db_url,
            "--nats", self.nats.url,
            "--node", node.name,
            "--node-link", f"127.0.0.1:{node.link_port}",
            "--cluster-secret-file", str(self.root / "cluster-secret"),
            "--bind-map", f"127.0.0.1={node.bind}",
            "--keepalive", "2s",
            "--keepalive-timeout", "1s",
            "--channel-open-timeout", "5s",
            "--presence-ttl", "3s",
            "--drain-timeout", "10s",
            "--drain-grace", "1s",
            *self.node_flags,
        )  # fmt: skip
        if wait:
            self.wait_node(node)
        return node.process

    def wait_node(self, node: NodeProc) -> None:
        assert node.process is not None
        node.process.wait_for(r"qanat gateway .* listening on", 30)
        node.process.wait_for(r"cluster node .*: NATS", 30)

    def request(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.api + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=scaled(10)) as response:
            return json.loads(response.read() or b"null")

    def _activate(self) -> None:
        self.request("POST", "/orgs", {"name": "acme"})
        activation = self.request("POST", "/orgs/acme/stages/Development/activate", {})
        self.address, self.token = activation["address"], activation["token"]

    def start_connector(self, name: str) -> QanatProcess:
        assert self.endpoint is not None
        process = self.group.start(
            name,
            "connect",
            "--id", name,
            "--header", f"token: {self.token}",
            "--max-retry-interval", "0.5s",
            "--keepalive", "2s",
            self.address,
            f"R:{self.app_port}:127.0.0.1:{self.endpoint.port}",
        )  # fmt: skip
        self.connectors.append(process)
        return process

    def start_go_connector(self, gopeer: Path, name: str = "go") -> Any:
        """The Go peer (tests/interop/gopeer) as a stock chisel-like client.

        It sends no identity header; the gateway names it ``src-<hash>`` of
        the source (the balancer) and remotes: use :data:`GO_IDENTITY`.
        """
        from support.gopeer import peer_env

        assert self.endpoint is not None
        argv = [
            str(gopeer),
            "client",
            "-header", f"token: {self.token}",
            "-max-retry-interval", "1s",
            self.address,
            f"R:{self.app_port}:127.0.0.1:{self.endpoint.port}",
        ]  # fmt: skip
        process = self.group.start_program(name, argv, peer_env())
        self.connectors.append(process)
        return process

    def holder(self, connector: str, since: dict[str, int] | None = None) -> NodeProc | None:
        """The node where ``connector`` (a regex) connected last (after ``since`` marks).

        "Last" by the time stamp that starts each log line; nodes that are not
        running are skipped.
        """
        best: tuple[str, NodeProc] | None = None
        for node in self.nodes:
            if node.process is None or node.process.proc.poll() is not None:
                continue
            start = (since or {}).get(node.name, 0)
            hits = node.process.find(rf"^(\S+) .*connector {connector} connected", start)
            if hits and (best is None or hits[-1].group(1) > best[0]):
                best = (hits[-1].group(1), node)
        return best[1] if best else None

    def marks(self) -> dict[str, int]:
        return {n.name: n.process.mark() for n in self.nodes if n.process is not None}

    def kill_node(self, node: NodeProc) -> None:
        assert node.process is not None
        os.killpg(node.process.pid, signal.SIGKILL)
        node.process.proc.wait(scaled(10))

    def close(self) -> None:
        self._stack.close()


class EchoProcess:
    """The private endpoint: an echo server in its own process (echoproc.py)."""

    def __init__(self, log: Path) -> None:
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("echoproc.py"))],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def __enter__(self) -> EchoProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait(scaled(10))
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def exchange(host: str, port: int, payload: bytes, timeout_s: float = 5.0) -> None:
    """One app connection to the command endpoint's echo; raises on any failure."""
    import socket

    with socket.create_connection((host, port), timeout=scaled(timeout_s)) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while len(got) < len(payload):
            data = sock.recv(65536)
            if not data:
                break
            got += data
        if got != payload:
            raise ConnectionError(f"echo returned {len(got)} of {len(payload)} bytes")


class Load:
    """App connections at ``rate`` per second to ``targets`` in turn, in a thread.

    Each connection sends 64 bytes to the echo and checks the answer;
    ``failures`` lists (end time, target, reason) of every one that did not,
    ``failed_started`` the start times of the same (seconds since the load
    started, like :meth:`since`).
    """

    def __init__(self, targets: list[tuple[str, int]], rate: float = 200.0) -> None:
        self.targets = targets
        self.rate = rate
        self.ok = 0
        self.failures: list[tuple[float, tuple[str, int], str]] = []
        self.failed_started: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self.started = 0.0

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(scaled(30))

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        payload = os.urandom(64)
        interval = 1.0 / self.rate
        next_at = loop.time()
        index = 0
        while not self._stop.is_set():
            target = self.targets[index % len(self.targets)]
            index += 1
            task = loop.create_task(self._one(target, payload))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        if tasks:
            await asyncio.wait(tasks, timeout=scaled(15))

    def since(self) -> float:
        """Seconds since the load started (the clock of ``failures``)."""
        return time.monotonic() - self.started

    async def _one(self, target: tuple[str, int], payload: bytes) -> None:
        begun = self.since()
        try:
            async with asyncio.timeout(scaled(10)):
                reader, writer = await asyncio.open_connection(*target)
                try:
                    writer.write(payload)
                    writer.write_eof()
                    got = await reader.read(len(payload) + 1)
                    while len(got) < len(payload):
                        more = await reader.read(len(payload))
                        if not more:
                            break
                        got += more
                finally:
                    writer.close()
            if got != payload:
                raise ConnectionError(f"echo returned {len(got)} of {len(payload)} bytes")
            self.ok += 1
        except (OSError, TimeoutError, ConnectionError) as exc:
            self.failures.append((self.since(), target, repr(exc)))
            self.failed_started.append(begun)


class Streams:
    """``count`` long app connections sending a chunk every 20 ms; lost bytes counted."""

    def __init__(self, target: tuple[str, int], count: int, seconds: float) -> None:
        self.target = target
        self.count = count
        self.seconds = seconds
        self.sent = 0
        self.received = 0
        self.errors: list[str] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> Streams:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join(scaled(self.seconds + 30))

    @property
    def lost(self) -> int:
        return self.sent - self.received

    async def _main(self) -> None:
        await asyncio.gather(*(self._one(i) for i in range(self.count)))

    async def _one(self, index: int) -> None:
        chunk = bytes([index % 251]) * 512
        try:
            reader, writer = await asyncio.open_connection(*self.target)
        except OSError as exc:
            self.errors.append(f"stream {index}: connect {exc!r}")
            return
        received = 0
        sent = 0

        async def read() -> None:
            nonlocal received
            while data := await reader.read(65536):
                received += len(data)

        reading = asyncio.get_running_loop().create_task(read())
        try:
            end = time.monotonic() + self.seconds
            while time.monotonic() < end:
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
                await asyncio.sleep(0.02)
            writer.write_eof()
            await asyncio.wait_for(reading, scaled(15))
        except (OSError, TimeoutError) as exc:
            at = time.strftime("%H:%M:%S")
            self.errors.append(f"stream {index} at {at}, {sent} sent {received} back: {exc!r}")
        finally:
            reading.cancel()
            writer.close()
            self.sent += sent
            self.received += received


def api_status(bed: ClusterBed, path: str) -> tuple[int, Any]:
    """HTTP status and JSON body of a GET (errors included)."""
    request = urllib.request.Request(bed.api + path)
    request.add_header("Authorization", f"Bearer {bed.key}")
    try:
        with urllib.request.urlopen(request, timeout=scaled(10)) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
