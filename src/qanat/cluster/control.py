"""The control bus: "stage X changed, revision N" from the portal to every node.

The database stays the source of truth. After a transaction that changed a
stage commits (activate, deactivate, renew, allowlist, settings), the portal
publishes one small message per changed stage on ``qanat.stage.<hash>``
(:func:`stage_subject`); every gateway node subscribes to ``qanat.stage.>``
and, when the message's revision is newer than the view it holds, re-reads
the stages from the database at once (the usual
:class:`~qanat.store.stagesource.DatabaseStageSource` load, which emits the
change events: a deactivation closes the stage's tunnels and then its
ports). A message never carries state, so a lost, duplicated, reordered or
forged one costs at most one extra read.

When NATS is away, a node says so once and follows changes by polling the
database (``fallback_poll_s``, 0.5 s); when it is back it says so once,
re-reads at once (whatever was published meanwhile is picked up), and goes
back to a slow safety poll (``safety_poll_s``). So nothing is lost across a
NATS restart, and a portal that could not publish costs latency, not
correctness.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from qanat.cluster.natsbus import Bus
from qanat.runtime import TaskOwner
from qanat.store.stagesource import DatabaseStageSource

log = logging.getLogger("qanat.cluster.control")

SUBJECT_PREFIX = "qanat.stage"
ALL_STAGES = f"{SUBJECT_PREFIX}.>"


def stage_subject(stage_key: str) -> str:
    """The subject of one stage (a hash: stage keys may hold any character)."""
    return f"{SUBJECT_PREFIX}.{hashlib.sha256(stage_key.encode()).hexdigest()[:16]}"


@dataclass(frozen=True, slots=True)
class StageChanged:
    """One control message."""

    stage: str
    revision: int

    def encode(self) -> bytes:
        return json.dumps({"v": 1, "stage": self.stage, "revision": self.revision}).encode()

    @classmethod
    def decode(cls, data: bytes) -> StageChanged | None:
        """The message, or None when it is not one (ignored by the caller)."""
        try:
            body = json.loads(data)
            return cls(str(body["stage"]), int(body["revision"]))
        except (ValueError, KeyError, TypeError):
            return None


class ControlPublisher:
    """The portal's side: publish after each commit that changed stages.

    :meth:`committed` is a :class:`~qanat.store.database.Store` stage
    listener: it runs in whatever thread committed, so it only hands the
    message to the event loop.
    """

    def __init__(self, bus: Bus, loop: asyncio.AbstractEventLoop) -> None:
        self._bus = bus
        self._loop = loop
        self._tasks = TaskOwner("control publisher")
        self.published = 0
        self.unsent = 0

    def committed(self, revision: int, stage_keys: Iterable[str]) -> None:
        messages = [StageChanged(key, revision) for key in sorted(stage_keys)]
        if messages:
            self._loop.call_soon_threadsafe(self._spawn, messages)

    def _spawn(self, messages: list[StageChanged]) -> None:
        self._tasks.spawn(self._publish(messages), name="control-publish")

    async def _publish(self, messages: list[StageChanged]) -> None:
        for message in messages:
            if await self._bus.publish(stage_subject(message.stage), message.encode()):
                self.published += 1
            else:
                # Nodes poll while NATS is away and re-read when it is back.
                self.unsent += 1

    async def close(self) -> None:
        await self._tasks.close(timeout_s=2.0)


class ControlFollower:
    """The node's side: wake the database stage source on every newer message.

    Args:
        bus: the node's NATS connection.
        source: the stages; its poll interval is switched between
            ``fallback_poll_s`` (NATS away) and ``safety_poll_s`` (NATS up).
    """

    def __init__(
        self,
        bus: Bus,
        source: DatabaseStageSource,
        *,
        fallback_poll_s: float = 0.5,
        safety_poll_s: float = 5.0,
    ) -> None:
        self._bus = bus
        self._source = source
        self._fallback_poll_s = fallback_poll_s
        self._safety_poll_s = safety_poll_s
        self._said_down = False
        self.messages = 0
        source.poll_interval_s = fallback_poll_s
        bus.add_listener(on_up=self._up, on_down=self._down)

    async def start(self) -> None:
        await self._bus.subscribe(ALL_STAGES, self._message)

    def _message(self, subject: str, data: bytes) -> None:
        message = StageChanged.decode(data)
        if message is None:
            log.debug("ignored a message on %s that is not a stage change", subject)
            return
        self.messages += 1
        known = self._source.revision
        if known is None or message.revision > known:
            self._source.poke()

    def _up(self) -> None:
        self._source.poll_interval_s = self._safety_poll_s
        if self._said_down:
            log.warning(
                "NATS %s is back: stage changes arrive as messages again (re-reading now)",
                self._bus.settings.display,
            )
            self._said_down = False
        self._source.poke()  # whatever was published while we were away

    def _down(self) -> None:
        self._source.poll_interval_s = self._fallback_poll_s
        if not self._said_down:
            log.warning(
                "NATS %s is unreachable: following stage changes by polling the database "
                "every %gs until it is back",
                self._bus.settings.display,
                self._fallback_poll_s,
            )
            self._said_down = True
        self._source.poke()
