r"""One connector tunnel as the gateway sees it.

A tunnel is created by the front door after the token check and the 101
answer. Its life::

    SETUP --config accepted--> ACTIVE --(peer gone | keepalive missed |
      \                           |      replaced | stage deactivated |
       \                          |      gateway stop)---------------------> CLOSED
        \                    drain@qanat
         \                        v
          \                  ACTIVE, draining --(connector disconnects)----> CLOSED
           `--no valid config within setup_timeout_s------------------------> CLOSED

While ACTIVE it serves the ports it declared (in pools shared with other
tunnels of the same stage) and answers app connections with channels. A
draining tunnel stays in its pools but is only tried when no other tunnel
can take a connection (see qanat.gateway.balancer).

Identity: a qanat connector names itself in the upgrade (``--id``, or a hash
of token, remotes and host name); for other connectors the gateway derives
one from the source address and the remotes. When a connector comes back
with the identity of a tunnel that is still ACTIVE here, the old session
gets ``stale_check_s`` to answer a ping: silent, it is closed and replaced
(a restarted connector is not refused because of its own ghost); alive, the
two are simply two tunnels and the operator is warned.

Dead peers: the gateway pings every ``keepalive_s`` on a fixed rhythm (a
slow answer does not delay the next ping), each ping may take
``keepalive_timeout_s``; ``keepalive_misses`` misses in a row close the
tunnel, so a frozen connector leaves its pools within
``misses * keepalive_s + timeout``. One miss already moves it to the back
of its pools.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from qanat.errors import ProtocolError, TunnelError
from qanat.gateway.admission import ConnectorInfo
from qanat.gateway.context import GatewayContext, TunnelHost
from qanat.gateway.status import TunnelStatus
from qanat.logs import ContextLogger
from qanat.net.splice import Splice
from qanat.net.ssh import ServerHooks, SshTunnel
from qanat.runtime import TaskOwner
from qanat.wire.configmsg import decode_config
from qanat.wire.describe import Assembler
from qanat.wire.remotes import Remote

if TYPE_CHECKING:
    from qanat.gateway.ports import GatewayPort
    from qanat.gateway.stages import StageConfig

__all__ = ["ConnectorInfo", "Tunnel", "TunnelState", "derived_identity"]

_ids = itertools.count(1)
#: Largest OpenAPI document a connector may send (the portal's default limit).
DESCRIBE_MAX_DOCUMENT_CHARS = 512 * 1024
_log = logging.getLogger("qanat.gateway.tunnel")


class TunnelState(enum.Enum):
    SETUP = "setup"
    ACTIVE = "active"
    CLOSED = "closed"


def derived_identity(info: ConnectorInfo, remotes: tuple[Remote, ...]) -> str:
    """Identity of a connector that did not name itself: source address + remotes."""
    h = hashlib.sha256(info.source.encode())
    for text in sorted(str(r) for r in remotes):
        h.update(b"\0" + text.encode())
    return "src-" + h.hexdigest()[:12]


class Tunnel:
    """A connector's SSH-in-WebSocket session and what it serves."""

    def __init__(
        self,
        ctx: GatewayContext,
        host: TunnelHost,
        stage: StageConfig,
        info: ConnectorInfo,
        connect: Callable[[ServerHooks], SshTunnel],
    ) -> None:
        """Start serving an accepted upgrade: SSH over it, the setup deadline running.

        ``connect(hooks)`` starts the SSH server over the upgraded connection
        with this tunnel as its hooks.
        """
        self.id = next(_ids)
        self.ctx = ctx
        self.host = host
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
        self.close_reason = ""
        self.draining = False
        self.draining_since: float | None = None
        self.identity = info.identity
        self.ports: list[GatewayPort] = []
        self.describe: Assembler | None = None
        self.tasks = TaskOwner(f"tunnel {self.id}")
        self.log = ContextLogger(
            _log,
            stage=stage.key,
            tunnel=self.id,
            connector=info.identity or info.client_id or "-",
            peer=info.peer,
        )
        host.tunnel_started(self)
        self.ssh: SshTunnel = connect(self)
        self.tasks.spawn(self._setup_deadline(), name=f"setup-{self.id}")

    @property
    def serving(self) -> bool:
        """Whether app connections may ride on this tunnel (draining included)."""
        return self.state is TunnelState.ACTIVE

    # -- ServerHooks (called by the SSH adapter) ------------------------------

    async def on_config(self, payload: bytes) -> str | None:
        if self.state is not TunnelState.SETUP:
            return "config already received for this tunnel"
        settings = self.ctx.settings
        try:
            message = decode_config(payload, max_remotes=settings.max_remotes)
            remotes = self._validate(message.remotes)
        except ProtocolError as exc:
            self.log.warning("refused config: %s", exc)
            return str(exc)
        self.version = message.version
        if not self.identity:
            self.identity = derived_identity(self.info, remotes)
            self.log = self.log.bind(connector=self.identity)
        await self.host.retire_stale(self)
        if self.state is not TunnelState.SETUP:  # closed while we waited
            return "tunnel closed during setup"
        started = time.perf_counter()
        error = await self.host.bind(self, remotes)  # TCP and UDP, all or nothing
        if error is not None:
            self.log.warning("refused remotes: %s", error)
            return error
        if self.state is not TunnelState.SETUP:
            # Closed while the listeners were being created: _closed() has
            # already unbound, so undo this bind or the ports stay open.
            self.host.unbind(self)
            return f"tunnel closed during setup: {self.close_reason or 'connector left'}"
        self.remotes = remotes
        self.state = TunnelState.ACTIVE
        self.host.tunnel_active(self)
        bind_ms = (time.perf_counter() - started) * 1e3
        pools: dict[tuple[int, str], int] = {(e.port, e.proto): len(e.pool) for e in self.ports}
        shown = ", ".join(
            f"secure-gateway:{r.local_port}=>{r.channel_extra.decode()}"
            + (
                f" (pool of {pools[(int(r.local_port), r.remote_proto)]})"
                if pools.get((int(r.local_port), r.remote_proto), 0) > 1
                else ""
            )
            for r in remotes[:10]
        )
        if len(remotes) > 10:
            shown += f" and {len(remotes) - 10} more ({bind_ms:.0f}ms to bind)"
        self.log.info(
            "connector %s connected (version %s), serving %s",
            self.identity,
            self.version or "?",
            shown or "nothing",
        )
        if settings.keepalive_s > 0:
            self.tasks.spawn(self._keepalive(), name=f"keepalive-{self.id}")
        return None

    def on_lost(self, exc: BaseException | None) -> None:
        reason = self.close_reason or (str(exc) if exc else "connector disconnected")
        if self.draining and not self.close_reason and exc is None:
            reason = "connector finished draining"
        self._closed(reason)

    async def on_describe(self, payload: bytes) -> str | None:
        """A piece of the connector's description of one of its ports."""
        sink = self.host.describe_sink
        if sink is None:
            return "this gateway keeps no endpoint catalogue"
        if self.state is not TunnelState.ACTIVE:
            return "describe@qanat before the remotes were accepted"
        if self.describe is None:
            self.describe = Assembler(max_document_chars=DESCRIBE_MAX_DOCUMENT_CHARS)
        try:
            declaration = self.describe.feed(payload)
        except ProtocolError as exc:
            self.log.warning("refused endpoint description: %s", exc)
            return str(exc)
        if declaration is None:
            return None  # more pieces follow
        protocols = {
            int(r.local_port): "udp" if r.remote_proto == "udp" else "tcp"
            for r in self.remotes
            if r.local_port.isdigit()
        }
        if declaration.port not in protocols:
            return f"port {declaration.port} is not one of this connector's remotes"
        error = await sink(self.stage.key, self.identity, declaration, protocols[declaration.port])
        if error is not None:
            self.log.warning("description of port %d refused: %s", declaration.port, error)
        return error

    def on_drain(self) -> bool:
        if self.state is not TunnelState.ACTIVE:
            return False
        if not self.draining:
            self.draining = True
            self.draining_since = time.monotonic()
            self.log.info(
                "connector %s is draining: no new connections unless no other tunnel "
                "can take them; %d open",
                self.identity,
                len(self.splices),
            )
        return True

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

    async def _setup_deadline(self) -> None:
        await asyncio.sleep(self.ctx.settings.setup_timeout_s)
        if self.state is TunnelState.SETUP:
            self.close(f"no valid config within {self.ctx.settings.setup_timeout_s:g}s")

    async def _keepalive(self) -> None:
        settings = self.ctx.settings
        timeout_s = settings.ping_timeout_s
        loop = asyncio.get_running_loop()
        next_at = loop.time() + settings.keepalive_s
        while self.state is TunnelState.ACTIVE:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += settings.keepalive_s
            try:
                self.last_rtt_s = await self.ssh.ping(timeout_s)
                if self.missed_pings:
                    self.log.info("keepalive answered again after %d miss(es)", self.missed_pings)
                self.missed_pings = 0
            except TimeoutError:
                self.missed_pings += 1
                self.log.warning(
                    "keepalive %d/%d missed (no answer within %gs)",
                    self.missed_pings,
                    settings.keepalive_misses,
                    timeout_s,
                )
                if self.missed_pings >= settings.keepalive_misses:
                    self.ctx.events.dead_peer_removed(self.stage.key)
                    self.close(
                        f"dead peer: {self.missed_pings} keepalives in a row missed "
                        f"(every {settings.keepalive_s:g}s, {timeout_s:g}s timeout)"
                    )
                    return
            except TunnelError:
                return
            # A late answer must not shift the rhythm, nor a very late one pile pings up.
            next_at = max(next_at, loop.time())

    async def answers(self, timeout_s: float) -> bool:
        """Whether the connector answers a ping within ``timeout_s`` now."""
        if self.state is TunnelState.CLOSED:
            return False
        try:
            await self.ssh.ping(timeout_s)
        except (TimeoutError, TunnelError):
            return False
        return True

    def close(self, reason: str) -> None:
        """Close the tunnel and everything riding on it."""
        if self.state is TunnelState.CLOSED:
            return
        self.close_reason = reason
        self.ssh.abort()
        self._closed(reason)

    def _closed(self, reason: str) -> None:
        if self.state is TunnelState.CLOSED:
            return
        was_active = self.state is TunnelState.ACTIVE
        self.state = TunnelState.CLOSED
        cut = len(self.splices)
        emptied = self.host.unbind(self)
        for splice in list(self.splices):
            splice.close()
        self.splices.clear()
        self.host.tunnel_closed(self)
        # Cancel now: a reaper task spawned on the gateway would itself be
        # cancelled unstarted when the gateway is closing.
        self.tasks.cancel()
        if not was_active:
            self.log.info("tunnel setup ended: %s", reason)
            return
        detail = f"; {cut} open connection(s) cut" if cut else ""
        if emptied:
            ports = ", ".join(emptied[:10])
            more = f" and {len(emptied) - 10} more" if len(emptied) > 10 else ""
            detail += f"; no connector serves port(s) {ports}{more} any more"
        self.log.info("tunnel closed: %s%s", reason, detail)

    # -- channels -----------------------------------------------------------

    def track(self, splice: Splice) -> None:
        self.splices.add(splice)
        self.channels_total += 1

    def untrack(self, splice: Splice) -> None:
        self.splices.discard(splice)
        self.bytes_up += splice.sent
        self.bytes_down += splice.received

    def snapshot(self) -> TunnelStatus:
        return TunnelStatus(
            tunnel=self.id,
            connector=self.identity or self.info.client_id,
            session=self.info.client_id,
            peer=self.info.peer,
            user_agent=self.info.user_agent,
            version=self.version,
            state=self.state.value,
            draining=self.draining,
            missed_keepalives=self.missed_pings,
            connected_since=self.connected_at,
            keepalive_rtt_ms=None if self.last_rtt_s is None else round(self.last_rtt_s * 1e3, 3),
            ports=tuple(int(r.local_port) for r in self.remotes),
            open_connections=len(self.splices),
            connections_total=self.channels_total,
            connections_failed=self.channels_failed,
            # Live traffic (closed channels plus the open ones so far).
            bytes_to_endpoint=self.bytes_up + sum(s.sent for s in self.splices),
            bytes_to_app=self.bytes_down + sum(s.received for s in self.splices),
        )
