"""Tenant isolation on a default ``qanat up`` (real processes, loopback only).

The attack this repeats: a viewer of org A creates org "evil", activates
it, connects first with A's endpoint port, and waits for A's app traffic.
Now a viewer cannot create organisations (platform role), every stage of
every organisation has its own bind address, and a stage declaring A's port
binds it on its own address: A's apps still reach A's endpoint only.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from support.endpoints import CommandEndpoint
from support.processes import ProcessGroup, QanatProcess
from support.servers import free_port
from support.timing import scaled

pytestmark = pytest.mark.slow

ORGS = ("a", "b", "c")
STAGES = ("Development", "Test", "Production")


class Api:
    """The portal API over plain HTTP with one credential (key or cookie)."""

    def __init__(self, base: str, key: str = "", cookie: str = "") -> None:
        self.base, self.key, self.cookie = base, key, cookie

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + "/api/v1" + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.key:
            request.add_header("Authorization", f"Bearer {self.key}")
        if self.cookie:
            request.add_header("Cookie", self.cookie)
        try:
            with urllib.request.urlopen(request, timeout=scaled(10)) as answer:
                raw, status, headers = answer.read(), answer.status, dict(answer.headers)
        except urllib.error.HTTPError as error:
            raw, status, headers = error.read(), error.code, dict(error.headers)
        return status, json.loads(raw) if raw else None, headers

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, doc, _ = self.call(method, path, body)
        assert status < 300, f"{method} {path}: {status} {doc}"
        return doc


def start_up(procs: ProcessGroup, data: Path) -> tuple[QanatProcess, Api]:
    up = procs.start("up", "up", "--data-dir", str(data), "--listen", "127.0.0.1:0", "--plain-http")
    base = up.wait_for(r"up: portal and gateway on (http://127\.0\.0\.1:\d+)").group(1)
    up.wait_for(r"Ctrl-C", timeout_s=20)
    key = json.loads((data / "local-admin.json").read_text())["api_key"]
    return up, Api(base, key=key)


def start_connector(
    procs: ProcessGroup, name: str, address: str, token: str, remote: str
) -> QanatProcess:
    return procs.start(name, "connect", "--header", f"token: {token}", address, remote)


def ask(host: str, port: int, line: bytes) -> bytes:
    """One app connection to an echo endpoint: send a line, read the answer."""
    with socket.create_connection((host, port), timeout=scaled(10)) as sock:
        sock.sendall(b"echo\n" + line)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def test_three_orgs_three_stages_isolated_by_default(tmp_path: Path, procs: ProcessGroup) -> None:
    up, admin = start_up(procs, tmp_path / "data")
    stages: dict[str, dict[str, Any]] = {}
    for org in ORGS:
        admin.ok("POST", "/orgs", {"name": org})
        for stage in STAGES:
            activation = admin.ok("POST", f"/orgs/{org}/stages/{stage}/activate")
            view = admin.ok("GET", f"/orgs/{org}/stages/{stage}")["stage"]
            stages[f"{org}/{stage}"] = {
                "bind": view["bind_host"],
                "address": activation["address"],
                "token": activation["token"],
            }
    binds = [s["bind"] for s in stages.values()]
    assert len(set(binds)) == 9, binds
    assert all(b.startswith("127.") for b in binds)

    # A viewer of org a cannot create an organisation (and become its admin).
    admin.ok(
        "POST",
        "/orgs/a/users",
        {"username": "mallory", "password": "mallory's long password", "role": "viewer"},
    )
    status, doc, headers = Api(admin.base).call(
        "POST", "/session", {"username": "mallory", "password": "mallory's long password"}
    )
    assert status == 200, doc
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    viewer = Api(admin.base, cookie=cookie)
    viewer_headers = {"csrf": doc["csrf_token"]}
    status, refused, _ = _post_with_csrf(viewer, "/orgs", {"name": "evil"}, viewer_headers)
    assert status == 403, refused
    assert "platform admin" in refused["detail"]
    status, refused, _ = _post_with_csrf(
        viewer, "/users/mallory/platform-admin", {"platform_admin": True}, viewer_headers, "PUT"
    )
    assert status == 403, refused
    assert [o["name"] for o in admin.ok("GET", "/orgs")["orgs"]] == list(ORGS)

    # The platform admin may pass the role on; then mallory could create one.
    admin.ok("PUT", "/users/mallory/platform-admin", {"platform_admin": True})
    admin.ok("PUT", "/users/mallory/platform-admin", {"platform_admin": False})
    # Even an organisation the platform admin creates cannot take a's port:
    # its stage binds the same port number on its own address.
    admin.ok("POST", "/orgs", {"name": "evil"})
    evil = admin.ok("POST", "/orgs/evil/stages/Development/activate")
    evil_bind = admin.ok("GET", "/orgs/evil/stages/Development")["stage"]["bind_host"]
    assert evil_bind not in binds

    port = free_port()
    victim = stages["a/Production"]
    with CommandEndpoint() as a_side, CommandEndpoint() as evil_side:
        thief = start_connector(
            procs, "evil", evil["address"], evil["token"], f"R:{port}:127.0.0.1:{evil_side.port}"
        )
        thief.wait_for(r"Connected \(latency")
        up.wait_for(rf"serving secure-gateway:{port}=>127\.0\.0\.1:{evil_side.port}")
        owner = start_connector(
            procs, "a", victim["address"], victim["token"], f"R:{port}:127.0.0.1:{a_side.port}"
        )
        owner.wait_for(r"Connected \(latency")
        up.wait_for(rf"serving secure-gateway:{port}=>127\.0\.0\.1:{a_side.port}")
        for attempt in range(5):
            line = f"AUTH PLAIN secret-{attempt}\n".encode()
            assert ask(victim["bind"], port, line) == line
        assert evil_side.accepted == 0
        assert a_side.accepted == 5
        assert not owner.find("reserved by another stage")
        # Every other stage's address has nothing on that port.
        for key, stage in stages.items():
            if key != "a/Production":
                with pytest.raises(ConnectionRefusedError):
                    ask(stage["bind"], port, b"x\n")


def _post_with_csrf(
    api: Api, path: str, body: Any, extra: dict[str, str], method: str = "POST"
) -> tuple[int, Any, dict[str, str]]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(api.base + "/api/v1" + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Cookie", api.cookie)
    request.add_header("X-CSRF-Token", extra["csrf"])
    try:
        with urllib.request.urlopen(request, timeout=scaled(10)) as answer:
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)
