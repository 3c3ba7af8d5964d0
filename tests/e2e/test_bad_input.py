"""Bad input at every door of the gateway.

Each case checks three things: a clear answer or log line, that an already
established tunnel (the *witness*) keeps carrying traffic, and that nothing
leaks (tunnels, listeners, tasks, file descriptors back to where they were).

Most cases run against an in-process gateway, where leaks are visible
directly; memory under a non-reading app and a connector killed mid-transfer
need real processes (marked slow).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest

from qanat.errors import TunnelError
from qanat.wire.configmsg import encode_config
from qanat.wire.remotes import decode_remotes
from qanat.wire.tokens import hash_token, new_address_id
from support.apps import app_socket, connection_refused, echo_ok, exchange
from support.endpoints import CommandEndpoint
from support.resources import open_fds
from support.servers import echo_server, free_port, http_exchange, parse_response, roundtrip
from support.stockpeer import HandFramed, open_upgraded, outsystemscc_request
from support.timing import eventually, scaled, wait_until
from support.tunnels import GatewayEnv, raw_tunnel, running_gateway, serving_connector


@dataclass
class Witness:
    """An established tunnel next to the bad input, and the gateway's state before it."""

    env: GatewayEnv
    port: int
    fds: int = 0
    tasks: int = 0
    tunnels: set[int] = field(default_factory=set)
    endpoints: set[Any] = field(default_factory=set)

    def snapshot(self) -> None:
        self.fds = open_fds()
        self.tasks = len(asyncio.all_tasks())
        self.tunnels = set(self.env.gateway.tunnels)
        self.endpoints = set(self.env.gateway.ports.open)

    async def check(self) -> None:
        """The witness still works and the gateway is back where it was."""
        assert await roundtrip(self.port, b"witness") == b"witness"
        gateway = self.env.gateway
        await eventually(lambda: set(gateway.tunnels) == self.tunnels, "only the witness tunnel")
        assert set(gateway.ports.open) == self.endpoints
        await eventually(lambda: len(asyncio.all_tasks()) <= self.tasks, "tasks back to baseline")
        await eventually(lambda: open_fds() <= self.fds, "file descriptors back to baseline")


@asynccontextmanager
async def witnessed(tmp_path: Any, **settings: Any) -> AsyncIterator[Witness]:
    async with running_gateway(tmp_path, **settings) as env, echo_server() as eport:
        port = free_port()
        async with serving_connector(env, [f"R:{port}:127.0.0.1:{eport}"]):
            witness = Witness(env, port)
            assert await roundtrip(port, b"warm up") == b"warm up"
            witness.snapshot()
            yield witness
            await witness.check()


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "qanat")


# -- before the upgrade -------------------------------------------------------------


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        (b"\x00\x01\x02\x03 binary junk\r\n", "not an HTTP request"),
        (b"HELLO gateway, how are you?\n", "not an HTTP request"),
        (b"A" * 20_000, "request line too long or not HTTP"),
        (
            b"GET /sg_00000000-0000-0000-0000-000000000000 HTTP/1.1\r\n" + b"X-Pad: y\r\n" * 3000,
            "request head too large",
        ),
    ],
    ids=["binary", "words", "endless-line", "endless-head"],
)
async def test_garbage_instead_of_a_request_gets_400(tmp_path, caplog, garbage, why):
    async with witnessed(tmp_path) as witness:
        raw = await http_exchange(witness.env.port, garbage)
        status, _, body = parse_response(raw)
        assert (status, body) == (400, f"bad request: {why}\n".encode())
    assert any(m.endswith(f": {why}; answered 400") for m in messages(caplog))


async def test_a_client_that_never_finishes_its_request_is_dropped(tmp_path, caplog):
    async with witnessed(tmp_path, request_head_timeout_s=scaled(0.3)) as witness:
        # What a connector configured for https sends to a plain-HTTP gateway.
        client_hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(160)
        reader, writer = await asyncio.open_connection("127.0.0.1", witness.env.port)
        writer.write(client_hello)
        async with asyncio.timeout(scaled(5)):
            with suppress(ConnectionResetError):
                assert await reader.read() == b""
        writer.close()
    assert any(
        m.endswith("no complete HTTP request within the timeout; closing") for m in messages(caplog)
    )


