"""The SSH adapter (qanat.net.ssh) between an in-process gateway and connector.

qanat.net.ssh reaches into asyncssh for chisel's dialect; these tests pin each
of those reaches: the version exchange (bytes on the wire), global requests
with raw payloads (``config`` refusal text, ``ping``/``pong``, the request
queue), the generic ``chisel`` channel (data, half-close, refusal reasons),
and the host key (persistence, file mode, fingerprint pinning).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import stat

import pytest

from qanat.connector.egress import Egress
from qanat.connector.options import ConnectOptions
from qanat.connector.runner import Connector
from qanat.connector.session import Session, Stats
from qanat.errors import ConfigError, HandshakeError, RemotesRejected
from qanat.gateway.server import Gateway
from qanat.gateway.settings import GatewaySettings
from qanat.gateway.stages import MemoryStageSource
from qanat.net.ssh import HostKey
from qanat.wire.configmsg import encode_config
from qanat.wire.handshake import new_client_id
from support.servers import Relay, echo_server, free_port, roundtrip
from support.timing import eventually, scaled
from support.tunnels import (
    connect_options,
    running_connector,
    running_gateway,
    serving_connector,
)
from support.wsframes import OP_BINARY, OP_CLOSE, FrameReader, split_http_head


async def open_session(options: ConnectOptions) -> Session:
    """One connector session, connected (or raising what connect() raises)."""
    client_id = new_client_id()
    session = Session(options, client_id, Stats(), Egress(options))
    try:
        await session.connect()
    except BaseException:
        await session.close()
        raise
    return session


def frames_after_head(stream: bytes) -> list:
    parts = split_http_head(stream)
    assert parts is not None, f"no HTTP head in {stream[:100]!r}"
    return FrameReader().feed(parts[1])


# -- version exchange ------------------------------------------------------------


async def test_version_lines_are_chisel_lines_each_in_its_own_binary_frame(tmp_path):
    async with running_gateway(tmp_path) as env, Relay(env.port) as relay, echo_server() as eport:
        port = free_port()
        relayed = env.address.replace(f":{env.port}/", f":{relay.port}/")
        async with serving_connector(env, [f"R:{port}:127.0.0.1:{eport}"], address=relayed):
            assert await roundtrip(port, b"ping through the relay") == b"ping through the relay"
        await eventually(lambda: not env.gateway.tunnels, "tunnel gone")
    # The first connection is the address GET (as outsystemscc sends it).
    address_get, conn = relay.connections
    assert bytes(address_get.up).startswith(b"GET /sg_")
    up = frames_after_head(bytes(conn.up))
    down = frames_after_head(bytes(conn.down))

    assert up[0].payload == b"SSH-chisel-v3-client\r\n"
    assert down[0].payload == b"SSH-chisel-v3-server\r\n"
    for first in (up[0], down[0]):
        assert first.opcode == OP_BINARY
        assert first.fin
        assert len(first.payload) == 22
    # Everything is a binary frame (until the closing handshake); client
    # frames are masked and server frames are not.
    for frames, masked in ((up, True), (down, False)):
        data_frames = [f for f in frames if f.opcode != OP_CLOSE]
        assert {f.opcode for f in data_frames} == {OP_BINARY}
        assert {f.masked for f in frames} == {masked}
    # The version line is the whole first message: the key exchange follows
    # in later frames, never glued to it.
    assert up[1].payload[5] == 20  # SSH_MSG_KEXINIT
    assert down[1].payload[5] == 20


async def test_peer_versions_are_recorded_on_both_sides(tmp_path):
    async with running_gateway(tmp_path) as env:
        session = await open_session(connect_options(env, [f"R:{free_port()}:127.0.0.1:9"]))
        try:
            assert session.tunnel is not None
            assert session.tunnel.peer_version == "SSH-chisel-v3-server"
            (tunnel,) = env.active_tunnels()
            assert tunnel.ssh.peer_version == "SSH-chisel-v3-client"
            assert tunnel.version == "qanat-0.1.0"
        finally:
            await session.close()


# -- config ----------------------------------------------------------------------


async def test_config_refusal_text_reaches_the_connector(tmp_path):
    stage = {"port_min": 20000, "port_max": 20010}
    async with running_gateway(tmp_path, stage=stage) as env:
        options = connect_options(env, ["R:30000:127.0.0.1:80"])
        with pytest.raises(RemotesRejected) as caught:
            await open_session(options)
        text = str(caught.value)
        assert text.startswith("gateway refused the remotes: ")
        assert "R:30000=>127.0.0.1:80: port 30000 is outside this stage's range 20000-20010" in text
        await eventually(lambda: not env.gateway.tunnels, "refused tunnel to go")
        assert not env.gateway.ports.open


async def test_connector_logs_the_refusal_and_gives_up_when_out_of_retries(tmp_path, caplog):
    caplog.set_level(logging.INFO, "qanat")
    stage = {"port_min": 20000, "port_max": 20010}
    async with running_gateway(tmp_path, stage=stage) as env:
        connector = Connector(connect_options(env, ["R:30000:127.0.0.1:80"], max_retry_count=0))
        async with asyncio.timeout(scaled(10)):
            assert await connector.run() == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "qanat.connector"]
    assert any(
        m.startswith("Connection failed: gateway refused the remotes:")
        and "outside this stage's range 20000-20010" in m
        for m in messages
    ), messages
    assert "Giving up after 1 attempts (--max-retry-count 0)" in messages


async def test_second_config_on_a_tunnel_is_refused_with_text(tmp_path):
    async with running_gateway(tmp_path) as env:
        options = connect_options(env, [f"R:{free_port()}:127.0.0.1:9"])
        session = await open_session(options)
        try:
            assert session.tunnel is not None
            ok, reply = await session.tunnel.request("config", encode_config("x", options.remotes))
            assert (ok, reply) == (False, b"config already received for this tunnel")
            # The refusal does not hurt the tunnel.
            assert await session.tunnel.request("ping") == (True, b"pong")
        finally:
            await session.close()


# -- ping ------------------------------------------------------------------------


async def test_ping_is_answered_with_pong_in_both_directions(tmp_path):
    async with running_gateway(tmp_path) as env:
        session = await open_session(connect_options(env, [f"R:{free_port()}:127.0.0.1:9"]))
        try:
            assert session.tunnel is not None
            assert await session.tunnel.request("ping") == (True, b"pong")
            (tunnel,) = env.active_tunnels()
            assert await tunnel.ssh.request("ping") == (True, b"pong")
            # Many requests in flight at once go through asyncssh's queue in order.
            replies = await asyncio.gather(*(session.tunnel.request("ping") for _ in range(20)))
            assert replies == [(True, b"pong")] * 20
            assert await tunnel.ssh.ping(scaled(2)) >= 0
        finally:
            await session.close()


async def test_unknown_global_request_is_refused_without_harm(tmp_path):
    async with running_gateway(tmp_path) as env:
        session = await open_session(connect_options(env, [f"R:{free_port()}:127.0.0.1:9"]))
        try:
            assert session.tunnel is not None
            ok, _ = await session.tunnel.request("tcpip-forward-nonsense", b"\x00\x01")
            assert not ok
            assert await session.tunnel.request("ping") == (True, b"pong")
        finally:
            await session.close()


async def test_keepalives_run_on_both_sides(tmp_path):
    async with running_gateway(tmp_path, keepalive_s=0.02) as env, echo_server() as eport:
        port = free_port()
        async with serving_connector(
            env, [f"R:{port}:127.0.0.1:{eport}"], keepalive_s=0.02, keepalive_timeout_s=scaled(2)
        ) as connector:
            (tunnel,) = env.active_tunnels()
            await eventually(lambda: tunnel.last_rtt_s is not None, "gateway keepalive rtt")
            await eventually(
                lambda: connector.stats.last_rtt_s is not None, "connector keepalive rtt"
            )
            assert tunnel.missed_pings == 0
            assert await roundtrip(port, b"still fine") == b"still fine"


class Valve:
    """A relay transform that can stop one connection's bytes (a frozen peer)."""

    def __init__(self) -> None:
        self.closed = False

    def __call__(self, data: bytes) -> bytes:
        return b"" if self.closed else data


