"""qanat diagnose: every step made to fail on purpose, and the diagnosis names it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from opstools import (
    call,
    closed_port,
    free_port,
    gateway_env,
    http_endpoint,
    make_tls,
    raw_server,
    scaled,
    wait_until,
)

from qanat import cli
from qanat.connector.options import ConnectOptions
from qanat.connector.proxies import parse_proxy_url
from qanat.ops.diagnose import DiagnoseSettings, diagnose
from qanat.ops.report import Report
from qanat.wire.remotes import decode_remotes
from qanat.wire.tokens import hash_token, new_address_id, new_token

FAST = DiagnoseSettings(step_timeout_s=scaled(3.0))
CHAIN = ["dns", "tcp", "address", "upgrade", "token", "ssh", "config"]


def names(report: Report) -> list[str]:
    return [s.name for s in report.steps]


def failed(report: Report) -> list[str]:
    return [s.name for s in report.steps if not s.ok]


def only_failure(report: Report, name: str) -> Any:
    assert failed(report) == [name], report.to_json()
    step = report.step(name)
    assert step is not None
    assert step.fix, "a failed step says what to do"
    return step


async def test_everything_passes_and_nothing_keeps_serving(tmp_path: Path) -> None:
    async with gateway_env(tmp_path) as env, http_endpoint() as ep:
        port = free_port()
        options = env.options(f"R:{port}:127.0.0.1:{ep.port}")
        seen: list[str] = []
        report = await diagnose(options, FAST, on_step=lambda r: seen.append(r.name))
        assert report.ok, report.to_json()
        assert names(report) == [*CHAIN, f"endpoint:{port}"]
        assert seen == names(report), "each step is reported as it completes"
        doc = json.loads(json.dumps(report.to_json()))
        assert set(doc) == {"command", "target", "ok", "steps", "not_run"}
        for step in doc["steps"]:
            assert set(step) == {"name", "ok", "ms", "detail", "fix"}
            assert step["ms"] >= 0
        ssh = report.step("ssh")
        assert ssh is not None
        assert env.gateway.host_key.fingerprint in ssh.detail
        assert env.token not in json.dumps(doc)
        # Connected, checked, disconnected: no tunnel, no listener left behind.
        await wait_until(lambda: not env.gateway.tunnels, what="tunnel gone")
        assert not env.gateway.ports.open
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)


async def test_unresolvable_gateway_host(tmp_path: Path) -> None:
    options = ConnectOptions(
        address=f"http://gateway.nonexistent.invalid/{new_address_id()}",
        remotes=tuple(decode_remotes(["R:8081:127.0.0.1:1"])),
    )
    report = await diagnose(options, FAST)
    assert failed(report)[0] == "dns"
    dns = report.step("dns")
    assert dns is not None
    assert "cannot resolve 'gateway.nonexistent.invalid'" in dns.detail
    assert report.not_run == CHAIN[1:]
    # The private side is still checked.
    assert names(report)[-1] == "endpoint:8081"


async def test_closed_gateway_port() -> None:
    port = closed_port()
    options = ConnectOptions(
        address=f"http://127.0.0.1:{port}/{new_address_id()}",
        remotes=tuple(decode_remotes([f"R:{free_port()}:127.0.0.1:1"])),
    )
    report = await diagnose(options, FAST)
    tcp = report.step("tcp")
    assert tcp is not None
    assert not tcp.ok
    assert "refused the connection" in tcp.detail
    assert report.not_run == CHAIN[2:]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong", "does not accept this token"),
        ("missing", "no token was sent"),
        ("renewed", "renewed in the portal"),
        ("inactive", "inactive"),
    ],
)
async def test_token_verdicts(tmp_path: Path, case: str, expected: str) -> None:
    old = new_token()
    async with gateway_env(tmp_path, stage={"renewed_hashes": (hash_token(old),)}) as env:
        token = {"wrong": new_token(), "missing": "", "renewed": old, "inactive": None}[case]
        if case == "inactive":
            env.source.update(env.stage.address_id, active=False)
        report = await diagnose(env.options(f"R:{free_port()}:127.0.0.1:1", token=token), FAST)
        upgrade = report.step("upgrade")
        assert upgrade is not None
        assert upgrade.ok, "the gateway itself answered the upgrade"
        token_step = only_failure_of_chain(report, "token")
        assert expected in token_step.detail
        assert report.not_run == ["ssh", "config"]
        secrets = [env.token, old, str(token)]
        text = json.dumps(report.to_json())
        assert not any(s in text for s in secrets if s and s != "None")


def only_failure_of_chain(report: Report, name: str) -> Any:
    chain_failures = [n for n in failed(report) if not n.startswith("endpoint:")]
    assert chain_failures == [name], report.to_json()
    step = report.step(name)
    assert step is not None
    assert step.fix
    return step


async def test_unknown_address_is_named_at_the_address_get(tmp_path: Path) -> None:
    async with gateway_env(tmp_path) as env:
        options = env.options(
            "R:8081:127.0.0.1:1", address=f"http://127.0.0.1:{env.port}/{new_address_id()}"
        )
        report = await diagnose(options, FAST)
        step = only_failure_of_chain(report, "address")
        assert "does not know the address" in step.detail


async def _html_everywhere(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    body = b"<!DOCTYPE html><html><head><title>Corporate Web Gateway</title></head></html>"
    writer.write(
        b"HTTP/1.1 200 OK\r\nServer: FancyProxy\r\nContent-Type: text/html\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()


async def test_proxy_that_strips_the_upgrade() -> None:
    async with raw_server(_html_everywhere) as port:
        options = ConnectOptions(
            address=f"http://127.0.0.1:{port}/{new_address_id()}",
            remotes=tuple(decode_remotes([f"R:{free_port()}:127.0.0.1:1"])),
            headers=(("token", "x"),),
        )
        report = await diagnose(options, FAST)
    step = only_failure_of_chain(report, "upgrade")
    assert "instead of 101" in step.detail
    assert "Corporate Web Gateway" in step.detail
    assert "Upgrade" in step.detail


async def _websocket_then_smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    match = re.search(rb"(?i)sec-websocket-key:\s*(\S+)", head)
    if match is None:  # the address GET
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return
    accept = base64.b64encode(
        hashlib.sha1(match.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    )
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    payload = b"220 mail.example ESMTP ready\r\n"
    writer.write(bytes([0x82, len(payload)]) + payload)
    await writer.drain()
    await reader.read(65536)


async def test_not_ssh_after_the_upgrade() -> None:
    async with raw_server(_websocket_then_smtp) as port:
        options = ConnectOptions(
            address=f"http://127.0.0.1:{port}/{new_address_id()}",
            remotes=tuple(decode_remotes([f"R:{free_port()}:127.0.0.1:1"])),
        )
        report = await diagnose(options, FAST)
    address = report.step("address")
    assert address is not None
    assert address.ok, "a 404 from a non-qanat server is what stock chisel answers"
    step = only_failure_of_chain(report, "ssh")
    assert "does not speak chisel's SSH" in step.detail


async def test_refused_remotes(tmp_path: Path) -> None:
    async with gateway_env(tmp_path, stage={"port_min": 20000, "port_max": 20010}) as env:
        report = await diagnose(env.options("R:30001:127.0.0.1:1"), FAST)
        step = only_failure_of_chain(report, "config")
        assert "outside this stage's range" in step.detail
        assert "range" in step.fix
        await wait_until(lambda: not env.gateway.tunnels, what="tunnel gone")


async def test_fingerprint_mismatch_and_match(tmp_path: Path) -> None:
    async with gateway_env(tmp_path) as env:
        wrong = base64.b64encode(b"\0" * 32).decode()
        report = await diagnose(env.options("R:20001:127.0.0.1:1", fingerprint=wrong), FAST)
        step = only_failure_of_chain(report, "ssh")
        assert "does not match --fingerprint" in step.detail
        right = env.gateway.host_key.fingerprint
        report = await diagnose(env.options("R:20001:127.0.0.1:1", fingerprint=right), FAST)
        ssh = report.step("ssh")
        assert ssh is not None
        assert ssh.ok
        assert "matches --fingerprint" in ssh.detail


async def test_unreachable_endpoints_are_named(tmp_path: Path) -> None:
    async with gateway_env(tmp_path) as env, http_endpoint() as ep:
        good, refused, unknown = free_port(), free_port(), free_port()
        options = env.options(
            f"R:{good}:127.0.0.1:{ep.port}",
            f"R:{refused}:127.0.0.1:{closed_port()}",
            f"R:{unknown}:db.nonexistent.invalid:5432",
        )
        report = await diagnose(options, FAST)
        assert failed(report) == [f"endpoint:{refused}", f"endpoint:{unknown}"]
        refused_step = report.step(f"endpoint:{refused}")
        unknown_step = report.step(f"endpoint:{unknown}")
        assert refused_step is not None
        assert unknown_step is not None
        assert "refused the connection" in refused_step.detail
        assert "cannot resolve 'db.nonexistent.invalid'" in unknown_step.detail
        assert "private side" in unknown_step.detail


# -- TLS -----------------------------------------------------------------------


async def test_tls_passes_with_the_ca_and_names_untrusted_mismatch_expired(
    tmp_path: Path,
) -> None:
    good = make_tls(tmp_path, "localhost")
    other = make_tls(tmp_path, "other.example")
    old = make_tls(tmp_path, "localhost", expired=True, tag="expired")
    cases = [
        (good, str(good.ca), None),
        (good, None, "does not lead to a CA trusted"),
        (other, str(other.ca), "not valid for 'localhost'"),
        (old, str(old.ca), "has expired"),
    ]
    for files, ca, expected in cases:
        async with gateway_env(tmp_path, ssl_context=files.server_context()) as env:
            options = env.options(
                "R:20002:127.0.0.1:1",
                address=f"https://localhost:{env.port}/{env.stage.address_id}",
                tls_ca=ca,
            )
            report = await diagnose(options, FAST)
            tls = report.step("tls")
            assert tls is not None, report.to_json()
            if expected is None:
                assert [n for n in failed(report) if not n.startswith("endpoint")] == []
                assert "chain verified" in tls.detail
                assert "CN=localhost" in tls.detail
            else:
                assert not tls.ok
                assert expected in tls.detail, tls.detail
                assert tls.fix


# -- UDP endpoint probes --------------------------------------------------------------


async def test_udp_endpoint_probe() -> None:
    from qanat.ops.endpoints import check_endpoint

    loop = asyncio.get_running_loop()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.transport.sendto(b"pong:" + data, addr)

    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        (remote,) = decode_remotes([f"R:8053:127.0.0.1:{port}/udp"])
        quiet = await check_endpoint(remote, 2.0)
        assert quiet.ok
        assert "not probed" in quiet.detail
        answered = await check_endpoint(remote, 2.0, udp_probe=b"ping")
        assert answered.ok
        assert "UDP answer of 9 bytes" in answered.detail
    finally:
        transport.close()
    (closed,) = decode_remotes([f"R:8054:127.0.0.1:{closed_port()}/udp"])
    refused = await check_endpoint(closed, 2.0, udp_probe=b"ping", udp_wait_s=scaled(2.0))
    assert not refused.ok
    assert "port unreachable" in refused.detail
    assert refused.name == "endpoint:8054/udp"


# -- the command line ------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Any:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    levels = {n: logging.getLogger(n).level for n in ("qanat", "asyncssh", "websockets")}
    yield
    root.handlers[:], root.level = saved
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_cli_json_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from opstools import background_loop

    with background_loop() as loop:
        manager = gateway_env(tmp_path)
        env = call(loop, manager.__aenter__())
        try:
            endpoint_cm = http_endpoint()
            ep = call(loop, endpoint_cm.__aenter__())
            base = [
                "diagnose",
                "--json",
                "--timeout",
                "3s",
                "--header",
                f"token: {env.token}",
                env.address,
                f"R:{free_port()}:127.0.0.1:{ep.port}",
            ]
            assert cli.main(base) == 0
            doc = json.loads(capsys.readouterr().out)
            assert doc["ok"] is True
            assert [s["name"] for s in doc["steps"]][: len(CHAIN)] == CHAIN

            bad = list(base)
            bad[bad.index(f"token: {env.token}")] = "token: nope"
            assert cli.main(bad) == 1
            out = capsys.readouterr().out
            doc = json.loads(out)
            assert doc["ok"] is False
            assert [s["name"] for s in doc["steps"] if not s["ok"]] == ["token"]
            assert env.token not in out

            human = [a for a in base if a != "--json"]
            assert cli.main([*human[:1], "--color", "never", *human[1:]]) == 0
            out = capsys.readouterr().out
            assert "PASS  token" in out
            assert "\033[" not in out
            call(loop, endpoint_cm.__aexit__(None, None, None))
        finally:
            call(loop, manager.__aexit__(None, None, None))


async def test_proxy_is_the_first_hop(tmp_path: Path) -> None:
    remotes = tuple(decode_remotes([f"R:{free_port()}:127.0.0.1:1"]))
    address = f"https://gateway.nonexistent.invalid/{new_address_id()}"
    closed = ConnectOptions(
        address=address,
        remotes=remotes,
        proxy=parse_proxy_url(f"http://user:secret@127.0.0.1:{closed_port()}"),
    )
    report = await diagnose(closed, FAST)
    tcp = report.step("tcp")
    assert tcp is not None
    assert not tcp.ok
    assert "the proxy" in tcp.fix
    assert "secret" not in json.dumps(report.to_json())

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)

    async with raw_server(silent) as port:
        listening = ConnectOptions(
            address=address, remotes=remotes, proxy=parse_proxy_url(f"127.0.0.1:{port}")
        )
        report = await diagnose(listening, FAST)
    assert "closed the connection without answering CONNECT" in (
        only_failure_of_chain(report, "proxy").detail
    )
    assert report.not_run == ["tls", "address", "upgrade", "token", "ssh", "config"]


async def test_redirect_is_reported(tmp_path: Path) -> None:
    async with gateway_env(tmp_path, redirect_url="https://node2.example.com") as env:
        report = await diagnose(env.options(f"R:{free_port()}:127.0.0.1:1"), FAST)
        address = report.step("address")
        assert address is not None
        assert address.ok
        assert f"302 Found to https://node2.example.com/{env.stage.address_id}" in address.detail
        assert "qanat connect" in address.detail


async def test_address_get_does_not_wait_on_a_kept_alive_connection() -> None:
    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\nServer: nginx\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()  # and keep the connection open

    async with raw_server(keep_alive) as port:
        options = ConnectOptions(
            address=f"http://127.0.0.1:{port}/{new_address_id()}",
            remotes=tuple(decode_remotes([f"R:{free_port()}:127.0.0.1:1"])),
        )
        report = await diagnose(options, DiagnoseSettings(step_timeout_s=scaled(5.0)))
    address = report.step("address")
    assert address is not None
    assert address.ok, address.detail
    assert "204 No Content from nginx" in address.detail
    assert address.ms < scaled(2.5) * 1e3, "well under the step timeout"