@pytest.mark.parametrize("protocol", [None, "chat, superchat"], ids=["none", "other"])
async def test_upgrade_without_the_chisel_subprotocol_gets_400(tmp_path, caplog, protocol):
    async with witnessed(tmp_path) as witness:
        env = witness.env
        request = outsystemscc_request(
            f"127.0.0.1:{env.port}", f"/{env.stage.address_id}", token=env.token, protocol=protocol
        )
        status, _, body = parse_response(await http_exchange(env.port, request))
        assert status == 400
        assert body == b"not a tunnel request: Sec-WebSocket-Protocol must offer chisel-v3\n"
    assert any(
        m.endswith("upgrade without the chisel-v3 subprotocol; answered 400")
        for m in messages(caplog)
    )


WRONG = b"token rejected: check the token header\n"
MISSING = b'token missing: send it as --header "token: <token>"\n'


@pytest.mark.parametrize(
    ("token", "body"),
    [
        ("not-the-token", WRONG),
        (None, MISSING),
        ("", WRONG),
        ("x" * 10_000, WRONG),
        ("x" * 600, WRONG),
    ],
    ids=["wrong", "missing", "empty", "oversized-10k", "oversized-600"],
)
async def test_bad_tokens_get_401(tmp_path, caplog, token, body):
    async with witnessed(tmp_path) as witness:
        env = witness.env
        request = outsystemscc_request(
            f"127.0.0.1:{env.port}", f"/{env.stage.address_id}", token=token
        )
        status, _, answer = parse_response(await http_exchange(env.port, request))
        assert (status, answer) == (401, body)
    refusal = "no token header" if token is None else "wrong token (not a token of this address)"
    expected = f": tunnel refused for address {env.stage.address_id}: {refusal}"
    assert any(re.fullmatch(r"127\.0\.0\.1:\d+" + re.escape(expected), m) for m in messages(caplog))


