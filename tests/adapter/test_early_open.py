"""Early open: the connector confirms a channel before its dial, and a qanat
gateway takes a failed dial back.

A qanat gateway offers ``early-open`` in its 101 answer; a qanat connector
then confirms each TCP channel at once (the confirmation marked) and dials
meanwhile, so the app's first bytes travel while the endpoint connection is
being made. When that dial fails, the connector says so (``dial-failed@qanat``)
before closing the channel, and the gateway gives the app connection, with
everything it sent, to the next connector, as it does for a refused open.

- A connector whose endpoint is down loses no app connection while another
  connector serves the port.
- A dial that fails only after the app sent more than the gateway keeps
  (EARLY_BYTES) ends that app connection; a smaller one is handed on.
- A dial-failed notice on a channel that was not confirmed early, or after
  the endpoint answered, changes nothing.
- An app that leaves during the dial: the endpoint connection made after it
  is closed, nothing is left open on either side.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from qanat.connector import dialer as dialer_module
from qanat.gateway.ports import EARLY_BYTES
from support.servers import echo_server, free_port, roundtrip
from support.timing import eventually, scaled
from support.tunnels import running_gateway, serving_connector


@contextmanager
def blackhole() -> Iterator[int]:
    """A loopback port whose accept queue is full: a dial to it hangs
    (the kernel drops the SYN) until the dialler gives up."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        yield listener.getsockname()[1]


def closed_port() -> int:
    return free_port()  # nothing listens: the dial is refused at once


async def test_a_connector_whose_endpoint_is_down_loses_no_app_connection(tmp_path):
    async with (
        running_gateway(tmp_path, allow_target_mismatch=True) as env,
        echo_server() as echo,
    ):
        port = free_port()
        async with (
            serving_connector(env, [f"R:{port}:127.0.0.1:{closed_port()}"]) as down,
            serving_connector(env, [f"R:{port}:127.0.0.1:{echo}"]) as up,
        ):
            await eventually(lambda: len(env.active_tunnels()) == 2, "both connectors serving", 10)
            payloads = [os.urandom(1000 + i) for i in range(16)]
            for payload in payloads:
                assert await roundtrip(port, payload) == payload
            # The down connector was tried, confirmed early, and gave back.
            assert down.stats.channels_early >= 1
            assert down.stats.channels_refused == down.stats.channels_early
            assert up.stats.channels_early >= 16  # (a hedge may add one)
            (endpoint,) = env.gateway.ports.open.values()
            assert endpoint.connections_failed == 0


async def test_a_dial_that_fails_late_hands_on_what_the_gateway_kept(tmp_path):
    async with (
        running_gateway(tmp_path, allow_target_mismatch=True) as env,
        echo_server() as echo,
    ):
        port = free_port()
        with blackhole() as hole:
            async with serving_connector(
                env, [f"R:{port}:127.0.0.1:{hole}"], dial_timeout_s=scaled(3)
            ) as slow:
                await eventually(lambda: env.serves(port), "the slow connector serving", 10)
                # The only connector: the app's bytes wait in a channel whose
                # dial hangs. Then a second connector comes.
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                small = os.urandom(EARLY_BYTES // 2)
                writer.write(small)
                big_reader, big_writer = await asyncio.open_connection("127.0.0.1", port)
                big = os.urandom(EARLY_BYTES * 2)
                big_writer.write(big)
                await eventually(lambda: slow.stats.channels_early == 2, "two early opens", 10)
                async with serving_connector(env, [f"R:{port}:127.0.0.1:{echo}"]):
                    await eventually(
                        lambda: len(env.active_tunnels()) == 2, "the second connector", 10
                    )
                    assert slow.stats.channels_refused == 0  # still dialling
                    async with asyncio.timeout(scaled(20)):
                        # Handed on once the dial failed: echoed whole.
                        assert await reader.readexactly(len(small)) == small
                        # More than was kept had gone into the failed channel:
                        # that app connection ends (reset), with nothing echoed.
                        try:
                            rest = await big_reader.read()
                        except ConnectionResetError:
                            rest = b""
                        assert rest == b""
                writer.close()
                big_writer.close()
                assert slow.stats.channels_refused == 2
                (endpoint,) = env.gateway.ports.open.values()
                assert endpoint.connections_failed == 0


async def test_a_dial_failed_notice_after_the_endpoint_answered_changes_nothing(
    tmp_path, monkeypatch
):
    async with running_gateway(tmp_path) as env, echo_server() as echo:
        port = free_port()
        async with serving_connector(env, [f"R:{port}:127.0.0.1:{echo}"]) as connector:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"first")
            async with asyncio.timeout(scaled(10)):
                assert await reader.readexactly(5) == b"first"
                # A connector that (wrongly, or hostile) reports a failed dial
                # now: the channel already carried the endpoint's answer.
                session = connector.session
                assert session is not None
                assert session.tunnel is not None
                proto: Any = session.tunnel._proto  # the connector's SSH side
                (chan_id,) = list(proto.channels)
                proto.conn.send_channel_request(chan_id, "dial-failed@qanat", b"\0\0\0\2no")
                proto.flush_now()
                writer.write(b"second")
                assert await reader.readexactly(6) == b"second"
            writer.close()
            assert env.gateway.ports.open  # still serving
            (endpoint,) = env.gateway.ports.open.values()
            assert endpoint.connections_failed == 0


