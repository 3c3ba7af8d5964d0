"""``qanat up``, ``qanat portal`` and the database-backed ``qanat gateway``.

``qanat up`` is the whole product on one machine, in one process and one
event loop::

    listen address (default 127.0.0.1:8080)
      └─ gateway front door ── GET /sg_<uuid> + upgrade ──> connector tunnels
                            └─ anything else ─────────────> portal (pages, /api/v1)
    embedded SQLite in the data directory
      ├─ portal service: writes stages, gateways, tokens (hashes), audit
      ├─ DatabaseStageSource: the gateway's view, polled (to_thread) every 0.5 s
      └─ GatewayReporter: live connectors written back for the status

The same pieces run as separate processes sharing one database:
``qanat portal`` (pages and API on their own port) and ``qanat gateway
--database-url URL`` (tunnels; stages from the database). A change made in
the portal reaches every gateway through the same polling source, within a
second; with ``--nats`` (several nodes, qanat.cluster) a NATS message after
each commit wakes the nodes at once and the poll is only the fallback.

Every database call of the portal and of the gateway's hooks runs in a
worker thread, so a slow or locked database never stalls the tunnels.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from qanat import __version__
from qanat.cluster.control import ControlPublisher
from qanat.cluster.natsbus import Bus, NatsSettings
from qanat.cluster.node import ClusterNode, ClusterSettings
from qanat.datadir import secure_data_dir
from qanat.errors import ConfigError
from qanat.gateway.gated import HttpFactory, serve_http_door
from qanat.gateway.pressure import DoorPressure
from qanat.gateway.serve import GatewayPart, GatewayService, serve_gateway
from qanat.gateway.server import Gateway
from qanat.gateway.settings import GatewaySettings
from qanat.gateway.stages import StageConfig
from qanat.portal import PasswordHasher, Portal, PortalConfig, localadmin
from qanat.portal.config import DEFAULT_BIND_POOL
from qanat.portal.declared import catalogue_sink
from qanat.portal.http import PortalHttp, PortalHttpSettings, build_app, set_local_admin
from qanat.portal.http.sessions import Signer, load_secret
from qanat.store import (
    DatabaseStageSource,
    PrivateGatewaySettings,
    Store,
    StoreConfig,
    open_store,
    redact_url,
    sqlite_url,
)
from qanat.store.reporter import DatabasePart
from qanat.tls import ensure_dev_certificate, reload_certificate, server_context

log = logging.getLogger("qanat.up")


@dataclass(frozen=True, slots=True)
class UpConfig:
    """Everything ``qanat up`` is configured with, parsed once at the edge.

    Attributes:
        data_dir: database, host key, portal secret, local admin key.
        listen_host / listen_port: the one address for pages, API and tunnels.
        public_url: the base URL connectors dial (addresses are
            ``<public_url>/sg_<uuid>``); default ``http://<listen address>``.
        database_url: default SQLite in ``data_dir``.
        busy_timeout_s: how long a write waits for a database lock.
        poll_interval_s: how often the gateway reads the stage change counter.
        keepalive_s: gateway pings to connectors.
        report_refresh_s: how often keepalive round-trips are written.
        endpoint_pool: the network (or single address) new stages' bind
            addresses are allocated from, one address per stage, so that no
            two stages share an endpoint port; all of loopback by default.
        node: this gateway node's name in the connector status.
        ssl_context: TLS for the listen address (None: plain HTTP).
        ca_file: the certificate connectors and ``qanat admin`` must trust
            when it is a development certificate, else "".
        hasher: password KDF (tests pass a cheap one).
        http: the portal's HTTP limits.
        gateway: the gateway's tuning (keepalive, channel-open timeout,
            hedging, ...), as for ``qanat gateway``; listen address and data
            directory are taken from above.
    """

    data_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    public_url: str | None = None
    database_url: str | None = None
    busy_timeout_s: float = 5.0
    poll_interval_s: float = 0.5
    keepalive_s: float = 25.0
    report_refresh_s: float = 5.0
    endpoint_pool: str = DEFAULT_BIND_POOL
    node: str = field(default_factory=socket.gethostname)
    ssl_context: ssl.SSLContext | None = None
    #: The (certificate, key) files behind ``ssl_context``, reloaded on SIGHUP.
    tls_files: tuple[Path, Path | None] | None = None
    ca_file: str = ""
    hasher: PasswordHasher | None = None
    http: PortalHttpSettings = field(default_factory=PortalHttpSettings)
    gateway: GatewaySettings | None = None

    @property
    def gateway_settings(self) -> GatewaySettings:
        base = self.gateway or GatewaySettings(data_dir=self.data_dir, keepalive_s=self.keepalive_s)
        return dataclasses.replace(
            base,
            data_dir=self.data_dir,
            listen_host=self.listen_host,
            listen_port=self.listen_port,
            tls_cert_path=None,  # qanat up serves ssl_context (it reloads it itself)
        )

    @property
    def store_url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir)


@dataclass(frozen=True, slots=True)
class FirstAdmin:
    """The credentials created on the very first start (printed once)."""

    username: str
    password: str = field(repr=False)


def make_data_dir(path: Path) -> None:
    """Create the data directory (mode 0700: it holds secrets), or fix its modes.

    Raises:
        ConfigError: it cannot be created.
    """
    secure_data_dir(path)


def bootstrap(
    portal: Portal, data_dir: Path, url: str, ca_file: str = ""
) -> tuple[FirstAdmin | None, localadmin.LocalAdmin]:
    """Create the first admin if there is no user yet; write the local admin key.

    Blocking (database, scrypt, files): call it from a worker thread.
    """
    password = localadmin.new_password()
    first = None
    if portal.create_first_admin("qanat-up", localadmin.FIRST_ADMIN, password):
        first = FirstAdmin(localadmin.FIRST_ADMIN, password)
    return first, localadmin.write_file(data_dir, url, ca_file=ca_file)


def _announce_first_admin(first: FirstAdmin | None, data_dir: Path) -> None:
    if first is not None:
        _say("  first start: created the admin user (shown only now; stored as a hash)")
        _say(f"    username: {first.username}")
        _say(f"    password: {first.password}")
    path = data_dir / localadmin.LOCAL_ADMIN_FILE
    _say(f"  qanat admin uses the local admin key in {path} (mode 0600)")


def tls_context(
    data_dir: Path,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    plain_http: bool = False,
) -> tuple[ssl.SSLContext | None, str]:
    """See :func:`tls_setup` (this is its first two values)."""
    context, ca_file, _files = tls_setup(data_dir, cert, key, plain_http=plain_http)
    return context, ca_file


def tls_setup(
    data_dir: Path,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    plain_http: bool = False,
) -> tuple[ssl.SSLContext | None, str, tuple[Path, Path | None] | None]:
    """TLS for ``qanat up``'s listen address.

    With ``cert``/``key`` those are served; with ``plain_http`` nothing is
    (for a TLS-terminating proxy in front, or a throwaway local run);
    otherwise a self-signed development certificate is made once in the data
    directory and served. Returns the context, for the development
    certificate its path (connectors pass it as ``--tls-ca``), and the
    files to reload on SIGHUP.

    Raises:
        ConfigError: the certificate files are missing or do not match.
    """
    if plain_http:
        return None, "", None
    if cert is not None:
        return server_context(cert, key), "", (cert, key)
    dev_cert, dev_key = ensure_dev_certificate(data_dir)
    return server_context(dev_cert, dev_key), str(dev_cert), (dev_cert, dev_key)


def base_url(host: str, port: int, *, tls: bool) -> str:
    """How a connector on this machine (or the LAN, for a wildcard) reaches us."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