async def test_gateway_closes_a_tunnel_whose_pings_go_unanswered(tmp_path, caplog):
    caplog.set_level(logging.INFO, "qanat")
    valves: list[Valve] = []

    def valve() -> Valve:
        valves.append(Valve())
        return valves[-1]

    settings = {"keepalive_s": 0.05, "keepalive_timeout_s": scaled(0.2), "keepalive_misses": 3}
    async with (
        running_gateway(tmp_path, **settings) as env,
        Relay(env.port, up_transform=valve) as relay,
        echo_server() as eport,
    ):
        port = free_port()
        relayed = env.address.replace(f":{env.port}/", f":{relay.port}/")
        async with serving_connector(env, [f"R:{port}:127.0.0.1:{eport}"], address=relayed):
            (tunnel,) = env.active_tunnels()
            await eventually(lambda: tunnel.last_rtt_s is not None, "a first pong")
            # valves[0] carried the address GET; valves[1] carries the tunnel.
            valves[1].closed = True  # the connector goes silent
            await eventually(lambda: not env.active_tunnels(), "dead peer detection", 10)
            assert tunnel.close_reason.startswith("dead peer: 3 keepalives in a row missed")
            # The connector notices and comes back on a new connection.
            await eventually(lambda: env.serves(port), "the connector to come back", 10)
            assert len(valves) == 4  # address GET and tunnel, twice
            assert await roundtrip(port, b"back again") == b"back again"
    lines = [r.getMessage() for r in caplog.records if r.name == "qanat.gateway.tunnel"]
    assert any(m.startswith("keepalive 3/3 missed (no answer within ") for m in lines)
    closed = "tunnel closed: dead peer: 3 keepalives in a row missed"
    assert any(m.startswith(closed) for m in lines)


