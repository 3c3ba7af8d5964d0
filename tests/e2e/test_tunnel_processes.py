"""``qanat gateway`` and ``qanat connect`` as real processes.

What an operator does: add a stage, start the gateway, start a connector
with the printed address and token, send traffic, signal the processes.
Every process runs in its own process group and is killed when the test
ends, whatever happened (see support.processes).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from support.apps import connection_refused, echo_ok, exchange
from support.endpoints import CommandEndpoint, HttpEndpoint, pattern, pattern_sha256
from support.processes import ProcessGroup, QanatProcess
from support.servers import free_port
from support.timing import scaled, wait_until

pytestmark = pytest.mark.slow

TEN_MB = 10 * 1024 * 1024


def connect(
    procs: ProcessGroup, gw_port: int, address_id: str, token: str, *args: str
) -> QanatProcess:
    return procs.start(
        "connector",
        "connect",
        "--header",
        f"token: {token}",
        f"http://127.0.0.1:{gw_port}/{address_id}",
        *args,
    )


def stage(procs: ProcessGroup, tmp_path: Path) -> tuple[Path, Path, str, str]:
    data_dir, stage_file = tmp_path / "data", tmp_path / "stages.toml"
    address_id, token = procs.add_stage(data_dir, stage_file)
    return data_dir, stage_file, address_id, token


def test_tunnel_between_processes(tmp_path, procs):
    data_dir, stage_file, address_id, token = stage(procs, tmp_path)
    gateway, gw_port = procs.gateway(data_dir, stage_file)
    fingerprint = gateway.wait_for(r"host key fingerprint (\S+)").group(1)
    printed = procs.run("gateway", "fingerprint", "--data-dir", str(data_dir))
    assert printed.stdout.strip() == fingerprint

    cmd_port, web_port = free_port(), free_port()
    with CommandEndpoint() as endpoint, HttpEndpoint() as web:
        connector = connect(
            procs,
            gw_port,
            address_id,
            token,
            "--fingerprint",
            fingerprint,
            f"R:{cmd_port}:127.0.0.1:{endpoint.port}",
            # A host name, resolved on the private side.
            f"R:{web_port}:localhost:{web.port}",
        )
        connector.wait_for(r"Connected \(latency [\d.]+ms\)")
        gateway.wait_for(rf"serving secure-gateway:{cmd_port}=>127\.0\.0\.1:{endpoint.port}")

        conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=scaled(10))
        conn.request("GET", "/status")
        response = conn.getresponse()
        assert (response.status, response.read()) == (
            200,
            b"hello from the private side, path /status\n",
        )
        conn.close()

        # 10 MB up; the app half-closes and still gets the endpoint's answer.
        count, _, reply = exchange(cmd_port, b"SINK\n", pattern(TEN_MB, 1))
        assert reply.decode() == f"{TEN_MB} {pattern_sha256(TEN_MB, 1)}\n"
        assert count == len(reply)
        # 10 MB down, byte for byte.
        count, sha, _ = exchange(cmd_port, b"SOURCE %d 2\n" % TEN_MB)
        assert (count, sha) == (TEN_MB, pattern_sha256(TEN_MB, 2))
        # Several app connections at once.
        results: list[bool] = []
        threads = [
            threading.Thread(target=lambda: results.append(echo_ok(cmd_port, os.urandom(300_000))))
            for _ in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(scaled(30))
        assert results == [True] * 6

        mark = connector.mark()
        connector.send(signal.SIGUSR2)
        stats = connector.wait_for(
            r"stats: connected for \d+s, sessions 1, attempts 1, channels open 0 / total (\d+) "
            r"\(confirmed before the dial (\d+), refused 0\), "
            r"keepalive rtt \S+, bytes to gateway (\d+), from gateway (\d+)",
            start=mark,
        )
        assert int(stats.group(1)) == 9
        # A qanat gateway takes a failed dial back (early-open): every TCP
        # channel was confirmed before its dial.
        assert int(stats.group(2)) == 9
        assert int(stats.group(3)) >= TEN_MB  # endpoint -> gateway
        assert int(stats.group(4)) >= TEN_MB  # gateway -> endpoint
        assert connector.proc.poll() is None

        mark = gateway.mark()
        started = time.monotonic()
        connector.send(signal.SIGTERM)
        assert connector.wait_exit(timeout_s=5) == 0
        assert time.monotonic() - started < scaled(3)
        connector.wait_for(r"Stopped$")
        gateway.wait_for(r"tunnel closed: ", start=mark)
        wait_until(lambda: connection_refused(cmd_port), "the endpoint port to close")

    started = time.monotonic()
    gateway.send(signal.SIGTERM)
    assert gateway.wait_exit(timeout_s=5) == 0
    assert time.monotonic() - started < scaled(3)
    gateway.wait_for(r"shutting down")
    for process in (gateway, connector):
        assert "Traceback" not in process.output, process.output


def test_sighup_skips_the_retry_wait(tmp_path, procs):
    data_dir, stage_file, address_id, token = stage(procs, tmp_path)
    gw_port = free_port()
    with CommandEndpoint() as endpoint:
        port = free_port()
        # The connector starts first: nothing listens on the gateway port yet.
        connector = connect(
            procs,
            gw_port,
            address_id,
            token,
            "--max-retry-interval",
            "1m",
            f"R:{port}:127.0.0.1:{endpoint.port}",
        )
        long_wait = min(scaled(3.0), 50.0)
        attempt, skipped = 1, 0
        while True:
            match = connector.wait_for(rf"Retrying in ([\d.]+)s \(attempt {attempt}/unlimited\)")
            delay = float(match.group(1))
            if delay >= long_wait:
                break
            if delay >= 0.5:  # long enough to be sure the signal lands inside the wait
                mark = connector.mark()
                sent = time.monotonic()
                connector.send(signal.SIGHUP)
                connector.wait_for(r"SIGHUP: retrying now", start=mark)
                connector.wait_for(rf"Retrying in \S+ \(attempt {attempt + 1}/", start=mark)
                assert time.monotonic() - sent < delay, "the new attempt waited out the delay"
                skipped += 1
            attempt += 1
        assert skipped >= 1
        assert len(connector.find(r"Connection failed: cannot connect to")) == attempt

        # Now the gateway comes up; SIGHUP connects at once instead of in `delay` s.
        gateway, _ = procs.gateway(data_dir, stage_file, "--listen", f"127.0.0.1:{gw_port}")
        mark = connector.mark()
        sent = time.monotonic()
        connector.send(signal.SIGHUP)
        connector.wait_for(r"SIGHUP: retrying now", start=mark)
        connector.wait_for(r"Connected \(latency", start=mark)
        assert time.monotonic() - sent < delay
        assert echo_ok(port)

        connector.send(signal.SIGTERM)
        assert connector.wait_exit(timeout_s=5) == 0
        gateway.send(signal.SIGTERM)
        assert gateway.wait_exit(timeout_s=5) == 0


def test_max_retry_count_gives_up_after_the_retries(tmp_path, procs):
    closed = free_port()
    connector = procs.start(
        "connector",
        "connect",
        "--header",
        "token: abc",
        "--max-retry-count",
        "2",
        f"http://127.0.0.1:{closed}/sg_3f1d2c1e-8a4b-4c55-9a77-1234567890ab",
        "R:18082:127.0.0.1:80",
    )
    assert connector.wait_exit(timeout_s=15) == 1
    failed = connector.find(
        rf"Connection failed: cannot connect to 127\.0\.0\.1:{closed}: Connection refused$"
    )
    assert len(failed) == 3
    assert [m.group(1) for m in connector.find(r"Retrying in \S+ \(attempt (\d+)/2\)")] == [
        "1",
        "2",
    ]
    assert connector.find(r"Giving up after 3 attempts \(--max-retry-count 2\)$")


@pytest.mark.parametrize(
    ("remotes", "message"),
    [
        (
            ["R:9000:10.0.0.5:80", "R:9000:10.0.0.6:81"],
            "qanat: remote 'R:9000:10.0.0.6:81' uses local port 9000 already used by "
            "'R:9000:10.0.0.5:80'; each remote needs its own port",
        ),
        (["R:9000:10.0.0.5:99999"], "qanat: invalid remote 'R:9000:10.0.0.5:99999'"),
    ],
    ids=["duplicate-port", "bad-port"],
)
def test_bad_remotes_are_rejected_before_connecting(tmp_path, procs, remotes, message):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        done = procs.run(
            "connect",
            "--header",
            "token: abc",
            f"http://127.0.0.1:{port}/sg_3f1d2c1e-8a4b-4c55-9a77-1234567890ab",
            *remotes,
        )
        assert done.returncode == 2
        assert done.stderr.strip().startswith(message), done.stderr
        assert re.search("Traceback", done.stderr) is None
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
