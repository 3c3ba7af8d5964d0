"""The ``qanat`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from qanat import __version__
from qanat.datadir import private_umask, secure_data_dir
from qanat.errors import ConfigError, QanatError
from qanat.logs import setup_logging

if TYPE_CHECKING:
    from qanat.gateway.settings import GatewaySettings
    from qanat.gateway.stages import StageConfig

log = logging.getLogger("qanat")

DEFAULT_DATA_DIR = Path("~/.local/share/qanat").expanduser()


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


# -- qanat connect --------------------------------------------------------------


def _cmd_connect(args: argparse.Namespace) -> int:
    from qanat.connector.options import options_from_args
    from qanat.connector.runner import Connector
    from qanat.ops.commands import connector_metrics
    from qanat.runtime import run

    options = options_from_args(args)

    async def main() -> int:
        connector = Connector(options)
        async with connector_metrics(args.metrics, connector):
            return await connector.run()

    return run(main())


# -- qanat gateway --------------------------------------------------------------


def _gateway_settings(
    args: argparse.Namespace, data_dir: Path, host: str, port: int, **more: object
) -> GatewaySettings:
    """The gateway's tuning flags (shared by ``qanat gateway`` and ``qanat up``), validated."""
    from qanat.connector.options import parse_duration
    from qanat.gateway.hedge import HedgePolicy
    from qanat.gateway.settings import GatewaySettings
    from qanat.ops.commands import metrics_allow_from_args, trusted_proxies_from_args

    keepalive_s = parse_duration(args.keepalive, "--keepalive")
    # Unless given, a ping may take as long as the interval, up to 5 s.
    keepalive_timeout_s = (
        parse_duration(args.keepalive_timeout, "--keepalive-timeout")
        if args.keepalive_timeout is not None
        else min(5.0, keepalive_s)
        if keepalive_s > 0
        else 5.0
    )
    if keepalive_s and keepalive_timeout_s > keepalive_s:
        raise ConfigError("--keepalive-timeout must not be longer than --keepalive")
    hedge_max_s = parse_duration(args.hedge_after_max, "--hedge-after-max")
    hedge = (
        HedgePolicy(min_s=min(HedgePolicy().min_s, hedge_max_s), max_s=hedge_max_s)
        if hedge_max_s > 0
        else HedgePolicy(enabled=False)
    )
    return GatewaySettings(
        data_dir=data_dir,
        listen_host=host,
        listen_port=port,
        keepalive_s=keepalive_s,
        keepalive_timeout_s=keepalive_timeout_s,
        keepalive_misses=args.keepalive_misses,
        channel_open_timeout_s=parse_duration(args.channel_open_timeout, "--channel-open-timeout"),
        channel_stall_s=parse_duration(args.channel_stall, "--channel-stall"),
        balance=args.balance.replace("-", "_"),
        allow_target_mismatch=args.allow_target_mismatch,
        failure_threshold=args.failure_threshold,
        cooldown_s=parse_duration(args.cooldown, "--cooldown"),
        flap_connects=args.flap_connects,
        flap_window_s=parse_duration(args.flap_window, "--flap-window"),
        flap_backoff_s=parse_duration(args.flap_backoff, "--flap-backoff"),
        flap_backoff_max_s=parse_duration(args.flap_backoff_max, "--flap-backoff-max"),
        udp_idle_timeout_s=parse_duration(args.udp_idle_timeout, "--udp-idle-timeout"),
        udp_max_flows=args.udp_max_flows,
        metrics_allow_cidrs=metrics_allow_from_args(args),
        trusted_proxy_cidrs=trusted_proxies_from_args(args),
        hedge=hedge,
        **more,  # type: ignore[arg-type]
    )