# -- channels --------------------------------------------------------------------


async def test_channel_carries_bytes_both_ways_with_half_close(tmp_path):
    payload = os.urandom(1 << 20)
    async with running_gateway(tmp_path) as env, echo_server() as eport:
        port = free_port()
        async with serving_connector(env, [f"R:{port}:127.0.0.1:{eport}"]) as connector:
            # roundtrip() half-closes after sending and reads the echo to the end.
            assert await roundtrip(port, payload) == payload
            assert await roundtrip(port, b"") == b""
            await eventually(lambda: connector.stats.channels_open == 0, "channels closed")
            assert connector.stats.channels_total == 2
            assert connector.stats.bytes_down == len(payload)
            (tunnel,) = env.active_tunnels()
            await eventually(lambda: not tunnel.splices, "gateway splices closed")
            assert tunnel.bytes_up == len(payload)


async def test_a_closed_channel_is_freed_on_both_ends_with_no_other_traffic(tmp_path):
    # The gateway's CLOSE answering the connector's only frees the channel,
    # so it waits to go out with other output (qanat.net.ssh.LAZY_FLUSH_S);
    # with nothing else to send it must still go out on its own.
    async with running_gateway(tmp_path) as env, echo_server() as eport:
        port = free_port()
        async with serving_connector(env, [f"R:{port}:127.0.0.1:{eport}"]) as connector:
            assert await roundtrip(port, b"one request") == b"one request"
            session = connector.session
            assert session is not None
            assert session.tunnel is not None
            core = session.tunnel._proto.conn
            await eventually(lambda: not core.channel_ids(), "the connector's channel freed", 2)
            (tunnel,) = env.active_tunnels()
            gateway_core = tunnel.ssh._proto.conn
            await eventually(lambda: not gateway_core.channel_ids(), "the gateway's freed", 2)


async def test_channel_refusal_reason_reaches_the_gateway(tmp_path, caplog):
    caplog.set_level(logging.INFO, "qanat")
    closed = free_port()
    async with running_gateway(tmp_path) as env:
        port = free_port()
        async with serving_connector(env, [f"R:{port}:127.0.0.1:{closed}"]) as connector:
            assert await roundtrip(port, b"anyone there?") == b""
            endpoint = env.gateway.ports.open[("127.0.0.1", port, "tcp")]
            await eventually(lambda: endpoint.connections_failed == 1, "failed connection")
            assert endpoint.open_connections == 0
            assert connector.stats.channels_open == 0
    failures = [r.getMessage() for r in caplog.records if "app connection from" in r.getMessage()]
    assert len(failures) == 1
    assert f"dial 127.0.0.1:{closed}: Connection refused" in failures[0]


# -- host key --------------------------------------------------------------------


