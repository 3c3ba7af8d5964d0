"""qanat probe: the app side's explanations of refused, reset and closed connections."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from opstools import closed_port, connector, free_port, gateway_env, http_endpoint, raw_server

from qanat import cli
from qanat.errors import ConfigError
from qanat.ops.probe import ProbeSettings, parse_target, probe
from qanat.ops.report import Report

FAST = ProbeSettings(timeout_s=3.0, watch_s=0.5)


def failure(report: Report) -> Any:
    bad = [s for s in report.steps if not s.ok]
    assert len(bad) == 1, report.to_json()
    assert bad[0].fix
    return bad[0]


def test_parse_target() -> None:
    assert parse_target("secure-gateway:8081") == ("secure-gateway", 8081)
    assert parse_target("8081") == ("secure-gateway", 8081)
    assert parse_target("[::1]:80") == ("::1", 80)
    for bad in ("secure-gateway", ":80", "host:0", "host:99999", "host:http"):
        with pytest.raises(ConfigError):
            parse_target(bad)


async def test_name_not_resolvable() -> None:
    report = await probe("secure-gateway.nonexistent.invalid", 8081, FAST)
    step = failure(report)
    assert step.name == "resolve"
    assert "does not resolve from this host" in step.detail
    assert "/etc/hosts" in step.fix
    assert report.not_run == ["connect", "watch"]


async def test_refused_when_no_connector_serves_the_port() -> None:
    report = await probe("127.0.0.1", closed_port(), FAST)
    step = failure(report)
    assert step.name == "connect"
    assert "no connector serves port" in step.detail


async def test_http_round_trip_through_the_tunnel(tmp_path: Path) -> None:
    async with gateway_env(tmp_path) as env, http_endpoint() as ep:
        port = free_port()
        async with connector(env.options(f"R:{port}:127.0.0.1:{ep.port}"), port):
            report = await probe("127.0.0.1", port, ProbeSettings(timeout_s=3.0, http_path="/x"))
            assert report.ok, report.to_json()
            http = report.step("http")
            assert http is not None
            assert http.detail.startswith("HTTP/1.1 200 OK")
            assert "first byte after" in http.detail
            assert ep.requests[0].startswith(b"GET /x HTTP/1.1")
            watch = await probe("127.0.0.1", port, FAST)
            assert watch.ok, watch.to_json()
            assert "waits for the client" in (watch.step("watch") or failure(watch)).detail


async def test_banner_endpoint_speaks_first() -> None:
    # Directly, not through a tunnel: probe works against any HOST:PORT.
    async def smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mail.example ESMTP\r\n")
        await writer.drain()
        await reader.read(100)
        writer.write(b"250 hello\r\n")
        await writer.drain()

    async with raw_server(smtp) as port:
        report = await probe("127.0.0.1", port, FAST)
        watch = report.step("watch")
        assert watch is not None
        assert watch.ok
        assert "spoke first" in watch.detail
        assert "220 mail.example ESMTP" in watch.detail
        sent = await probe("127.0.0.1", port, ProbeSettings(timeout_s=3.0, send=b"EHLO probe\r\n"))
        assert sent.ok, sent.to_json()


@pytest.mark.parametrize("mode", ["watch", "http"])
async def test_reset_by_the_stage_allowlist(tmp_path: Path, mode: str) -> None:
    async with (
        gateway_env(tmp_path, stage={"allow_cidrs": ("10.0.0.0/8",)}) as env,
        http_endpoint() as ep,
    ):
        port = free_port()
        async with connector(env.options(f"R:{port}:127.0.0.1:{ep.port}"), None):
            await _wait_listening(env, port)
            settings = ProbeSettings(
                timeout_s=3.0, watch_s=1.0, http_path="/" if mode == "http" else None
            )
            report = await probe("127.0.0.1", port, settings)
            step = failure(report)
            assert step.name == mode
            assert "reset the connection" in step.detail
            assert "allowlist" in step.detail
            assert not ep.requests
            (entry,) = env.gateway.status().stages["acme/Development"].endpoints
            assert entry.recent_failures[-1].kind == "allowlist"


async def _wait_listening(env: Any, port: int) -> None:
    from opstools import wait_until

    await wait_until(
        lambda: any(e.port == port for e in env.gateway.ports.open.values()),
        what=f"gateway listening on {port}",
    )


@pytest.mark.parametrize("mode", ["watch", "http"])
async def test_closed_without_data_when_the_connector_cannot_reach_the_endpoint(
    tmp_path: Path, mode: str
) -> None:
    async with gateway_env(tmp_path) as env:
        port, dead = free_port(), closed_port()
        async with connector(env.options(f"R:{port}:127.0.0.1:{dead}"), port):
            # The connector's check of the port above was itself one failed channel.
            settings = ProbeSettings(
                timeout_s=3.0, watch_s=2.0, http_path="/" if mode == "http" else None
            )
            report = await probe("127.0.0.1", port, settings)
            step = failure(report)
            assert step.name == mode
            assert "closed the connection without data" in step.detail
            assert "qanat diagnose" in step.fix
            (entry,) = env.gateway.status().stages["acme/Development"].endpoints
            last = entry.recent_failures[-1]
            assert last.kind == "channel"
            assert f"127.0.0.1:{dead}" in last.reason
            assert "refused" in last.reason.lower()


@pytest.fixture
def restore_logging() -> Any:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:], root.level = saved


@pytest.mark.usefixtures("restore_logging")
def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    assert cli.main(["probe", "--json", f"127.0.0.1:{port}"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["command"] == "probe"
    assert [(s["name"], s["ok"]) for s in doc["steps"]] == [("resolve", True), ("connect", False)]
    assert doc["not_run"] == ["watch"]
    assert cli.main(["probe", "secure-gateway"]) == 2
