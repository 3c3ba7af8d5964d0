"""``qanat up`` as a real process, driven over its REST API.

For the tests that must meet the product as a user does: HTTPS with the
generated development certificate (``ca_file``), the local admin key from
``local-admin.json``, stages activated, renewed and deactivated over
``/api/v1``. :meth:`UpProcess.restart` stops it with SIGTERM and starts it
again on the same address, as an operator would.
"""

from __future__ import annotations

import http.client
import json
import signal
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qanat.wire.handshake import IDENTITY_HEADER
from support.processes import ProcessGroup, QanatProcess
from support.timing import scaled, wait_until

READY = r"press Ctrl-C to stop"


@dataclass(frozen=True)
class Stage:
    org: str
    name: str
    address: str
    token: str
    #: Where its endpoint ports listen (qanat up gives each stage its own).
    bind: str = "127.0.0.1"

    @property
    def address_id(self) -> str:
        return self.address.rsplit("/", 1)[1]


class UpProcess:
    """One ``qanat up`` (portal + gateway) on 127.0.0.1 with its dev certificate."""

    def __init__(self, group: ProcessGroup, data_dir: Path, *extra: str) -> None:
        self.group = group
        self.data_dir = data_dir
        self.extra = extra
        self.listen = "127.0.0.1:0"
        self.process: QanatProcess = self._start()
        local = json.loads((data_dir / "local-admin.json").read_text())
        self.url: str = local["url"]
        self.api_key: str = local["api_key"]
        self.ca_file: str = local["ca_file"]
        self.listen = self.url.removeprefix("https://")
        self._tls = ssl.create_default_context(cafile=self.ca_file)

    def _start(self) -> QanatProcess:
        process = self.group.start(
            "qanat up", "up", "--data-dir", str(self.data_dir), "--listen", self.listen, *self.extra
        )
        process.wait_for(READY, 30)
        return process

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def restart(self) -> None:
        """SIGTERM, wait for a clean exit, start again on the same address."""
        self.process.send(signal.SIGTERM)
        code = self.process.wait_exit(20)
        assert code == 0, f"qanat up exited with {code}:\n{self.process.output}"
        self.process = self._start()

    # -- the REST API --------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{self.url}/api/v1{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=scaled(10), context=self._tls) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, doc = self.api(method, path, body)
        assert 200 <= status < 300, f"{method} {path}: {status} {doc}"
        return doc

    def create_org(self, org: str) -> None:
        self.ok("POST", "/orgs", {"name": org})

    def activate(self, org: str, stage: str = "Development") -> Stage:
        """Activate a stage and wait until the gateway knows it (it polls the database)."""
        doc = self.ok("POST", f"/orgs/{org}/stages/{stage}/activate", {})
        bind = self.ok("GET", f"/orgs/{org}/stages/{stage}")["stage"]["bind_host"]
        result = Stage(org, stage, doc["address"], doc.get("token", ""), bind)
        wait_until(lambda: self.address_status(result) == "active", f"{org}/{stage} active", 10)
        return result

    def address_status(self, stage: Stage) -> str:
        """What a plain GET of the stage's address says (``active``, ``inactive``, ``http 404``)."""
        try:
            with urllib.request.urlopen(stage.address, timeout=scaled(5), context=self._tls) as r:
                return str(json.loads(r.read())["status"])
        except urllib.error.HTTPError as exc:
            return f"http {exc.code}"

    def deactivate(self, stage: Stage) -> None:
        self.ok("POST", f"/orgs/{stage.org}/stages/{stage.name}/deactivate", {})

    def renew(self, stage: Stage) -> Stage:
        doc = self.ok("POST", f"/orgs/{stage.org}/stages/{stage.name}/renew", {})
        return Stage(stage.org, stage.name, doc["address"], doc["token"])

    def connectors(self, stage: Stage) -> list[Any]:
        doc = self.ok("GET", f"/orgs/{stage.org}/stages/{stage.name}")
        return list(doc["connectors"])

    def token_status(self, stage: Stage, token: str) -> int:
        """How the gateway now answers a tunnel upgrade with ``token``, without
        opening a tunnel: the request carries a malformed connector id, which
        is checked only after the token, so 400 means "token accepted" and
        401 / 403 are the token's refusals. For waiting until the gateway
        applied a renewal or (de)activation; no flap or token-failure count."""
        host, _, port = self.listen.rpartition(":")
        conn = http.client.HTTPSConnection(host, int(port), timeout=scaled(5), context=self._tls)
        try:
            conn.request(
                "GET",
                f"/{stage.address_id}",
                headers={
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Protocol": "chisel-v3",
                    "Token": token,
                    IDENTITY_HEADER: "not a valid id!",
                },
            )
            return conn.getresponse().status
        finally:
            conn.close()

    def wait_serving(self, port: int, timeout_s: float = 10.0) -> None:
        """Wait until the gateway logs that it serves ``port``."""
        wait_until(
            lambda: self.process.find(rf"serving .*secure-gateway:{port}\b"),
            f"qanat up serving port {port}",
            timeout_s,
        )
