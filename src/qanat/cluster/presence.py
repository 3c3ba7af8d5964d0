"""Presence: which node holds connectors for which (stage, port).

Each node writes one entry per (stage, port) it serves with at least one
connector into the JetStream key-value bucket ``qanat-presence``::

    key    <node>.<stage hash>.<port>[u]     (u: a UDP endpoint)
    value  {"node", "link": "host:port", "stage", "port", "remote": "<remote text>",
            "connectors": n, "draining": bool}

and writes all of them again every ``ttl_s / 3`` (the heartbeat). The bucket's
``max_age`` is ``ttl_s`` (nats-server 2.9 has no per-entry TTL), so the entry
of a node that died is gone from the bucket ``ttl_s`` after its last
heartbeat. Expiry is silent in a watch, so each node also drops a remote
entry it has not seen written for ``ttl_s`` (checked every ``sweep_s``):
**a dead node's entries are gone everywhere within ``ttl_s + sweep_s``**
(6.5 s with the defaults). A node that stops cleanly deletes its entries at
once; one that restarts deletes whatever its earlier run left.

When NATS is away the remote entries age out (requests stop crossing to
nodes that may be gone; local connectors keep serving); when it is back,
each node binds the bucket again, re-writes its entries and restarts its
watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass

from qanat.cluster.natsbus import Bus, BusDown, KvBucket, KvChange
from qanat.runtime import TaskOwner

log = logging.getLogger("qanat.cluster.presence")

BUCKET = "qanat-presence"
DEFAULT_TTL_S = 6.0
DEFAULT_SWEEP_S = 0.5


@dataclass(frozen=True, slots=True)
class Holding:
    """One node serving one (stage, port) with ``connectors`` connectors."""

    node: str
    link: str
    stage: str
    port: int
    remote: str
    connectors: int = 1
    draining: bool = False

    @property
    def proto(self) -> str:
        """``udp`` for a UDP endpoint (its remote ends in ``/udp``), else ``tcp``."""
        return "udp" if self.remote.endswith("/udp") else "tcp"

    @property
    def key(self) -> str:
        return holding_key(self.node, self.stage, self.port, self.proto)

    @property
    def link_address(self) -> tuple[str, int]:
        host, _, port = self.link.rpartition(":")
        return host.strip("[]"), int(port)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Holding | None:
        try:
            body = json.loads(data)
            holding = cls(
                node=str(body["node"]),
                link=str(body["link"]),
                stage=str(body["stage"]),
                port=int(body["port"]),
                remote=str(body["remote"]),
                connectors=int(body.get("connectors", 1)),
                draining=bool(body.get("draining", False)),
            )
            holding.link_address  # noqa: B018 - validates
        except (ValueError, KeyError, TypeError):
            return None
        return holding


def node_token(node: str) -> str:
    """A node name as a key token (KV keys allow ``[-_=a-zA-Z0-9]`` between dots)."""
    return re.sub(r"[^-_=a-zA-Z0-9]", "_", node) or "_"


def holding_key(node: str, stage: str, port: int, proto: str = "tcp") -> str:
    """``<node>.<stage hash>.<port>``, with ``u`` after the port for UDP."""
    suffix = "u" if proto == "udp" else ""
    return f"{node_token(node)}.{hashlib.sha256(stage.encode()).hexdigest()[:16]}.{port}{suffix}"


class Presence:
    """This node's entries in the bucket, and everyone else's as last seen.

    Args:
        bus: the node's NATS connection.
        node: this node's name.
        on_change: called (in the event loop) when the remote view changed.
        ttl_s / sweep_s: see the module docstring.
    """

    def __init__(
        self,
        bus: Bus,
        node: str,
        *,
        on_change: Callable[[], None] | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        sweep_s: float = DEFAULT_SWEEP_S,
    ) -> None:
        self.bus = bus
        self.node = node
        self.ttl_s = ttl_s
        self.sweep_s = sweep_s
        self._on_change = on_change
        self._local: dict[str, Holding] = {}
        self._gone: set[str] = set()  # keys to delete at the next write
        self._closing = False
        self.link = ""  # this node's link address, set by its owner
        self._said_twin = False
        self._withdrawn: set[str] = set()  # leftovers of an earlier run we deleted
        self._remote: dict[str, tuple[Holding, float]] = {}
        self._bucket: KvBucket | None = None
        self._stop_watch: Callable[[], Awaitable[None]] | None = None
        self._tasks = TaskOwner("presence")
        self._dirty = asyncio.Event()
        self._bound = asyncio.Event()
        bus.add_listener(on_up=self._bus_up, on_down=self._bus_down)

    # -- what others hold --------------------------------------------------------

    def remote(self) -> list[Holding]:
        """The other nodes' entries seen within ``ttl_s``."""
        return [h for h, _ in self._remote.values()]

    @property
    def bound(self) -> bool:
        """Whether the bucket is bound and watched now."""
        return self._bound.is_set()

    # -- what this node holds ----------------------------------------------------

    def set_local(self, holdings: Iterable[Holding]) -> None:
        """Replace what this node holds; written to the bucket soon (not blocking)."""
        new = {h.key: h for h in holdings}
        if new != self._local:
            old, self._local = self._local, new
            self._gone |= old.keys() - new.keys()
            self._dirty.set()

    async def start(self) -> None:
        self._tasks.spawn(self._writer(), name="presence-writer")
        self._tasks.spawn(self._sweeper(), name="presence-sweeper")
        if self.bus.up:
            self._bus_up()

    async def close(self, *, withdraw: bool = True) -> None:
        """Stop; with ``withdraw`` delete this node's entries first (bounded)."""
        if withdraw and self._bucket is not None:
            bucket = self._bucket
            with contextlib.suppress(BusDown, TimeoutError):
                async with asyncio.timeout(2.0):
                    for key in list(self._local):
                        await bucket.delete(key)
        self._local = {}
        self._closing = True
        await self._tasks.close(timeout_s=2.0)
        await self._unwatch()

    # -- tasks ---------------------------------------------------------------

    def _bus_up(self) -> None:
        if not self._closing:
            self._tasks.spawn(self._bind(), name="presence-bind")

    def _bus_down(self) -> None:
        self._bound.clear()

    async def _bind(self) -> None:
        await self._unwatch()
        try:
            bucket = await self.bus.bucket(BUCKET, self.ttl_s)
            self._bucket = bucket
            self._stop_watch = await bucket.watch(self._changed)
        except BusDown as exc:
            log.warning("presence: %s; other nodes' connectors are not used until it works", exc)
            return
        self._bound.set()
        self._dirty.set()

    async def _unwatch(self) -> None:
        stop, self._stop_watch = self._stop_watch, None
        if stop is not None:
            await stop()

    async def _writer(self) -> None:
        # Writes everything after a change, and again every ttl/3 (heartbeat).
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=self.ttl_s / 3)
            self._dirty.clear()
            bucket = self._bucket
            if bucket is None or not self._bound.is_set():
                continue
            try:
                gone, self._gone = self._gone, set()
                for key in gone:
                    if key not in self._local:
                        await bucket.delete(key)
                for holding in list(self._local.values()):
                    await bucket.put(holding.key, holding.encode())
            except BusDown as exc:
                log.debug("presence write failed: %s", exc)
                if self._closing:
                    return
                self._gone |= gone
                await asyncio.sleep(self.sweep_s)

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_s)
            horizon = time.monotonic() - self.ttl_s
            expired = [k for k, (_, seen) in self._remote.items() if seen < horizon]
            for key in expired:
                holding, _ = self._remote.pop(key)
                log.info(
                    "node %s: its connectors for %s:%d not heard of for %gs; not used any more",
                    holding.node,
                    holding.stage,
                    holding.port,
                    self.ttl_s,
                )
            if expired:
                self._notify()

    def _changed(self, change: KvChange) -> None:
        own = change.key.startswith(node_token(self.node) + ".")
        if own:
            twin = Holding.decode(change.value) if change.value is not None else None
            foreign = twin is not None and bool(self.link) and twin.link != self.link
            if foreign and change.key in self._withdrawn:
                # Written again after we withdrew it: a live twin, not a leftover.
                assert twin is not None
                if not self._said_twin:
                    self._said_twin = True
                    log.error(
                        "another node uses the name %s (its node link is %s, ours %s): "
                        "give each node its own --node; presence is unreliable until then",
                        self.node,
                        twin.link,
                        self.link,
                    )
                return
            if change.value is not None and (foreign or change.key not in self._local):
                # Left by an earlier run of this node: withdraw it.
                self._withdrawn.add(change.key)
                self._gone.add(change.key)
                self._dirty.set()
            return
        if change.value is None:
            if self._remote.pop(change.key, None) is not None:
                self._notify()
            return
        holding = Holding.decode(change.value)
        if holding is None or holding.node == self.node:
            return
        before = self._remote.get(change.key)
        self._remote[change.key] = (holding, time.monotonic() - min(change.age_s, self.ttl_s))
        if before is None or before[0] != holding:
            self._notify()

    def _notify(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                log.exception("presence listener failed")
