"""Peer-supplied strings cannot forge lines in the human log (real gateway process)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from support.processes import ProcessGroup
from support.servers import free_port
from support.timing import scaled
from support.tunnels import raw_tunnel

pytestmark = pytest.mark.slow

FORGED = "12:00:00.000 INFO    [stage=acme/prod] FORGED"


def _config(version: str, host: str, port: int) -> bytes:
    remote = {"Reverse": True, "LocalPort": str(port), "RemoteHost": host, "RemotePort": "80"}
    return json.dumps({"Version": version, "Remotes": [remote]}).encode()


def test_newlines_and_ansi_escapes_from_a_peer_are_escaped(
    tmp_path: Path, procs: ProcessGroup
) -> None:
    data, stage_file = tmp_path / "data", tmp_path / "stages.toml"
    address_id, token = procs.add_stage(data, stage_file)
    gateway, port = procs.gateway(data, stage_file)
    env = SimpleNamespace(port=port, stage=SimpleNamespace(address_id=address_id), token=token)

    async def main() -> None:
        for config in (
            _config(f"1.0\n{FORGED} version\x1b[2J\x1b[31m", "127.0.0.1", free_port()),
            _config("1.0", f"10.0.0.5\r\n{FORGED} host\x1b]0;title\x07", free_port()),
        ):
            tunnel = await raw_tunnel(env)  # type: ignore[arg-type]
            try:
                await tunnel.request("config", config)
            finally:
                tunnel.close()
                await tunnel.wait_closed()

    asyncio.run(asyncio.wait_for(main(), scaled(30)))
    gateway.wait_for(r"FORGED host")
    gateway.wait_for(r"FORGED version")
    for line in gateway.output.splitlines():
        assert not line.startswith(FORGED), gateway.output
        assert not any(c in line for c in "\x1b\r\x07"), repr(line)
    assert "\\n12:00:00.000" in gateway.output
    assert "\\x1b[2J" in gateway.output
