"""The token without ``--header``: ``--header-file`` and ``QANAT_TOKEN``.

``--header "token: ..."`` stays (outsystemscc compatibility) but shows the
token to every local user in ``/proc/PID/cmdline``; the two alternatives do
not. Real gateway and connector processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.apps import echo_ok
from support.endpoints import CommandEndpoint
from support.processes import ProcessGroup
from support.servers import free_port

pytestmark = pytest.mark.slow


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.parametrize("way", ["header-file", "environment"])
def test_the_token_from_a_file_or_the_environment_stays_out_of_the_process_list(
    tmp_path: Path, procs: ProcessGroup, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    data, stage_file = tmp_path / "data", tmp_path / "stages.toml"
    address_id, token = procs.add_stage(data, stage_file)
    gateway, gw_port = procs.gateway(data, stage_file)
    extra: list[str] = []
    if way == "header-file":
        header_file = tmp_path / "token.headers"
        header_file.write_text(f"# the stage token\ntoken: {token}\n")
        header_file.chmod(0o600)
        extra = ["--header-file", str(header_file)]
    else:
        monkeypatch.setenv("QANAT_TOKEN", token)
    port = free_port()
    with CommandEndpoint() as endpoint:
        connector = procs.start(
            "connector",
            "connect",
            *extra,
            f"http://127.0.0.1:{gw_port}/{address_id}",
            f"R:{port}:127.0.0.1:{endpoint.port}",
        )
        connector.wait_for(r"Connected \(latency")
        gateway.wait_for(rf"serving secure-gateway:{port}=>")
        assert echo_ok(port)
        assert token not in _cmdline(connector.pid)
        assert "readable by other users" not in connector.output


def test_a_token_given_twice_is_refused_and_a_bad_header_file_is_named(
    tmp_path: Path, procs: ProcessGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QANAT_TOKEN", "from-the-environment")
    address = "http://127.0.0.1:9/sg_3f1d2c1e-8a4b-4c55-9a77-1234567890ab"
    done = procs.run("connect", "--header", "token: abc", address, "R:18082:127.0.0.1:80")
    assert done.returncode != 0
    assert "token is given more than once" in done.stderr + done.stdout
    monkeypatch.delenv("QANAT_TOKEN")
    bad = tmp_path / "bad.headers"
    bad.write_text("token abc\n")
    done = procs.run("connect", "--header-file", str(bad), address, "R:18082:127.0.0.1:80")
    assert done.returncode != 0
    assert f"--header-file {bad} line 1: expected 'Name: value'" in done.stderr + done.stdout
