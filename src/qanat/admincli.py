"""``qanat admin ...``: the portal's API from the command line.

Every command is one or two API calls (``urllib``, no extra dependency).
Output is a readable table by default and JSON with ``--json`` (stable
keys, one document per command). The portal is found, in this order, from
``--url`` / ``--api-key``, from ``QANAT_URL`` / ``QANAT_API_KEY``, and from
the local admin key file that ``qanat up`` keeps in its data directory
(``--data-dir``, same default as ``qanat up``).

The options that say where the portal is (``--url``, ``--api-key``,
``--tls-ca``, ``--data-dir``, ``--json``) work anywhere after ``admin``:
``qanat admin --json org list`` and ``qanat admin org list --json`` are the
same. The module imports only the standard library and
``qanat.portal.localadmin`` (never the store, aiohttp or SSH), so a call
costs about a tenth of a second; a test keeps it that way.

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
from urllib.parse import quote, urlencode

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
        raw = self.raw(method, path, data, "application/json" if data is not None else None)
        return json.loads(raw) if raw else None

    def raw(
        self, method: str, path: str, data: bytes | None = None, content_type: str | None = None
    ) -> bytes:
        """One request; the answer's body as bytes.

        Raises:
            ApiError: refused (the problem's detail), unreachable, or a
                certificate that does not verify (naming --tls-ca).
        """
        request = urllib.request.Request(  # noqa: S310 - the URL is the operator's portal
            self.url.rstrip("/") + "/api/v1" + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.api_key}",
                "Accept": "application/json",
                **({"Content-Type": content_type} if content_type else {}),
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
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise ApiError(self._certificate_advice(reason)) from None
            raise ApiError(
                f"cannot reach the portal at {self.url}: {reason}; is it running"
                f" (qanat up)? check --url or {URL_ENV}"
            ) from None
        return bytes(raw)

    def _certificate_advice(self, error: ssl.SSLCertVerificationError) -> str:
        what = error.verify_message or error.reason or str(error)
        trusted = f"the CA file {self.ca_file}" if self.ca_file else "the system's CAs"
        return (
            f"the portal's certificate at {self.url} is not trusted ({what}; checked against"
            f" {trusted}); pass the CA that signed it with --tls-ca FILE (or {CA_ENV}=FILE):"
            " for qanat up's development certificate that is <data dir>/tls/dev-cert.pem,"
            " which qanat up prints when it starts"
        )


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
    query = {"limit": str(args.limit)}
    for name in ("stage", "actor", "action", "since", "until", "before"):
        value = getattr(args, name, None)
        if value:
            query[name] = str(value)
    entries = client.call("GET", _path("orgs", args.org) + "/audit?" + urlencode(query))["entries"]
    rows = [(e["at"], e["actor"], e["action"], e["target"], e["source_address"]) for e in entries]
    _emit(args, {"entries": entries}, _table(rows, ("when", "who", "action", "target", "from")))


def _user_list(client: Client, args: argparse.Namespace) -> None:
    members = client.call("GET", _path("orgs", args.org) + "/members")["members"]
    rows = [(m["username"], m["role"]) for m in members]
    _emit(args, {"org": args.org, "members": members}, _table(rows, ("user", "role")))


def _user_role(client: Client, args: argparse.Namespace) -> None:
    doc = client.call("PUT", _path("orgs", args.org, "members", args.username), {"role": args.role})
    _emit(args, doc, f"user {doc['username']} is now {doc['role']} of {args.org}")


def _user_remove(client: Client, args: argparse.Namespace) -> None:
    client.call("DELETE", _path("orgs", args.org, "members", args.username))
    _emit(
        args,
        {"username": args.username, "org": args.org, "removed": True},
        f"user {args.username} has no role in {args.org} any more",
    )


def _user_platform_admin(client: Client, args: argparse.Namespace) -> None:
    value = not args.revoke
    path = _path("users", args.username) + "/platform-admin"
    doc = client.call("PUT", path, {"platform_admin": value})
    text = (
        f"user {doc['username']} is now a platform admin (may create organisations)"
        if value
        else f"user {doc['username']} is no longer a platform admin"
    )
    _emit(args, {"username": doc["username"], "platform_admin": doc["platform_admin"]}, text)


def _apikey_list(client: Client, args: argparse.Namespace) -> None:
    keys = client.call("GET", _path("orgs", args.org) + "/apikeys")["api_keys"]
    rows = [(k["id"], k["name"], k["role"], k["state"], k["expires_at"] or "-") for k in keys]
    _emit(args, {"api_keys": keys}, _table(rows, ("key", "name", "role", "state", "expires")))


def _apikey_revoke(client: Client, args: argparse.Namespace) -> None:
    info = client.call("DELETE", _path("orgs", args.org, "apikeys", args.key))["api_key"]
    _emit(args, info, f"API key {info['id']} ({info['name']}) is {info['state']}")


def _endpoints_path(args: argparse.Namespace, *more: str) -> str:
    return _path("orgs", args.org, "stages", args.stage, "endpoints", *more)


def _entry_line(e: dict[str, Any]) -> tuple[object, ...]:
    served = f"{e['connectors']} ({', '.join(e['served_by'])})" if e["served"] else "no"
    doc = e["openapi_document"]["format"] if e["openapi_document"] else (e["openapi_url"] or "-")
    desc = e["description"] if e["listed"] else "(not described)"
    return (e["name"], e["protocol"], e["base_url"], served, doc, desc)


def _endpoint_list(client: Client, args: argparse.Namespace) -> None:
    entries = client.call("GET", _endpoints_path(args))["endpoints"]
    _emit(
        args,
        {"endpoints": entries},
        _table(
            [_entry_line(e) for e in entries],
            ("endpoint", "proto", "base url", "served", "openapi", "description"),
        ),
    )


def _endpoint_set(client: Client, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "description": args.description,
        "owner": args.owner,
        "protocol": "udp" if args.udp else "tcp",
        "tls": args.tls,
        "openapi_url": args.openapi_url,
    }
    if args.openapi:
        try:
            body["openapi_document"] = Path(args.openapi).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the OpenAPI file {args.openapi}: {exc}") from None
    elif args.remove_openapi:
        body["openapi_document"] = None
    entry = client.call("PUT", _endpoints_path(args, str(args.port)), body)
    title = entry["openapi_document"]["title"] if entry["openapi_document"] else ""
    _emit(
        args,
        entry,
        f"{entry['name']} of {args.org}/{args.stage}: {entry['description']}\n"
        f"apps use {entry['base_url']}" + (f"; OpenAPI: {title}" if title else ""),
    )


def _endpoint_remove(client: Client, args: argparse.Namespace) -> None:
    client.call("DELETE", _endpoints_path(args, str(args.port)))
    _emit(
        args,
        {"port": args.port, "removed": True},
        f"the entry of secure-gateway:{args.port} is removed (the port itself is untouched)",
    )


def _endpoint_openapi(client: Client, args: argparse.Namespace) -> None:
    raw = client.raw("GET", _endpoints_path(args, str(args.port), "openapi"))
    if args.output and args.output != "-":
        Path(args.output).write_bytes(raw)
        print(f"wrote {len(raw)} bytes to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(raw.decode("utf-8", "replace"))


def _traffic(client: Client, args: argparse.Namespace) -> None:
    path = _path("orgs", args.org, "stages", args.stage) + f"/traffic?minutes={args.minutes}"
    doc = client.call("GET", path)
    lines = [f"traffic of {doc['stage']}, last {doc['minutes']} minutes"]
    rows = [
        (e["name"], e["protocol"], e["connections"], e["failures"], e["bytes"])
        for e in doc["endpoints"]
    ]
    lines.append(_table(rows, ("endpoint", "proto", "connections", "failures", "bytes")))
    rows = [
        (c["connector"], c["sessions"], c["connections"], c["failures"], c["bytes"])
        for c in doc["connectors"]
    ]
    lines.append(_table(rows, ("connector", "sessions", "connections", "failures", "bytes")))
    _emit(args, doc, "\n".join(lines))


# -- parser --------------------------------------------------------------------------

ROLES = ("admin", "operator", "viewer")


def _global_options(parser: argparse.ArgumentParser, default_data_dir: Path, *, top: bool) -> None:
    """Where the portal is; on every level, so they work before or after a command.

    Only the ``admin`` level sets defaults; the levels below use SUPPRESS, so
    a value given before the command is not overwritten by a default after it.
    """

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument("--url", default=default(None), help=f"portal URL (or {URL_ENV})")
    parser.add_argument("--api-key", default=default(None), help=f"API key (or {API_KEY_ENV})")
    parser.add_argument(
        "--tls-ca",
        default=default(None),
        help=f"CA bundle to verify the portal (or {CA_ENV}); a local `qanat up`'s "
        "development certificate is trusted automatically",
    )
    parser.add_argument(
        "--data-dir",
        default=default(str(default_data_dir)),
        help="data directory of a local qanat up (for its local admin key)",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )


def add_admin_parser(sub: Any, default_data_dir: Path) -> None:
    """Add ``qanat admin`` and its commands to the top-level subparsers."""
    admin = sub.add_parser(
        "admin",
        help="manage organisations, stages, gateways, endpoints, users and API keys (over the API)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    _global_options(admin, default_data_dir, top=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, default_data_dir, top=False)
    cmds = admin.add_subparsers(dest="admin_command", required=True, metavar="command")

    def group(name: str, text: str) -> Any:
        parser = cmds.add_parser(name, parents=[common], help=text)
        return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="action")

    def command(where: Any, name: str, func: Any, text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = where.add_parser(name, parents=[common], help=text)
        p.set_defaults(admin_func=func)
        return p

    def stage_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--org", required=True)
        p.add_argument("--stage", required=True)

    org = group("org", "organisations")
    command(org, "create", _org_create, "create an organisation (and its stages)").add_argument(
        "name"
    )
    command(org, "list", _org_list, "your organisations")

    stage = group("stage", "stages")
    command(stage, "list", _stage_list, "stages of an organisation").add_argument(
        "--org", required=True
    )
    p = command(stage, "add", _stage_add, "add a stage")
    p.add_argument("--org", required=True)
    p.add_argument("--name", required=True)

    for name, func, text in (
        ("activate", _activate, "activate a stage's gateway (first time: address + token)"),
        ("deactivate", _deactivate, "deactivate a stage's gateway (closes its tunnels)"),
        ("renew", _renew, "renew a stage's token (shown once)"),
    ):
        stage_args(command(cmds, name, func, text))

    p = command(
        cmds, "allowlist", _allowlist, "set the app networks allowed to reach a stage's endpoints"
    )
    stage_args(p)
    p.add_argument(
        "--cidr",
        action="append",
        default=[],
        help="an allowed app network, e.g. 10.1.0.0/16 (repeat; none given: nobody)",
    )

    p = command(cmds, "status", _status, "gateway status of one or all stages")
    p.add_argument("--org", required=True)
    p.add_argument("--stage", default=None)

    p = command(cmds, "audit", _audit, "the organisation's audit log (newest first)")
    p.add_argument("--org", required=True)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--stage", default=None, help="only entries about this stage")
    p.add_argument("--actor", default=None, help="only actors containing this, e.g. user:alice")
    p.add_argument("--action", default=None, help="an action or family, e.g. endpoint")
    p.add_argument("--since", default=None, help="ISO 8601 time, e.g. 2026-12-01T10:00:00Z")
    p.add_argument("--until", default=None, help="ISO 8601 time")
    p.add_argument("--before", type=int, default=None, help="entries older than this id")

    p = command(cmds, "traffic", _traffic, "connections, failures, bytes per endpoint/connector")
    stage_args(p)
    p.add_argument("--minutes", type=int, default=60, help="the window (1-120, default 60)")

    endpoint = group("endpoint", "the endpoint catalogue of a stage")
    stage_args(command(endpoint, "list", _endpoint_list, "endpoints: described and served"))
    p = command(endpoint, "set", _endpoint_set, "describe secure-gateway:<port> (operator)")
    stage_args(p)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--description", required=True, help="plain text (no HTML)")
    p.add_argument("--owner", default="", help="whom app developers contact")
    p.add_argument("--tls", action="store_true", help="the private side speaks TLS (https://)")
    p.add_argument("--udp", action="store_true", help="a UDP endpoint")
    docs = p.add_mutually_exclusive_group()
    docs.add_argument("--openapi", default=None, help="OpenAPI document to upload (JSON or YAML)")
    docs.add_argument("--remove-openapi", action="store_true", help="delete the stored document")
    p.add_argument("--openapi-url", default=None, help="a link to the OpenAPI document instead")
    p = command(endpoint, "remove", _endpoint_remove, "delete a port's entry (operator)")
    stage_args(p)
    p.add_argument("--port", type=int, required=True)
    p = command(endpoint, "openapi", _endpoint_openapi, "download a port's OpenAPI document")
    stage_args(p)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-o", "--output", default=None, help="file to write (default: stdout)")

    user = group("user", "users and their roles")
    command(user, "list", _user_list, "users with a role in an organisation").add_argument(
        "--org", required=True
    )
    p = command(user, "create", _user_create, "create a user with a role in an org")
    p.add_argument("--org", required=True)
    p.add_argument("--username", required=True)
    p.add_argument("--role", choices=ROLES, default="viewer")
    password = p.add_mutually_exclusive_group()
    password.add_argument("--password", default=None, help="(visible to ps; prefer the others)")
    password.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    p = command(user, "role", _user_role, "give an existing user a role, or change it")
    p.add_argument("--org", required=True)
    p.add_argument("--username", required=True)
    p.add_argument("--role", choices=ROLES, required=True)
    p = command(user, "remove", _user_remove, "remove a user's role in an organisation")
    p.add_argument("--org", required=True)
    p.add_argument("--username", required=True)
    p = command(
        user,
        "platform-admin",
        _user_platform_admin,
        "give a user the platform admin role (may create organisations), or take it",
    )
    p.add_argument("--username", required=True)
    p.add_argument("--revoke", action="store_true", help="take the role instead of giving it")

    apikey = group("apikey", "API keys")
    p = command(apikey, "create", _apikey_create, "create an API key (shown once)")
    p.add_argument("--org", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--role", choices=ROLES, default="viewer")
    p.add_argument("--expires-in-days", type=float, default=None)
    command(apikey, "list", _apikey_list, "API keys of an organisation").add_argument(
        "--org", required=True
    )
    p = command(apikey, "revoke", _apikey_revoke, "revoke an API key by its id (qk_...)")
    p.add_argument("--org", required=True)
    p.add_argument("key")

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
