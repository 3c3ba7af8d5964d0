"""The one importer of nats-py: a NATS connection that survives outages.

:class:`Bus` connects in the background and keeps trying (a gateway or a
portal starts and serves without NATS; it only loses the fast path), tells
its owner when NATS goes away and comes back (``on_up`` / ``on_down``, in
the event loop, once per transition), and re-subscribes by itself after a
reconnect (nats-py does that for core subscriptions). :class:`KvBucket` is a
JetStream key-value bucket with a bucket-wide ``max_age`` (nats-server 2.9
has no per-entry TTL): an entry that is not written again within
``max_age`` disappears from the bucket.

Nothing else in qanat imports ``nats``; messages are plain ``bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from qanat.errors import ConfigError
from qanat.runtime import TaskOwner

log = logging.getLogger("qanat.cluster.nats")

Handler = Callable[[str, bytes], None]


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """How to reach NATS (``--nats`` and its options).

    Attributes:
        url: one or more ``nats://`` / ``tls://`` URLs, comma-separated;
            ``user:password@`` in a URL is passed on as credentials.
        token: a NATS authentication token ("" for none).
        creds_file: a NATS ``.creds`` file (JWT + NKey seed), or None.
        nkey_seed_file: an NKey seed file, or None.
        tls_ca_file / tls_cert_file / tls_key_file: TLS towards NATS (a
            ``tls://`` URL or a CA file turns TLS on; cert and key for
            mutual TLS).
        connect_timeout_s: bound of one connection attempt.
        reconnect_wait_s: pause between attempts while NATS is away.
    """

    url: str
    token: str = ""
    creds_file: Path | None = None
    nkey_seed_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    connect_timeout_s: float = 2.0
    reconnect_wait_s: float = 0.5

    @property
    def servers(self) -> list[str]:
        """The server URLs.

        Raises:
            ConfigError: a URL is not ``nats://``, ``tls://`` or ``ws(s)://``.
        """
        servers = [u.strip() for u in self.url.split(",") if u.strip()]
        if not servers:
            raise ConfigError("--nats needs a URL such as nats://nats.example.com:4222")
        for server in servers:
            parts = urlsplit(server)
            if parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
                raise ConfigError(
                    f"--nats {server!r} is not a NATS URL; use nats://HOST:4222 "
                    "(tls://HOST:4222 for TLS)"
                )
        return servers

    @property
    def display(self) -> str:
        """The URLs without credentials, for logs."""
        shown = []
        for server in self.servers:
            parts = urlsplit(server)
            netloc = parts.hostname or ""
            if parts.port:
                netloc += f":{parts.port}"
            shown.append(f"{parts.scheme}://{netloc}")
        return ",".join(shown)

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for NATS, or None when TLS is not asked for.

        Raises:
            ConfigError: a file cannot be read.
        """
        wants = self.tls_ca_file is not None or self.tls_cert_file is not None
        if not wants and not any(s.startswith(("tls://", "wss://")) for s in self.servers):
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(self.tls_ca_file) if self.tls_ca_file else None
            )
            if self.tls_cert_file is not None:
                context.load_cert_chain(
                    str(self.tls_cert_file),
                    str(self.tls_key_file) if self.tls_key_file else None,
                )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--nats TLS files: {exc}") from None
        return context


