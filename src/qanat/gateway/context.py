"""What every part of the gateway is given: a small frozen context, not the gateway.

The front door, the tunnels and the endpoints each need a few shared things:
the settings, a task owner for what they spawn, the stage source, the host
key, the admission limiters, the event counters and the log throttles. They
get exactly these in one :class:`GatewayContext` (as mitmproxy's layers get
their ``Context``), and report back through the narrow :class:`TunnelHost`
interface. Nothing reaches through a ``Gateway`` object; the gateway itself
is only the owner that builds the context and keeps the tunnel registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from qanat.gateway.flapping import FlapGuard
from qanat.gateway.pressure import ConnectionGate, DoorPressure, PressureLimits
from qanat.gateway.refusals import RefusalLog
from qanat.gateway.settings import GatewaySettings
from qanat.gateway.stages import StageSource
from qanat.gateway.tokenlimit import TokenLimiter
from qanat.net.ssh import HostKey
from qanat.runtime import TaskOwner
from qanat.telemetry.counters import GatewayEvents
from qanat.telemetry.throttle import Throttle
from qanat.wire.forwarded import parse_networks

if TYPE_CHECKING:
    from qanat.gateway.server import DescribeSink
    from qanat.gateway.tunnel import Tunnel
    from qanat.wire.remotes import Remote


@dataclass(slots=True)
class Limiters:
    """Admission state: explicit inputs of :func:`qanat.gateway.admission.admit`.

    Attributes:
        tokens: failed token attempts per (source, address) and in all
            (brute-force protection; a valid token is never limited).
        flaps: accepted upgrades per connector key (reconnect loops).
        door: unproven connections per source and in all, the trusted
            proxies, and the once-per-interval refusal lines.
    """

    tokens: TokenLimiter = field(default_factory=TokenLimiter)
    flaps: FlapGuard = field(default_factory=FlapGuard)
    door: DoorPressure = field(default_factory=lambda: DoorPressure(ConnectionGate()))
    #: Log lines of refused (flapping) upgrades: one per connector per 10 s.
    flap_log: Throttle = field(default_factory=lambda: Throttle(burst=1, window_s=10.0))

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Limiters:
        return cls(
            tokens=TokenLimiter(),
            door=DoorPressure(
                ConnectionGate(
                    PressureLimits(
                        per_source=settings.max_unproven_per_source,
                        total=settings.max_unproven,
                        head_timeout_s=settings.request_head_timeout_s,
                        idle_timeout_s=settings.idle_timeout_s,
                    )
                ),
                trusted=parse_networks(settings.trusted_proxy_cidrs),
            ),
            flap_log=Throttle(burst=1, window_s=10.0),
            flaps=FlapGuard(
                max_connects=settings.flap_connects,
                window_s=settings.flap_window_s,
                backoff_s=settings.flap_backoff_s,
                backoff_max_s=settings.flap_backoff_max_s,
            ),
        )


@dataclass(frozen=True, slots=True)
class GatewayContext:
    """Shared, fixed for the life of one gateway."""

    settings: GatewaySettings
    tasks: TaskOwner
    stages: StageSource
    host_key: HostKey
    limiters: Limiters
    events: GatewayEvents
    #: Allowlist refusals: the first 5 per 10 s logged one by one, the rest summed up.
    refusals: RefusalLog = field(default_factory=RefusalLog)


class TunnelHost(Protocol):
    """What a tunnel reports to, and asks of, the gateway that admitted it."""

    #: The portal's endpoint catalogue, when the gateway has one (``qanat up``).
    describe_sink: DescribeSink | None

    async def bind(self, tunnel: Tunnel, remotes: tuple[Remote, ...]) -> str | None:
        """Serve ``remotes`` for ``tunnel`` (all or nothing); None or the refusal text."""
        ...

    def unbind(self, tunnel: Tunnel) -> list[str]:
        """Stop serving ``tunnel``'s remotes; the endpoints left without a tunnel."""
        ...

    async def retire_stale(self, tunnel: Tunnel) -> None: ...

    def tunnel_started(self, tunnel: Tunnel) -> None: ...

    def tunnel_active(self, tunnel: Tunnel) -> None: ...

    def tunnel_closed(self, tunnel: Tunnel) -> None: ...
