"""Real processes: JSON logs with context, no secret in any output, the commands' exit codes.

One gateway and one connector run as ``python -m qanat ... -vvv --log-format
json``; apps send traffic, a connector and a diagnose try a wrong token, a
probe and a diagnose run as processes. Then every byte any of them printed is
searched for the tokens and the token's stored hash.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opstools import free_port, scaled

from qanat.wire.tokens import hash_token, new_address_id, new_token

pytestmark = pytest.mark.slow

QANAT = [sys.executable, "-m", "qanat"]


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the private side\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def endpoint() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + scaled(timeout_s)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"port {port} not open within {scaled(timeout_s):g}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(scaled(10.0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run(args: list[str], timeout_s: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, timeout=scaled(timeout_s), check=False)


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.strip():
            doc = json.loads(line)  # every line is JSON
            assert {"ts", "level", "logger", "msg"} <= set(doc), doc
            lines.append(doc)
    return lines


def test_full_run_logs_context_and_never_a_secret(tmp_path: Path) -> None:
    token, wrong, address_id = new_token(), new_token(), new_address_id()
    stored = hash_token(token)
    gw_port, app_port, metrics_port = free_port(), free_port(), free_port()
    stage_file = tmp_path / "stages.toml"
    stage_file.write_text(
        "[[stage]]\n"
        'name = "acme/Development"\n'
        f'address_id = "{address_id}"\n'
        f'token_sha256 = ["{stored}"]\n'
        'bind = "127.0.0.1"\n'
    )
    address = f"http://127.0.0.1:{gw_port}/{address_id}"
    outputs: list[bytes] = []
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], name: str) -> subprocess.Popen[bytes]:
        with (tmp_path / name).open("wb") as log:
            proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        procs.append(proc)
        return proc

    with endpoint() as ep_port:
        try:
            gateway = start(
                [
                    *QANAT,
                    "--log-format",
                    "json",
                    "gateway",
                    "-vvv",
                    "--listen",
                    f"127.0.0.1:{gw_port}",
                    "--data-dir",
                    str(tmp_path),
                    "--stage-file",
                    str(stage_file),
                    "--keepalive",
                    "1s",
                ],
                "gateway.log",
            )
            wait_port(gw_port, gateway)
            remote = f"R:{app_port}:127.0.0.1:{ep_port}"
            conn = start(
                [
                    *QANAT,
                    "--log-format",
                    "json",
                    "connect",
                    "-vvv",
                    "--keepalive",
                    "1s",
                    "--metrics",
                    f"127.0.0.1:{metrics_port}",
                    "--header",
                    f"token: {token}",
                    address,
                    remote,
                ],
                "connector.log",
            )
            wait_port(app_port, conn)
            for _ in range(3):
                with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/x", timeout=5) as r:
                    assert r.status == 200
            # Metrics of both processes, over HTTP.
            with urllib.request.urlopen(f"http://127.0.0.1:{gw_port}/metrics", timeout=5) as r:
                assert (
                    b'qanat_gateway_tunnels{stage="acme/Development",state="active"} 1' in r.read()
                )
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                assert b"qanat_connector_up 1" in r.read()

            # The commands, as processes.
            probe = run([*QANAT, "probe", "--json", "--http", "/x", f"127.0.0.1:{app_port}"])
            outputs += [probe.stdout, probe.stderr]
            assert probe.returncode == 0, probe.stdout
            assert json.loads(probe.stdout)["ok"] is True
            diag_args = ["diagnose", "--json", "--timeout", "5s", "-vvv"]
            spare = f"R:{free_port()}:127.0.0.1:{ep_port}"
            good = run([*QANAT, "--log-format", "json", *diag_args, "--header", f"token: {token}",
                        address, spare])  # fmt: skip
            outputs += [good.stdout, good.stderr]
            assert good.returncode == 0, good.stdout
            bad = run([*QANAT, "--log-format", "json", *diag_args, "--header", f"token: {wrong}",
                       address, spare])  # fmt: skip
            outputs += [bad.stdout, bad.stderr]
            assert bad.returncode == 1
            failed = [s["name"] for s in json.loads(bad.stdout)["steps"] if not s["ok"]]
            assert failed == ["token"]
            refused = run([*QANAT, "--log-format", "json", "connect", "-vvv", "--max-retry-count",
                           "0", "--header", f"token: {wrong}", address, spare])  # fmt: skip
            outputs += [refused.stdout, refused.stderr]
            assert refused.returncode == 1
        finally:
            for proc in reversed(procs):
                stop(proc)

    gateway_text = (tmp_path / "gateway.log").read_text()
    connector_text = (tmp_path / "connector.log").read_text()
    everything = b"".join(outputs) + gateway_text.encode() + connector_text.encode()
    for secret in (token, wrong, stored, stored.removeprefix("sha256:")):
        assert secret.encode() not in everything, "a token or its hash reached the output"

    gateway_lines = json_lines(gateway_text)
    tunnel_lines = [d for d in gateway_lines if d["logger"] == "qanat.gateway.tunnel"]
    assert any("connected" in d["msg"] for d in tunnel_lines)
    assert any("tunnel closed" in d["msg"] for d in tunnel_lines)
    for doc in tunnel_lines:
        assert doc["stage"] == "acme/Development"
        assert isinstance(doc["tunnel"], int)
        assert doc["connector"]
    assert any("wrong token" in d["msg"] for d in gateway_lines)

    connector_lines = json_lines(connector_text)
    ours = [d for d in connector_lines if d["logger"].startswith("qanat.connector")]
    assert any(d["msg"].startswith("Connected") for d in ours)
    for doc in ours:
        assert doc["stage"] == address_id
        assert doc["connector"]
    session_lines = [d for d in ours if d["msg"].startswith(("Connected", "keepalive"))]
    assert session_lines
    assert all(d["tunnel"] == 1 for d in session_lines)
    # The connector id joins both sides.
    connector_id = ours[0]["connector"]
    assert any(d["connector"] == connector_id for d in tunnel_lines)