def _cmd_gateway(args: argparse.Namespace) -> int:
    from qanat.net.ssh import HostKey

    data_dir = Path(args.data_dir).expanduser()
    private_umask()
    secure_data_dir(data_dir)
    if args.action == "fingerprint":
        print(HostKey.load_or_create(data_dir / "host_key").fingerprint)
        return 0
    if args.action == "add-stage":
        return _add_stage(args, data_dir)
    from qanat.gateway.serve import GatewayService, serve_gateway
    from qanat.gateway.stages import FileStageSource
    from qanat.runtime import run

    host, port = _host_port(args.listen, "--listen")
    stage_file = Path(args.stage_file) if args.stage_file else data_dir / "stages.toml"
    tls_cert, tls_key = _gateway_tls_files(args, data_dir)
    settings = _gateway_settings(
        args,
        data_dir,
        host,
        port,
        redirect_url=args.redirect,
        tls_cert_path=tls_cert,
        tls_key_path=tls_key,
        tls_client_ca_path=Path(args.tls_client_ca) if args.tls_client_ca else None,
    )
    if args.database_url:
        from qanat.cluster import options as cluster_options
        from qanat.store import normalize_url
        from qanat.up import default_node, run_db_gateway

        nats = cluster_options.nats_settings(args)
        cluster = cluster_options.cluster_settings(args, nats) if nats is not None else None
        mapping = cluster_options.bind_map(args.bind_map)
        return run(
            run_db_gateway(
                settings,
                normalize_url(args.database_url),
                default_node(),
                cluster,
                cluster_options.map_binds(mapping) if mapping else None,
            )
        )
    if args.nats:
        raise ConfigError("--nats needs --database-url: cluster nodes share the portal's database")
    source = FileStageSource(stage_file)

    async def reload_stages() -> None:
        source.reload()

    async def main() -> int:
        service = GatewayService(
            settings, source, stages_label=str(stage_file), reload_stages=reload_stages
        )
        if args.tls_self_signed:
            _warn_dev_certificate(tls_cert)
        return await serve_gateway(service)

    return run(main())


def _gateway_tls_files(args: argparse.Namespace, data_dir: Path) -> tuple[Path | None, Path | None]:
    """The certificate and key to serve, from --tls-cert/--tls-key or --tls-self-signed."""
    if args.tls_self_signed:
        if args.tls_cert or args.tls_key:
            raise ConfigError("--tls-self-signed and --tls-cert/--tls-key exclude each other")
        from qanat.tls import ensure_dev_certificate

        return ensure_dev_certificate(data_dir)
    if args.tls_key and not args.tls_cert:
        raise ConfigError("--tls-key needs --tls-cert")
    if args.tls_client_ca and not args.tls_cert:
        raise ConfigError("--tls-client-ca needs TLS: give --tls-cert and --tls-key")
    if not args.tls_cert:
        return None, None
    return Path(args.tls_cert), Path(args.tls_key) if args.tls_key else None


def _warn_dev_certificate(cert: Path | None) -> None:
    bar = "!" * 72
    log.warning(bar)
    log.warning("DEVELOPMENT CERTIFICATE: this gateway serves a self-signed certificate")
    log.warning("(%s) that no connector trusts by default.", cert)
    log.warning("Connectors must be given it: qanat connect --tls-ca %s ...", cert)
    log.warning("For production use --tls-cert/--tls-key with a certificate from a real CA.")
    log.warning(bar)


def _add_stage(args: argparse.Namespace, data_dir: Path) -> int:
    from qanat.gateway.stages import stage_allowlist, stage_entry
    from qanat.wire.tokens import hash_token, new_address_id, new_token

    if not args.name:
        raise ConfigError("add-stage needs --name")
    allow = stage_allowlist(f"stage {args.name!r}", args.bind, args.allow or None)
    stage_file = Path(args.stage_file) if args.stage_file else data_dir / "stages.toml"
    stage_file.parent.mkdir(parents=True, exist_ok=True)
    token = new_token()
    address_id = new_address_id()
    entry = stage_entry(
        {
            "name": args.name,
            "address_id": address_id,
            "token_sha256": [hash_token(token)],
            "bind": args.bind,
            "ports": args.ports,
            "allow": list(allow),
        }
    )
    with stage_file.open("a") as handle:
        handle.write(entry)
    host, port = _host_port(args.listen, "--listen")
    print(f"stage {args.name} added to {stage_file}")
    scheme = "https" if args.tls_cert or args.tls_self_signed else "http"
    print(f"address: {scheme}://{host}:{port}/{address_id}")
    print(f"token:   {token}   (shown once; only its hash is stored)")
    return 0


# -- qanat up / qanat portal -------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    from qanat.portal import names
    from qanat.runtime import run
    from qanat.store import normalize_url
    from qanat.up import UpConfig, default_node, run_up, tls_setup

    data_dir = Path(args.data_dir).expanduser()
    private_umask()
    secure_data_dir(data_dir)
    host, port = _host_port(args.listen, "--listen")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if args.plain_http and args.tls_cert:
        raise ConfigError("--plain-http and --tls-cert exclude each other")
    ssl_context, ca_file, tls_files = tls_setup(
        data_dir,
        Path(args.tls_cert) if args.tls_cert else None,
        Path(args.tls_key) if args.tls_key else None,
        plain_http=args.plain_http,
    )
    config = UpConfig(
        data_dir=data_dir,
        listen_host=host,
        listen_port=port,
        public_url=_public_url(args.public_url),
        database_url=normalize_url(args.database_url) if args.database_url else None,
        node=default_node(),
        endpoint_pool=names.bind_pool(args.endpoint_bind),
        ssl_context=ssl_context,
        tls_files=tls_files,
        ca_file=ca_file,
        gateway=_gateway_settings(args, data_dir, host, port),
    )
    return run(run_up(config))


