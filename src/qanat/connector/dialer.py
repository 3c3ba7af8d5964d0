"""Dialling endpoints on the private side, one per ``chisel`` channel."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from typing import Any

from qanat.connector.udp import UdpExit, UdpLimits, open_udp_exit
from qanat.errors import ChannelOpenFailed
from qanat.net.splice import Splice


def split_target(target: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port).

    Raises:
        ChannelOpenFailed: the target is not host:port.
    """
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ChannelOpenFailed(f"bad target {target!r}", reason=f"bad target {target!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def target_key(target: str) -> tuple[str, int, bool] | None:
    """How two spellings of one target compare: (host lower-cased, port, udp)."""
    udp = target.endswith("/udp")
    try:
        host, port = split_target(target[: -len("/udp")] if udp else target)
    except ChannelOpenFailed:
        return None
    return host.lower(), port, udp


def _dial_error(target: str, host: str, exc: OSError) -> ChannelOpenFailed:
    if isinstance(exc, socket.gaierror):
        return ChannelOpenFailed(
            "dial failed", reason=f"dial {target}: cannot resolve {host!r} ({exc.strerror})"
        )
    return ChannelOpenFailed("dial failed", reason=f"dial {target}: {exc.strerror or exc}")


class DeclaredTargets:
    """Refuses channels whose target is not one of the connector's remotes.

    A gateway (or whoever holds it) can ask for any ``host:port`` in the
    private network; chisel dials whatever it is told. qanat dials only what
    the connector declared, and answers anything else with ``administratively
    prohibited`` (``--allow-any-target`` turns this off).
    """

    def __init__(self, dialer: Callable[[str], Any], declared: Iterable[str]) -> None:
        self.dialer = dialer
        self.declared = {key for key in map(target_key, declared) if key is not None}

    def allows(self, target: str) -> bool:
        return target_key(target) in self.declared

    async def __call__(self, target: str) -> Any:
        if target_key(target) not in self.declared:
            raise ChannelOpenFailed(
                "target not declared",
                reason=(
                    f"target {target!r} is not one of this connector's remotes; it dials only"
                    " what it declared (qanat connect --allow-any-target allows any)"
                ),
                code=ChannelOpenFailed.ADMINISTRATIVELY_PROHIBITED,
            )
        return await self.dialer(target)


class Dialer:
    """Turns a channel's target into a connected splice, or a refusal reason."""

    def __init__(
        self,
        timeout_s: float,
        on_splice: Callable[[Splice], None],
        on_done: Callable[[Splice], None],
        *,
        udp: UdpLimits | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.on_splice = on_splice
        self.on_done = on_done
        self.udp = udp or UdpLimits()
        self.udp_exits: set[UdpExit] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, target: str) -> Any:
        if target.endswith("/udp"):
            host, port = split_target(target[: -len("/udp")])
            udp_exit = await open_udp_exit(
                host, port, self.udp, self.timeout_s, on_close=self.udp_exits.discard
            )
            self.udp_exits.add(udp_exit)
            return udp_exit
        splice = self.splice()
        await self.start(splice, target)
        self.on_splice(splice)
        return splice.chan_end

    def splice(self) -> Splice:
        """A splice for one channel, to be dialled with :meth:`start`."""
        loop = self._loop
        if loop is None:  # once: Python 3.11's get_running_loop() is a getpid()
            loop = self._loop = asyncio.get_running_loop()
        return Splice(on_done=self.on_done, loop=loop)

    def start(self, splice: Splice, target: str) -> asyncio.Future[None]:
        """Begin dialling ``target`` (TCP) as the TCP end of ``splice``; the
        future ends with None or ChannelOpenFailed. Cancelling the future
        (an awaiting task cancelled) cancels the dial.

        Callbacks and a timer, no coroutine of ours: this runs once per app
        connection, for early opens and dial-first ones alike. Raises
        ChannelOpenFailed at once for a bad target.
        """
        host, port = split_target(target)
        loop = splice.loop
        outcome: asyncio.Future[None] = loop.create_future()
        dial = loop.create_task(loop.create_connection(lambda: splice.tcp_end, host, port))
        timer = loop.call_later(self.timeout_s, dial.cancel)
        outcome.add_done_callback(lambda done: dial.cancel() if done.cancelled() else None)

        def finished(task: asyncio.Task[Any]) -> None:
            timer.cancel()
            if outcome.done():  # given up by whoever waited
                if not task.cancelled() and task.exception() is None:
                    splice.close()  # connected anyway: not kept
                return
            if task.cancelled():
                outcome.set_exception(self._timed_out(target))
                return
            exc = task.exception()
            if exc is None:
                outcome.set_result(None)
            elif isinstance(exc, OSError):
                outcome.set_exception(_dial_error(target, host, exc))
            else:  # pragma: no cover - create_connection raises OSError subclasses
                outcome.set_exception(exc)

        dial.add_done_callback(finished)
        return outcome

    def _timed_out(self, target: str) -> ChannelOpenFailed:
        return ChannelOpenFailed(
            "dial timeout", reason=f"dial {target}: no answer within {self.timeout_s:g}s"
        )

    def close(self) -> None:
        """Close every UDP channel (the session is ending)."""
        for udp_exit in list(self.udp_exits):
            udp_exit.close()
