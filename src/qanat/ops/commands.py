"""Command-line wiring of the operations features, so ``qanat.cli`` only registers it.

- ``qanat diagnose`` (the ``qanat connect`` arguments plus a few of its own)
- ``qanat probe HOST:PORT``
- ``qanat connect --metrics HOST:PORT`` and ``qanat gateway --metrics-allow CIDR``
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from qanat.errors import ConfigError

if TYPE_CHECKING:
    from qanat.connector.runner import Connector

log = logging.getLogger("qanat.ops")

_ESCAPES = {"\\r": "\r", "\\n": "\n", "\\t": "\t", "\\0": "\0", "\\\\": "\\"}


def _unescape(text: str) -> bytes:
    """``EHLO x\\r\\n`` as typed in a shell -> the bytes meant."""
    out, i = [], 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair in _ESCAPES:
            out.append(_ESCAPES[pair])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out).encode("utf-8")


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9465")
    return host.strip("[]") or "0.0.0.0", int(port)


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON (stable keys)"
    )
    parser.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="colour the output (default: on a terminal, unless NO_COLOR is set)",
    )


# -- qanat diagnose --------------------------------------------------------------------


def cmd_diagnose(args: argparse.Namespace) -> int:
    from qanat.connector.options import options_from_args, parse_duration
    from qanat.ops.diagnose import DiagnoseSettings, diagnose
    from qanat.ops.endpoints import step_name
    from qanat.ops.report import HumanPrinter, print_json, use_colour
    from qanat.runtime import run

    options = options_from_args(args)
    timeout_s = parse_duration(args.timeout, "--timeout")
    if timeout_s <= 0:
        raise ConfigError("--timeout must be positive")
    settings = DiagnoseSettings(
        step_timeout_s=timeout_s,
        udp_probe=_unescape(args.udp_probe_data) if args.udp_probe else None,
        udp_wait_s=min(timeout_s, 2.0),
    )
    printer = None
    if not args.json:
        width = max([9, *(len(step_name(r)) for r in options.remotes)]) + 1
        printer = HumanPrinter(sys.stdout, use_colour(sys.stdout, args.color), width)
        printer.header(f"qanat diagnose {options.address}")
    report = run(diagnose(options, settings, printer.step if printer else None))
    if printer is None:
        print_json(report, sys.stdout)
    else:
        printer.summary(report)
    return 0 if report.ok else 1


# -- qanat probe ---------------------------------------------------------------------------


def cmd_probe(args: argparse.Namespace) -> int:
    from qanat.connector.options import parse_duration
    from qanat.ops.probe import ProbeSettings, parse_target, probe
    from qanat.ops.report import HumanPrinter, print_json, use_colour
    from qanat.runtime import run

    host, port = parse_target(args.target)
    timeout_s = parse_duration(args.timeout, "--timeout")
    watch_s = parse_duration(args.watch, "--watch")
    if timeout_s <= 0:
        raise ConfigError("--timeout must be positive")
    settings = ProbeSettings(
        timeout_s=timeout_s,
        http_path=args.http,
        send=_unescape(args.send) if args.send is not None else None,
        watch_s=watch_s,
    )
    printer = None
    if not args.json:
        printer = HumanPrinter(sys.stdout, use_colour(sys.stdout, args.color), width=8)
        printer.header(f"qanat probe {host}:{port}")
    report = run(probe(host, port, settings, printer.step if printer else None))
    if printer is None:
        print_json(report, sys.stdout)
    else:
        printer.summary(report)
    return 0 if report.ok else 1


# -- registration ----------------------------------------------------------------------------


def add_commands(sub: Any) -> None:
    """Add ``diagnose`` and ``probe`` to the top-level subparsers."""
    from qanat.connector.options import add_connect_arguments

    diagnose = sub.add_parser(
        "diagnose",
        help="check a connector's path to its gateway, step by step",
        description=(
            "Takes the arguments of qanat connect and checks DNS, TCP, TLS, the address GET, "
            "the WebSocket upgrade, the token, SSH, the remotes and every endpoint; says what "
            "to fix. Connects, checks and disconnects: nothing keeps serving. Exit code 0 "
            "only when every step passed."
        ),
    )
    add_connect_arguments(diagnose)
    diagnose.add_argument("--timeout", default="10s", help="bound of each step (default 10s)")
    diagnose.add_argument(
        "--udp-probe", action="store_true", help="send a datagram to each UDP endpoint"
    )
    diagnose.add_argument(
        "--udp-probe-data",
        default="qanat-probe\\n",
        metavar="TEXT",
        help="the datagram (\\r \\n \\t escapes; default 'qanat-probe\\n')",
    )
    _add_output_arguments(diagnose)
    diagnose.set_defaults(func=cmd_diagnose)

    probe = sub.add_parser(
        "probe",
        help="check an endpoint from the app side (secure-gateway:<port>)",
        description=(
            "Resolves the name, connects, measures connect time and the round trip, and "
            "explains refusals, resets and closes. Exit code 0 only when every step passed."
        ),
    )
    probe.add_argument("target", help="secure-gateway:<port>, HOST:PORT, or just the port")
    mode = probe.add_mutually_exclusive_group()
    mode.add_argument("--http", metavar="PATH", help="send GET PATH and show the status line")
    mode.add_argument(
        "--send", metavar="TEXT", help="send TEXT (\\r \\n \\t escapes) and show the answer"
    )
    probe.add_argument("--timeout", default="5s", help="bound of each step (default 5s)")
    probe.add_argument(
        "--watch",
        default="2s",
        help="without --http/--send: how long to watch the open connection (default 2s)",
    )
    probe.add_argument("-v", "--verbose", action="count", default=0)
    _add_output_arguments(probe)
    probe.set_defaults(func=cmd_probe)


def add_connect_metrics_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics",
        default=None,
        metavar="HOST:PORT",
        help="serve /metrics, /healthz and /readyz on this address (off by default)",
    )


def add_trusted_proxy_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="reverse proxies (e.g. the TLS-terminating one) whose X-Forwarded-For names the "
        "client, repeatable; from any other peer the header is ignored (default: none)",
    )


def trusted_proxies_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--trusted-proxy`` networks, validated.

    Raises:
        ConfigError: an entry is not a CIDR.
    """
    from qanat.wire.forwarded import parse_networks

    given = tuple(getattr(args, "trusted_proxy", []) or [])
    try:
        return tuple(str(n) for n in parse_networks(given))
    except ValueError as exc:
        raise ConfigError(f"{exc}; give e.g. --trusted-proxy 10.0.0.5/32") from None