class Bus:
    """One NATS connection, connected and re-connected in the background.

    Args:
        settings: where NATS is.
        name: the connection name shown in NATS monitoring.
        on_up / on_down: called in the event loop when NATS becomes usable
            and when it stops being usable (each once per transition).
    """

    def __init__(
        self,
        settings: NatsSettings,
        name: str,
        *,
        on_up: Callable[[], None] | None = None,
        on_down: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self._on_up = [on_up] if on_up else []
        self._on_down = [on_down] if on_down else []
        self._nc: Client | None = None
        self._up: bool | None = None  # None: not tried yet
        self._subs: list[tuple[str, Handler]] = []
        self._tasks = TaskOwner(f"nats {name}")
        self._closing = False
        self._said_failure = False
        self.up_event = asyncio.Event()

    def add_listener(
        self, on_up: Callable[[], None] | None = None, on_down: Callable[[], None] | None = None
    ) -> None:
        if on_up is not None:
            self._on_up.append(on_up)
        if on_down is not None:
            self._on_down.append(on_down)

    @property
    def up(self) -> bool:
        return self._up is True

    async def start(self) -> None:
        """Start connecting; returns at once (see :attr:`up` / ``on_up``).

        Raises:
            ConfigError: the settings are unusable (bad URL, TLS files).
        """
        self.settings.servers  # noqa: B018 - validates the URLs now
        self.settings.tls_context()
        self._tasks.spawn(self._connect_loop(), name=f"nats-connect {self.name}")

    async def _connect_loop(self) -> None:
        s = self.settings
        while not self._closing:
            nc = Client()
            try:
                await nc.connect(**self._options(nc))
            except (OSError, TimeoutError, nats.errors.Error) as exc:
                with contextlib.suppress(Exception):
                    await nc.close()
                self._failed(exc)
                await asyncio.sleep(s.reconnect_wait_s)
                continue
            self._nc = nc
            for subject, handler in self._subs:
                await nc.subscribe(subject, cb=_callback(handler))
            self._set_up(True)
            return

    def _failed(self, exc: BaseException) -> None:
        """Not connected: say why once per outage (nats-py retries by itself)."""
        if not self._said_failure:
            self._said_failure = True
            log.warning(
                "NATS %s is not reachable (%s); retrying every %gs",
                self.settings.display,
                _describe(exc),
                self.settings.reconnect_wait_s,
            )
        self._set_up(False)

    def _options(self, nc: Client) -> dict[str, Any]:
        s = self.settings

        async def disconnected() -> None:
            self._set_up(False)

        async def reconnected() -> None:
            self._set_up(True)

        async def error(exc: Exception) -> None:
            # While connecting, nats-py retries refused credentials forever
            # inside connect(): this is where the refusal can be said.
            if self._up is not True:
                self._failed(exc)
            else:
                log.debug("NATS: %s", _describe(exc))

        options: dict[str, Any] = {
            "servers": s.servers,
            "name": self.name,
            "connect_timeout": s.connect_timeout_s,
            "reconnect_time_wait": s.reconnect_wait_s,
            "max_reconnect_attempts": -1,
            "allow_reconnect": True,
            "ping_interval": 5,
            "max_outstanding_pings": 2,
            "disconnected_cb": disconnected,
            "reconnected_cb": reconnected,
            "error_cb": error,
        }
        if s.token:
            options["token"] = s.token
        if s.creds_file is not None:
            options["user_credentials"] = str(s.creds_file)
        if s.nkey_seed_file is not None:
            options["nkeys_seed"] = str(s.nkey_seed_file)
        context = s.tls_context()
        if context is not None:
            options["tls"] = context
        return options

    def _set_up(self, up: bool) -> None:
        if up == self._up or (up and self._closing):
            return
        self._up = up
        if up:
            self._said_failure = False
            self.up_event.set()
        else:
            self.up_event.clear()
        for hook in list(self._on_up if up else self._on_down):
            try:
                hook()
            except Exception:
                log.exception("NATS %s listener failed", "up" if up else "down")

    async def subscribe(self, subject: str, handler: Handler) -> None:
        """Call ``handler(subject, data)`` for every message on ``subject``.

        Kept across reconnects; registered now or as soon as NATS is up.
        """
        self._subs.append((subject, handler))
        if self._nc is not None:
            await self._nc.subscribe(subject, cb=_callback(handler))

    async def publish(self, subject: str, data: bytes) -> bool:
        """Send one message now; False (nothing sent) while NATS is away."""
        nc = self._nc
        if nc is None or self._up is not True:
            return False
        try:
            await nc.publish(subject, data)
            await nc.flush(timeout=1)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            log.debug("NATS publish on %s failed: %s", subject, _describe(exc))
            return False
        return True

    async def bucket(self, name: str, max_age_s: float) -> KvBucket:
        """The key-value bucket ``name`` (created if missing), entries expiring after ``max_age_s``.

        Raises:
            BusDown: NATS is not up, or JetStream is not enabled on it.
        """
        nc = self._nc
        if nc is None or self._up is not True:
            raise BusDown("NATS is not connected")
        js = nc.jetstream(timeout=2)
        try:
            try:
                kv = await js.key_value(name)
            except nats.js.errors.BucketNotFoundError:
                kv = await js.create_key_value(
                    api.KeyValueConfig(bucket=name, ttl=max_age_s, history=1)
                )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise BusDown(
                f"key-value bucket {name}: {_describe(exc)} (is JetStream enabled on NATS? "
                "nats-server -js)"
            ) from None
        return KvBucket(kv)

    async def close(self) -> None:
        """Close the connection and stop reconnecting."""
        self._closing = True
        await self._tasks.close(timeout_s=2.0)
        nc, self._nc = self._nc, None
        self._up = False
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), timeout=2.0)


