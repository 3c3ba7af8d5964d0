"""``qanat admin ...``: the portal's API from the command line.

Every command is one or two API calls (``urllib``, no extra dependency).
Output is a readable table by default and JSON with ``--json`` (stable
keys, one document per command). The portal is found, in this order, from
``--url`` / ``--api-key``, from ``QANAT_URL`` / ``QANAT_API_KEY``, and from
the local admin key file that ``qanat up`` keeps in its data directory
(``--data-dir``, same default as ``qanat up``).

Exit codes: 0 done, 1 refused by the portal (the problem's detail is
printed), 2 bad usage or no portal found.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from qanat.errors import ConfigError, QanatError
from qanat.portal import localadmin

URL_ENV = "QANAT_URL"
API_KEY_ENV = "QANAT_API_KEY"
CA_ENV = "QANAT_CA_FILE"


class ApiError(QanatError):
    """The portal refused a request; the message is its problem's detail."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Client:
    """A minimal API client: JSON in, JSON out, problems as :class:`ApiError`."""

    url: str
    api_key: str = field(repr=False)
    timeout_s: float = 15.0
    ca_file: str = ""

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - the URL is the operator's portal
            self.url.rstrip("/") + "/api/v1" + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.api_key}",
                "Accept": "application/json",
                **({"Content-Type": "application/json"} if data is not None else {}),
            },
        )
        try:
            context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=self.timeout_s, context=context
            ) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                detail = str(json.loads(raw)["detail"])
            except (ValueError, KeyError, TypeError):
                detail = raw.decode("utf-8", "replace").strip() or str(exc.reason)
            raise ApiError(detail, status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(
                f"cannot reach the portal at {self.url}: {reason}; is it running"
                f" (qanat up)? check --url or {URL_ENV}"
            ) from None
        return json.loads(raw) if raw else None


def find_client(args: argparse.Namespace) -> Client:
    """The portal to talk to (see the module docstring for the order).

    Raises:
        ConfigError: nothing says where the portal is.
    """
    url = args.url or os.environ.get(URL_ENV)
    key = args.api_key or os.environ.get(API_KEY_ENV)
    ca_file = getattr(args, "tls_ca", None) or os.environ.get(CA_ENV) or ""
    if url and key:
        return Client(url, key, ca_file=ca_file)
    data_dir = Path(args.data_dir).expanduser()
    local = localadmin.read_file(data_dir)
    if local is not None:
        if not ca_file and (url or local.url) == local.url:
            ca_file = local.ca_file
        return Client(url or local.url, key or local.api_key, ca_file=ca_file)
    raise ConfigError(
        f"no portal to talk to: give --url and --api-key (or {URL_ENV} and"
        f" {API_KEY_ENV}), or run this as the user of a local `qanat up` whose data"
        f" directory is {data_dir} (--data-dir)"
    )


# -- output ---------------------------------------------------------------------


def _table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    text = [[str("" if v is None else v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in text]
    return "\n".join(line.rstrip() for line in lines)


def _emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(text)


def _path(*parts: str) -> str:
    return "".join("/" + quote(p, safe="") for p in parts)


# -- commands ---------------------------------------------------------------------


def _org_create(client: Client, args: argparse.Namespace) -> None:
    doc = client.call("POST", "/orgs", {"name": args.name})
    _emit(
        args,
        {"name": doc["name"], "stages": doc["stages"]},
        f"organisation {doc['name']} created with stages {', '.join(doc['stages'])} (all Inactive)",
    )


def _org_list(client: Client, args: argparse.Namespace) -> None:
    orgs = client.call("GET", "/orgs")["orgs"]
    doc = {
        "orgs": [{"name": o["name"], "role": o.get("role"), "stages": o["stages"]} for o in orgs]
    }
    rows = [(o["name"], o.get("role"), ", ".join(o["stages"])) for o in orgs]
    _emit(args, doc, _table(rows, ("org", "role", "stages")))


def _stage_doc(stage: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "status", "address", "activated_at", "token_issued_at", "renewed_tokens")
    return {k: stage.get(k) for k in keys}


def _stage_list(client: Client, args: argparse.Namespace) -> None:
    stages = client.call("GET", _path("orgs", args.org) + "/stages")["stages"]
    rows = [(s["name"], s["status"], s["address"] or "-") for s in stages]
    _emit(
        args,
        {"org": args.org, "stages": [_stage_doc(s) for s in stages]},
        _table(rows, ("stage", "status", "address")),
    )


def _stage_add(client: Client, args: argparse.Namespace) -> None:
    stage = client.call("POST", _path("orgs", args.org) + "/stages", {"name": args.name})
    _emit(args, _stage_doc(stage), f"stage {stage['name']} added to {args.org} (Inactive)")


def _activate(client: Client, args: argparse.Namespace) -> None:
    doc = client.call("POST", _path("orgs", args.org, "stages", args.stage) + "/activate")
    out: dict[str, Any] = {"address": doc["address"], "status": doc["status"]}
    lines = [f"{args.org}/{args.stage}: {doc['status']}", f"address: {doc['address']}"]
    if "token" in doc:
        out["token"] = doc["token"]
        lines.append(f"token:   {doc['token']}")
        lines.append("         (shown once, now: store it safely; only its hash is kept)")
    else:
        lines.append("token:   unchanged (shown only on the first activation)")
    _emit(args, out, "\n".join(lines))


def _deactivate(client: Client, args: argparse.Namespace) -> None:
    doc = client.call("POST", _path("orgs", args.org, "stages", args.stage) + "/deactivate")
    _emit(
        args,
        {"status": doc["status"], "address": doc["stage"]["address"]},
        f"{args.org}/{args.stage}: {doc['status']} (tunnels closed; connectors keep retrying)",
    )


def _allowlist(client: Client, args: argparse.Namespace) -> None:
    path = _path("orgs", args.org, "stages", args.stage) + "/allowlist"
    doc = client.call("PUT", path, {"allow_cidrs": list(args.cidr)})
    cidrs = doc["allow_cidrs"]
    _emit(
        args,
        {"allow_cidrs": cidrs, "bind_host": doc["bind_host"]},
        f"{args.org}/{args.stage}: apps allowed from "
        + (", ".join(cidrs) if cidrs else "nowhere (every app connection is refused)"),
    )


def _renew(client: Client, args: argparse.Namespace) -> None:
    doc = client.call("POST", _path("orgs", args.org, "stages", args.stage) + "/renew")
    _emit(
        args,
        {"token": doc["token"], "address": doc["address"]},
        f"new token: {doc['token']}\n"
        "           (shown once; open tunnels keep working, new attempts with the old"
        " token are refused)",
    )


def _status_doc(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "stage": status["stage"]["name"],
        "status": status["status"],
        "address": status["address"],
        "connectors": [
            {
                k: c[k]
                for k in ("id", "version", "source_address", "connected_since", "keepalive_rtt_ms")
            }
            | {"endpoints": [e["name"] for e in c["endpoints"]]}
            for c in status["connectors"]
        ],
        "endpoints": [
            {"name": e["name"], "connectors": e["connectors"], "targets": e["targets"]}
            for e in status["endpoints"]
        ],
    }


def _status_text(doc: dict[str, Any]) -> str:
    lines = [f"stage {doc['stage']}: {doc['status']}  {doc['address'] or ''}".rstrip()]
    if doc["connectors"]:
        rows = [
            (
                c["id"],
                c["version"],
                c["source_address"],
                c["connected_since"],
                "-" if c["keepalive_rtt_ms"] is None else f"{c['keepalive_rtt_ms']:.1f} ms",
            )
            for c in doc["connectors"]
        ]
        lines.append(_table(rows, ("connector", "version", "source", "since", "rtt")))
    else:
        lines.append("  no connector connected")
    for e in doc["endpoints"]:
        lines.append(f"  {e['name']} -> {', '.join(e['targets'])} via {', '.join(e['connectors'])}")
    return "\n".join(lines)


def _status(client: Client, args: argparse.Namespace) -> None:
    org = _path("orgs", args.org)
    if args.stage:
        doc = _status_doc(client.call("GET", org + _path("stages", args.stage)))
        _emit(args, doc, _status_text(doc))
        return
    stages = client.call("GET", org + "/stages")["stages"]
    docs = [_status_doc(client.call("GET", org + _path("stages", s["name"]))) for s in stages]
    _emit(args, {"org": args.org, "stages": docs}, "\n\n".join(_status_text(d) for d in docs))


def _user_create(client: Client, args: argparse.Namespace) -> None:
    password = args.password
    generated = False
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif password is None:
        password = localadmin.new_password()
        generated = True
    body = {"username": args.username, "password": password, "role": args.role}
    doc = client.call("POST", _path("orgs", args.org) + "/users", body)
    out: dict[str, Any] = {"username": doc["username"], "org": args.org, "role": args.role}
    text = f"user {doc['username']} created, {args.role} of {args.org}"
    if generated:
        out["password"] = password
        text += f"\npassword: {password}   (generated; shown once)"
    _emit(args, out, text)


def _apikey_create(client: Client, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name, "role": args.role}
    if args.expires_in_days is not None:
        expiry = datetime.now(UTC) + timedelta(days=args.expires_in_days)
        body["expires_at"] = expiry.isoformat()
    doc = client.call("POST", _path("orgs", args.org) + "/apikeys", body)
    info = doc["api_key"]
    _emit(
        args,
        {
            "key": doc["key"],
            "id": info["id"],
            "org": info["org"],
            "role": info["role"],
            "expires_at": info["expires_at"],
        },
        f"API key {info['id']} ({info['role']} of {info['org']}): {doc['key']}\n"
        "(shown once; use it as QANAT_API_KEY or 'Authorization: Bearer <key>')",
    )


def _audit(client: Client, args: argparse.Namespace) -> None:
    entries = client.call("GET", _path("orgs", args.org) + f"/audit?limit={args.limit}")["entries"]
    rows = [(e["at"], e["actor"], e["action"], e["target"], e["source_address"]) for e in entries]
    _emit(args, {"entries": entries}, _table(rows, ("when", "who", "action", "target", "from")))


# -- parser --------------------------------------------------------------------------


def add_admin_parser(sub: Any, default_data_dir: Path) -> None:
    """Add ``qanat admin`` and its commands to the top-level subparsers."""
    admin = sub.add_parser(
        "admin",
        help="manage organisations, stages, gateways, users and API keys (over the API)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help=f"portal URL (or {URL_ENV})")
    common.add_argument("--api-key", default=None, help=f"API key (or {API_KEY_ENV})")
    common.add_argument(
        "--tls-ca",
        default=None,
        help=f"CA bundle to verify the portal (or {CA_ENV}); a local `qanat up`'s "
        "development certificate is trusted automatically",
    )
    common.add_argument(
        "--data-dir",
        default=str(default_data_dir),
        help="data directory of a local qanat up (for its local admin key)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    cmds = admin.add_subparsers(dest="admin_command", required=True, metavar="command")

    def stage_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--org", required=True)
        p.add_argument("--stage", required=True)

    org = cmds.add_parser("org", help="organisations").add_subparsers(
        dest="org_command", required=True, metavar="action"
    )
    p = org.add_parser("create", parents=[common], help="create an organisation (and its stages)")
    p.add_argument("name")
    p.set_defaults(admin_func=_org_create)
    p = org.add_parser("list", parents=[common], help="your organisations")
    p.set_defaults(admin_func=_org_list)

    stage = cmds.add_parser("stage", help="stages").add_subparsers(
        dest="stage_command", required=True, metavar="action"
    )
    p = stage.add_parser("list", parents=[common], help="stages of an organisation")
    p.add_argument("--org", required=True)
    p.set_defaults(admin_func=_stage_list)
    p = stage.add_parser("add", parents=[common], help="add a stage")
    p.add_argument("--org", required=True)
    p.add_argument("--name", required=True)
    p.set_defaults(admin_func=_stage_add)

    for name, func, text in (
        ("activate", _activate, "activate a stage's gateway (first time: address + token)"),
        ("deactivate", _deactivate, "deactivate a stage's gateway (closes its tunnels)"),
        ("renew", _renew, "renew a stage's token (shown once)"),
    ):
        p = cmds.add_parser(name, parents=[common], help=text)
        stage_args(p)
        p.set_defaults(admin_func=func)

    p = cmds.add_parser(
        "allowlist",
        parents=[common],
        help="set the app networks allowed to reach a stage's endpoints",
    )
    stage_args(p)
    p.add_argument(
        "--cidr",
        action="append",
        default=[],
        help="an allowed app network, e.g. 10.1.0.0/16 (repeat; none given: nobody)",
    )
    p.set_defaults(admin_func=_allowlist)

    p = cmds.add_parser("status", parents=[common], help="gateway status of one or all stages")
    p.add_argument("--org", required=True)
    p.add_argument("--stage", default=None)
    p.set_defaults(admin_func=_status)

    p = cmds.add_parser("audit", parents=[common], help="the organisation's audit log")
    p.add_argument("--org", required=True)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(admin_func=_audit)

    user = cmds.add_parser("user", help="users").add_subparsers(
        dest="user_command", required=True, metavar="action"
    )
    p = user.add_parser("create", parents=[common], help="create a user with a role in an org")
    p.add_argument("--org", required=True)
    p.add_argument("--username", required=True)
    p.add_argument("--role", choices=["admin", "viewer"], default="viewer")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--password", default=None, help="(visible to ps; prefer the others)")
    group.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    p.set_defaults(admin_func=_user_create)

    apikey = cmds.add_parser("apikey", help="API keys").add_subparsers(
        dest="apikey_command", required=True, metavar="action"
    )
    p = apikey.add_parser("create", parents=[common], help="create an API key (shown once)")
    p.add_argument("--org", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--role", choices=["admin", "viewer"], default="viewer")
    p.add_argument("--expires-in-days", type=float, default=None)
    p.set_defaults(admin_func=_apikey_create)

    admin.set_defaults(func=run_admin)


def run_admin(args: argparse.Namespace) -> int:
    client = find_client(args)
    try:
        args.admin_func(client, args)
    except ApiError as exc:
        if args.json:
            print(json.dumps({"error": str(exc), "status": exc.status}), file=sys.stderr)
        print(f"qanat admin: {exc}", file=sys.stderr)
        return 1
    return 0