def _cmd_portal(args: argparse.Namespace) -> int:
    from qanat.runtime import run
    from qanat.store import database_url
    from qanat.up import run_portal

    data_dir = Path(args.data_dir).expanduser()
    private_umask()
    secure_data_dir(data_dir)
    url = database_url(data_dir, {"QANAT_DATABASE_URL": args.database_url or ""})
    from qanat.cluster.options import nats_settings

    public = _public_url(args.public_url) or "http://127.0.0.1:8080"
    nats = nats_settings(args)
    return run(run_portal(data_dir, url, _host_port(args.listen, "--listen"), public, nats))


def _public_url(text: str | None) -> str | None:
    if not text:
        return None
    from qanat.portal import PortalConfig

    return PortalConfig(text).public_base_url  # validates; raises ConfigError


def _add_gateway_tuning(parser: argparse.ArgumentParser) -> None:
    """Keepalive, channel opens, balance, flapping, UDP: for ``qanat gateway`` and ``qanat up``."""
    parser.add_argument(
        "--keepalive", default="25s", help="ping interval to connectors (default 25s, 0s disables)"
    )
    parser.add_argument(
        "--keepalive-timeout",
        default=None,
        help="how long a ping may take (default: the keepalive interval, at most 5s)",
    )
    parser.add_argument(
        "--keepalive-misses",
        type=int,
        default=3,
        help="missed pings in a row that close a tunnel (default 3)",
    )
    parser.add_argument(
        "--channel-open-timeout",
        default="5s",
        help="how long one connector may take to open a channel before the next is "
        "tried (default 5s)",
    )
    parser.add_argument(
        "--channel-stall",
        default="1s",
        help="longest a channel open may be pending before other connectors get the new "
        "connections (adaptive below it: 10x the connector's usual open time, at least "
        "0.1s; default 1s)",
    )
    parser.add_argument(
        "--balance",
        choices=["round-robin", "least-connections", "round_robin", "least_connections"],
        default="round-robin",
        help="how app connections are spread over the connectors of a port",
    )
    parser.add_argument(
        "--allow-target-mismatch",
        action="store_true",
        help="let connectors serve one port with different targets (refused by default)",
    )
    parser.add_argument(
        "--failure-threshold",
        type=int,
        default=3,
        help="failed channel opens in a row that take a connector out of a port's "
        "rotation (default 3)",
    )
    parser.add_argument(
        "--cooldown",
        default="5s",
        help="how long it stays out before one connection tries it again (default 5s)",
    )
    parser.add_argument(
        "--flap-connects",
        type=int,
        default=10,
        help="tunnels one connector may open within --flap-window before it is backed "
        "off with 429 (default 10)",
    )
    parser.add_argument(
        "--flap-window", default="60s", help="window counted for --flap-connects (default 60s)"
    )
    parser.add_argument(
        "--flap-backoff", default="10s", help="first back-off, doubled on repeats (default 10s)"
    )
    parser.add_argument("--flap-backoff-max", default="5m", help="longest back-off (default 5m)")
    parser.add_argument(
        "--udp-idle-timeout",
        default="60s",
        help="forget a UDP flow (one app source) after this long without traffic",
    )
    parser.add_argument(
        "--udp-max-flows", type=int, default=100, help="most UDP flows per UDP endpoint"
    )
    parser.add_argument(
        "--hedge-after-max",
        default="1s",
        help="when a connector has not opened an app connection's channel within this "
        "(or sooner: 4x the usual open time), ask the next connector too (default 1s; "
        "0s disables)",
    )