def test_host_key_is_persisted_with_mode_0600(tmp_path):
    settings = GatewaySettings(data_dir=tmp_path / "data", listen_port=0)
    first = Gateway(settings, MemoryStageSource()).host_key.fingerprint
    path = settings.host_key_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = Gateway(settings, MemoryStageSource()).host_key.fingerprint
    assert first == second
    # chisel's format: base64 of a SHA-256 digest.
    assert len(base64.b64decode(first)) == 32
    other = Gateway(
        GatewaySettings(data_dir=tmp_path / "other", listen_port=0), MemoryStageSource()
    )
    assert other.host_key.fingerprint != first


def test_unreadable_host_key_is_a_clear_config_error(tmp_path):
    path = tmp_path / "host_key"
    path.write_text("not a key\n")
    with pytest.raises(ConfigError, match=f"host key {path}"):
        HostKey.load_or_create(path)


async def test_connector_sees_the_persisted_host_key(tmp_path):
    expected = HostKey.load_or_create(tmp_path / "host_key").fingerprint
    async with running_gateway(tmp_path) as env:
        assert env.gateway.host_key.fingerprint == expected
        session = await open_session(connect_options(env, [f"R:{free_port()}:127.0.0.1:9"]))
        try:
            assert session.tunnel is not None
            assert session.tunnel.server_fingerprint == expected
        finally:
            await session.close()


async def test_fingerprint_pinning_accepts_the_right_key_in_both_notations(tmp_path):
    async with running_gateway(tmp_path) as env:
        fingerprint = env.gateway.host_key.fingerprint
        for pinned in (fingerprint, "SHA256:" + fingerprint.rstrip("=")):
            options = connect_options(env, [f"R:{free_port()}:127.0.0.1:9"], fingerprint=pinned)
            session = await open_session(options)
            await session.close()


async def test_wrong_fingerprint_is_a_clear_error_and_no_tunnel_stays(tmp_path, caplog):
    caplog.set_level(logging.INFO, "qanat")
    wrong = base64.b64encode(bytes(32)).decode()
    async with running_gateway(tmp_path) as env:
        actual = env.gateway.host_key.fingerprint
        options = connect_options(env, [f"R:{free_port()}:127.0.0.1:9"], fingerprint=wrong)
        with pytest.raises(HandshakeError) as caught:
            await open_session(options)
        assert str(caught.value) == (
            f"gateway host key fingerprint is {actual}, expected {wrong}: "
            "wrong gateway, or its key changed"
        )
        await eventually(lambda: not env.gateway.tunnels, "gateway to drop the tunnel")
        assert not env.gateway.ports.open

        connector = Connector(
            connect_options(
                env, [f"R:{free_port()}:127.0.0.1:9"], fingerprint=wrong, max_retry_count=0
            )
        )
        async with asyncio.timeout(scaled(10)):
            assert await connector.run() == 1
    assert any(
        r.getMessage().startswith("Connection failed: gateway host key fingerprint is")
        for r in caplog.records
    )


async def test_connector_reconnects_after_the_gateway_restarts_with_the_same_key(tmp_path):
    async with echo_server() as eport:
        port = free_port()
        async with running_gateway(tmp_path) as env:
            options = connect_options(
                env, [f"R:{port}:127.0.0.1:{eport}"], fingerprint=env.gateway.host_key.fingerprint
            )
            gw_port = env.port
        # Same data dir and port: same host key, so the pinned connector accepts it.
        async with (
            running_connector(options) as connector,
            running_gateway(tmp_path, listen_port=gw_port) as env2,
        ):
            env2.source.put(env.stage)
            await eventually(lambda: env2.serves(port), "connector to reconnect", 10)
            assert await roundtrip(port, b"back") == b"back"
            assert connector.stats.sessions == 1


async def test_ipv6_loopback_everywhere(tmp_path):
    """Gateway on [::1], a stage bound to ::1, an endpoint reached as [::1]."""
    async with (
        running_gateway(tmp_path, listen_host="::1", stage={"bind_host": "::1"}) as env,
        echo_server("::1") as eport,
    ):
        port = free_port("::1")
        address = f"http://[::1]:{env.port}/{env.stage.address_id}"
        async with serving_connector(env, [f"R:{port}:[::1]:{eport}"], address=address):
            assert await roundtrip(port, b"over ipv6", host="::1") == b"over ipv6"
            (tunnel,) = env.active_tunnels()
            assert tunnel.info.peer.startswith("::1:")
