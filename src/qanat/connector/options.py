"""``qanat connect`` options: the outsystemscc command line, parsed once into a frozen object."""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from qanat.connector.proxies import ProxyEnvironment, parse_proxy_url
from qanat.errors import ConfigError
from qanat.net.proxy import ProxySpec
from qanat.wire.configmsg import MAX_REMOTES
from qanat.wire.describe import MAX_DESCRIPTION_CHARS, Declaration
from qanat.wire.handshake import TOKEN_HEADER, derive_connector_id, valid_connector_id
from qanat.wire.remotes import Remote, decode_remotes

_log = logging.getLogger("qanat.connector")
#: The environment variable that may carry the token instead of --header.
TOKEN_ENV = "QANAT_TOKEN"  # noqa: S105 -- a variable name, not a secret

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, what: str) -> float:
    """Parse a Go-style duration (``25s``, ``5m``, ``1h30m``, ``0s``) into seconds.

    A bare number means seconds.

    Raises:
        ConfigError: naming the option and the accepted forms.
    """
    text = text.strip()
    try:
        return float(text) if text and text.replace(".", "", 1).isdigit() else _go_duration(text)
    except ValueError:
        raise ConfigError(
            f"{what}: {text!r} is not a duration (examples: 25s, 5m, 1h30m, 0s)"
        ) from None


