"""UDP endpoints share the TCP endpoints' machinery (issue 12).

- Two connectors declaring the same UDP port at the same moment are both
  admitted to one pool (before: the second got "Address already in use").
- ``/metrics`` answers while a UDP endpoint is live (before: the collector
  raised ``int('8053/udp')`` and the scrape hung).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from qanat.connector.egress import Egress
from qanat.connector.session import Session, Stats
from support.servers import free_port, http_exchange, parse_response
from support.tunnels import connect_options, running_gateway, serving_connector


async def test_two_connectors_declaring_one_udp_port_at_once_are_both_admitted(
    tmp_path: Path,
) -> None:
    async with running_gateway(tmp_path) as env:
        for attempt in range(5):
            port = free_port()
            sessions = [
                Session(options, str(n), Stats(), Egress(options))
                for n, options in enumerate(
                    connect_options(
                        env, [f"R:{port}:127.0.0.1:53/udp", f"R:{free_port()}:127.0.0.1:9"]
                    )
                    for _ in range(2)
                )
            ]
            try:
                results = await asyncio.gather(
                    *(s.connect() for s in sessions), return_exceptions=True
                )
                assert not [r for r in results if isinstance(r, BaseException)], (attempt, results)
                (endpoint,) = [
                    e
                    for e in env.gateway.ports.open.values()
                    if e.port == port and e.proto == "udp"
                ]
                assert len(endpoint.pool) == 2, attempt
            finally:
                for session in sessions:
                    await session.close()


async def test_metrics_answer_with_a_udp_endpoint_live(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as env:
        port = free_port()
        remotes = [f"R:{port}:127.0.0.1:53/udp", f"R:{free_port()}:127.0.0.1:9"]
        async with serving_connector(env, remotes):
            raw = await asyncio.wait_for(
                http_exchange(env.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), 10
            )
            status, _, body = parse_response(raw)
            assert status == 200, body
            text = body.decode()
            line = f'qanat_gateway_endpoint_tunnels{{port="{port}/udp",stage="acme/dev"}} 1.0'
            assert line in text, text
