"""What every public HTTP listener does before it knows a request: the door.

One mechanism for the gateway's front door and for a standalone portal
(``qanat portal``): a new connection is counted in the
:class:`~qanat.gateway.pressure.ConnectionGate` (closed at once past the
caps per source and in all), must send a complete request head within the
head deadline, and once handed to the HTTP application (aiohttp) is closed
after the idle deadline (:class:`~qanat.gateway.idle.IdleGuard`). Refusals
are summed up once per interval by :class:`~qanat.gateway.pressure.DoorPressure`.
Accepting on EMFILE backs off in the event loop itself.

:class:`GatedDoor` holds that state; the front door routes tunnels on top of
it, :class:`HttpDoor` hands every request to one HTTP application.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from qanat.gateway.idle import IdleGuard
from qanat.gateway.pressure import ConnectionGate, DoorPressure, PressureLimits
from qanat.net.websocket import response_bytes

log = logging.getLogger("qanat.gateway.frontdoor")

HttpFactory = Callable[[], asyncio.Protocol]


@dataclass(frozen=True, slots=True)
class DoorSettings:
    """Deadlines and sizes of the door (the gate's caps are in its limits)."""

    head_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    max_head_bytes: int = 16 * 1024


class GatedDoor(asyncio.Protocol):
    """A connection counted in the gate until it is proven (or gone)."""

    def __init__(self, door: DoorPressure, settings: DoorSettings) -> None:
        self.door = door
        self.door_settings = settings
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.peer = "?"
        self.routed = False
        self.source = "?"
        self.gated = False  # counted in the connection gate (unproven)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.source = str(peer[0]) if peer else "?"
        if not self.door.gate.admit(self.source):
            # Over the unproven-connection caps: closed before anything is read.
            self.routed = True
            self.door.noted()
            transport.abort()  # type: ignore[attr-defined]
            return
        self.gated = True
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.door_settings.head_timeout_s, self._head_timeout)

    def _head_timeout(self) -> None:
        if not self.routed and self.transport is not None:
            log.info("%s: no complete HTTP request within the timeout; closing", self.peer)
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self._release()

    def _release(self) -> None:
        """This connection no longer counts as unproven (a tunnel, or gone)."""
        if self.gated:
            self.gated = False
            self.door.gate.release(self.source)

    def _route_done(self) -> None:
        self.routed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _head_complete(self) -> bool:
        return b"\r\n\r\n" in self.buffer or b"\n\n" in self.buffer

    def _hand_to_http(self, factory: HttpFactory) -> None:
        """Give the connection (and the bytes read) to the HTTP application.

        It keeps counting as unproven until it closes, and is closed when
        idle (the application's own keep-alive timer is long).
        """
        self._route_done()
        assert self.transport is not None
        guarded = IdleGuard(factory(), self.door_settings.idle_timeout_s, self._release)
        self.transport.set_protocol(guarded)
        guarded.connection_made(self.transport)
        guarded.data_received(bytes(self.buffer))

    def _bad(self, why: str) -> None:
        self._route_done()
        log.info("%s: %s; answered 400", self.peer, why)
        self._respond(400, f"bad request: {why}\n".encode())

    def _respond(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        assert self.transport is not None
        self.transport.write(response_bytes(status, body, content_type, headers))
        self.transport.close()


class HttpDoor(GatedDoor):
    """Every request to one HTTP application, behind the door (``qanat portal``)."""

    def __init__(self, door: DoorPressure, settings: DoorSettings, factory: HttpFactory) -> None:
        super().__init__(door, settings)
        self.factory = factory

    def data_received(self, data: bytes) -> None:
        if self.routed:
            return
        self.buffer += data
        if self._head_complete():
            self._hand_to_http(self.factory)
        elif len(self.buffer) > self.door_settings.max_head_bytes:
            self._bad("request head too large")


async def serve_http_door(
    factory: HttpFactory,
    host: str,
    port: int,
    limits: PressureLimits | None = None,
    settings: DoorSettings | None = None,
) -> tuple[asyncio.Server, DoorPressure]:
    """Listen on ``host:port`` and serve ``factory``'s protocol behind the door.

    Close the server, then the returned :class:`DoorPressure` (its last
    summary line), when done.
    """
    limits = limits or PressureLimits()
    settings = settings or DoorSettings(limits.head_timeout_s, limits.idle_timeout_s)
    door = DoorPressure(ConnectionGate(limits))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HttpDoor(door, settings, factory), host, port, reuse_address=True, backlog=1024
    )
    return server, door