def _add_portal_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]

    from qanat.cluster import options as cluster_options

    env_db = os.environ.get("QANAT_DATABASE_URL") or None
    up = sub.add_parser(
        "up",
        help="portal and gateway in one process on an embedded database",
        description="Run the portal (pages and API) and the gateway (connector tunnels) on"
        " one listen address, with SQLite in the data directory.",
    )
    up.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="database, keys, secrets")
    up.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT for portal and tunnels")
    up.add_argument(
        "--public-url", default=None, help="base URL connectors dial (default https://LISTEN)"
    )
    up.add_argument("--database-url", default=env_db, help="use this database instead of SQLite")
    up.add_argument(
        "--endpoint-bind",
        default="127.0.0.0/8",
        help="network (CIDR) or address each new stage gets its own bind address from, for"
        " its endpoint ports (secure-gateway:<port>); default: loopback, 127.0.0.0/8",
    )
    up.add_argument("--tls-cert", default=None, help="certificate chain to serve (PEM)")
    up.add_argument("--tls-key", default=None, help="its private key (PEM)")
    up.add_argument(
        "--plain-http",
        action="store_true",
        help="serve plain HTTP (default without --tls-cert: HTTPS with a generated "
        "self-signed development certificate)",
    )
    _add_gateway_tuning(up)
    from qanat.ops import commands as ops_commands

    ops_commands.add_gateway_metrics_argument(up)
    up.add_argument("-v", "--verbose", action="count", default=0)
    up.set_defaults(func=_cmd_up)

    portal = sub.add_parser(
        "portal", help="run the portal alone (pages and API), sharing the gateways' database"
    )
    portal.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="portal secret, SQLite")
    portal.add_argument("--listen", default="127.0.0.1:8090", help="HOST:PORT for pages and API")
    portal.add_argument(
        "--public-url", default=None, help="base URL of the gateway connectors dial"
    )
    portal.add_argument("--database-url", default=env_db, help="default: SQLite in --data-dir")
    portal.add_argument("-v", "--verbose", action="count", default=0)
    cluster_options.add_nats_arguments(portal)
    portal.set_defaults(func=_cmd_portal)

    from qanat.admincli import add_admin_parser

    add_admin_parser(sub, DEFAULT_DATA_DIR)


# -- qanat hosts ----------------------------------------------------------------


def _cmd_hosts(args: argparse.Namespace) -> int:
    from qanat.gateway.reach import hosts_line, kubernetes_manifest
    from qanat.gateway.stages import find_stage

    data_dir = Path(args.data_dir).expanduser()
    stage_file = Path(args.stage_file) if args.stage_file else data_dir / "stages.toml"
    stage = find_stage(_hosts_stages(args, data_dir, stage_file), args.stage)
    if args.format == "kubernetes":
        namespace = args.namespace or stage.key.rsplit("/", 1)[-1].lower()
        print(kubernetes_manifest(stage, namespace, args.port), end="")
    else:
        print(hosts_line(stage))
    return 0


def _hosts_stages(
    args: argparse.Namespace, data_dir: Path, stage_file: Path
) -> dict[str, StageConfig]:
    """The stages of the stage file, or of the database (``qanat up``, the portal)."""
    from qanat.gateway.stages import load_stage_file
    from qanat.store import StoreConfig, normalize_url, open_store, sqlite_url
    from qanat.store.engine import SQLITE_FILE_NAME
    from qanat.store.stagesource import stage_configs

    url = normalize_url(args.database_url) if args.database_url else None
    if url is None and not args.stage_file and not stage_file.exists():
        if (data_dir / SQLITE_FILE_NAME).exists():
            url = sqlite_url(data_dir)  # qanat up's embedded database
        else:
            raise ConfigError(
                f"no stage file {stage_file} and no database in {data_dir}: give --data-dir "
                "of the gateway (or qanat up), --stage-file, or --database-url"
            )
    if url is None:
        return load_stage_file(stage_file)
    store = open_store(StoreConfig(url=url), migrate=False)
    try:
        return stage_configs(store)
    finally:
        store.close()


# -- parser -----------------------------------------------------------------------


