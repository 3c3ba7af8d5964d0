"""/metrics, /healthz and /readyz on the gateway and the connector; the status data behind them."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from opstools import (
    connector,
    free_port,
    gateway_env,
    http_endpoint,
    http_request,
    http_through,
    relay,
    scaled,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families

from qanat.connector.runner import Connector
from qanat.gateway.failures import RecentFailures
from qanat.ops.commands import connector_metrics
from qanat.ops.diagnose import DiagnoseSettings, diagnose

STAGE = "acme/Development"


def parse(body: bytes) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted label items: value}}."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def value(samples: Any, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


async def scrape(port: int) -> Any:
    status, headers, body = await http_request(port, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(body)


async def test_gateway_metrics_follow_traffic(tmp_path: Path) -> None:
    async with (
        gateway_env(tmp_path, keepalive_s=0.05) as env,
        http_endpoint(b"x" * 1000) as ep,
    ):
        before = await scrape(env.port)
        port = free_port()
        labels = {"stage": STAGE, "port": str(port)}
        async with connector(env.options(f"R:{port}:127.0.0.1:{ep.port}"), port) as running:
            sent = received = 0
            for _ in range(5):
                up, down = await http_through(port, "/metrics-test")
                sent, received = sent + up, received + down
            # A wrong token, for the token failure counter.
            bad = await diagnose(
                env.options("R:20009:127.0.0.1:1", token="wrong"), DiagnoseSettings(3.0)
            )
            assert next(s.name for s in bad.steps if not s.ok) == "token"
            await wait_until(
                lambda: all(
                    t.last_rtt_s is not None and not t.splices for t in env.gateway.tunnels.values()
                ),
                what="a keepalive round trip and all channels done",
            )
            after = await scrape(env.port)

            assert value(after, "qanat_build_info", role="gateway", version="0.1.0") == 1
            assert value(after, "qanat_gateway_stage_active", stage=STAGE) == 1
            assert value(after, "qanat_gateway_tunnels", stage=STAGE, state="active") == 1
            assert value(after, "qanat_gateway_connectors", stage=STAGE) == 1
            assert value(after, "qanat_gateway_endpoint_tunnels", **labels) == 1
            # 5 apps plus the one connection the harness made to see the port open
            assert value(after, "qanat_gateway_app_connections_total", **labels) == 6
            assert value(after, "qanat_gateway_app_connections_failed_total", **labels) == 0
            assert value(after, "qanat_gateway_app_connections_open", **labels) == 0
            hist = "qanat_gateway_channel_open_seconds_count"
            assert value(after, hist, **labels) - value(before, hist, **labels) == 6
            assert (
                value(after, "qanat_gateway_channel_open_seconds_bucket", le="+Inf", **labels) == 6
            )
            up = value(after, "qanat_gateway_bytes_total", stage=STAGE, direction="to_endpoint")
            down = value(after, "qanat_gateway_bytes_total", stage=STAGE, direction="to_app")
            assert up == sent
            assert down == received
            failures = "qanat_gateway_token_failures_total"
            assert value(after, failures, reason="bad") - value(before, failures, reason="bad") == 1
            (rtt,) = after["qanat_gateway_keepalive_rtt_seconds"].items()
            # Named by the connector's identity (its --id, here derived), not its
            # per-process session id.
            (tunnel,) = env.gateway.tunnels.values()
            assert dict(rtt[0])["connector"] == tunnel.identity != running.connector.client_id
            assert 0 < rtt[1] < 1

            # Conventions: our names are prefixed and counters end in _total.
            body = (await http_request(env.port, "/metrics"))[2].decode()
            for family in text_string_to_metric_families(body):
                if family.name.startswith(("process_", "python_")):
                    continue
                assert family.name.startswith("qanat_"), family.name
                if family.type == "counter":
                    assert all(s.name.endswith("_total") for s in family.samples), family.name

            status = env.gateway.status().stages[STAGE]
            (conn,) = status.connectors
            assert conn.bytes_to_endpoint == sent
            assert conn.bytes_to_app == received
            assert conn.keepalive_rtt_ms is not None
            (endpoint,) = status.endpoints
            assert endpoint.port == port
            assert endpoint.recent_failures == ()

        # The connector left: its bytes stay in the stage's counter.
        await wait_until(lambda: not env.gateway.tunnels, what="tunnel closed")
        gone = await scrape(env.port)
        assert value(gone, "qanat_gateway_tunnels", stage=STAGE, state="active") == 0
        assert value(gone, "qanat_gateway_bytes_total", stage=STAGE, direction="to_endpoint") == up


async def test_health_and_readiness(tmp_path: Path) -> None:
    async with gateway_env(tmp_path, metrics_allow_cidrs=("10.0.0.0/8",)) as env:
        status, _, body = await http_request(env.port, "/healthz")
        assert (status, body) == (200, b"ok\n")
        status, _, body = await http_request(env.port, "/readyz?verbose=1")
        assert status == 200
        assert body == b"listener: ok\nstages: ok\n"
        status, headers, body = await http_request(env.port, "/healthz", method="HEAD")
        assert (status, headers["content-length"], body) == (200, "3", b"")
        assert (await http_request(env.port, "/readyz", method="POST"))[0] == 405
        # Not from an allowed source: no metrics, but health stays open.
        status, _, body = await http_request(env.port, "/metrics")
        assert status == 403

        async def database() -> str | None:
            return "cannot reach postgresql://db:5432"

        async def slow() -> str | None:
            await asyncio.sleep(10)
            return None

        env.gateway.health.check_timeout_s = 0.2
        env.gateway.health.add_check("database", database)
        env.gateway.health.add_check("slow", slow)
        status, _, body = await http_request(env.port, "/readyz")
        assert status == 503
        assert b"database: cannot reach postgresql://db:5432\n" in body
        assert b"slow: no answer within 0.2s\n" in body
        assert (await http_request(env.port, "/healthz"))[0] == 200


async def test_connector_metrics_and_reconnects(tmp_path: Path) -> None:
    async with gateway_env(tmp_path) as env, http_endpoint() as ep:
        port, metrics_port = free_port(), free_port()
        options = env.options(f"R:{port}:127.0.0.1:{ep.port}")
        conn = Connector(options)
        async with connector_metrics(f"127.0.0.1:{metrics_port}", conn):
            status, _, body = await http_request(metrics_port, "/readyz")
            assert (status, body) == (503, b"tunnel: no tunnel to the gateway\n")
            task = asyncio.get_running_loop().create_task(conn.run())
            try:
                await wait_until(lambda: conn.stats.connected_since is not None, what="connected")
                for _ in range(3):
                    await http_through(port)
                await wait_until(lambda: not conn.session or not conn.session.splices)
                assert (await http_request(metrics_port, "/readyz"))[0] == 200
                samples = await scrape(metrics_port)
                assert value(samples, "qanat_build_info", role="connector", version="0.1.0") == 1
                assert value(samples, "qanat_connector_up") == 1
                assert value(samples, "qanat_connector_channels_total") == 3
                assert value(samples, "qanat_connector_channels_open") == 0
                assert value(samples, "qanat_connector_reconnects_total") == 0
                assert value(samples, "qanat_connector_bytes_total", direction="to_app") > 0
                assert value(samples, "qanat_connector_bytes_total", direction="to_endpoint") > 0

                # The gateway drops the tunnel; the connector comes back by itself.
                env.gateway.close_stage(env.stage.key, "test")
                await wait_until(lambda: conn.stats.sessions == 2, what="reconnected")
                samples = await scrape(metrics_port)
                assert value(samples, "qanat_connector_reconnects_total") == 1
                assert value(samples, "qanat_connector_sessions_total") == 2
            finally:
                conn.stop_event.set()
                async with asyncio.timeout(scaled(5.0)):
                    await task
        with pytest.raises(ConnectionRefusedError):
            await http_request(metrics_port, "/healthz")


async def test_dead_peer_removal_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qanat")
    settings = {"keepalive_s": 0.05, "keepalive_timeout_s": 0.1, "keepalive_misses": 2}
    async with gateway_env(tmp_path, **settings) as env, relay(env.port) as link:
        body = (await http_request(env.port, "/metrics"))[2]
        start = value(parse(body), "qanat_gateway_dead_peer_removals_total", stage=STAGE)
        port = free_port()
        options = env.options(
            f"R:{port}:127.0.0.1:1", address=f"http://127.0.0.1:{link.port}/{env.stage.address_id}"
        )
        async with connector(options, None):
            await wait_until(lambda: bool(env.gateway.tunnels), what="tunnel up")
            (tunnel,) = env.gateway.tunnels.values()
            await wait_until(lambda: tunnel.last_rtt_s is not None, what="first keepalive")
            link.frozen.set()  # the connector goes silent
            await wait_until(lambda: not env.gateway.tunnels, what="dead peer removed")
            body = (await http_request(env.port, "/metrics"))[2]
            removed = value(parse(body), "qanat_gateway_dead_peer_removals_total", stage=STAGE)
            assert removed - start == 1
    assert any("dead peer" in r.getMessage() for r in caplog.records)


def test_recent_failures_fold_repeats_and_stay_bounded() -> None:
    ring = RecentFailures(size=3)
    for _ in range(50):
        ring.add("allowlist", "10.1.2.3", "source not in the stage allowlist")
    (only,) = ring.snapshot()
    assert only.count == 50
    for i in range(5):
        ring.add("channel", f"10.0.0.{i}", "tunnel 1: dial 10.9.9.9:80: connection refused")
    snapshot = ring.snapshot()
    assert len(snapshot) == 3
    assert [s.source for s in snapshot] == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    ring.add("channel", "x", "r" * 10_000)
    assert len(ring.snapshot()[-1].reason) == 500


async def test_grafana_dashboard_uses_only_exported_metrics(tmp_path: Path) -> None:
    import json
    import re

    from qanat.connector.metrics import connector_exposition

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    exported: set[str] = set()
    async with gateway_env(tmp_path) as env:
        conn = Connector(env.options("R:20003:127.0.0.1:1"))
        conn.stats.last_rtt_s = 0.001
        conn.stats.connected_since = 1.0
        for exposition in (env.gateway.exposition, connector_exposition(conn)):
            for family in text_string_to_metric_families(exposition.render()[0].decode()):
                exported.update(family.name + s for s in suffixes.get(family.type, ("",)))
    dashboard = json.loads((Path(__file__).parents[2] / "docs/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bqanat_[a-z_]+", expr)}
    assert used, "the dashboard queries qanat metrics"
    assert used <= exported, sorted(used - exported)
