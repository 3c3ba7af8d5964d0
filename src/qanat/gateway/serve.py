"""Running a gateway as a process: one assembly for every command that does.

``qanat gateway`` (stage file), ``qanat gateway --database-url`` and
``qanat up`` all run :func:`serve_gateway` over a :class:`GatewayService`
(the gateway, its stage source and the parts attached to it: the live
connector report and database check, the portal). So they share, by
construction:

- the signals: SIGHUP reloads the TLS certificate and the stage source
  (the stage file is read again; the database is polled at once), SIGUSR2
  logs one ``status {json}`` line, SIGTERM/SIGINT stop;
- the staged shutdown: stop accepting (portal first), close the tunnels,
  wait for their tasks with a deadline, cancel the rest, close the parts;
- the log lines at start (listen address, TLS, host key, stages, keepalive).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from qanat import __version__
from qanat.errors import ConfigError, QanatError
from qanat.gateway.server import Gateway
from qanat.gateway.settings import GatewaySettings
from qanat.gateway.stages import StageSource
from qanat.gateway.status import to_json

log = logging.getLogger("qanat.gateway")

#: How long closing waits for the tunnels' tasks before cancelling them.
DRAIN_S = 3.0


class GatewayPart(Protocol):
    """Something that lives with a gateway (the portal, the live connector report)."""

    def attach(self, gateway: Gateway) -> None:
        """Before the gateway starts (add listeners, readiness checks)."""

    async def start(self, gateway: Gateway) -> None:
        """After the gateway listens."""

    async def stop_accepting(self) -> None:
        """First step of the shutdown, before the tunnels are closed."""

    async def close(self) -> None:
        """Last step, after the gateway closed."""


class GatewayService:
    """A gateway, its stage source and its parts, started and closed in order."""

    def __init__(
        self,
        settings: GatewaySettings,
        stages: StageSource,
        *,
        stages_label: str,
        ssl_context: ssl.SSLContext | None = None,
        parts: Sequence[GatewayPart] = (),
        reload_stages: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.stages = stages
        self.stages_label = stages_label
        self.gateway = Gateway(settings, stages, ssl_context=ssl_context)
        self.parts = tuple(parts)
        self._reload_stages = reload_stages
        self._started: list[GatewayPart] = []
        self._gateway_started = False

    async def start(self) -> None:
        """Raises: QanatError, OSError: something could not start (all is closed again)."""
        try:
            for part in self.parts:
                part.attach(self.gateway)
            await self.gateway.start()
            self._gateway_started = True
            for part in self.parts:
                self._started.append(part)
                await part.start(self.gateway)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Staged shutdown (see the module docstring)."""
        for part in reversed(self._started):
            await part.stop_accepting()
        await self.gateway.close(drain_s=DRAIN_S)
        for part in reversed(self._started):
            await part.close()
        self._started.clear()

    async def reload(self) -> None:
        """SIGHUP: the certificate and the stages again; a failure keeps the old ones."""
        gateway = self.gateway
        if self._reload_stages is not None:
            try:
                await self._reload_stages()
                log.info(
                    "SIGHUP: reloaded %s: %d stage(s)",
                    self.stages_label,
                    len(self.stages.stages()),
                )
            except (ConfigError, QanatError) as exc:
                log.error("SIGHUP: stage reload failed, keeping the current stages: %s", exc)
        try:
            if gateway.reload_tls():
                log.info(
                    "SIGHUP: reloaded the TLS certificate %s: new connections get it, "
                    "established tunnels are kept",
                    self.settings.tls_cert_path,
                )
            elif self._reload_stages is None:
                log.info("SIGHUP: reloaded nothing (no certificate file, no stage file)")
        except ConfigError as exc:
            log.error("SIGHUP: TLS reload failed, keeping the current certificate: %s", exc)

    def log_status(self) -> None:
        log.info("status %s", json.dumps(to_json(self.gateway.status())))

    def announce(self) -> None:
        gateway, settings = self.gateway, self.settings
        host, port = gateway.address
        log.info(
            "qanat gateway %s listening on %s://%s:%d", __version__, gateway.scheme, host, port
        )
        if settings.tls_cert_path is not None:
            log.info("TLS certificate %s (reloaded on SIGHUP)", settings.tls_cert_path)
        if settings.tls_client_ca_path is not None:
            log.info(
                "mutual TLS: connectors need a certificate from %s", settings.tls_client_ca_path
            )
        log.info("host key fingerprint %s", gateway.host_key.fingerprint)
        log.info("%d stage(s) from %s", len(self.stages.stages()), self.stages_label)
        if settings.keepalive_s > 0:
            log.info(
                "keepalive every %gs, %gs timeout, %d misses: silent connectors leave their "
                "pools within %gs; channel opens time out after %gs, a second connector is "
                "asked after at most %gs; balance %s",
                settings.keepalive_s,
                settings.ping_timeout_s,
                settings.keepalive_misses,
                settings.dead_peer_bound_s,
                settings.channel_open_timeout_s,
                settings.hedge.max_s,
                settings.balance,
            )


class Servable(Protocol):
    """What :func:`serve_gateway` runs: a :class:`GatewayService`, or ``qanat up``."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def reload(self) -> None: ...

    def log_status(self) -> None: ...

    def announce(self) -> None: ...


async def serve_gateway(service: Servable, stop: asyncio.Event | None = None) -> int:
    """Start ``service``, serve until SIGTERM/SIGINT (or ``stop``), close it; exit code 0.

    Raises:
        QanatError, OSError: the service could not start.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    await service.start()
    reloading: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = loop.create_task(service.reload(), name="sighup-reload")
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        loop.add_signal_handler(signal.SIGUSR2, service.log_status)
        service.announce()
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        for task in list(reloading):
            task.cancel()
        await service.close()
    return 0