class BusDown(Exception):
    """NATS (or JetStream on it) is not usable right now."""


@dataclass(frozen=True, slots=True)
class KvChange:
    """One change seen by a watcher: ``value`` None when deleted or purged.

    ``age_s``: how long ago the server stored it (0 for live changes).
    """

    key: str
    value: bytes | None
    age_s: float = 0.0


class KvBucket:
    """A JetStream key-value bucket (see the module docstring)."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv

    async def put(self, key: str, value: bytes) -> None:
        """Write ``key``. Raises BusDown."""
        try:
            await self._kv.put(key, value)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            _reraise_cancel()
            raise BusDown(f"put {key}: {_describe(exc)}") from None

    async def delete(self, key: str) -> None:
        """Delete ``key`` (a no-op when absent). Raises BusDown."""
        try:
            await self._kv.delete(key)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            _reraise_cancel()
            raise BusDown(f"delete {key}: {_describe(exc)}") from None

    async def watch(self, on_change: Callable[[KvChange], None]) -> Callable[[], Awaitable[None]]:
        """Call ``on_change`` for every current entry, then for every change.

        Returns a coroutine function that stops the watch. Raises BusDown.
        """
        try:
            watcher = await self._kv.watchall()
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            _reraise_cancel()
            raise BusDown(f"watch: {_describe(exc)}") from None

        async def pump() -> None:
            async for entry in watcher:
                if entry is None:
                    continue  # the end of the initial values
                deleted = entry.operation in ("DEL", "PURGE")
                age_s = _age_s(entry.created)
                value = None if deleted else bytes(entry.value or b"")
                on_change(KvChange(entry.key, value, age_s))

        task = asyncio.get_running_loop().create_task(pump(), name="kv-watch")

        async def stop() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watcher.stop(), timeout=1.0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

        return stop


def _callback(handler: Handler) -> Callable[[Msg], Awaitable[None]]:
    async def cb(msg: Msg) -> None:
        try:
            handler(msg.subject, bytes(msg.data))
        except Exception:
            log.exception("NATS handler for %s failed", msg.subject)

    return cb


def _reraise_cancel() -> None:
    # nats-py turns a cancellation inside a request into its own timeout
    # error; a task being cancelled must still end.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _age_s(created: Any) -> float:
    # nats-py passes the stream timestamp as a datetime (annotated as int).
    if isinstance(created, datetime):
        stamp = created.timestamp()
    elif isinstance(created, int | float):
        stamp = float(created) / (1e9 if created > 1e12 else 1)
    else:
        return 0.0
    return max(0.0, time.time() - stamp)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.replace("nats: ", "")
