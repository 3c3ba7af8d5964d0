"""Channel open timeout in-process: a late confirmation is closed, never leaked.

The gateway gives up on a connector that does not confirm a channel within
``channel_open_timeout_s``. If the confirmation still comes later, that
channel must be closed at once (the connector's endpoint connection ends),
and the app connection that gave up must not be touched by it.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop

from qanat.connector import dialer as dialer_module
from qanat.connector import session as session_module
from qanat.connector.egress import Egress
from qanat.connector.options import ConnectOptions
from qanat.connector.session import Session, Stats
from qanat.gateway.server import Gateway
from qanat.gateway.settings import GatewaySettings
from qanat.gateway.stages import MemoryStageSource, StageConfig
from qanat.wire.remotes import decode_remotes
from qanat.wire.tokens import hash_token, new_address_id, new_token
from support.servers import free_port


async def scenario(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    endpoint_events: list[str] = []

    async def endpoint(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        endpoint_events.append("accepted")
        writer.write(b"hello\n")
        await reader.read()  # until the far side closes
        endpoint_events.append("closed")
        writer.close()

    server = await asyncio.start_server(endpoint, "127.0.0.1", 0)
    endpoint_port = server.sockets[0].getsockname()[1]
    token, address_id = new_token(), new_address_id()
    stages = MemoryStageSource()
    stages.put(StageConfig(key="dev", address_id=address_id, token_hashes=(hash_token(token),)))
    settings = GatewaySettings(
        data_dir=Path(tempfile.mkdtemp(prefix="i4-late-")),
        listen_port=0,
        channel_open_timeout_s=0.2,
        keepalive_s=0,
    )
    gateway = Gateway(settings, stages)
    await gateway.start()
    app_port = free_port()
    host, port = gateway.address
    address = f"http://{host}:{port}/{address_id}"
    options = ConnectOptions(
        address=address,
        remotes=tuple(decode_remotes([f"R:{app_port}:127.0.0.1:{endpoint_port}"])),
        headers=(("token", token),),
        keepalive_s=0,
        connector_id="slow",
    )

    # The first dial takes 0.6 s: longer than the gateway's open timeout.
    real_call = dialer_module.Dialer.__call__
    delays = [0.6]

    async def slow_call(self: dialer_module.Dialer, target: str) -> Any:
        if delays:
            await asyncio.sleep(delays.pop())
        return await real_call(self, target)

    monkeypatch.setattr(dialer_module.Dialer, "__call__", slow_call)
    # A connector that dials first and then confirms, as with a gateway
    # that does not offer early-open: only then is a confirmation late.
    monkeypatch.setattr(session_module, "FEATURE_EARLY_OPEN", "not offered")
    session = Session(options, "1", Stats(), Egress(options))
    result: dict[str, Any] = {}
    try:
        await session.connect()
        reader, writer = await asyncio.open_connection("127.0.0.1", app_port)
        started = loop.time()
        first = await asyncio.wait_for(reader.read(), 5)  # given up: closed, no greeting
        result["first"] = first
        result["gave_up_after_s"] = loop.time() - started
        writer.close()
        # The late confirmation arrives ~0.4 s later and is closed at once.
        deadline = time.monotonic() + 5
        while endpoint_events != ["accepted", "closed"] and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        result["endpoint"] = list(endpoint_events)
        result["connector_open"] = len(session.splices)
        # The tunnel is fine: the next app connection goes through.
        reader, writer = await asyncio.open_connection("127.0.0.1", app_port)
        result["second"] = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        (endpoint_state,) = gateway.ports.open.values()
        result["failed"] = endpoint_state.connections_failed
    finally:
        await session.close()
        await gateway.close()
        server.close()
    return result


def test_a_late_channel_confirmation_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    result = uvloop.run(scenario(monkeypatch))
    assert result["first"] == b""
    assert 0.15 <= result["gave_up_after_s"] < 2.0
    assert result["endpoint"] == ["accepted", "closed"]
    assert result["connector_open"] == 0
    assert result["second"] == b"hello\n"
    assert result["failed"] == 1
