"""Real processes for failover scenarios: gateway, connectors, endpoint, load.

Used by ``tests/e2e/test_failover.py`` (the proof) and ``bench/failover.py``
(the figures). Everything runs on loopback as separate processes started
with ``python -m qanat``, each in its own process group, killed (SIGKILL, the
group) when the :class:`Cluster` closes, whatever happened.

The app protocol the load generator speaks with the endpoint server::

    endpoint -> app   "hello\\n"          as soon as the endpoint accepts
    app -> endpoint   "req <n> <pad>\\n"
    endpoint -> app   "ok req <n> <pad>\\n", then close

Connect time is from ``connect()`` to the greeting: the gateway's accept,
channel open (with any retries on other connectors), the connector's dial.

Every app connection that did not get its answer is attributed to one of:

- **failed**: the gateway could not place it on any connector (the
  gateway's own count, ``connections_failed`` in its status), or it never
  reached the gateway (refused, load generator overloaded), or nothing
  happened within the greeting timeout. This is what failover must keep at
  zero.
- **cut**: it was placed on a connector (its channel was open) and lost
  when that connector was SIGKILLed or frozen. No gateway can replay bytes
  that may already have reached the endpoint. From the app's side a cut
  connection and a refused one can look alike (both are closed before the
  greeting when the connector dies between confirming the channel and
  forwarding the endpoint's first bytes), hence the gateway's count.

Also runnable: ``python failover_harness.py endpoint PORT`` (the endpoint
server) and ``python failover_harness.py flap ...`` (a connector that
reconnects in a tight loop, for the flapping scenario).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Multiplies every deadline (slow or busy machines), as in the test suite.
FACTOR = float(os.environ.get("QANAT_TEST_TIMEOUT_FACTOR", "1") or "1")
GREETING = b"hello\n"
#: A connect time above this counts as "slow" (caught behind a failing connector).
SLOW_MS = 100


def scaled(seconds: float) -> float:
    return seconds * FACTOR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- processes -------------------------------------------------------------------


class Proc:
    """A child process in its own group, its stderr+stdout in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        self._log.close()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_exit(self, timeout_s: float) -> int:
        return self.popen.wait(timeout=timeout_s)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.text().splitlines()[-lines:])


