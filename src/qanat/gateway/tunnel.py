r"""One connector tunnel as the gateway sees it.

A tunnel is created by the front door after the token check and the 101
answer. Its life::

    SETUP --config accepted--> ACTIVE --(peer gone | keepalive missed |
      \                                 stage deactivated | gateway stop)--> CLOSED
       `--no valid config within setup_timeout_s---------------------------> CLOSED

While ACTIVE it serves the ports it declared (in pools shared with other
tunnels of the same stage) and answers app connections with channels.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qanat.errors import ProtocolError, TunnelError
from qanat.gateway.udp import bind_remotes
from qanat.logs import ContextLogger
from qanat.net.splice import Splice
from qanat.net.ssh import SshTunnel
from qanat.ops import metrics
from qanat.runtime import TaskOwner
from qanat.wire.configmsg import decode_config
from qanat.wire.remotes import Remote

if TYPE_CHECKING:
    from qanat.gateway.server import Gateway
    from qanat.gateway.stages import StageConfig

_ids = itertools.count(1)
_log = logging.getLogger("qanat.gateway.tunnel")


class TunnelState(enum.Enum):
    SETUP = "setup"
    ACTIVE = "active"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ConnectorInfo:
    """What the connector told us about itself during the upgrade."""

    client_id: str
    peer: str
    user_agent: str
    ports: tuple[str, ...]


class Tunnel:
    """A connector's SSH-in-WebSocket session and what it serves."""

    def __init__(self, gateway: Gateway, stage: StageConfig, info: ConnectorInfo) -> None:
        self.id = next(_ids)
        self.gateway = gateway
        self.stage = stage
        self.info = info
        self.state = TunnelState.SETUP
        self.remotes: tuple[Remote, ...] = ()
        self.connected_at = time.time()
        self.last_rtt_s: float | None = None
        self.missed_pings = 0
        self.splices: set[Splice] = set()
        self.channels_total = 0
        self.channels_failed = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.version = ""
        self.ssh: SshTunnel | None = None
        self.close_reason = ""
        self.tasks = TaskOwner(f"tunnel {self.id}")
        self.log = ContextLogger(
            _log, stage=stage.key, tunnel=self.id, connector=info.client_id or "-", peer=info.peer
        )

    # -- ServerHooks (called by the SSH adapter) ------------------------------

    async def on_config(self, payload: bytes) -> str | None:
        if self.state is not TunnelState.SETUP:
            return "config already received for this tunnel"
        settings = self.gateway.settings
        try:
            message = decode_config(payload, max_remotes=settings.max_remotes)
            remotes = self._validate(message.remotes)
        except ProtocolError as exc:
            self.log.warning("refused config: %s", exc)
            return str(exc)
        self.version = message.version
        error = await bind_remotes(self.gateway.ports, self, remotes)  # TCP, then UDP
        if error is None and self.state is not TunnelState.SETUP:
            # Closed while the listeners were being created: _closed() has
            # already unbound, so undo this bind or the ports stay open.
            self.gateway.ports.unbind(self)
            return f"tunnel closed during setup: {self.close_reason or 'connector left'}"
        if error is not None:
            self.log.warning("refused remotes: %s", error)
            return error
        self.remotes = remotes
        self.state = TunnelState.ACTIVE
        self.gateway.tunnel_active(self)
        self.log.info(
            "connector %s connected (version %s), serving %s",
            self.info.client_id or "?",
            self.version or "?",
            ", ".join(f"secure-gateway:{r.local_port}=>{r.channel_extra.decode()}" for r in remotes)
            or "nothing",
        )
        if settings.keepalive_s > 0:
            self.tasks.spawn(self._keepalive(), name=f"keepalive-{self.id}")
        return None

    def on_lost(self, exc: BaseException | None) -> None:
        reason = self.close_reason or (str(exc) if exc else "connector disconnected")
        self._closed(reason)

    # -- life ---------------------------------------------------------------

    def _validate(self, remotes: tuple[Remote, ...]) -> tuple[Remote, ...]:
        stage = self.stage
        for r in remotes:
            text = r.describe()
            if not r.reverse:
                raise ProtocolError(
                    f"remote {text} is a forward remote; this gateway only serves "
                    "reverse remotes (R:<port>:<host>:<port>)"
                )
            if r.socks or r.stdio:
                raise ProtocolError(f"remote {text}: socks and stdio remotes are not served")
            if r.remote_proto not in ("tcp", "udp"):
                raise ProtocolError(f"remote {text}: only TCP and UDP remotes are served")
            try:
                port = int(r.local_port)
            except ValueError:
                raise ProtocolError(f"remote {text}: local port is not a number") from None
            if not stage.allows_port(port):
                raise ProtocolError(
                    f"remote {text}: port {port} is outside this stage's range "
                    f"{stage.port_min}-{stage.port_max}"
                )
            if not r.remote_host or not r.remote_port:
                raise ProtocolError(f"remote {text}: missing remote host or port")
        return remotes

    def start_setup_timer(self) -> None:
        self.tasks.spawn(self._setup_deadline(), name=f"setup-{self.id}")

    async def _setup_deadline(self) -> None:
        await asyncio.sleep(self.gateway.settings.setup_timeout_s)
        if self.state is TunnelState.SETUP:
            self.close(f"no valid config within {self.gateway.settings.setup_timeout_s:g}s")

    async def _keepalive(self) -> None:
        settings = self.gateway.settings
        assert self.ssh is not None
        while self.state is TunnelState.ACTIVE:
            await asyncio.sleep(settings.keepalive_s)
            try:
                self.last_rtt_s = await self.ssh.ping(settings.keepalive_timeout_s)
                self.missed_pings = 0
            except TimeoutError:
                self.missed_pings += 1
                self.log.warning(
                    "keepalive %d/%d missed (no answer within %gs)",
                    self.missed_pings,
                    settings.keepalive_misses,
                    settings.keepalive_timeout_s,
                )
                if self.missed_pings >= settings.keepalive_misses:
                    metrics.dead_peer_removed(self.stage.key)
                    self.close(f"dead peer: {self.missed_pings} keepalives missed")
                    return
            except TunnelError:
                return

    def close(self, reason: str) -> None:
        """Close the tunnel and everything riding on it."""
        if self.state is TunnelState.CLOSED:
            return
        self.close_reason = reason
        if self.ssh is not None:
            self.ssh.abort()
        self._closed(reason)

    def _closed(self, reason: str) -> None:
        if self.state is TunnelState.CLOSED:
            return
        was_active = self.state is TunnelState.ACTIVE
        self.state = TunnelState.CLOSED
        self.gateway.ports.unbind(self)
        for splice in list(self.splices):
            splice.close()
        self.splices.clear()
        self.gateway.tunnel_closed(self)
        # Cancel now: a reaper task spawned on the gateway would itself be
        # cancelled unstarted when the gateway is closing.
        self.tasks.cancel()
        if was_active:
            self.log.info("tunnel closed: %s", reason)
        else:
            self.log.info("tunnel setup ended: %s", reason)

    # -- channels -----------------------------------------------------------

    def track(self, splice: Splice) -> None:
        self.splices.add(splice)
        self.channels_total += 1

    def untrack(self, splice: Splice) -> None:
        self.splices.discard(splice)
        self.bytes_up += splice.sent
        self.bytes_down += splice.received

    def snapshot(self) -> dict[str, object]:
        return {
            "tunnel": self.id,
            "connector": self.info.client_id,
            "peer": self.info.peer,
            "user_agent": self.info.user_agent,
            "version": self.version,
            "state": self.state.value,
            "connected_since": self.connected_at,
            "keepalive_rtt_ms": None
            if self.last_rtt_s is None
            else round(self.last_rtt_s * 1e3, 3),
            "ports": [int(r.local_port) for r in self.remotes],
            "open_connections": len(self.splices),
            "connections_total": self.channels_total,
            "connections_failed": self.channels_failed,
            # Live traffic (closed channels plus the open ones so far).
            "bytes_to_endpoint": self.bytes_up + sum(s.sent for s in self.splices),
            "bytes_to_app": self.bytes_down + sum(s.received for s in self.splices),
        }
