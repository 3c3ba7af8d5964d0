"""Command-line options of the cluster: ``--nats ...`` and the node options.

``qanat portal`` takes the NATS options (it publishes control messages);
``qanat gateway --database-url`` takes them plus the node options. Secrets
never come from the command line (it is visible in ``ps``): the NATS token
and the cluster secret are read from files or environment variables.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from qanat.cluster import linkwire
from qanat.connector.options import parse_duration
from qanat.errors import ConfigError

if TYPE_CHECKING:  # imported when used: nats-py is not loaded for other commands
    from qanat.cluster.natsbus import NatsSettings
    from qanat.cluster.node import ClusterSettings
    from qanat.gateway.stages import StageConfig


def add_nats_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster (NATS)")
    group.add_argument(
        "--nats",
        default=os.environ.get("QANAT_NATS_URL") or None,
        metavar="URL",
        help="NATS server(s), comma-separated (nats://host:4222, tls://...); env QANAT_NATS_URL",
    )
    group.add_argument("--nats-creds", default=None, metavar="FILE", help="NATS .creds file")
    group.add_argument("--nats-nkey", default=None, metavar="FILE", help="NATS NKey seed file")
    group.add_argument(
        "--nats-token-file",
        default=None,
        metavar="FILE",
        help="file holding a NATS token (or env QANAT_NATS_TOKEN)",
    )
    group.add_argument("--nats-tls-ca", default=None, metavar="FILE", help="CA for NATS TLS")
    group.add_argument("--nats-tls-cert", default=None, metavar="FILE", help="client cert")
    group.add_argument("--nats-tls-key", default=None, metavar="FILE", help="client key")


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster node (with --nats and --database-url)")
    group.add_argument(
        "--node",
        default=None,
        help="this node's unique name (default env QANAT_NODE, else the host name)",
    )
    group.add_argument(
        "--node-link",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="listen address of the node-to-node link; only other nodes may reach it",
    )
    group.add_argument(
        "--node-link-advertise",
        default="",
        metavar="HOST:PORT",
        help="address other nodes dial (default the --node-link address)",
    )
    group.add_argument(
        "--cluster-secret-file",
        default=None,
        metavar="FILE",
        help="shared secret of the nodes (or env QANAT_CLUSTER_SECRET); openssl rand -hex 32",
    )
    group.add_argument(
        "--bind-map",
        action="append",
        default=[],
        metavar="STAGE_ADDR=NODE_ADDR",
        help="listen on NODE_ADDR for stages bound to STAGE_ADDR (several nodes on one host)",
    )
    group.add_argument(
        "--drain-timeout",
        default="30s",
        help="SIGTERM: how long open app connections may take to finish (default 30s)",
    )
    group.add_argument(
        "--drain-grace",
        default="2s",
        help="SIGTERM: keep accepting this long while /readyz answers 503, so the "
        "balancer stops sending first (default 2s; 0s with a Kubernetes preStop pause)",
    )
    group.add_argument(
        "--presence-ttl",
        default="6s",
        help="a dead node's connectors are forgotten this long after its last heartbeat",
    )


def _read(path: str, what: str) -> str:
    try:
        return Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None


def nats_settings(args: argparse.Namespace) -> NatsSettings | None:
    """The NATS settings, or None without ``--nats``.

    Raises:
        ConfigError: a bad URL, an unreadable file.
    """
    if not args.nats:
        return None
    from qanat.cluster.natsbus import NatsSettings

    token = os.environ.get("QANAT_NATS_TOKEN", "")
    if args.nats_token_file:
        token = _read(args.nats_token_file, "--nats-token-file")

    def path(value: str | None, flag: str) -> Path | None:
        if value is None:
            return None
        found = Path(value).expanduser()
        if not found.is_file():
            raise ConfigError(f"{flag} {value}: no such file")
        return found

    settings = NatsSettings(
        url=args.nats,
        token=token,
        creds_file=path(args.nats_creds, "--nats-creds"),
        nkey_seed_file=path(args.nats_nkey, "--nats-nkey"),
        tls_ca_file=path(args.nats_tls_ca, "--nats-tls-ca"),
        tls_cert_file=path(args.nats_tls_cert, "--nats-tls-cert"),
        tls_key_file=path(args.nats_tls_key, "--nats-tls-key"),
    )
    settings.servers  # noqa: B018 - validates now
    settings.tls_context()
    return settings


def _host_port(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{flag} {text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def cluster_settings(args: argparse.Namespace, nats: NatsSettings) -> ClusterSettings:
    """The node's settings from the gateway's arguments.

    Raises:
        ConfigError: naming the option and the fix.
    """
    from qanat.cluster.node import ClusterSettings

    if args.cluster_secret_file:
        secret = _read(args.cluster_secret_file, "--cluster-secret-file").encode()
        where = f"--cluster-secret-file {args.cluster_secret_file}"
    else:
        secret = os.environ.get("QANAT_CLUSTER_SECRET", "").encode()
        where = "QANAT_CLUSTER_SECRET"
        if not secret:
            raise ConfigError(
                "--nats on a gateway needs the cluster secret the nodes share: "
                "--cluster-secret-file FILE or env QANAT_CLUSTER_SECRET "
                "(make one with: openssl rand -hex 32)"
            )
    try:
        linkwire.check_secret(secret, where)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    host, port = _host_port(args.node_link, "--node-link")
    if args.node_link_advertise:
        _host_port(args.node_link_advertise, "--node-link-advertise")
    drain = parse_duration(args.drain_timeout, "--drain-timeout")
    grace = parse_duration(args.drain_grace, "--drain-grace")
    if grace >= drain:
        raise ConfigError("--drain-grace must be shorter than --drain-timeout")
    ttl = parse_duration(args.presence_ttl, "--presence-ttl")
    if not 1 <= ttl <= 10:
        raise ConfigError("--presence-ttl must be between 1s and 10s")
    return ClusterSettings(
        nats=nats,
        node=args.node or os.environ.get("QANAT_NODE") or socket.gethostname(),
        secret=secret,
        link_host=host,
        link_port=port,
        link_advertise=args.node_link_advertise,
        presence_ttl_s=ttl,
        drain_timeout_s=drain,
        drain_grace_s=grace,
    )


def bind_map(entries: list[str]) -> dict[str, str]:
    """``--bind-map`` as a dict of stage address -> node address.

    Raises:
        ConfigError: an entry is not two IP addresses.
    """
    mapping: dict[str, str] = {}
    for entry in entries:
        stage_addr, sep, node_addr = entry.partition("=")
        try:
            if not sep:
                raise ValueError
            ipaddress.ip_address(stage_addr)
            ipaddress.ip_address(node_addr)
        except ValueError:
            raise ConfigError(
                f"--bind-map {entry!r} is not STAGE_ADDR=NODE_ADDR (two IP addresses, "
                "e.g. 127.0.0.1=127.0.1.1)"
            ) from None
        mapping[stage_addr] = node_addr
    return mapping


def map_binds(mapping: dict[str, str]) -> Callable[[StageConfig], StageConfig]:
    """A stage transform applying ``mapping`` (for DatabaseStageSource)."""

    def transform(stage: StageConfig) -> StageConfig:
        node_addr = mapping.get(stage.bind_host)
        return stage if node_addr is None else replace(stage, bind_host=node_addr)

    return transform
