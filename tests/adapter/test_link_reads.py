"""How the tunnel link reads (qanat.net.websocket), over real TLS on uvloop.

- uvloop's TLS transport decrypts into the link's read buffer
  (``get_buffer``/``buffer_updated``). The link used to be an
  ``asyncio.Protocol`` subclass with a ``get_buffer``, which uvloop treats as
  a plain protocol: every TLS read then allocated a fresh 256 KiB ``bytes``.
- The buffer is shared by every link of the process: concurrent transfers on
  two tunnels over TLS arrive intact, byte for byte.
- What keeps a piece of a read past the call copies it (diagnose's relay).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

from qanat.net import websocket
from qanat.ops.diagnose import _Relay
from support.servers import echo_server, free_port, roundtrip
from support.timing import scaled
from support.tlscerts import make_tls
from support.tunnels import running_gateway, serving_connector


def _tls_gateway(tmp_path: Any) -> tuple[dict[str, Any], str]:
    files = make_tls(tmp_path, "127.0.0.1")
    return {"tls_cert_path": files.cert, "tls_key_path": files.key}, str(files.ca)


async def test_tls_reads_land_in_the_links_buffer(tmp_path, monkeypatch):
    calls = {"get": 0}
    real_get = websocket._ReadBuffer.get

    def counting_get(self: websocket._ReadBuffer) -> memoryview:
        calls["get"] += 1
        return real_get(self)

    monkeypatch.setattr(websocket._ReadBuffer, "get", counting_get)
    settings, ca = _tls_gateway(tmp_path)
    payload = os.urandom(300_000)
    async with running_gateway(tmp_path, **settings) as env, echo_server() as echo:
        env_address = env.address.replace("http://", "https://")
        port = free_port()
        async with serving_connector(
            env, [f"R:{port}:127.0.0.1:{echo}"], address=env_address, tls_ca=ca
        ):
            before = calls["get"]
            assert await roundtrip(port, payload) == payload
    # Both ends of the tunnel run in this process: the 300 KB went through
    # TLS reads on each, every one of them into the buffer.
    assert calls["get"] - before >= 4, calls


async def test_two_tunnels_share_the_read_buffer_without_mixing_bytes(tmp_path):
    settings, ca = _tls_gateway(tmp_path)
    async with running_gateway(tmp_path, **settings) as env, echo_server() as echo:
        address = env.address.replace("http://", "https://")
        ports = [free_port(), free_port()]
        async with (
            serving_connector(env, [f"R:{ports[0]}:127.0.0.1:{echo}"], address=address, tls_ca=ca),
            serving_connector(env, [f"R:{ports[1]}:127.0.0.1:{echo}"], address=address, tls_ca=ca),
        ):
            assert len(env.active_tunnels()) == 2
            payloads = [os.urandom(2_000_000 + i * 1000) for i in range(6)]
            async with asyncio.timeout(scaled(60)):
                answers = await asyncio.gather(
                    *(roundtrip(ports[i % 2], p) for i, p in enumerate(payloads))
                )
    for sent, got in zip(payloads, answers, strict=True):
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(sent).hexdigest()


def test_diagnose_relay_copies_what_it_holds():
    relay = _Relay()
    buffer = bytearray(b"SSH-2.0-Go\r\n")
    relay.data_received(memoryview(buffer))  # type: ignore[arg-type]
    buffer[:] = b"x" * len(buffer)  # the next read reuses the buffer
    got: list[bytes] = []

    class Upper(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            got.append(bytes(data))

    relay.transport = object()  # type: ignore[assignment]
    asyncio.run(relay.attach(Upper()))
    assert got == [b"SSH-2.0-Go\r\n"]
