"""The ``qanat`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from qanat import __version__
from qanat.errors import ConfigError, QanatError
from qanat.logs import setup_logging

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
    from qanat.runtime import run

    options = options_from_args(args)
    if options.proxy:
        raise ConfigError("--proxy is not supported by this version yet; connect directly")

    async def main() -> int:
        return await Connector(options).run()

    return run(main())


# -- qanat gateway --------------------------------------------------------------


def _cmd_gateway(args: argparse.Namespace) -> int:
    from qanat.gateway.settings import GatewaySettings
    from qanat.net.ssh import HostKey

    data_dir = Path(args.data_dir).expanduser()
    if args.action == "fingerprint":
        print(HostKey.load_or_create(data_dir / "host_key").fingerprint)
        return 0
    if args.action == "add-stage":
        return _add_stage(args, data_dir)
    from qanat.connector.options import parse_duration
    from qanat.gateway.server import Gateway
    from qanat.gateway.stages import FileStageSource
    from qanat.runtime import run

    host, port = _host_port(args.listen, "--listen")
    stage_file = Path(args.stage_file) if args.stage_file else data_dir / "stages.toml"
    settings = GatewaySettings(
        data_dir=data_dir,
        listen_host=host,
        listen_port=port,
        keepalive_s=parse_duration(args.keepalive, "--keepalive"),
        redirect_url=args.redirect,
    )
    source = FileStageSource(stage_file)

    async def main() -> int:
        gateway = Gateway(settings, source)
        await gateway.start()
        bound_host, bound_port = gateway.address
        log.info("qanat gateway %s listening on http://%s:%d", __version__, bound_host, bound_port)
        log.info("host key fingerprint %s", gateway.host_key.fingerprint)
        log.info("%d stage(s) from %s", len(source.stages()), stage_file)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def reload() -> None:
            try:
                source.reload()
                log.info("reloaded %s: %d stage(s)", stage_file, len(source.stages()))
            except ConfigError as exc:
                log.error("reload failed, keeping the current stages: %s", exc)

        loop.add_signal_handler(signal.SIGHUP, reload)
        await stop.wait()
        log.info("shutting down")
        await gateway.close()
        return 0

    return run(main())


def _add_stage(args: argparse.Namespace, data_dir: Path) -> int:
    from qanat.gateway.stages import stage_allowlist
    from qanat.wire.tokens import hash_token, new_address_id, new_token

    if not args.name:
        raise ConfigError("add-stage needs --name")
    allow = stage_allowlist(f"stage {args.name!r}", args.bind, args.allow or None)
    stage_file = Path(args.stage_file) if args.stage_file else data_dir / "stages.toml"
    stage_file.parent.mkdir(parents=True, exist_ok=True)
    token = new_token()
    address_id = new_address_id()
    entry = (
        "\n[[stage]]\n"
        f'name = "{args.name}"\n'
        f'address_id = "{address_id}"\n'
        f'token_sha256 = ["{hash_token(token)}"]\n'
        f'bind = "{args.bind}"\n'
        f'ports = "{args.ports}"\n'
        f"allow = {json.dumps(list(allow))}\n"
    )
    with stage_file.open("a") as handle:
        handle.write(entry)
    host, port = _host_port(args.listen, "--listen")
    print(f"stage {args.name} added to {stage_file}")
    print(f"address: http://{host}:{port}/{address_id}")
    print(f"token:   {token}   (shown once; only its hash is stored)")
    return 0


# -- qanat hosts ----------------------------------------------------------------


def _cmd_hosts(args: argparse.Namespace) -> int:
    from qanat.gateway.reach import hosts_line, kubernetes_manifest
    from qanat.gateway.stages import find_stage, load_stage_file

    data_dir = Path(args.data_dir).expanduser()
    stage_file = Path(args.stage_file) if args.stage_file else data_dir / "stages.toml"
    stage = find_stage(load_stage_file(stage_file), args.stage)
    if args.format == "kubernetes":
        namespace = args.namespace or stage.key.rsplit("/", 1)[-1].lower()
        print(kubernetes_manifest(stage, namespace, args.port), end="")
    else:
        print(hosts_line(stage))
    return 0


# -- parser -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qanat", description="qanat private gateway")
    parser.add_argument("--version", action="version", version=f"qanat {__version__}")
    parser.add_argument("--log-format", choices=["human", "json"], default="human")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    from qanat.connector.options import add_connect_arguments

    connect = sub.add_parser(
        "connect",
        help="run a connector (outsystemscc-compatible)",
        description="Open an outbound tunnel to a stage's gateway and serve the given remotes.",
    )
    add_connect_arguments(connect)
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
    gateway.add_argument(
        "--keepalive", default="25s", help="ping interval to connectors (0s disables)"
    )
    gateway.add_argument(
        "--redirect", default=None, help="answer address GETs with 302 to this base URL"
    )
    gateway.add_argument("--name", default=None, help="add-stage: stage name")
    gateway.add_argument(
        "--bind", default="127.0.0.1", help="add-stage: address the stage's ports bind"
    )
    gateway.add_argument("--ports", default="1024-65535", help="add-stage: allowed port range")
    gateway.add_argument(
        "--allow",
        action="append",
        default=[],
        help="add-stage: app network CIDR allowed to connect (repeat; required unless "
        "--bind is loopback)",
    )
    gateway.add_argument("-v", "--verbose", action="count", default=0)
    gateway.set_defaults(func=_cmd_gateway)

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
    hosts.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="gateway data directory")
    hosts.add_argument("--format", choices=["hosts", "kubernetes"], default="hosts")
    hosts.add_argument(
        "--namespace", default=None, help="kubernetes: the stage's namespace (default: stage name)"
    )
    hosts.add_argument(
        "--port", type=int, action="append", default=[], help="kubernetes: endpoint port (repeat)"
    )
    hosts.set_defaults(func=_cmd_hosts)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0), args.log_format)
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
