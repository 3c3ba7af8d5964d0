"""The gateway's stages, taken from the portal's database.

:class:`DatabaseStageSource` implements :class:`qanat.gateway.stages.StageSource`:
lookups are answered from an in-memory view (:class:`MemoryStageSource`), and
a named background task polls the database to keep that view fresh.

A poll costs one tiny query (the ``stage_revision`` counter, bumped by every
transaction that changes a stage or gateway); only when the number moved are
the gateways read again and swapped in with ``replace_all``, which tells the
subscribers exactly what changed. With the default interval of 0.5 s a change
made by a portal in another process reaches the gateway well within 1 s.

Database access runs in a worker thread so the event loop never blocks on
it. If the database goes away the current view is kept (connectors already
admitted stay admitted, decisions keep using the last known tokens) and the
poller keeps trying, logging the outage once and the recovery once.

Only gateways that have an address (were activated at least once) are part
of the view: a stage that was never activated has nothing to connect to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from qanat.errors import StoreError
from qanat.gateway.stages import MemoryStageSource, StageConfig
from qanat.store.database import Store
from qanat.store.records import GatewayRecord, GatewayState

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL_S = 0.5


def stage_config(gateway: GatewayRecord) -> StageConfig:
    """The data plane's view of one addressed gateway."""
    assert gateway.address_id is not None
    return StageConfig(
        key=gateway.key,
        address_id=gateway.address_id,
        bind_host=gateway.settings.bind_host,
        port_min=gateway.settings.port_min,
        port_max=gateway.settings.port_max,
        active=gateway.state is GatewayState.ACTIVE,
        token_hashes=(gateway.token_hash,) if gateway.token_hash else (),
        renewed_hashes=gateway.renewed_hashes,
        allow_cidrs=gateway.settings.allow_cidrs,
    )


class DatabaseStageSource(MemoryStageSource):
    """Stages from the store, refreshed by polling a change counter.

    Args:
        store: the database to follow; not closed by :meth:`close`.
        poll_interval_s: time between two polls (an attribute: a message
            bus that tells of changes switches it, see qanat.cluster.control).
        transform: applied to every stage read (a node's own bind address
            for the stages' endpoints, see ``--bind-map``).
    """

    def __init__(
        self,
        store: Store,
        *,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        transform: Callable[[StageConfig], StageConfig] | None = None,
    ) -> None:
        super().__init__()
        self._store = store
        self.poll_interval_s = poll_interval_s
        self._transform = transform
        self._revision: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._wake = asyncio.Event()

    @property
    def revision(self) -> int | None:
        """The stage revision of the view held now (None before the first load)."""
        return self._revision

    def poke(self) -> None:
        """Poll now instead of at the end of the interval (a change was announced)."""
        self._wake.set()

    async def start(self) -> None:
        """Load the current stages and start following changes.

        Raises:
            StoreError: the first load failed (the gateway should not start
                with an empty view it cannot refresh).
        """
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(
                self._poll_forever(), name=f"stage-poller {self._store.display_url}"
            )

    async def close(self) -> None:
        """Stop polling; the last view stays readable."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def refresh(self) -> bool:
        """Poll once; return whether the view was reloaded.

        Raises:
            StoreError: the database failed; the view is unchanged.
        """
        loaded = await asyncio.to_thread(self._load_if_changed, self._revision)
        if loaded is None:
            return False
        revision, stages = loaded
        self._revision = revision
        self.replace_all(stages)  # emits the change events, in the event loop
        return True

    async def refresh_now(self) -> None:
        """Poll once now (SIGHUP), not waiting for the next interval.

        Raises:
            StoreError: the database failed; the view is unchanged.
        """
        await self.refresh()

    def _load_if_changed(self, known: int | None) -> tuple[int, dict[str, StageConfig]] | None:
        revision = self._store.stage_revision()
        if revision == known:
            return None
        # Read the counter before the data: a change landing in between is
        # included now and read once more at the next poll, never missed.
        stages = stage_configs(self._store)
        if self._transform is not None:
            stages = {a: self._transform(s) for a, s in stages.items()}
        return revision, stages

    async def _poll_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)
            self._wake.clear()
            try:
                await self.refresh()
            except StoreError as exc:
                if not self._failing:
                    log.warning("stage poller: %s; keeping the last known stages", exc)
                    self._failing = True
                continue
            except Exception:
                # A subscriber's bug must not stop the gateway from following
                # deactivations and renewals.
                log.exception("stage poller: a stage listener failed")
                continue
            if self._failing:
                log.warning("stage poller: database %s is back", self._store.display_url)
                self._failing = False


def stage_configs(store: Store) -> dict[str, StageConfig]:
    """The stages a gateway serves from ``store`` (activated ones), by address id.

    Blocking: call it from a worker thread in the event loop.

    Raises:
        StoreError: the database failed.
    """
    with store.transaction(write=False) as tx:
        gateways = tx.addressed_gateways()
    return {g.address_id: stage_config(g) for g in gateways if g.address_id}