def _go_duration(text: str) -> float:
    pos, total = 0, 0.0
    if not text:
        raise ValueError(text)
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            raise ValueError(text)
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(text)
    return total


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` -> (name, value).

    Raises:
        ConfigError: when there is no ``:`` or the name is empty.
    """
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
        raise ConfigError(f"--header {text!r}: expected 'Name: value' (for example 'token: abc')")
    return name, value.strip()


def read_header_file(path: str) -> list[tuple[str, str]]:
    """Headers from a file: one ``Name: value`` per line; blank lines and ``#``
    comments are skipped. A file readable by other users gets a warning.

    Raises:
        ConfigError: the file cannot be read or a line is not a header.
    """
    try:
        mode = os.stat(path).st_mode
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--header-file {path}: cannot read it ({exc})") from None
    if mode & 0o077:
        _log.warning(
            "--header-file %s is readable by other users (mode %04o); chmod 600 it",
            path,
            mode & 0o777,
        )
    headers = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            headers.append(parse_header(line))
        except ConfigError:
            raise ConfigError(
                f"--header-file {path} line {number}: expected 'Name: value'"
                " (for example 'token: abc')"
            ) from None
    return headers


def collect_headers(
    given: list[str], files: list[str], environ: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """``--header`` values, then ``--header-file`` contents, then ``QANAT_TOKEN``.

    Raises:
        ConfigError: a malformed header, or the token given more than once.
    """
    headers = [parse_header(h) for h in given]
    for path in files:
        headers.extend(read_header_file(path))
    token_env = environ.get(TOKEN_ENV, "").strip()
    if token_env:
        headers.append((TOKEN_HEADER, token_env))
    tokens = [k for k, _ in headers if k.lower() == TOKEN_HEADER]
    if len(tokens) > 1:
        raise ConfigError(
            "the token is given more than once (--header, --header-file, QANAT_TOKEN);"
            " give it in one place"
        )
    return tuple(headers)


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """Everything one ``qanat connect`` run needs.

    Attributes:
        address: the stage address, as given (``https://gw.example.com/sg_<id>``).
        remotes: the decoded remotes.
        headers: extra request headers, in order (the token is one of them).
        keepalive_s: ping interval (0 disables).
        keepalive_timeout_s: a ping without answer in this time ends the session.
        max_retry_count: attempts before giving up (None = unlimited).
        max_retry_interval_s: cap of the backoff.
        proxy: the ``--proxy`` (HTTP CONNECT or SOCKS5), or None.
        proxy_env: proxies from the environment, used when ``proxy`` is None.
        pid_file: where to write the process id, or None.
        fingerprint: expected gateway host key fingerprint, or None.
        auth: ``user:pass`` for SSH password auth (chisel's --auth), or "".
        connect_timeout_s: TCP + TLS + upgrade + SSH handshake bound.
        dial_timeout_s: bound for dialling one endpoint.
        verbose: log level step.
        tls_ca / tls_cert / tls_key: CA bundle replacing the system trust
            store, client certificate and key (mutual TLS).
        udp_idle_timeout_s: a UDP flow (one app source) without traffic for
            this long is forgotten and its socket closed.
        udp_max_flows: most UDP flows per UDP channel (chisel: 100).
        connector_id: this connector's stable identity (``--id``, or derived
            from token, remotes and host name), sent to qanat gateways so a
            restarted connector replaces its own stale session.
        drain_timeout_s: on SIGTERM/SIGINT, how long open connections may
            take to finish after the gateway stopped sending new ones (0:
            disconnect at once).
        allow_any_target: dial whatever target the gateway asks for
            (chisel's behaviour); by default only the declared remotes.
        declarations: what ``--describe`` / ``--openapi`` say about ports,
            sent to qanat gateways that keep an endpoint catalogue (never
            to a stock server).
    """

    address: str
    remotes: tuple[Remote, ...]
    headers: tuple[tuple[str, str], ...] = ()
    keepalive_s: float = 25.0
    keepalive_timeout_s: float = 5.0
    max_retry_count: int | None = None
    max_retry_interval_s: float = 300.0
    proxy: ProxySpec | None = None
    proxy_env: ProxyEnvironment = field(default_factory=ProxyEnvironment)
    pid_file: str | None = None
    fingerprint: str | None = None
    auth: str = ""
    connect_timeout_s: float = 30.0
    dial_timeout_s: float = 10.0
    verbose: int = 0
    connector_id: str = ""
    drain_timeout_s: float = 30.0
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    udp_idle_timeout_s: float = 60.0
    udp_max_flows: int = 100
    allow_any_target: bool = False
    declarations: tuple[Declaration, ...] = ()


#: The largest OpenAPI file ``--openapi`` reads (the portal's default limit).
OPENAPI_FILE_MAX_BYTES = 512 * 1024


def parse_declarations(
    describe: list[str], openapi: list[str], remotes: tuple[Remote, ...]
) -> tuple[Declaration, ...]:
    """``--describe 8081="Orders API"`` and ``--openapi 8081=orders.yaml`` per port.

    Raises:
        ConfigError: malformed, a port that is not a remote's, or an unreadable file.
    """
    ports = {int(r.local_port) for r in remotes if r.local_port.isdigit()}
    texts: dict[int, str] = {}
    files: dict[int, str] = {}
    for flag, items, into in (("--describe", describe, texts), ("--openapi", openapi, files)):
        for item in items:
            port_text, sep, value = item.partition("=")
            if not sep or not port_text.strip().isdigit() or not value.strip():
                raise ConfigError(f'{flag} {item!r}: expected PORT=VALUE, e.g. 8081="Orders API"')
            port = int(port_text)
            if port not in ports:
                raise ConfigError(
                    f"{flag} {item!r}: port {port} is not one of the remotes' ports"
                    f" ({', '.join(str(p) for p in sorted(ports)) or 'none'})"
                )
            into[port] = value.strip()
    documents: dict[int, str] = {}
    for port, path in files.items():
        try:
            data = Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise ConfigError(f"--openapi {port}={path}: cannot read it: {exc.strerror}") from None
        if len(data) > OPENAPI_FILE_MAX_BYTES:
            raise ConfigError(
                f"--openapi {port}={path}: {len(data)} bytes, over {OPENAPI_FILE_MAX_BYTES}"
            )
        try:
            documents[port] = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConfigError(f"--openapi {port}={path}: not UTF-8 text") from None
    for port in documents:
        if port not in texts:
            raise ConfigError(
                f"--openapi {port}=...: give the port a description too (--describe {port}=...)"
            )
    return tuple(
        Declaration(port, texts[port][:MAX_DESCRIPTION_CHARS], documents.get(port))
        for port in sorted(texts)
    )


def add_connect_arguments(parser: argparse.ArgumentParser) -> None:
    """The outsystemscc-compatible options (plus a few of chisel's)."""
    parser.add_argument(
        "address", help="stage address from the portal, e.g. https://gw.example.com/sg_<id>"
    )
    parser.add_argument(
        "remotes",
        nargs="+",
        metavar="remote",
        help="R:<gateway-port>:<host>:<port>[/udp], e.g. R:8081:10.0.0.5:8393",
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar='"Name: value"',
        help='extra request header, repeatable; the token goes here: --header "token: <token>"',
    )
    parser.add_argument(
        "--header-file",
        action="append",
        default=[],
        metavar="FILE",
        help="read headers from FILE, one 'Name: value' per line (safer than --header for "
        "the token: not visible in the process list); the QANAT_TOKEN environment variable "
        "is another way to pass the token",
    )
    parser.add_argument(
        "--keepalive", default="25s", help="keepalive interval (default 25s, 0s disables)"
    )
    parser.add_argument(
        "--max-retry-count",
        type=int,
        default=-1,
        help="retries before giving up (default unlimited)",
    )
    parser.add_argument(
        "--max-retry-interval", default="5m", help="longest wait between retries (default 5m)"
    )
    parser.add_argument(
        "--proxy",
        default=None,
        help="http://user:pass@host:port (HTTP CONNECT) or socks://user:pass@host:port "
        "(SOCKS5; also socks5://, socks5h://); "
        "default: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment",
    )
    parser.add_argument(
        "--pid",
        action="store_true",
        help="write a pid file (qanat-connect.pid) in the working directory",
    )
    parser.add_argument("--pid-file", default=None, help="write the process id to this file")
    parser.add_argument(
        "--fingerprint",
        default=None,
        help="expected gateway host key fingerprint (SHA-256, base64)",
    )
    parser.add_argument(
        "--auth", default="", help="user:pass for SSH password auth (chisel compatibility)"
    )
    parser.add_argument(
        "--tls-ca", default=None, help="CA bundle to verify the gateway certificate"
    )
    parser.add_argument("--tls-cert", default=None, help="client certificate for mutual TLS")
    parser.add_argument("--tls-key", default=None, help="client key for mutual TLS")
    parser.add_argument(
        "--udp-idle-timeout",
        default="60s",
        help="forget a UDP flow (one app source) after this long without traffic (default 60s)",
    )
    parser.add_argument(
        "--udp-max-flows",
        type=int,
        default=100,
        help="most UDP flows per UDP endpoint (default 100, as chisel)",
    )
    parser.add_argument(
        "--id",
        dest="connector_id",
        default=None,
        metavar="NAME",
        help="stable identity of this connector (default: derived from token, remotes and "
        "host name); give each connector on one host its own",
    )
    parser.add_argument(
        "--describe",
        action="append",
        default=[],
        metavar='PORT="TEXT"',
        help="what an endpoint is, for the portal's endpoint catalogue (repeat; sent only to"
        " qanat gateways that keep one)",
    )
    parser.add_argument(
        "--openapi",
        action="append",
        default=[],
        metavar="PORT=FILE",
        help="the OpenAPI document (JSON or YAML) of a described endpoint (repeat)",
    )
    parser.add_argument(
        "--drain-timeout",
        default="30s",
        help="on SIGTERM, let open connections finish for up to this long (default 30s; "
        "0s disconnects at once; a second signal stops at once)",
    )
    parser.add_argument(
        "--allow-any-target",
        action="store_true",
        help="dial any host:port the gateway asks for, as chisel does (default: only the "
        "targets of the remotes given here; others are refused as administratively prohibited)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (repeat for more)"
    )


def options_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ConnectOptions:
    """Validate the parsed arguments (and the proxy variables of ``environ``,
    default the process environment) into :class:`ConnectOptions`.

    Raises:
        ConfigError: for the first invalid value, naming it.
    """
    address = args.address.strip()
    parts = urlsplit(address if "://" in address else f"http://{address}")
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ConfigError(
            f"address {args.address!r}: expected http(s)://host[:port]/sg_<id> "
            "as shown in the portal"
        )
    if len(args.remotes) > MAX_REMOTES:
        raise ConfigError(
            f"{len(args.remotes)} remotes given: a connector may declare at most "
            f"{MAX_REMOTES} (gateways refuse more); split them over several connectors"
        )
    remotes = tuple(decode_remotes(args.remotes))
    env = os.environ if environ is None else environ
    headers = collect_headers(args.header, getattr(args, "header_file", []) or [], env)
    connector_id = getattr(args, "connector_id", None)
    if connector_id is not None and not valid_connector_id(connector_id):
        raise ConfigError(
            f"--id {connector_id!r}: use 1-64 characters of A-Z a-z 0-9 . _ : @ - "
            "(starting with a letter or digit)"
        )
    if connector_id is None:
        token = next((v for k, v in headers if k.lower() == TOKEN_HEADER), "")
        connector_id = derive_connector_id(token, remotes, socket.gethostname())
    drain_timeout_s = parse_duration(getattr(args, "drain_timeout", "30s"), "--drain-timeout")
    keepalive_s = parse_duration(args.keepalive, "--keepalive")
    max_interval = parse_duration(args.max_retry_interval, "--max-retry-interval")
    if max_interval <= 0:
        raise ConfigError("--max-retry-interval must be positive")
    retries = (
        None if args.max_retry_count is None or args.max_retry_count < 0 else args.max_retry_count
    )
    pid_file = args.pid_file or ("qanat-connect.pid" if args.pid else None)
    proxy = parse_proxy_url(args.proxy) if args.proxy and args.proxy.strip() else None
    proxy_env = ProxyEnvironment.from_environ(env)
    udp_idle = parse_duration(getattr(args, "udp_idle_timeout", "60s"), "--udp-idle-timeout")
    if udp_idle <= 0:
        raise ConfigError("--udp-idle-timeout must be positive")
    udp_max_flows = getattr(args, "udp_max_flows", 100)
    if udp_max_flows < 1:
        raise ConfigError("--udp-max-flows must be at least 1")
    return ConnectOptions(
        address=address if "://" in address else f"http://{address}",
        remotes=remotes,
        headers=headers,
        keepalive_s=keepalive_s,
        keepalive_timeout_s=min(5.0, keepalive_s) if keepalive_s > 0 else 5.0,
        max_retry_count=retries,
        max_retry_interval_s=max_interval,
        proxy=proxy,
        proxy_env=proxy_env,
        pid_file=pid_file,
        fingerprint=args.fingerprint,
        auth=args.auth,
        verbose=args.verbose,
        connector_id=connector_id,
        drain_timeout_s=drain_timeout_s,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        udp_idle_timeout_s=udp_idle,
        udp_max_flows=udp_max_flows,
        allow_any_target=bool(getattr(args, "allow_any_target", False)),
        declarations=parse_declarations(
            getattr(args, "describe", []) or [], getattr(args, "openapi", []) or [], remotes
        ),
    )