class PortalPart:
    """The portal on the gateway's listen address (a ``GatewayPart``)."""

    def __init__(self, up: Up) -> None:
        self.up = up

    def attach(self, gateway: Gateway) -> None:
        return None

    async def start(self, gateway: Gateway) -> None:
        up, cfg = self.up, self.up.config
        assert up.store is not None
        host, port = gateway.address
        up.url = cfg.public_url or base_url(
            cfg.listen_host if cfg.listen_host else host, port, tls=cfg.ssl_context is not None
        )
        portal_config = PortalConfig(
            up.url, stage_defaults=PrivateGatewaySettings(), bind_pool=cfg.endpoint_pool
        )
        up.portal = Portal(up.store, portal_config, hasher=cfg.hasher)
        gateway.describe_sink = catalogue_sink(up.portal)
        http_settings = cfg.http
        if up.url.startswith("https:") and not http_settings.secure_cookies:
            http_settings = dataclasses.replace(http_settings, secure_cookies=True)
        if cfg.ca_file and not http_settings.connector_ca_file:
            http_settings = dataclasses.replace(http_settings, connector_ca_file=cfg.ca_file)
        trusted = cfg.gateway_settings.trusted_proxy_cidrs
        if trusted and not http_settings.trusted_proxy_cidrs:
            http_settings = dataclasses.replace(http_settings, trusted_proxy_cidrs=trusted)
        app = build_app(
            up.portal,
            Signer(load_secret(cfg.data_dir), session_ttl_s=http_settings.session_ttl_s),
            settings=http_settings,
        )
        up.http = PortalHttp(app)
        await up.http.start()
        gateway.http_fallback = up.http.protocol_factory()  # type: ignore[assignment]
        # Last: the local admin file tells `qanat admin` (and scripts) that the
        # portal is ready to answer.
        set_local_admin(app, await asyncio.to_thread(up._first_start))

    async def stop_accepting(self) -> None:
        if self.up.http is not None:
            await self.up.http.close()

    async def close(self) -> None:
        return None


