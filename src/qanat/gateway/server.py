"""The gateway: owner of the front door, the tunnels, the endpoints and the stage source.

:class:`Gateway` builds one :class:`~qanat.gateway.context.GatewayContext`
and hands it (never itself) to the parts it creates; it keeps the tunnel
registry and answers the :class:`~qanat.gateway.context.TunnelHost` calls
of its tunnels. ``gateway/serve.py`` runs it as a process (signals, logs,
staged shutdown) for ``qanat gateway`` and ``qanat up`` alike.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from qanat import __version__
from qanat.gateway.allowlist import Allowlist
from qanat.gateway.context import GatewayContext, Limiters
from qanat.gateway.frontdoor import FrontDoor, HttpFallback, Routes
from qanat.gateway.metrics import gateway_families
from qanat.gateway.ports import PortTable
from qanat.gateway.settings import GatewaySettings
from qanat.gateway.stages import StageEvent, StageEventKind, StageSource
from qanat.gateway.status import GatewayStatus, StageInfo, StageStatus
from qanat.gateway.tunnel import Tunnel, TunnelState
from qanat.net.ssh import HostKey
from qanat.runtime import TaskOwner
from qanat.telemetry.counters import Exposition, Family, GatewayEvents
from qanat.telemetry.health import Health
from qanat.telemetry.httpd import OpsRoutes
from qanat.tls import reload_certificate, server_context
from qanat.wire.describe import Declaration
from qanat.wire.remotes import Remote

log = logging.getLogger("qanat.gateway")


class TunnelListener(Protocol):
    """Told when a tunnel starts serving and when it ends (in the event loop).

    Listeners must not block: the live connector report, for one, queues the
    event and writes the database from a worker thread.
    """

    def tunnel_active(self, tunnel: Tunnel) -> None: ...

    def tunnel_closed(self, tunnel: Tunnel) -> None: ...


#: Where connectors' endpoint descriptions go (the portal's catalogue):
#: ``sink(stage_key, connector, declaration, protocol)`` returns None when
#: stored, or the refusal text for the connector. Called in the event loop,
#: so it must not block (write from a worker thread).
DescribeSink = Callable[[str, str, Declaration, str], Awaitable[str | None]]


class Gateway:
    """Serves connector tunnels for the stages of one :class:`StageSource`."""

    def __init__(
        self,
        settings: GatewaySettings,
        stages: StageSource,
        *,
        host_key: HostKey | None = None,
        http_fallback: HttpFallback | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.stages = stages
        self.http_fallback = http_fallback
        if ssl_context is None and settings.tls_cert_path is not None:
            ssl_context = server_context(
                settings.tls_cert_path, settings.tls_key_path, settings.tls_client_ca_path
            )
        self.ssl_context = ssl_context
        self.ctx = GatewayContext(
            settings=settings,
            tasks=TaskOwner("gateway"),
            stages=stages,
            host_key=host_key or HostKey.load_or_create(settings.host_key_path),
            limiters=Limiters.from_settings(settings),
            events=GatewayEvents(),
        )
        self.tasks = self.ctx.tasks
        self.host_key = self.ctx.host_key
        self.ports = PortTable(self.ctx)
        self.tunnels: dict[int, Tunnel] = {}
        self.server: asyncio.Server | None = None
        self.tunnel_listeners: list[TunnelListener] = []
        # Set by an assembly with a portal (qanat up): only then is the
        # ``describe`` feature advertised to connectors.
        self.describe_sink: DescribeSink | None = None
        #: (stage, direction) -> bytes carried by tunnels that have closed.
        self.retired_bytes: dict[tuple[str, str], int] = {}
        self.health = Health()
        self.health.add_check("listener", self._listener_check)
        self.health.add_check("stages", self._stages_check)
        #: More families for /metrics (a cluster node adds its own).
        self.metric_sources: list[Callable[[], list[Family]]] = []
        self.exposition = Exposition(
            lambda: [
                *gateway_families(self.status(), __version__),
                *(family for source in self.metric_sources for family in source()),
            ],
            self.ctx.events,
        )
        self.routes = Routes(
            ops=OpsRoutes(
                health=self.health,
                metrics=self.exposition,
                metrics_allowed=Allowlist.parse(settings.metrics_allow_cidrs).allows,
            ),
            fallback=lambda: self.http_fallback,
        )

    def add_check(self, name: str, check: Callable[[], Awaitable[str | None]]) -> None:
        """Add a readiness check to ``/readyz`` (the database, for one)."""
        self.health.add_check(name, check)

    async def _listener_check(self) -> str | None:
        server = self.server
        if server is None or not server.is_serving():
            return "front door not listening"
        return None

    async def _stages_check(self) -> str | None:
        self.stages.stages()  # raises if the source cannot answer
        return None

    @property
    def address(self) -> tuple[str, int]:
        """The actual listen address (useful with port 0)."""
        assert self.server is not None
        sockname = self.server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def start(self) -> None:
        """Load stages and start accepting connections."""
        await self.stages.start()
        self.stages.subscribe(self._on_stage_event)
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: FrontDoor(self.ctx, self, self.routes),
            self.settings.listen_host,
            self.settings.listen_port,
            ssl=self.ssl_context,
            reuse_address=True,
            backlog=1024,
        )

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    def reload_tls(self) -> bool:
        """Load the certificate files again (SIGHUP) into the live context.

        New handshakes present the new certificate; established tunnels are
        not touched. Returns False when TLS is off or the certificate comes
        from elsewhere (a context given to the constructor).

        Raises:
            ConfigError: the new files are unusable; the old certificate stays.
        """
        settings = self.settings
        if self.ssl_context is None or settings.tls_cert_path is None:
            return False
        reload_certificate(self.ssl_context, settings.tls_cert_path, settings.tls_key_path)
        return True

    async def close(self, drain_s: float = 5.0) -> None:
        """Stop accepting, close every tunnel, wait (bounded) for the rest."""
        if self.server is not None:
            self.server.close()
        for tunnel in list(self.tunnels.values()):
            tunnel.close("gateway shutting down")
        self.ports.close_all()
        self.ctx.refusals.close()
        self.ctx.limiters.door.close()
        await self.tasks.close(timeout_s=drain_s)
        await self.stages.close()
        if self.server is not None:
            await asyncio.wait_for(self.server.wait_closed(), timeout=drain_s)
            self.server = None

    # -- TunnelHost (called by Tunnel) -------------------------------------------

    async def bind(self, tunnel: Tunnel, remotes: tuple[Remote, ...]) -> str | None:
        return await self.ports.bind(tunnel, remotes)

    def unbind(self, tunnel: Tunnel) -> list[str]:
        return self.ports.unbind(tunnel)

    def tunnel_started(self, tunnel: Tunnel) -> None:
        self.tunnels[tunnel.id] = tunnel

    def tunnel_active(self, tunnel: Tunnel) -> None:
        for listener in list(self.tunnel_listeners):
            _notify(listener.tunnel_active, tunnel)

    def tunnel_closed(self, tunnel: Tunnel) -> None:
        self.tunnels.pop(tunnel.id, None)
        for listener in list(self.tunnel_listeners):
            _notify(listener.tunnel_closed, tunnel)
        # Keep the bytes of a closed tunnel so the stage's counter never goes down.
        stage = tunnel.stage.key
        for direction, value in (("to_endpoint", tunnel.bytes_up), ("to_app", tunnel.bytes_down)):
            if value:
                key = (stage, direction)
                self.retired_bytes[key] = self.retired_bytes.get(key, 0) + value

    async def retire_stale(self, tunnel: Tunnel) -> None:
        """Close older sessions of ``tunnel``'s connector that no longer answer.

        A connector that restarts (crash, reboot, new network path) often
        comes back before the gateway has noticed that its old session is
        dead. Same stage and identity, and the old one does not answer a
        ping within ``stale_check_s`` (or already missed a keepalive): it
        is closed, so it neither blocks a changed target nor keeps catching
        app connections. An old session that answers is left alone.
        """
        same = [
            t
            for t in self.tunnels.values()
            if t is not tunnel
            and t.state is TunnelState.ACTIVE
            and not t.draining
            and t.stage.key == tunnel.stage.key
            and t.identity == tunnel.identity
        ]
        if not same:
            return
        timeout_s = self.settings.stale_check_s

        async def stale(old: Tunnel) -> bool:
            return bool(old.missed_pings) or not await old.answers(timeout_s)

        verdicts = await asyncio.gather(*(stale(old) for old in same))
        for old, is_stale in zip(same, verdicts, strict=True):
            if is_stale:
                old.close(
                    f"replaced by tunnel {tunnel.id} of the same connector {tunnel.identity}: "
                    f"this session did not answer a ping within {timeout_s:g}s"
                )
                tunnel.log.info("replaced stale tunnel %d of this connector", old.id)
            elif tunnel.info.identity:
                tunnel.log.warning(
                    "connector identity %s is already connected as tunnel %d, which answers "
                    "keepalives: two running connectors share this identity; give each its "
                    "own --id",
                    tunnel.identity,
                    old.id,
                )

    def _on_stage_event(self, event: StageEvent) -> None:
        stage = event.stage
        if event.kind is StageEventKind.REMOVED or not stage.active:
            reason = (
                "stage removed" if event.kind is StageEventKind.REMOVED else "stage deactivated"
            )
            self.close_stage(stage.key, reason)
            return
        # Tunnels keep the StageConfig they were admitted with, except for a
        # change of bind address, which needs new listeners: drop them and let
        # the connectors come back.
        for tunnel in list(self.tunnels.values()):
            if tunnel.stage.key == stage.key:
                if tunnel.stage.bind_host != stage.bind_host:
                    tunnel.close("stage bind address changed")
                else:
                    tunnel.stage = stage
        # An allowlist change applies to the next app connection at once.
        self.ports.apply_allowlist(stage)

    def close_stage(self, stage_key: str, reason: str) -> int:
        """Close every tunnel of a stage now; returns how many."""
        doomed = [t for t in self.tunnels.values() if t.stage.key == stage_key]
        for tunnel in doomed:
            tunnel.close(reason)
        return len(doomed)

    # -- status -----------------------------------------------------------------

    def status(self) -> GatewayStatus:
        """A typed snapshot for metrics, the SIGUSR2 line and the tests."""
        connectors: dict[str, list[Any]] = {}
        endpoints: dict[str, list[Any]] = {}
        for tunnel in self.tunnels.values():
            if tunnel.state is TunnelState.CLOSED:
                continue
            connectors.setdefault(tunnel.stage.key, []).append(tunnel.snapshot())
        for endpoint in self.ports.open.values():
            endpoints.setdefault(endpoint.stage_key, []).append(endpoint.snapshot())
        stages = {
            key: StageStatus(tuple(connectors.get(key, ())), tuple(endpoints.get(key, ())))
            for key in sorted({*connectors, *endpoints})
        }
        settings = self.settings
        now = time.monotonic()
        return GatewayStatus(
            stages=stages,
            known_stages=tuple(StageInfo(s.key, s.active) for s in self.stages.stages()),
            fingerprint=self.host_key.fingerprint,
            balance=settings.balance,
            keepalive_s=settings.keepalive_s,
            dead_peer_bound_s=settings.dead_peer_bound_s if settings.keepalive_s > 0 else None,
            flapping=self.ctx.limiters.flaps.snapshot(now),
            retired_bytes=dict(self.retired_bytes),
        )


def _notify(hook: Any, tunnel: Tunnel) -> None:
    # A listener's bug must not break the tunnel's bookkeeping.
    try:
        hook(tunnel)
    except Exception:
        log.exception("tunnel listener %r failed", hook)