async def test_unknown_address_gets_the_same_401_as_a_wrong_token(tmp_path, caplog):
    def comparable(raw: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        status, headers, body = parse_response(raw)
        return status, [h for h in headers if h[0] != "Date"], body

    async with witnessed(tmp_path) as witness:
        env = witness.env
        host = f"127.0.0.1:{env.port}"
        wrong_token = outsystemscc_request(host, f"/{env.stage.address_id}", token="guess")
        unknown_address_id = new_address_id()
        unknown_address = outsystemscc_request(host, f"/{unknown_address_id}", token=env.token)
        first = comparable(await http_exchange(env.port, wrong_token))
        second = comparable(await http_exchange(env.port, unknown_address))
        assert first == second
        assert first[0] == 401
    # The operator's log tells the two apart (the answers above do not).
    lines = [m for m in messages(caplog) if "tunnel refused" in m]
    assert [re.sub(r"^127\.0\.0\.1:\d+", "", m) for m in lines] == [
        f": tunnel refused for address {env.stage.address_id}: wrong token"
        " (not a token of this address)",
        f": tunnel refused for address {unknown_address_id}: no stage has this address"
        " (unknown or deleted); token not checked",
    ]


async def test_a_renewed_token_is_told_so_and_established_tunnels_stay(tmp_path):
    async with witnessed(tmp_path) as witness:
        env = witness.env
        request = outsystemscc_request(
            f"127.0.0.1:{env.port}", f"/{env.stage.address_id}", token=env.token
        )
        env.source.update(
            env.stage.address_id,
            token_hashes=(hash_token("the new one"),),
            renewed_hashes=(hash_token(env.token),),
        )
        status, _, body = parse_response(await http_exchange(env.port, request))
        assert (status, body) == (
            401,
            b"token rejected: this token was renewed; use the new token from the portal\n",
        )
        # witness.check(): the tunnel made with the old token keeps working.


async def test_deactivation_closes_tunnels_and_reactivation_brings_them_back(tmp_path, caplog):
    async with running_gateway(tmp_path) as env, echo_server() as eport:
        port = free_port()
        async with serving_connector(env, [f"R:{port}:127.0.0.1:{eport}"]) as connector:
            env.source.update(env.stage.address_id, active=False)
            assert not env.gateway.tunnels
            assert not env.gateway.ports.open
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
            inactive = (
                "Connection failed: token rejected (403): private gateway of this stage is "
                "inactive; activate it in the portal"
            )
            await eventually(lambda: inactive in messages(caplog), "the retry to be refused")
            env.source.update(env.stage.address_id, active=True)
            await eventually(lambda: env.serves(port), "the connector to come back", 10)
            assert await roundtrip(port, b"reactivated") == b"reactivated"
            assert connector.stats.sessions == 2
    assert any("tunnel closed: stage deactivated" in m for m in messages(caplog))


async def test_repeated_wrong_tokens_from_one_source_get_429(tmp_path, caplog):
    async with witnessed(tmp_path) as witness:
        env = witness.env
        request = outsystemscc_request(
            f"127.0.0.1:{env.port}", f"/{env.stage.address_id}", token="guess"
        )
        answers = [parse_response(await http_exchange(env.port, request)) for _ in range(30)]
        statuses = [a[0] for a in answers]
        assert statuses == [401] * 20 + [429] * 10
        _status, headers, body = answers[-1]
        assert ("Retry-After", "60") in headers
        assert body == b"too many failed token attempts; retry later\n"
        # The right token is let in all the same: failures never block it.
        good = outsystemscc_request(
            f"127.0.0.1:{env.port}", f"/{env.stage.address_id}", token=env.token
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
        try:
            writer.write(good)
            async with asyncio.timeout(scaled(5)):
                head = await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.close()
        assert head.startswith(b"HTTP/1.1 101 "), head
    # One line for the first refusal of each kind; the rest go into the summary.
    assert sum("tunnel refused" in m or "rate-limited" in m for m in messages(caplog)) == 2
    assert any("refused 30 tunnel attempts in the last" in m for m in messages(caplog))


# -- after the upgrade --------------------------------------------------------------


class Closed(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.mark.parametrize(
    ("junk", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not an SSH version line: b'GET / HTTP/1.1'"),
        (b"z" * 300, "peer sent no SSH version line (not an SSH stream)"),
        (
            b"SSH-chisel-v3-client\r\n" + b"\xff" * 64,
            "packet of 4294967295 bytes is over the limit of 262144",
        ),
    ],
    ids=["http", "no-newline", "bad-packet"],
)
async def test_junk_instead_of_ssh_closes_the_tunnel(tmp_path, caplog, junk, reason):
    async with witnessed(tmp_path) as witness:
        env = witness.env
        request = outsystemscc_request(
            f"127.0.0.1:{env.port}", f"/{env.stage.address_id}", token=env.token
        )
        head_reader, head = await open_upgraded(env.port, request)
        assert head.startswith(b"HTTP/1.1 101 ")
        upper = Closed()
        framed = HandFramed.attach(head_reader, upper, mask=True)
        for i in range(0, len(junk), 100):
            framed.write(junk[i : i + 100])
        async with asyncio.timeout(scaled(5)):
            await upper.lost
    ended = [m for m in messages(caplog) if "tunnel setup ended" in m]
    assert len(ended) == 1
    assert ended[0].endswith(f"tunnel setup ended: {reason}"), ended


def _remotes_json(count: int, item: str) -> bytes:
    return ('{"Version":"x","Remotes":[' + ",".join([item] * count) + "]}").encode()


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (b"this is not json", "config: not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        (b"[1, 2, 3]", "config: expected a JSON object"),
        (
            _remotes_json(10_000, '{"Reverse":true}'),
            "config: 10000 remotes exceeds the limit of 1000 per connector; "
            "split the remotes over several connectors",
        ),
        (
            encode_config("x", decode_remotes(["8081:10.0.0.5:80"])),
            "remote 8081=>10.0.0.5:80 is a forward remote; this gateway only serves "
            "reverse remotes (R:<port>:<host>:<port>)",
        ),
        (
            encode_config("x", decode_remotes(["R:socks"])),
            "remote R:127.0.0.1:1080=>socks: socks and stdio remotes are not served",
        ),
        # Ports Go's strconv.Atoi refuses (Python's int() would take them).
        (
            _remotes_json(1, '{"LocalPort":" 8081\\n","RemoteHost":"h","RemotePort":"80"}'),
            "config: remote #0 LocalPort ' 8081\\n' has spaces or line breaks "
            "(Go's strconv.Atoi refuses them)",
        ),
        (
            _remotes_json(1, '{"LocalPort":"\\uff18\\uff10\\uff18\\uff11","RemotePort":"80"}'),
            "config: remote #0 LocalPort '\uff18\uff10\uff18\uff11' has non-ASCII digits "
            "(Go's strconv.Atoi reads only 0-9)",
        ),
        (
            _remotes_json(1, '{"LocalPort":"8_081","RemoteHost":"h","RemotePort":"80"}'),
            "config: remote #0 LocalPort '8_081' has an underscore "
            "(Go's strconv.Atoi takes no digit separators)",
        ),
    ],
    ids=["not-json", "not-object", "10000-remotes", "forward", "socks", "space", "fullwidth", "_"],
)
async def test_bad_config_is_refused_with_a_clear_text(tmp_path, caplog, payload, text):
    async with witnessed(tmp_path) as witness:
        tunnel = await raw_tunnel(witness.env)
        try:
            assert await tunnel.request("config", payload) == (False, text.encode())
        finally:
            tunnel.close()
            await tunnel.wait_closed()
    assert any(m.endswith(f"refused config: {text}") for m in messages(caplog))


async def test_config_for_a_port_in_use_is_refused_with_a_clear_text(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        async with witnessed(tmp_path) as witness:
            tunnel = await raw_tunnel(witness.env)
            try:
                payload = encode_config("x", decode_remotes([f"R:{port}:10.0.0.5:80"]))
                ok, text = await tunnel.request("config", payload)
            finally:
                tunnel.close()
                await tunnel.wait_closed()
    assert not ok
    message = text.decode()
    assert message.startswith(f"Server cannot listen on R:{port}=>10.0.0.5:80: ")
    assert message.lower().endswith("address already in use (port in use)")


async def test_a_config_too_big_for_one_frame_closes_the_tunnel(tmp_path, caplog):
    remote = json.dumps(
        {
            "LocalHost": "0.0.0.0",
            "LocalPort": "18082",
            "LocalProto": "tcp",
            "RemoteHost": "host-name.example.internal",
            "RemotePort": "18000",
            "RemoteProto": "tcp",
            "Socks": False,
            "Reverse": True,
            "Stdio": False,
        },
        separators=(",", ":"),
    )
    payload = _remotes_json(10_000, remote)
    assert len(payload) > 1_800_000
    async with witnessed(tmp_path) as witness:
        tunnel = await raw_tunnel(witness.env)
        try:
            # The gateway closes the tunnel without answering.
            with pytest.raises(TunnelError, match="SSH connection lost"):
                await tunnel.request("config", payload)
            await tunnel.wait_closed()
        finally:
            tunnel.close()
    ended = [m for m in messages(caplog) if "tunnel setup ended" in m]
    assert len(ended) == 1
    assert re.search(
        r"tunnel setup ended: invalid WebSocket data: "
        r"frame with \d+ bytes exceeds limit of 1048576 bytes\Z",
        ended[0],
    ), ended


async def test_a_tunnel_without_config_is_closed_after_the_setup_timeout(tmp_path, caplog):
    timeout_s = scaled(1.0)
    async with witnessed(tmp_path, setup_timeout_s=timeout_s) as witness:
        tunnel = await raw_tunnel(witness.env)
        try:
            assert (await tunnel.request("config", b"{"))[0] is False
            async with asyncio.timeout(scaled(5)):
                await tunnel.wait_closed()
        finally:
            tunnel.close()
    assert any(
        m.endswith(f"tunnel setup ended: no valid config within {timeout_s:g}s")
        for m in messages(caplog)
    )


async def test_a_connector_leaving_during_config_leaves_no_listener(tmp_path):
    """The gateway binds listeners while handling ``config``; a connector that
    leaves meanwhile must not leave them behind."""
    async with witnessed(tmp_path) as witness:
        for spins in range(10):
            port = free_port()
            tunnel = await raw_tunnel(witness.env)
            payload = encode_config("x", decode_remotes([f"R:{port}:127.0.0.1:9"]))
            request = asyncio.ensure_future(tunnel.request("config", payload))
            for _ in range(spins):
                await asyncio.sleep(0)
            tunnel.abort()
            await asyncio.gather(request, return_exceptions=True)
            await tunnel.wait_closed()
            await eventually(
                lambda: set(witness.env.gateway.tunnels) == witness.tunnels, "tunnel gone"
            )
            assert set(witness.env.gateway.ports.open) == witness.endpoints, spins
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)


# -- with real processes ------------------------------------------------------------


def start_connector(procs: Any, gw_port: int, address_id: str, token: str, *remotes: str) -> Any:
    connector = procs.start(
        "connector",
        "connect",
        "--header",
        f"token: {token}",
        "--max-retry-interval",
        "1s",
        f"http://127.0.0.1:{gw_port}/{address_id}",
        *remotes,
    )
    connector.wait_for(r"Connected \(latency")
    return connector


@pytest.mark.slow
def test_an_app_that_never_reads_costs_the_gateway_bounded_memory(tmp_path, procs):
    size = 50 * 1024 * 1024
    address_id, token = procs.add_stage(tmp_path / "data", tmp_path / "stages.toml")
    gateway, gw_port = procs.gateway(tmp_path / "data", tmp_path / "stages.toml")
    stuck_port, other_port = free_port(), free_port()
    with CommandEndpoint() as endpoint:
        start_connector(
            procs, gw_port, address_id, token, f"R:{stuck_port}:127.0.0.1:{endpoint.port}"
        )
        start_connector(
            procs, gw_port, address_id, token, f"R:{other_port}:127.0.0.1:{endpoint.port}"
        )
        assert echo_ok(stuck_port, os.urandom(1 << 20))  # warm up allocations
        gw = psutil.Process(gateway.pid)
        baseline = gw.memory_info().rss
        fds = gw.num_fds()

        with app_socket(stuck_port) as app:
            app.sendall(b"SOURCE %d 1\n" % size)
            # Wait until the source stalls (back-pressure reached it) or
            # finishes (it did not); watch the gateway's memory meanwhile.
            peak = baseline
            last, stable_since = -1, 0.0
            deadline = time.monotonic() + scaled(30)
            while time.monotonic() < deadline:
                peak = max(peak, gw.memory_info().rss)
                if endpoint.sent != last:
                    last, stable_since = endpoint.sent, time.monotonic()
                elif endpoint.sent >= size or time.monotonic() - stable_since > scaled(0.5):
                    break
                time.sleep(0.02)
            else:
                raise AssertionError("the source neither stalled nor finished")
            assert endpoint.sent < size, "no back-pressure: the whole 50 MB left the endpoint"
            assert endpoint.sent > 0
            growth = peak - baseline
            assert growth < 30 * 1024 * 1024, f"gateway RSS grew by {growth / 2**20:.1f} MiB"
            # The other tunnel is not held up by the stuck one.
            payload = os.urandom(4 << 20)
            count, sha, _ = exchange(other_port, b"ECHO\n", [payload])
            assert (count, sha) == (len(payload), hashlib.sha256(payload).hexdigest())
        # Closing the app releases the stuck channel all the way to the endpoint.
        wait_until(lambda: not endpoint.open, "endpoint connections to close", 10)
        wait_until(lambda: gw.num_fds() <= fds, "gateway file descriptors back to baseline")
        assert echo_ok(stuck_port)
    gateway.send(signal.SIGTERM)
    assert gateway.wait_exit() == 0


@pytest.mark.slow
def test_a_connector_killed_mid_transfer_releases_its_port(tmp_path, procs):
    address_id, token = procs.add_stage(tmp_path / "data", tmp_path / "stages.toml")
    gateway, gw_port = procs.gateway(tmp_path / "data", tmp_path / "stages.toml")
    doomed_port, other_port = free_port(), free_port()
    with CommandEndpoint() as endpoint:
        doomed = start_connector(
            procs, gw_port, address_id, token, f"R:{doomed_port}:127.0.0.1:{endpoint.port}"
        )
        start_connector(
            procs, gw_port, address_id, token, f"R:{other_port}:127.0.0.1:{endpoint.port}"
        )
        gw = psutil.Process(gateway.pid)
        fds = gw.num_fds()
        mark = gateway.mark()
        with app_socket(doomed_port) as app:
            app.sendall(b"SOURCE 1000000000 3\n")
            received = 0
            while received < 1 << 20:
                received += len(app.recv(65536))
            doomed.send(signal.SIGKILL)
            try:
                while app.recv(1 << 20):
                    pass
            except ConnectionResetError:
                pass
        gateway.wait_for(r"tunnel closed: ", start=mark)
        wait_until(lambda: connection_refused(doomed_port), "the dead connector's port to close")
        assert echo_ok(other_port)
        wait_until(lambda: not endpoint.open, "endpoint connections to close", 10)
        # The dead tunnel's socket and its port's listener are gone too.
        wait_until(lambda: gw.num_fds() <= fds - 2, "gateway file descriptors released")
    assert doomed.wait_exit() == -signal.SIGKILL
    gateway.send(signal.SIGTERM)
    assert gateway.wait_exit() == 0
