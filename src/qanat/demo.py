"""`make demo`: a whole tunnel on loopback, as real processes, narrated.

Starts a private HTTP endpoint, a gateway with one stage, and a connector;
then makes one app request through the gateway port and prints what came
back and the commands a user would type to do the same by hand. Exits 0 only
if the answer came back through the tunnel; every process it started is
stopped before it returns.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from qanat.wire.tokens import hash_token, new_address_id, new_token

ENDPOINT_BODY = "hello from the private network"
_ENDPOINT = f"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("{ENDPOINT_BODY} (you asked for " + self.path + ")\\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, deadline_s: float, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open within {deadline_s:g}s")


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    qanat = [sys.executable, "-m", "qanat"]
    procs: list[subprocess.Popen[bytes]] = []
    workdir = Path(tempfile.mkdtemp(prefix="qanat-demo-"))

    def start(args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = (workdir / log_name).open("wb")
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(proc)
        return proc

    gw_port, app_port, ep_port = _free_port(), _free_port(), _free_port()
    token, address_id = new_token(), new_address_id()
    address = f"http://127.0.0.1:{gw_port}/{address_id}"
    ok = False
    try:
        _step(f"private endpoint: HTTP server on 127.0.0.1:{ep_port}")
        endpoint = start([sys.executable, "-c", _ENDPOINT, str(ep_port)], "endpoint.log")
        _wait_port(ep_port, 10, endpoint)

        _step("gateway: one stage, token stored as a hash only")
        stage_file = workdir / "stages.toml"
        stage_file.write_text(
            "[[stage]]\n"
            'name = "demo/Development"\n'
            f'address_id = "{address_id}"\n'
            f'token_sha256 = ["{hash_token(token)}"]\n'
            'bind = "127.0.0.1"\n'
        )
        gateway = start(
            [
                *qanat,
                "gateway",
                "--listen",
                f"127.0.0.1:{gw_port}",
                "--data-dir",
                str(workdir),
                "--stage-file",
                str(stage_file),
            ],
            "gateway.log",
        )
        _wait_port(gw_port, 15, gateway)
        print(f"   address {address}")

        _step(f"connector: outbound tunnel, declares secure-gateway:{app_port}")
        remote = f"R:{app_port}:127.0.0.1:{ep_port}"
        connector = start(
            [*qanat, "connect", "--header", f"token: {token}", address, remote], "connector.log"
        )
        _wait_port(app_port, 15, connector)

        _step(f"app: GET http://127.0.0.1:{app_port}/orders (secure-gateway:{app_port})")
        started = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/orders", timeout=10) as resp:
            body = resp.read().decode()
        elapsed_ms = (time.perf_counter() - started) * 1e3
        print(f"   {resp.status} {body.strip()}  ({elapsed_ms:.1f} ms)")
        ok = resp.status == 200 and ENDPOINT_BODY in body

        print("\n== logs")
        for name in ("gateway.log", "connector.log"):
            for line in (workdir / name).read_text().splitlines()[:6]:
                print(f"   {name.split('.')[0]:>9} | {line}")
        print(
            "\n== by hand\n"
            "   qanat gateway add-stage --name dev --data-dir ./gw  # address + token, once\n"
            "   qanat gateway --data-dir ./gw --listen 127.0.0.1:8080\n"
            '   qanat connect --header "token: <token>" <address> R:8081:10.0.0.5:8393\n'
            "   curl http://127.0.0.1:8081/   # an app, via secure-gateway:8081"
        )
    except Exception as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        for name in ("gateway.log", "connector.log", "endpoint.log"):
            path = workdir / name
            if path.exists():
                print(f"--- {name}\n{path.read_text()[-2000:]}", file=sys.stderr)
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n== result:", "the answer came back through the tunnel" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
