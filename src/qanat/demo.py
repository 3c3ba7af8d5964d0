"""`make demo`: the whole product on loopback, as real processes, narrated.

Starts a private HTTP endpoint and ``qanat up`` (portal and gateway in one
process), creates an organisation through the portal's API, activates its
Development stage, runs ``qanat connect`` with the token it got, and makes
one app request through ``secure-gateway:<port>``. Prints each step. Exits 0
only if the answer came back through the tunnel; every process it started is
stopped before it returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

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


_CA_FILE = ""  # the development certificate of this demo's `qanat up`


def _api(url: str, key: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - our own portal on loopback
        f"{url}/api/v1{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=_CA_FILE) if _CA_FILE else None
    with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
        return json.loads(response.read())


def _wait_file(path: Path, deadline_s: float, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + deadline_s
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        if time.monotonic() > end:
            raise RuntimeError(f"{path} did not appear within {deadline_s:g}s")
        time.sleep(0.05)


def main() -> int:
    qanat = [sys.executable, "-m", "qanat"]
    procs: list[subprocess.Popen[bytes]] = []
    workdir = Path(tempfile.mkdtemp(prefix="qanat-demo-"))
    data_dir = workdir / "data"

    def start(args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = (workdir / log_name).open("wb")
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(proc)
        return proc

    up_port, app_port, ep_port = _free_port(), _free_port(), _free_port()
    ok = False
    try:
        _step(f"private endpoint: HTTP server on 127.0.0.1:{ep_port}")
        endpoint = start([sys.executable, "-c", _ENDPOINT, str(ep_port)], "endpoint.log")
        _wait_port(ep_port, 10, endpoint)

        _step(f"qanat up --data-dir {data_dir} --listen 127.0.0.1:{up_port}")
        up = start(
            [*qanat, "up", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{up_port}"],
            "up.log",
        )
        _wait_port(up_port, 20, up)
        _wait_file(data_dir / "local-admin.json", 10, up)
        end = time.monotonic() + 10
        while "Ctrl-C" not in (workdir / "up.log").read_text() and time.monotonic() < end:
            time.sleep(0.05)  # the banner follows the key file by a moment
        local = json.loads((data_dir / "local-admin.json").read_text())
        url, key = local["url"], local["api_key"]
        global _CA_FILE
        _CA_FILE = local.get("ca_file", "")
        for line in (workdir / "up.log").read_text().splitlines():
            if line.startswith(("qanat", "  ")) and "password" not in line and "!!!" not in line:
                print(f"   {line.strip()}")
        print(f"   local admin key: {data_dir / 'local-admin.json'} (mode 0600)")

        _step('API: POST /api/v1/orgs {"name": "demo"}')
        org = _api(url, key, "POST", "/orgs", {"name": "demo"})
        print(f"   organisation {org['name']} with stages {', '.join(org['stages'])}")

        _step("API: POST /api/v1/orgs/demo/stages/Development/activate")
        activation = _api(url, key, "POST", "/orgs/demo/stages/Development/activate")
        address, token = activation["address"], activation["token"]
        print(f"   status  {activation['status']}")
        print(f"   address {address}")
        print(f"   token   {token}  (shown once; the portal keeps only its hash)")

        _step(f"connector: qanat connect ... R:{app_port}:127.0.0.1:{ep_port}")
        remote = f"R:{app_port}:127.0.0.1:{ep_port}"
        tls = ["--tls-ca", _CA_FILE] if _CA_FILE else []
        connector = start(
            [*qanat, "connect", *tls, "--header", f"token: {token}", address, remote],
            "connector.log",
        )
        _wait_port(app_port, 15, connector)
        status: dict[str, Any] = {}
        end = time.monotonic() + 5
        while time.monotonic() < end:
            status = _api(url, key, "GET", "/orgs/demo/stages/Development")
            if status["connectors"]:
                break
            time.sleep(0.1)
        for c in status.get("connectors", []):
            print(f"   portal sees connector {c['id']} {c['version']} from {c['source_address']}")
        for e in status.get("endpoints", []):
            print(f"   endpoint {e['name']} -> {', '.join(e['targets'])}")

        _step(f"app: GET http://127.0.0.1:{app_port}/orders (secure-gateway:{app_port})")
        started = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/orders", timeout=10) as resp:
            body = resp.read().decode()
        elapsed_ms = (time.perf_counter() - started) * 1e3
        print(f"   {resp.status} {body.strip()}  ({elapsed_ms:.1f} ms)")
        ok = resp.status == 200 and ENDPOINT_BODY in body

        print(
            "\n== by hand\n"
            "   qanat up                                   # prints the admin password once\n"
            "   qanat admin org create acme\n"
            "   qanat admin activate --org acme --stage Development   # address + token, once\n"
            "   qanat connect --tls-ca <data-dir>/tls/dev-cert.pem \\  # dev certificate only\n"
            '        --header "token: <token>" <address> R:8081:10.0.0.5:8393\n'
            "   curl http://127.0.0.1:8081/   # an app, via secure-gateway:8081"
        )
    except Exception as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        for name in ("up.log", "connector.log", "endpoint.log"):
            path = workdir / name
            if path.exists():
                print(f"--- {name}\n{path.read_text()[-2000:]}", file=sys.stderr)
    finally:
        _step("stopping every process")
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                ok = False
                print(f"   process {proc.pid} had to be killed")
        print(f"   {len(procs)} processes stopped")
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n== result:", "the answer came back through the tunnel" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
