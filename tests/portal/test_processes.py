"""Real processes: ``qanat up`` with ``qanat admin``, and portal + gateway apart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from portalkit import SLOW, app_request, connector, echo_endpoint, eventually, free_port

from qanat.cli import main as qanat_main

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qanat", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10 * SLOW)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise AssertionError(f"{args[0]} did not stop on SIGTERM") from None


def _wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path, deadline_s: float = 20) -> None:
    end = time.monotonic() + deadline_s * SLOW
    while not path.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < end, f"{path} missing; log:\n{log.read_text()}"
        time.sleep(0.05)


def _wait_for_text(log: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + 20 * SLOW
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < end, f"{text!r} not printed; log:\n{log.read_text()}"
        time.sleep(0.05)


def _admin(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = qanat_main(["admin", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _stop(proc: subprocess.Popen[bytes], log: Path) -> str:
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(10 * SLOW) == 0, log.read_text()
    return log.read_text()


def test_qanat_up_and_the_admin_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    log = tmp_path / "up.log"
    monkeypatch.delenv("QANAT_URL", raising=False)
    monkeypatch.delenv("QANAT_API_KEY", raising=False)
    monkeypatch.delenv("QANAT_CA_FILE", raising=False)
    with _process(["up", "--data-dir", str(data), "--listen", "127.0.0.1:0"], log) as up:
        _wait_for(data / "local-admin.json", up, log)
        _wait_for_text(log, "Ctrl-C", up)
        printed = log.read_text()
        assert "password: " in printed
        assert "username: admin" in printed
        d = ["--data-dir", str(data)]

        code, out, _ = _admin(capsys, "org", "create", "acme", *d, "--json")
        assert code == 0
        assert json.loads(out) == {
            "name": "acme",
            "stages": ["Development", "Test", "Production"],
        }
        code, out, _ = _admin(capsys, "stage", "list", "--org", "acme", *d)
        assert out.splitlines()[0].split() == ["STAGE", "STATUS", "ADDRESS"]
        assert "Development  inactive" in out

        stage = ["--org", "acme", "--stage", "Development", *d, "--json"]
        code, out, _ = _admin(capsys, "activate", *stage)
        first = json.loads(out)
        assert set(first) == {"address", "token", "status"}
        assert first["status"] == "active"
        code, out, _ = _admin(capsys, "activate", *stage)
        assert json.loads(out) == {"address": first["address"], "status": "active"}
        code, out, _ = _admin(capsys, "renew", *stage)
        renewed = json.loads(out)
        assert set(renewed) == {"token", "address"}
        assert renewed["token"] != first["token"]
        code, out, _ = _admin(capsys, "status", *stage)
        status = json.loads(out)
        assert status["status"] == "active"
        assert status["connectors"] == []
        code, out, _ = _admin(capsys, "deactivate", *stage)
        assert json.loads(out)["status"] == "inactive"
        code, out, err = _admin(capsys, "renew", *stage)
        assert code == 1
        assert "inactive" in err
        code, out, _ = _admin(capsys, "status", "--org", "acme", *d, "--json")
        assert [s["stage"] for s in json.loads(out)["stages"]] == [
            "Development",
            "Test",
            "Production",
        ]

        code, out, _ = _admin(
            capsys, "user", "create", "--org", "acme", "--username", "val", *d, "--json"
        )
        user = json.loads(out)
        assert user["role"] == "viewer"
        assert len(user["password"]) >= 16
        code, out, _ = _admin(
            capsys, "apikey", "create", "--org", "acme", "--name", "dash", *d, "--json"
        )
        key = json.loads(out)
        assert key["key"].startswith("qk_")
        assert key["role"] == "viewer"

        # Another machine: URL, key and the dev certificate from the
        # environment, a viewer key. `qanat up` serves HTTPS by default.
        local = json.loads((data / "local-admin.json").read_text())
        url = local["url"]
        assert url.startswith("https://")
        assert Path(local["ca_file"]).is_file()
        assert "DEVELOPMENT CERTIFICATE" in printed
        monkeypatch.setenv("QANAT_URL", url)
        monkeypatch.setenv("QANAT_CA_FILE", local["ca_file"])
        monkeypatch.setenv("QANAT_API_KEY", key["key"])
        elsewhere = ["--data-dir", str(tmp_path / "nothing-here")]
        code, out, _ = _admin(capsys, "stage", "list", "--org", "acme", *elsewhere, "--json")
        assert code == 0
        assert json.loads(out)["stages"][0]["status"] == "inactive"
        code, out, err = _admin(
            capsys, "activate", "--org", "acme", "--stage", "Development", *elsewhere
        )
        assert code == 1
        assert "viewer" in err
        code, out, _ = _admin(capsys, "audit", "--org", "acme", *elsewhere, "--json")
        assert code == 0
        actions = [e["action"] for e in json.loads(out)["entries"]]
        assert actions[:3] == ["apikey.create", "user.create", "gateway.deactivate"]

        monkeypatch.delenv("QANAT_URL")
        monkeypatch.delenv("QANAT_API_KEY")
        monkeypatch.delenv("QANAT_CA_FILE")
        code = qanat_main(["admin", "org", "list", *elsewhere])
        assert code == 2  # no portal to be found: says where it looked
        assert "--url" in capsys.readouterr().err

        log_text = _stop(up, log)
        assert "stopping" in log_text
    # Second start: the admin password is never printed again.
    with _process(["up", "--data-dir", str(data), "--listen", "127.0.0.1:0"], log) as up:
        _wait_for_text(log, "Ctrl-C", up)
        assert "password" not in _stop(up, log)


def _get_json(url: str, key: str | None = None, body: Any = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers=headers,
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_portal_and_gateway_as_separate_processes(tmp_path: Path) -> None:
    portal_dir, gateway_dir = tmp_path / "portal", tmp_path / "gateway"
    gw_port = free_port()
    gw_url = f"http://127.0.0.1:{gw_port}"
    db_url = f"sqlite:///{portal_dir / 'qanat.db'}"
    portal_log, gateway_log = tmp_path / "portal.log", tmp_path / "gateway.log"
    portal_args = ["portal", "--data-dir", str(portal_dir), "--listen", "127.0.0.1:0"]
    with _process([*portal_args, "--public-url", gw_url], portal_log) as portal:
        _wait_for(portal_dir / "local-admin.json", portal, portal_log)
        local = json.loads((portal_dir / "local-admin.json").read_text())
        api, key = local["url"] + "/api/v1", local["api_key"]
        gateway_args = ["gateway", "--database-url", db_url, "--data-dir", str(gateway_dir)]
        with _process([*gateway_args, "--listen", f"127.0.0.1:{gw_port}"], gateway_log) as gw:
            end = time.monotonic() + 20 * SLOW
            while True:
                assert gw.poll() is None, gateway_log.read_text()
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", gw_port), 0.2),
                ):
                    break
                assert time.monotonic() < end, gateway_log.read_text()
                time.sleep(0.05)

            _get_json(api + "/orgs", key, {"name": "acme"})
            dev = api + "/orgs/acme/stages/Development"

            def probe(address: str) -> str:
                try:
                    return str(_get_json(address)["status"])
                except urllib.error.HTTPError as exc:
                    return f"http {exc.code}"

            async def scenario() -> None:
                activation = _get_json(dev + "/activate", key, {})
                address = activation["address"]
                assert address.startswith(gw_url + "/sg_")

                async def active() -> bool:
                    return await asyncio.to_thread(probe, address) == "active"

                took = await eventually(active, 1.0, "the gateway learns of the activation")
                assert took <= 1.0 * SLOW
                app_port = free_port()
                async with (
                    echo_endpoint() as ep_port,
                    connector(address, activation["token"], f"R:{app_port}:127.0.0.1:{ep_port}"),
                ):

                    async def reported() -> bool:
                        doc = await asyncio.to_thread(_get_json, dev, key)
                        return len(doc["connectors"]) == 1

                    await eventually(reported, 5, "the portal shows the gateway's connector")
                    assert await app_request(app_port, "apart") == "echo: apart"
                    _get_json(dev + "/deactivate", key, {})

                    async def inactive() -> bool:
                        return await asyncio.to_thread(probe, address) == "inactive"

                    await eventually(inactive, 1.0, "the gateway learns of the deactivation")

                    async def unreported() -> bool:
                        doc = await asyncio.to_thread(_get_json, dev, key)
                        return doc["connectors"] == []

                    await eventually(unreported, 3, "the closed tunnel leaves the status")

            asyncio.run(scenario())
            _stop(gw, gateway_log)
        _stop(portal, portal_log)