def _json_lines(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                yield json.loads(line)


def wait_until(
    check: Callable[[], Any], timeout_s: float, what: str, *, poll_s: float = 0.02
) -> Any:
    """Poll ``check`` until it returns something truthy; raise after the deadline."""
    deadline = time.monotonic() + scaled(timeout_s)
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {scaled(timeout_s):g}s waiting for {what}")
        time.sleep(poll_s)


@dataclass
class ConnectorSpec:
    name: str
    remotes: list[str]
    args: list[str] = field(default_factory=list)


class Cluster:
    """A gateway with one stage, an endpoint server and named connectors."""

    def __init__(
        self,
        workdir: Path,
        *,
        gateway_args: list[str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.workdir = workdir
        self.python = python
        self.procs: list[Proc] = []
        self.connectors: dict[str, Proc] = {}
        self.specs: dict[str, ConnectorSpec] = {}
        self.gateway_args = gateway_args or []
        self.gateway_port = free_port()
        self.endpoint_port = free_port()
        self.app_port = free_port()
        self.address = ""
        self.token = ""
        self.gateway: Proc | None = None
        self.endpoint: Proc | None = None

    # -- life --

    def __enter__(self) -> Cluster:
        try:
            self._write_stage()
            self.endpoint = self._spawn(
                "endpoint",
                [self.python, str(Path(__file__)), "endpoint", str(self.endpoint_port)],
            )
            self.gateway = self._spawn(
                "gateway",
                [
                    self.python,
                    "-m",
                    "qanat",
                    "--log-format",
                    "json",
                    "gateway",
                    "--data-dir",
                    str(self.workdir / "data"),
                    "--listen",
                    f"127.0.0.1:{self.gateway_port}",
                    *self.gateway_args,
                ],
            )
            wait_until(self._gateway_ready, 15, "the gateway to listen")
            wait_until(lambda: _accepts(self.endpoint_port), 15, "the endpoint server")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in self.procs:
            proc.kill_group()

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        count = sum(1 for p in self.procs if p.name == name)
        proc = Proc(name, argv, self.workdir / f"{name}.{count}.log")
        self.procs.append(proc)
        return proc

    def _write_stage(self) -> None:
        from qanat.wire.tokens import hash_token, new_address_id, new_token

        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.token = new_token()
        address_id = new_address_id()
        (data / "stages.toml").write_text(
            "[[stage]]\n"
            'name = "dev"\n'
            f'address_id = "{address_id}"\n'
            f'token_sha256 = ["{hash_token(self.token)}"]\n'
            'bind = "127.0.0.1"\n'
            'ports = "1024-65535"\n'
        )
        self.address = f"http://127.0.0.1:{self.gateway_port}/{address_id}"

    def _gateway_ready(self) -> bool:
        assert self.gateway is not None
        if not self.gateway.alive():
            raise RuntimeError(f"gateway exited:\n{self.gateway.tail()}")
        return _accepts(self.gateway_port)

    # -- gateway log --

    def gateway_events(self) -> list[dict[str, Any]]:
        assert self.gateway is not None
        return list(_json_lines(self.gateway.text()))

    def events_matching(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [e for e in self.gateway_events() if predicate(e)]

    def status(self) -> dict[str, Any]:
        """Ask the gateway for its status (SIGUSR2) and return the JSON it logs."""
        assert self.gateway is not None
        before = len(self.events_matching(_is_status))
        self.gateway.signal(signal.SIGUSR2)
        found = wait_until(
            lambda: self.events_matching(_is_status)[before:], 10, "the gateway's status line"
        )
        doc: dict[str, Any] = json.loads(found[0]["msg"][len("status ") :])
        return doc

    def pool(self, port: int | None = None) -> list[dict[str, Any]]:
        """The pool of one app port, from the gateway's status."""
        port = port or self.app_port
        for stage in self.status()["stages"].values():
            for endpoint in stage["endpoints"]:
                if endpoint["endpoint"] == f"secure-gateway:{port}":
                    members: list[dict[str, Any]] = endpoint["pool"]
                    return members
        return []

    def gateway_failed(self, port: int | None = None) -> int:
        """App connections the gateway could not place on any connector.

        Counted from its log (one warning per such connection, with every
        connector's reason), which outlives the port's listener.
        """
        port = port or self.app_port
        return len(
            self.events_matching(
                lambda e: (
                    e.get("port") == port
                    and str(e.get("msg", "")).startswith("app connection from ")
                )
            )
        )

    # -- connectors --

    def remote(self, port: int | None = None, target_port: int | None = None) -> str:
        return f"R:{port or self.app_port}:127.0.0.1:{target_port or self.endpoint_port}"

    def start_connector(
        self, name: str, remotes: list[str] | None = None, args: list[str] | None = None
    ) -> Proc:
        spec = ConnectorSpec(name, remotes or [self.remote()], args or [])
        self.specs[name] = spec
        return self._start(spec)

    def _start(self, spec: ConnectorSpec) -> Proc:
        proc = self._spawn(
            spec.name,
            [
                self.python,
                "-m",
                "qanat",
                "connect",
                "--header",
                f"token: {self.token}",
                "--id",
                spec.name,
                *spec.args,
                self.address,
                *spec.remotes,
            ],
        )
        self.connectors[spec.name] = proc
        return proc

    def connected_count(self, name: str) -> int:
        prefix = f"connector {name} connected"
        return len(self.events_matching(lambda e: str(e.get("msg", "")).startswith(prefix)))

    def wait_connected(self, name: str, count: int = 1, timeout_s: float = 20) -> None:
        proc = self.connectors[name]

        def check() -> bool:
            if not proc.alive():
                raise RuntimeError(f"connector {name} exited:\n{proc.tail()}")
            return self.connected_count(name) >= count

        wait_until(check, timeout_s, f"connector {name} to connect (#{count})")

    def restart(self, name: str) -> Proc:
        return self._start(self.specs[name])

    def tunnel_closed(self, name: str, reason: str = "") -> list[dict[str, Any]]:
        return self.events_matching(
            lambda e: (
                e.get("connector") == name
                and str(e.get("msg", "")).startswith("tunnel closed: " + reason)
            )
        )


def _is_status(event: dict[str, Any]) -> bool:
    return str(event.get("msg", "")).startswith("status {")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# -- load generator ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    started: float  # time.monotonic()
    connect_s: float | None  # to the greeting; None when it never came
    status: str  # see STATUSES
    error: str = ""


#: ok; closed (reached the gateway, closed or reset before the greeting);
#: dropped (greeting came, answer did not); refused (never reached the
#: gateway); timeout (no greeting in time); overload (load generator limit).
STATUSES = ("ok", "closed", "dropped", "refused", "timeout", "overload")


@dataclass
class Summary:
    connections: int
    ok: int
    failed: int
    cut: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    slow: int  # connect time over SLOW_MS
    statuses: dict[str, int]
    errors: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "ok": self.ok,
            "failed": self.failed,
            "cut": self.cut,
            "p50_connect_ms": self.p50_ms,
            "p99_connect_ms": self.p99_ms,
            "max_connect_ms": self.max_ms,
            f"connect_over_{SLOW_MS}ms": self.slow,
            "app_side": self.statuses,
            "errors": self.errors,
        }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def summarize(
    outcomes: list[Outcome],
    start: float = -math.inf,
    end: float = math.inf,
    *,
    gateway_failed: int | None = None,
) -> Summary:
    """Counts and connect-time percentiles of the outcomes started in [start, end).

    ``gateway_failed`` is the gateway's count of app connections it could
    not place (over the same connections); without it, every connection
    closed before its greeting counts as failed (an upper bound).
    """
    chosen = [o for o in outcomes if start <= o.started < end]
    times = [o.connect_s * 1e3 for o in chosen if o.connect_s is not None]
    statuses = {name: 0 for name in STATUSES}
    errors: dict[str, int] = {}
    for o in chosen:
        statuses[o.status] += 1
        if o.status != "ok":
            key = f"{o.status}: {o.error}"
            errors[key] = errors.get(key, 0) + 1
    never_reached = statuses["refused"] + statuses["timeout"] + statuses["overload"]
    closed = statuses["closed"]
    placed_failed = closed if gateway_failed is None else min(gateway_failed, closed)
    failed = never_reached + placed_failed
    cut = closed - placed_failed + statuses["dropped"]

    def rounded(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return Summary(
        connections=len(chosen),
        ok=statuses["ok"],
        failed=failed,
        cut=cut,
        p50_ms=rounded(percentile(times, 0.50)),
        p99_ms=rounded(percentile(times, 0.99)),
        max_ms=rounded(max(times) if times else None),
        slow=sum(1 for t in times if t > SLOW_MS),
        statuses=statuses,
        errors=errors,
    )


class LoadGen:
    """New app connections at a fixed rate, each one small request/response.

    Runs its own event loop in a thread, so the caller can send signals and
    wait for log lines meanwhile. Bounded: ``rate * duration_s`` connections
    at most, each with its own deadlines, and at most ``max_open`` at once
    (a connection that would exceed it counts as "overload").
    """

    def __init__(
        self,
        port: int,
        *,
        rate: float,
        duration_s: float | None = None,
        count: int | None = None,
        max_open: int = 2000,
        greeting_timeout_s: float = 15.0,
        answer_timeout_s: float = 10.0,
        payload_bytes: int = 64,
        host: str = "127.0.0.1",
    ) -> None:
        if count is None:
            assert duration_s is not None
            count = int(rate * duration_s)
        self.port = port
        self.host = host
        self.rate = rate
        self.count = count
        self.max_open = max_open
        self.greeting_timeout_s = scaled(greeting_timeout_s)
        self.answer_timeout_s = scaled(answer_timeout_s)
        self.pad = b"x" * payload_bytes
        self.outcomes: list[Outcome] = []
        self.started_at = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> LoadGen:
        self._thread = threading.Thread(target=self._run, name="loadgen", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Start no more connections (the ones under way finish)."""
        self._stop.set()

    def join(self, timeout_s: float | None = None) -> list[Outcome]:
        assert self._thread is not None
        limit = timeout_s if timeout_s is not None else self.count / self.rate + 60
        self._thread.join(scaled(limit))
        if self._thread.is_alive():
            raise TimeoutError("load generator did not finish")
        if self._error is not None:
            raise RuntimeError(f"load generator crashed: {self._error!r}")
        return self.outcomes

    def run(self) -> list[Outcome]:
        return self.start().join()

    def _run(self) -> None:
        try:
            try:
                import uvloop

                uvloop.run(self._main())
            except ImportError:  # pragma: no cover
                asyncio.run(self._main())
        except BaseException as exc:  # reported by join()
            self._error = exc

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        t0 = loop.time()
        self.started_at = time.monotonic()
        for i in range(self.count):
            if self._stop.is_set():
                break
            delay = t0 + i / self.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= self.max_open:
                self.outcomes.append(Outcome(time.monotonic(), None, "overload", "max_open"))
                continue
            task = loop.create_task(self._one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)

    async def _one(self, n: int) -> None:
        started = time.monotonic()
        perf = time.perf_counter()
        writer: asyncio.StreamWriter | None = None
        connect_s: float | None = None
        try:
            async with asyncio.timeout(self.greeting_timeout_s):
                try:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                except ConnectionRefusedError:
                    self.outcomes.append(Outcome(started, None, "refused", "connect refused"))
                    return
                greeting = await reader.readline()
            if greeting != GREETING:
                self.outcomes.append(Outcome(started, None, "closed", "before the greeting"))
                return
            connect_s = time.perf_counter() - perf
            request = b"req %d %s\n" % (n, self.pad)
            writer.write(request)
            async with asyncio.timeout(self.answer_timeout_s):
                answer = await reader.readline()
            if answer != b"ok " + request:
                self.outcomes.append(Outcome(started, connect_s, "dropped", "no answer"))
                return
            self.outcomes.append(Outcome(started, connect_s, "ok"))
        except TimeoutError:
            status = "timeout" if connect_s is None else "dropped"
            self.outcomes.append(Outcome(started, connect_s, status, "timeout"))
        except OSError as exc:
            status = "closed" if connect_s is None else "dropped"
            self.outcomes.append(Outcome(started, connect_s, status, type(exc).__name__))
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


# -- helper processes ----------------------------------------------------------------


async def _endpoint(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(GREETING)
            async with asyncio.timeout(30):
                line = await reader.readline()
            if line:
                writer.write(b"ok " + line)
                await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


async def _flap(args: argparse.Namespace) -> dict[str, Any]:
    """Connect (upgrade, SSH, config) and disconnect at once, as fast as allowed."""
    from qanat.connector.egress import Egress
    from qanat.connector.options import ConnectOptions
    from qanat.connector.session import Session, Stats
    from qanat.errors import HandshakeError
    from qanat.wire.remotes import decode_remotes

    options = ConnectOptions(
        address=args.address,
        remotes=tuple(decode_remotes(args.remote)),
        headers=(("token", args.token),),
        keepalive_s=0,
        connector_id=args.id,
        connect_timeout_s=5.0,
    )
    counts = {"connected": 0, "refused_429": 0, "other": 0}
    retry_after: list[float] = []
    deadline = time.monotonic() + args.seconds
    for _ in range(args.max_attempts):
        if time.monotonic() >= deadline:
            break
        session = Session(options, "123456789", Stats(), Egress(options))
        try:
            await session.connect()
            counts["connected"] += 1
        except HandshakeError as exc:
            if exc.status == 429:
                counts["refused_429"] += 1
                if exc.retry_after_s is not None:
                    retry_after.append(exc.retry_after_s)
            else:
                counts["other"] += 1
        except Exception:
            counts["other"] += 1
        finally:
            await session.close()
        await asyncio.sleep(args.pause)
    return {**counts, "retry_after_s": sorted(set(retry_after))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="failover_harness")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ep = sub.add_parser("endpoint", help="greeting + echo server on 127.0.0.1:PORT")
    ep.add_argument("port", type=int)
    flap = sub.add_parser("flap", help="connect and disconnect in a tight loop")
    flap.add_argument("--address", required=True)
    flap.add_argument("--token", required=True)
    flap.add_argument("--id", default="flapper")
    flap.add_argument("--remote", action="append", required=True)
    flap.add_argument("--seconds", type=float, default=5.0)
    flap.add_argument("--max-attempts", type=int, default=500)
    flap.add_argument("--pause", type=float, default=0.01)
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    if args.cmd == "endpoint":
        with contextlib.suppress(KeyboardInterrupt):
            runner(_endpoint(args.port))
        return 0
    print(json.dumps(runner(_flap(args))), flush=True)
    return 0


def workdir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=prefix)


if __name__ == "__main__":
    sys.exit(main())