def add_gateway_metrics_argument(parser: argparse.ArgumentParser) -> None:
    add_trusted_proxy_argument(parser)
    parser.add_argument(
        "--metrics-allow",
        action="append",
        default=None,
        metavar="CIDR",
        help="sources allowed to read /metrics on the listener, repeatable "
        "(default: loopback and private ranges; 0.0.0.0/0 and ::/0 allow all)",
    )


def metrics_allow_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    from qanat.gateway.settings import PRIVATE_CIDRS

    if not args.metrics_allow:
        return PRIVATE_CIDRS
    cidrs = tuple(c.strip() for item in args.metrics_allow for c in item.split(",") if c.strip())
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"--metrics-allow {cidr!r} is not a CIDR (e.g. 10.0.0.0/8)") from None
    return cidrs


@contextlib.asynccontextmanager
async def connector_metrics(address: str | None, connector: Connector) -> AsyncIterator[None]:
    """Serve the connector's operations paths on ``address`` while the block runs."""
    if not address:
        yield
        return
    from qanat.connector.metrics import connector_exposition, connector_health
    from qanat.runtime import TaskOwner
    from qanat.telemetry.httpd import OpsRoutes, serve

    host, port = _host_port(address, "--metrics")
    owner = TaskOwner("metrics")
    routes = OpsRoutes(connector_health(connector), connector_exposition(connector))
    try:
        server = await serve(host, port, routes, owner.spawn)
    except OSError as exc:
        raise ConfigError(f"--metrics {address}: cannot listen ({exc.strerror or exc})") from None
    bound = server.sockets[0].getsockname()
    log.info("metrics on http://%s:%d/metrics", bound[0], bound[1])
    try:
        yield
    finally:
        server.close()
        await owner.close()