class Up:
    """Portal and gateway in one process (see the module docstring)."""

    def __init__(self, config: UpConfig) -> None:
        self.config = config
        self.store: Store | None = None
        self.portal: Portal | None = None
        self.service: GatewayService | None = None
        self.http: PortalHttp | None = None
        self.url = ""
        self.first_admin: FirstAdmin | None = None

    @property
    def gateway(self) -> Gateway | None:
        return self.service.gateway if self.service is not None else None

    @property
    def local_admin_path(self) -> Path:
        return self.config.data_dir / localadmin.LOCAL_ADMIN_FILE

    async def start(self) -> None:
        """Open (and migrate) the database, bind, create the first admin if needed.

        Raises:
            StoreError: the database cannot be opened or migrated.
            ConfigError: the data directory cannot be written.
            OSError: the listen address cannot be bound.
        """
        cfg = self.config
        make_data_dir(cfg.data_dir)
        store_config = StoreConfig(url=cfg.store_url, busy_timeout_s=cfg.busy_timeout_s)
        self.store = await asyncio.to_thread(open_store, store_config)
        source = DatabaseStageSource(self.store, poll_interval_s=cfg.poll_interval_s)
        self.service = GatewayService(
            cfg.gateway_settings,
            source,
            stages_label=f"database {redact_url(cfg.store_url)}",
            ssl_context=cfg.ssl_context,
            parts=[
                DatabasePart(self.store, cfg.node, refresh_s=cfg.report_refresh_s),
                PortalPart(self),
            ],
            reload_stages=source.refresh_now,
        )
        try:
            await self.service.start()
        except BaseException:
            self.store.close()
            self.store = None
            raise

    def _first_start(self) -> localadmin.LocalAdmin:
        assert self.portal is not None
        self.first_admin, local = bootstrap(
            self.portal, self.config.data_dir, self.url, self.config.ca_file
        )
        return local

    async def close(self) -> None:
        """Stop accepting, close portal connections and tunnels, then the database."""
        if self.service is not None:
            log.info("qanat up: stopping")
            await self.service.close()
        if self.store is not None:
            self.store.close()
            self.store = None

    async def reload(self) -> None:
        """SIGHUP: the served certificate again (development or --tls-cert), the stages now."""
        assert self.service is not None
        await self.service.reload()
        gateway = self.gateway
        files = self.config.tls_files
        if gateway is None or gateway.ssl_context is None or files is None:
            return
        try:
            reload_certificate(gateway.ssl_context, *files)
            log.info(
                "SIGHUP: reloaded the TLS certificate %s: new connections get it, "
                "established tunnels are kept",
                files[0],
            )
        except ConfigError as exc:
            log.error("SIGHUP: TLS reload failed, keeping the current certificate: %s", exc)

    def log_status(self) -> None:
        assert self.service is not None
        self.service.log_status()

    def announce(self) -> None:
        assert self.service is not None
        self.service.announce()
        cfg = self.config
        _say(f"qanat {__version__} up: portal and gateway on {self.url}")
        _say(f"  portal:     {self.url}/")
        _say(f"  connectors: {self.url}/sg_<id> (the address a stage shows when activated)")
        _say(f"  database:   {redact_url(cfg.store_url)}")
        _announce_first_admin(self.first_admin, cfg.data_dir)
        if cfg.ca_file:
            _announce_dev_certificate(cfg.ca_file)
        elif cfg.ssl_context is None:
            _say("  plain HTTP (--plain-http): put a TLS-terminating proxy in front")
        _say("  press Ctrl-C to stop")


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The portal alone has nothing to reload; a stray SIGHUP must not stop it.
    loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP: nothing to reload"))
    await stop.wait()