def build_parser(*, admin_only: bool = False) -> argparse.ArgumentParser:
    """The command line; ``admin_only`` builds just ``qanat admin`` (see main)."""
    parser = argparse.ArgumentParser(prog="qanat", description="qanat private gateway")
    parser.add_argument("--version", action="version", version=f"qanat {__version__}")
    parser.add_argument("--log-format", choices=["human", "json"], default="human")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    if admin_only:
        from qanat.admincli import add_admin_parser

        add_admin_parser(sub, DEFAULT_DATA_DIR)
        return parser

    from qanat.cluster import options as cluster_options
    from qanat.connector.options import add_connect_arguments
    from qanat.ops import commands as ops_commands

    connect = sub.add_parser(
        "connect",
        help="run a connector (outsystemscc-compatible)",
        description="Open an outbound tunnel to a stage's gateway and serve the given remotes.",
    )
    add_connect_arguments(connect)
    ops_commands.add_connect_metrics_argument(connect)
    connect.set_defaults(func=_cmd_connect)

    gateway = sub.add_parser("gateway", help="run a standalone gateway (stages from a file)")
    gateway.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=["run", "fingerprint", "add-stage"],
        help="run (default), print the host key fingerprint, or add a stage to the stage file",
    )
    gateway.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT for connectors")
    gateway.add_argument(
        "--data-dir", default=str(DEFAULT_DATA_DIR), help="host key and default stage file"
    )
    gateway.add_argument(
        "--stage-file", default=None, help="TOML stage file (default DATA_DIR/stages.toml)"
    )
    _add_gateway_tuning(gateway)
    gateway.add_argument(
        "--redirect", default=None, help="answer address GETs with 302 to this base URL"
    )
    gateway.add_argument(
        "--tls-cert", default=None, help="serve HTTPS with this PEM certificate chain"
    )
    gateway.add_argument(
        "--tls-key", default=None, help="private key of --tls-cert (PEM; may be in the cert file)"
    )
    gateway.add_argument(
        "--tls-client-ca",
        default=None,
        help="require connector client certificates issued by these CAs (mutual TLS)",
    )
    gateway.add_argument(
        "--tls-self-signed",
        action="store_true",
        help="serve HTTPS with a self-signed development certificate (DATA_DIR/tls)",
    )
    gateway.add_argument("--name", default=None, help="add-stage: stage name")
    gateway.add_argument(
        "--bind", default="127.0.0.1", help="add-stage: address the stage's ports bind"
    )
    gateway.add_argument("--ports", default="1024-65535", help="add-stage: allowed port range")
    gateway.add_argument(
        "--database-url",
        default=os.environ.get("QANAT_DATABASE_URL") or None,
        help="take stages from the portal's database (sqlite:///... or postgresql://...); "
        "env QANAT_DATABASE_URL",
    )
    gateway.add_argument(
        "--allow",
        action="append",
        default=[],
        help="add-stage: app network CIDR allowed to connect (repeat; required unless "
        "--bind is loopback)",
    )
    gateway.add_argument("-v", "--verbose", action="count", default=0)
    ops_commands.add_gateway_metrics_argument(gateway)
    cluster_options.add_nats_arguments(gateway)
    cluster_options.add_node_arguments(gateway)
    gateway.set_defaults(func=_cmd_gateway)

    ops_commands.add_commands(sub)  # diagnose, probe
    _add_portal_parsers(sub)
    hosts = sub.add_parser(
        "hosts",
        help="print how a stage's apps reach secure-gateway (hosts line or Kubernetes)",
        description="Print the /etc/hosts line '<bind address> secure-gateway' of a stage, "
        "or a Kubernetes Service + EndpointSlice named secure-gateway for its namespace.",
    )
    hosts.add_argument("--stage", required=True, help="stage key, or its last part (dev)")
    hosts.add_argument(
        "--stage-file", default=None, help="TOML stage file (default DATA_DIR/stages.toml)"
    )
    hosts.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        help="gateway (or qanat up) data directory: its stages.toml or its database",
    )

    hosts.add_argument(
        "--database-url",
        default=os.environ.get("QANAT_DATABASE_URL") or None,
        help="read the stages from the portal's database",
    )
    hosts.add_argument("--format", choices=["hosts", "kubernetes"], default="hosts")
    hosts.add_argument(
        "--namespace", default=None, help="kubernetes: the stage's namespace (default: stage name)"
    )
    hosts.add_argument(
        "--port", type=int, action="append", default=[], help="kubernetes: endpoint port (repeat)"
    )
    hosts.set_defaults(func=_cmd_hosts)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The subcommand's name, skipping the top-level options."""
    words = iter(argv)
    for word in words:
        if word == "--log-format":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    # `qanat admin` is a short-lived API client: building only its parser
    # keeps the connector's and gateway's modules (asyncio, SOCKS, SSH) out.
    parser = build_parser(admin_only=_command_of(arguments) == "admin")
    args = parser.parse_args(arguments)
    verbose = getattr(args, "verbose", 0)
    setup_logging(verbose, args.log_format)
    if verbose >= 3:
        from qanat.net.ssh import debug_packets

        debug_packets()
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"qanat: {exc}", file=sys.stderr)
        return 2
    except QanatError as exc:
        print(f"qanat: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
