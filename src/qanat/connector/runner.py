"""The connector's main loop: sessions, retries, signals, pid file.

Stopping is staged, so that rolling restarts lose no request: the first
SIGTERM (or SIGINT) while connected drains -- the gateway is told to send no
new channels (``drain@qanat``, only to a gateway that announced it), open
connections get up to ``--drain-timeout`` to finish, then the tunnel is
closed. A second signal stops at once. A gateway that answers 429 with
Retry-After (too many reconnects) is not retried before that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from qanat.connector.backoff import Backoff
from qanat.connector.egress import Egress
from qanat.connector.options import ConnectOptions
from qanat.connector.session import Session, Stats
from qanat.errors import AuthError, HandshakeError, QanatError, RemotesRejected
from qanat.logs import ContextLogger
from qanat.wire.handshake import new_client_id

log = logging.getLogger("qanat.connector")
T = TypeVar("T")

#: A session that lasted this long resets the backoff.
STABLE_AFTER_S = 30.0


def stage_of(address: str) -> str:
    """The stage as the connector knows it: the address id (``sg_<uuid>``), else the path."""
    path = urlsplit(address).path.rstrip("/")
    return path.rsplit("/", 1)[-1] or "-"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, AuthError):
        return f"token rejected ({exc.status}): {exc.body or exc}"
    if isinstance(exc, (HandshakeError, RemotesRejected, QanatError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class Connector:
    """Runs sessions until stopped or out of retries."""

    def __init__(self, options: ConnectOptions) -> None:
        self.options = options
        self.client_id = new_client_id()
        self.stats = Stats()
        self.backoff = Backoff(max_s=options.max_retry_interval_s)
        self.stop_event = asyncio.Event()
        self.drain_requested = asyncio.Event()
        self.skip_wait = asyncio.Event()
        self.session: Session | None = None
        # Every line carries stage and connector id; session lines add
        # tunnel=<attempt number> (the gateway numbers its tunnels itself;
        # correlate the two sides by connector id).
        self.log = ContextLogger(
            log, stage=stage_of(options.address), connector=options.connector_id or self.client_id
        )

    def print_stats(self) -> None:
        s = self.stats
        since = (
            f"connected for {time.time() - s.connected_since:.0f}s"
            if s.connected_since
            else "not connected"
        )
        rtt = f"{s.last_rtt_s * 1e3:.1f}ms" if s.last_rtt_s is not None else "-"
        self.log.info(
            "stats: %s, sessions %d, attempts %d, channels open %d / total %d "
            "(confirmed before the dial %d, refused %d), "
            "keepalive rtt %s, bytes to gateway %d, from gateway %d",
            since,
            s.sessions,
            s.attempts,
            s.channels_open,
            s.channels_total,
            s.channels_early,
            s.channels_refused,
            rtt,
            s.bytes_up,
            s.bytes_down,
        )

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.skip_wait.set)
        loop.add_signal_handler(signal.SIGUSR2, self.print_stats)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)

    def _on_stop_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self.drain_requested.is_set():
            self.log.info("%s again: stopping now", name)
            self.stop_event.set()
        elif self.stats.connected_since is not None and self.options.drain_timeout_s > 0:
            self.log.info(
                "%s: draining (open connections get up to %gs; send it again to stop now)",
                name,
                self.options.drain_timeout_s,
            )
            self.drain_requested.set()
        else:
            self.stop_event.set()

    async def run(self) -> int:
        """Returns the process exit code: 0 when stopped, 1 when out of retries."""
        opts = self.options
        egress = Egress(opts)  # checks the TLS files before anything else
        pid_path = Path(opts.pid_file) if opts.pid_file else None
        if pid_path is not None:
            pid_path.write_text(f"{os.getpid()}\n")
        self._install_signals()
        remotes = ", ".join(r.describe() for r in opts.remotes)
        self.log.info(
            "qanat connect %s: %s (connector %s, session id %s)",
            opts.address,
            remotes,
            opts.connector_id or "-",
            self.client_id,
        )
        proxy = egress.proxy_for(opts.address)
        if proxy is not None:
            self.log.info("through proxy %s (from %s)", proxy, proxy.source)
        try:
            return await self._loop(egress)
        finally:
            if pid_path is not None:
                with contextlib.suppress(OSError):
                    pid_path.unlink()

    async def _loop(self, egress: Egress) -> int:
        opts = self.options
        failures = 0
        while not self.stop_event.is_set():
            self.stats.attempts += 1
            slog = self.log.bind(tunnel=self.stats.attempts)
            session = Session(opts, self.client_id, self.stats, egress, logger=slog)
            self.session = session
            try:
                latency = await self._until_stop(session.connect())
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                await session.close()
                if self.stop_event.is_set():
                    break
                failures += 1
                slog.warning("Connection failed: %s", _describe(exc))
                if opts.max_retry_count is not None and failures > opts.max_retry_count:
                    slog.error(
                        "Giving up after %d attempts (--max-retry-count %d)",
                        failures,
                        opts.max_retry_count,
                    )
                    return 1
                retry_after = exc.retry_after_s if isinstance(exc, HandshakeError) else None
                await self._wait_retry(failures, retry_after)
                continue
            if latency is None:  # stopped while connecting
                await session.close()
                break
            self.stats.sessions += 1
            started = time.monotonic()
            self.stats.connected_since = time.time()
            slog.info("Connected (latency %.1fms)", latency * 1e3)
            reason = await self._until_stop(self._ended_or_drain(session))
            if reason is None and self.drain_requested.is_set() and not self.stop_event.is_set():
                await self._drain(session)
            await session.close()
            self.stats.connected_since = None
            if reason is None or self.stop_event.is_set() or self.drain_requested.is_set():
                break
            slog.warning("Disconnected: %s", reason)
            if time.monotonic() - started >= STABLE_AFTER_S:
                self.backoff.reset()
                failures = 0
            failures += 1
            if opts.max_retry_count is not None and failures > opts.max_retry_count:
                slog.error(
                    "Giving up after %d attempts (--max-retry-count %d)",
                    failures,
                    opts.max_retry_count,
                )
                return 1
            await self._wait_retry(failures)
        self.log.info("Stopped")
        return 0

    async def _ended_or_drain(self, session: Session) -> str | None:
        """The session's end reason, or None once a drain is requested."""
        drain = asyncio.ensure_future(self.drain_requested.wait())
        waiters: set[asyncio.Future[Any]] = {drain, session.ended}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
        if session.ended.done():
            return session.ended.result()
        return None

    async def _drain(self, session: Session) -> None:
        timeout_s = self.options.drain_timeout_s
        open_now = len(session.splices) + session.dialing
        self.log.info("Draining: %d connection(s) open, waiting up to %gs", open_now, timeout_s)
        started = time.monotonic()
        result = await self._until_stop(session.drain(timeout_s))
        if result is None:
            self.log.warning("Stopped while draining; open connections are cut")
            return
        told, left = result
        how = (
            "the gateway sends no new connections"
            if told
            else "the gateway cannot be told to stop sending (not a qanat gateway)"
        )
        if left:
            self.log.warning(
                "Drain deadline (%gs) reached with %d connection(s) still open; they are cut (%s)",
                timeout_s,
                left,
                how,
            )
        else:
            self.log.info(
                "Drained in %.1fs: no connection open (%s)", time.monotonic() - started, how
            )

    async def _until_stop(self, aw: Awaitable[T]) -> T | None:
        """Await ``aw`` unless a stop signal comes first (then return None)."""
        task = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self.stop_event.wait())
        try:
            done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return None

    async def _wait_retry(self, failures: int, retry_after_s: float | None = None) -> None:
        delay = self.backoff.next_delay()
        if retry_after_s is not None and retry_after_s > delay:
            self.log.info("The gateway asks to wait %gs before reconnecting", retry_after_s)
            delay = retry_after_s
        total = (
            "unlimited"
            if self.options.max_retry_count is None
            else str(self.options.max_retry_count)
        )
        self.log.info("Retrying in %.1fs (attempt %d/%s)", delay, failures, total)
        self.skip_wait.clear()
        waiters = {
            asyncio.ensure_future(self.skip_wait.wait()),
            asyncio.ensure_future(self.stop_event.wait()),
            asyncio.ensure_future(self.drain_requested.wait()),
        }
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self.skip_wait.is_set() and not self.stop_event.is_set():
            self.log.info("SIGHUP: retrying now")
