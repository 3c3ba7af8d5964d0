"""``qanat admin`` against a real ``qanat up`` (HTTPS, development certificate).

- the endpoint catalogue from the command line (set with an OpenAPI file,
  list, download), users' roles, API keys, traffic and audit filters;
- the platform admin role (who may create organisations), given and taken;
- the options that say where the portal is work before or after the command;
- a certificate that does not verify is named, with --tls-ca / QANAT_CA_FILE;
- a call imports none of the heavy modules of the server side (the reason
  it takes a tenth of a second rather than two): checked on the modules a
  real call loaded, not on a clock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_processes import _admin, _process, _wait_for, _wait_for_text

pytestmark = pytest.mark.slow

ORDERS = """\
openapi: 3.1.0
info: {title: Orders API, version: "2"}
paths:
  /orders:
    get: {summary: List orders, responses: {"200": {description: ok}}}
"""
#: What a server process needs and ``qanat admin`` must never import.
HEAVY = (
    "sqlalchemy",
    "alembic",
    "psycopg",
    "aiohttp",
    "jinja2",
    "asyncssh",
    "websockets",
    "cryptography",
    "prometheus_client",
    "yaml",
    "uvloop",
    "asyncio",
    "python_socks",
    "qanat.connector",
    "qanat.store",
    "qanat.portal.service",
    "qanat.gateway",
)


def test_admin_catalogue_roles_keys_and_options_anywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("QANAT_URL", "QANAT_API_KEY", "QANAT_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "data"
    log = tmp_path / "up.log"
    spec = tmp_path / "orders.yaml"
    spec.write_text(ORDERS)
    with _process(["up", "--data-dir", str(data), "--listen", "127.0.0.1:0"], log) as up:
        _wait_for(data / "local-admin.json", up, log)
        _wait_for_text(log, "Ctrl-C", up)
        d = ["--data-dir", str(data)]
        dev = ["--org", "acme", "--stage", "Development"]

        # Global options before the command, after it, and in between.
        assert _admin(capsys, *d, "--json", "org", "create", "acme")[0] == 0
        code, out, _ = _admin(capsys, "org", *d, "list", "--json")
        assert code == 0
        assert json.loads(out)["orgs"][0]["name"] == "acme"
        code, out, _ = _admin(capsys, "--json", "stage", "list", "--org", "acme", *d)
        assert json.loads(out)["stages"][0]["name"] == "Development"

        code, out, err = _admin(
            capsys,
            "endpoint", "set", *dev, "--port", "8081", "--description", "Orders API",
            "--owner", "orders@example.com", "--tls", "--openapi", str(spec), *d,
        )  # fmt: skip
        assert code == 0, err
        assert "apps use https://secure-gateway:8081/" in out
        assert "OpenAPI: Orders API 2" in out
        code, out, err = _admin(
            capsys, *d, "endpoint", "set", *dev, "--port", "8082", "--description", "<i>x</i>"
        )
        assert code == 1
        assert "contains HTML" in err
        code, out, _ = _admin(capsys, "endpoint", "list", *dev, *d)
        assert "secure-gateway:8081" in out
        assert "8082" not in out
        code, out, _ = _admin(capsys, "endpoint", "list", *dev, *d, "--json")
        [entry] = json.loads(out)["endpoints"]
        assert (entry["served"], entry["openapi_document"]["format"]) == (False, "yaml")
        downloaded = tmp_path / "got.yaml"
        code, _, _ = _admin(
            capsys, "endpoint", "openapi", *dev, "--port", "8081", "-o", str(downloaded), *d
        )
        assert code == 0
        assert downloaded.read_text() == ORDERS

        # Users, roles and keys, all from here.
        args = ["--org", "acme", "--username", "olga", "--password", "olga password 1"]
        assert _admin(capsys, "user", "create", *args, *d)[0] == 0
        code, out, _ = _admin(
            capsys, "user", "role", "--org", "acme", "--username", "olga", "--role", "operator", *d
        )
        assert "olga is now operator" in out
        code, out, _ = _admin(capsys, "user", "list", "--org", "acme", *d, "--json")
        assert {"username": "olga", "org": "acme", "role": "operator"} in json.loads(out)["members"]
        code, out, _ = _admin(
            capsys, "apikey", "create", "--org", "acme", "--name", "ci", "--role", "operator", *d,
            "--json",
        )  # fmt: skip
        key = json.loads(out)
        code, out, _ = _admin(capsys, "apikey", "revoke", "--org", "acme", key["id"], *d)
        assert "revoked" in out
        code, out, _ = _admin(capsys, "apikey", "list", "--org", "acme", *d, "--json")
        assert [k["state"] for k in json.loads(out)["api_keys"]] == ["revoked"]
        code, out, _ = _admin(capsys, "user", "remove", "--org", "acme", "--username", "olga", *d)
        assert code == 0

        code, out, _ = _admin(
            capsys, "audit", "--org", "acme", "--action", "endpoint", *d, "--json"
        )
        assert [e["action"] for e in json.loads(out)["entries"]] == ["endpoint.set"]
        code, out, _ = _admin(capsys, "traffic", *dev, *d, "--json")
        assert json.loads(out)["endpoints"] == []

        # A certificate that does not verify: the message names the fix.
        local = json.loads((data / "local-admin.json").read_text())
        assert local["url"].startswith("https://")
        remote = ["--url", local["url"], "--api-key", local["api_key"]]
        code, _, err = _admin(capsys, "org", "list", *remote)
        assert code == 1
        assert "--tls-ca" in err
        assert "QANAT_CA_FILE" in err
        assert "not trusted" in err
        code, out, _ = _admin(capsys, "org", "list", *remote, "--tls-ca", local["ca_file"])
        assert code == 0
        monkeypatch.setenv("QANAT_CA_FILE", local["ca_file"])
        assert _admin(capsys, *remote, "org", "list")[0] == 0

        # A real call, in a fresh interpreter: which modules did it load?
        probe = (
            "import json, sys\n"
            "from qanat.cli import main\n"
            f"code = main(['admin', 'endpoint', 'list', '--org', 'acme', '--stage',"
            f" 'Development', '--data-dir', {str(data)!r}])\n"
            "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
        )
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["code"] == 0, result.stderr
        loaded = [
            m for m in report["modules"] if any(m == h or m.startswith(h + ".") for h in HEAVY)
        ]
        assert loaded == [], f"qanat admin imported server-side modules: {loaded}"


def _as_user(base: str, method: str, path: str, body: Any, auth: dict[str, str]) -> int:
    request = urllib.request.Request(
        base + "/api/v1" + path, data=json.dumps(body).encode(), method=method
    )
    request.add_header("Content-Type", "application/json")
    for name, value in auth.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _sign_in(base: str, username: str, password: str) -> dict[str, str]:
    request = urllib.request.Request(
        base + "/api/v1/session",
        data=json.dumps({"username": username, "password": password}).encode(),
        method="POST",
    )
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as answer:
        doc = json.loads(answer.read())
        cookie = answer.headers["Set-Cookie"].split(";", 1)[0]
    return {"Cookie": cookie, "X-CSRF-Token": doc["csrf_token"]}


def test_admin_gives_and_takes_the_platform_admin_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("QANAT_URL", "QANAT_API_KEY", "QANAT_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "data"
    log = tmp_path / "up.log"
    args = ["up", "--data-dir", str(data), "--listen", "127.0.0.1:0", "--plain-http"]
    with _process(args, log) as up:
        _wait_for(data / "local-admin.json", up, log)
        _wait_for_text(log, "Ctrl-C", up)
        base = json.loads((data / "local-admin.json").read_text())["url"]
        d = ["--data-dir", str(data)]
        assert _admin(capsys, *d, "org", "create", "acme")[0] == 0
        olga = ["--org", "acme", "--username", "olga", "--password", "olga password 1"]
        assert _admin(capsys, "user", "create", *olga, *d)[0] == 0
        auth = _sign_in(base, "olga", "olga password 1")
        assert _as_user(base, "POST", "/orgs", {"name": "olgas"}, auth) == 403

        code, out, err = _admin(capsys, "user", "platform-admin", "--username", "olga", *d)
        assert code == 0, err
        assert "olga is now a platform admin" in out
        assert _as_user(base, "POST", "/orgs", {"name": "olgas"}, auth) == 201

        code, out, err = _admin(
            capsys, "user", "platform-admin", "--username", "olga", "--revoke", "--json", *d
        )
        assert code == 0, err
        assert json.loads(out) == {"username": "olga", "platform_admin": False}
        assert _as_user(base, "POST", "/orgs", {"name": "again"}, auth) == 403

        code, _, err = _admin(capsys, "user", "platform-admin", "--username", "nobody", *d)
        assert code == 1
        assert "nobody" in err