async def test_an_app_that_leaves_during_the_dial_leaves_nothing_open(tmp_path, monkeypatch):
    events: list[str] = []

    async def endpoint(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        events.append("accepted")
        data = await reader.read()
        events.append(f"closed after {len(data)} bytes")
        writer.close()

    server = await asyncio.start_server(endpoint, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[1]
    real_start = dialer_module.Dialer.start

    def slow_start(self: Any, splice: Any, where: str) -> asyncio.Future[None]:
        # The dial begins 0.3 s late: time for the app to leave.
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[None] = loop.create_future()

        def begin() -> None:
            real_start(self, splice, where).add_done_callback(
                lambda done: (
                    outcome.set_exception(exc)
                    if (exc := done.exception()) is not None
                    else outcome.set_result(None)
                )
            )

        loop.call_later(0.3, begin)
        return outcome

    monkeypatch.setattr(dialer_module.Dialer, "start", slow_start)
    try:
        async with running_gateway(tmp_path) as env:
            port = free_port()
            async with serving_connector(env, [f"R:{port}:127.0.0.1:{target}"]) as connector:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"bye")
                await eventually(lambda: connector.stats.channels_early == 1, "an early open", 10)
                # The app is gone (RST, not a half-close) while the dial runs.
                app = writer.get_extra_info("socket")
                app.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.close()
                await eventually(
                    lambda: events == ["accepted", "closed after 0 bytes"], "endpoint closed", 10
                )
                session = connector.session
                assert session is not None
                await eventually(lambda: not session.splices, "connector splices gone", 10)
                (state,) = env.gateway.ports.open.values()
                await eventually(lambda: state.open_connections == 0, "gateway settled", 10)
    finally:
        server.close()


async def test_an_early_confirmed_channel_that_stays_silent_is_handed_on_before_any_byte(tmp_path):
    # The first connector confirms and then its dial hangs (as if it froze):
    # while the app has sent nothing, the endpoint cannot have anything, and
    # after the hedge bound (at most 1 s) another connector takes the app.
    async with (
        running_gateway(tmp_path, allow_target_mismatch=True) as env,
        echo_server() as echo,
    ):
        port = free_port()
        with blackhole() as hole:
            async with serving_connector(
                env, [f"R:{port}:127.0.0.1:{hole}"], dial_timeout_s=scaled(60)
            ) as silent:
                await eventually(lambda: env.serves(port), "the silent connector serving", 10)
                async with serving_connector(env, [f"R:{port}:127.0.0.1:{echo}"]) as up:
                    await eventually(
                        lambda: len(env.active_tunnels()) == 2, "the second connector", 10
                    )
                    # Round robin: within two app connections one goes to
                    # the silent connector first.
                    for _ in range(2):
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                        await eventually(
                            lambda: up.stats.channels_early + silent.stats.channels_early >= 1,
                            "an open",
                            10,
                        )
                        async with asyncio.timeout(scaled(20)):
                            await eventually(
                                lambda: up.stats.channels_open == 1, "carried by the echo", 10
                            )
                            writer.write(b"hello")
                            assert await reader.readexactly(5) == b"hello"
                        writer.close()
                        await eventually(lambda: up.stats.channels_open == 0, "closed", 10)
                    assert silent.stats.channels_early >= 1
                    assert silent.stats.channels_refused == 0  # its dial never ended
                    (endpoint,) = env.gateway.ports.open.values()
                    assert endpoint.connections_failed == 0