def _say(text: str) -> None:
    print(text, flush=True)


def _announce_dev_certificate(ca_file: str) -> None:
    bar = "  " + "!" * 70
    _say(bar)
    _say("  DEVELOPMENT CERTIFICATE: served over HTTPS with a self-signed certificate")
    _say(f"  ({ca_file}) that browsers and connectors do not trust by default.")
    _say(f"  Connectors: qanat connect --tls-ca {ca_file} ...")
    _say("  For production: qanat up --tls-cert FILE --tls-key FILE (a real CA's certificate).")
    _say(bar)


async def run_up(config: UpConfig) -> int:
    """``qanat up`` until SIGINT/SIGTERM (SIGHUP reloads, SIGUSR2 logs the status)."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    code = await serve_gateway(Up(config))
    _say("qanat up: stopped")
    return code


async def run_portal(
    data_dir: Path,
    database_url: str,
    listen: tuple[str, int],
    public_url: str,
    nats: NatsSettings | None = None,
) -> int:
    """``qanat portal``: pages and API only, on their own listen address.

    With ``nats`` every committed stage change is also published on the
    control bus (cluster hook, qanat.cluster.control).
    """
    logging.getLogger("alembic").setLevel(logging.WARNING)
    make_data_dir(data_dir)
    store = await asyncio.to_thread(open_store, StoreConfig(url=database_url))
    http: PortalHttp | None = None
    server: asyncio.Server | None = None
    door: DoorPressure | None = None
    bus: Bus | None = None
    publisher: ControlPublisher | None = None
    try:
        if nats is not None:
            bus = Bus(nats, "qanat-portal")
            publisher = ControlPublisher(bus, asyncio.get_running_loop())
            store.stage_listeners.append(publisher.committed)
            await bus.start()
        portal = Portal(store, PortalConfig(public_url))
        app = build_app(
            portal,
            Signer(load_secret(data_dir)),
            settings=PortalHttpSettings(secure_cookies=public_url.startswith("https:")),
            local_admin=None,
        )
        http = PortalHttp(app)
        await http.start()
        # The same door as the gateway's front door: head and idle deadlines,
        # caps on connections per source and in all, pressure logged.
        factory = cast(HttpFactory, http.protocol_factory())
        server, door = await serve_http_door(factory, *listen)
        sockname = server.sockets[0].getsockname()
        host, port = str(sockname[0]), int(sockname[1])
        url = f"http://{host}:{port}"
        first, local = await asyncio.to_thread(bootstrap, portal, data_dir, url)
        set_local_admin(app, local)
        _say(f"qanat portal on {url}/ (database {redact_url(database_url)})")
        _say(f"  stage addresses: {public_url}/sg_<id>")
        if nats is not None:
            _say(f"  control bus: NATS {nats.display}")
        _announce_first_admin(first, data_dir)
        await _until_signal()
    finally:
        if server is not None:
            server.close()
        if http is not None:
            await http.close()
        if door is not None:
            door.close()
        if publisher is not None:
            await publisher.close()
        if bus is not None:
            await bus.close()
        store.close()
    return 0


async def run_db_gateway(
    settings: GatewaySettings,
    database_url: str,
    node: str,
    cluster: ClusterSettings | None = None,
    bind_map: Callable[[StageConfig], StageConfig] | None = None,
) -> int:
    """``qanat gateway --database-url``: tunnels with stages from the portal's database.

    Cluster hook: with ``cluster`` the node joins the others over NATS
    (qanat.cluster.node), and SIGTERM drains instead of stopping at once.
    """
    store = await asyncio.to_thread(open_store, StoreConfig(url=database_url), migrate=False)
    try:
        source = DatabaseStageSource(store, transform=bind_map)
        node = cluster.node if cluster is not None else node
        # A cluster node stays ready without the database (see DatabasePart).
        parts: list[GatewayPart] = [DatabasePart(store, node, readiness=cluster is None)]
        if cluster is not None:
            # Last part: its drain (stop_accepting) runs first on SIGTERM.
            parts.append(ClusterNode(source, cluster))
        service = GatewayService(
            settings,
            source,
            stages_label=f"database {redact_url(database_url)}",
            parts=parts,
            reload_stages=source.refresh_now,
        )
        return await serve_gateway(service)
    finally:
        store.close()


def default_node() -> str:
    return os.environ.get("QANAT_NODE") or socket.gethostname()
