"""The REST API under ``/api/v1``: thin handlers over :class:`~qanat.portal.Portal`.

Each handler authenticates (:func:`.context.api_actor`), runs one service
call in a worker thread and renders the result with :mod:`.render`. The
service checks the role in the organisation inside its transaction; errors
become problem objects in the application's middleware.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from qanat.errors import InvalidInput
from qanat.portal.access import Actor
from qanat.portal.http import apicatalogue, render
from qanat.portal.http.context import (
    api_actor,
    deps,
    field_str,
    json_body,
    session_of,
    source_of,
)
from qanat.portal.http.openapi import ApiRoute, document
from qanat.portal.http.sessions import SESSION_COOKIE
from qanat.store import AuditFilter

PREFIX = "/api/v1"


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.json_response(doc, status=status, headers={"Cache-Control": "no-store"})


def _org(request: web.Request) -> str:
    return request.match_info["org"]


def _stage(request: web.Request) -> str:
    return request.match_info["stage"]


# -- session ------------------------------------------------------------------


async def sign_in(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    doc = await json_body(request)
    username = field_str(doc, "username") or ""
    password = field_str(doc, "password") or ""
    actor = await d.sign_in(username, password, source_of(request))
    assert actor.user_id is not None
    cookie, session = d.signer.issue(actor.user_id, actor.name)
    response = _json(
        {"username": actor.name, "kind": "user", "csrf_token": d.signer.csrf_token(session)}
    )
    set_session_cookie(request, response, cookie)
    return response


def set_session_cookie(request: web.Request, response: web.StreamResponse, value: str) -> None:
    d = deps(request)
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=int(d.settings.session_ttl_s),
        path="/",
        httponly=True,
        samesite="Lax",
        secure=d.settings.secure_cookies,
    )


async def sign_out(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    session = session_of(request)
    if session is not None and actor.user_id == session.user_id:
        # Ends this and every other browser session of the user.
        await d.run(d.portal.end_sessions, session.user_id, time.time())
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def whoami(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    doc: dict[str, Any] = {"username": actor.name, "kind": actor.kind.value}
    session = session_of(request)
    if session is not None and actor.user_id == session.user_id:
        doc["csrf_token"] = d.signer.csrf_token(session)
    return _json(doc)


# -- organisations and stages ---------------------------------------------------


def orgs_with_roles(portal: Any, actor: Actor) -> list[dict[str, Any]]:
    """Every organisation of the actor with the actor's role (one worker call)."""
    return [render.org(o, portal.role_of(actor, o.name).value) for o in portal.list_orgs(actor)]


async def list_orgs(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    return _json({"orgs": await d.run(orgs_with_roles, d.portal, actor)})


async def create_org(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    doc = await json_body(request)
    info = await d.run(d.portal.create_org, actor, source_of(request), field_str(doc, "name"))
    return _json(render.org(info), status=201)


async def list_stages(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    stages = await d.run(d.portal.list_stages, actor, _org(request))
    return _json({"stages": [render.stage(s) for s in stages]})


async def add_stage(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    doc = await json_body(request)
    info = await d.run(
        d.portal.add_stage, actor, source_of(request), _org(request), field_str(doc, "name")
    )
    return _json(render.stage(info), status=201)


async def stage_status(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    status = await d.run(d.portal.status, actor, _org(request), _stage(request))
    return _json(render.status(status))


async def activate(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    result = await d.run(
        d.portal.activate, actor, source_of(request), _org(request), _stage(request)
    )
    doc: dict[str, Any] = {"address": result.address}
    if result.token is not None:
        doc["token"] = result.token
    doc.update(
        status=result.stage.state.value,
        first=result.first,
        changed=result.changed,
        stage=render.stage(result.stage),
    )
    return _json(doc)


async def deactivate(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    info = await d.run(
        d.portal.deactivate, actor, source_of(request), _org(request), _stage(request)
    )
    return _json({"status": info.state.value, "stage": render.stage(info)})


async def set_allowlist(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    doc = await json_body(request)
    cidrs = doc.get("allow_cidrs")
    if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
        raise InvalidInput(
            'allow_cidrs must be a list of networks, e.g. {"allow_cidrs": ["10.1.0.0/16"]}'
        )
    info = await d.run(
        d.portal.configure_gateway,
        actor,
        source_of(request),
        _org(request),
        _stage(request),
        allow_cidrs=cidrs,
    )
    return _json(render.stage(info))


async def renew(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    issued = await d.run(
        d.portal.renew_token, actor, source_of(request), _org(request), _stage(request)
    )
    return _json(
        {
            "token": issued.token,
            "address": issued.address,
            "status": issued.stage.state.value,
            "stage": render.stage(issued.stage),
        }
    )


def audit_query(query: Any, org: str) -> tuple[int, int | None, AuditFilter]:
    """Paging and filters of an audit request (API and page share them).

    Raises:
        InvalidInput: a malformed number or time.
    """
    try:
        limit = int(query.get("limit", "100") or "100")
        before = query.get("before")
        before_id = int(before) if before else None
    except ValueError:
        raise InvalidInput("query parameters 'limit' and 'before' must be integers") from None
    stage = (query.get("stage") or "").strip()
    where = AuditFilter(
        target=f"{org}/{stage}" if stage else "",
        actor=(query.get("actor") or "").strip()[:128],
        action=(query.get("action") or "").strip()[:64],
        since=_time(query.get("since"), "since"),
        until=_time(query.get("until"), "until"),
    )
    return limit, before_id, where


def _time(text: str | None, name: str) -> datetime | None:
    if not text or not text.strip():
        return None
    value = text.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"query parameter {name!r} = {text[:40]!r} is not an ISO 8601 time such as"
            " 2026-12-01T10:00:00Z"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


async def audit_log(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    limit, before_id, where = audit_query(request.query, _org(request))
    entries = await d.run(
        d.portal.audit_log, actor, _org(request), limit=limit, before_id=before_id, where=where
    )
    return _json({"entries": [render.audit(e) for e in entries]})


# -- users and API keys -----------------------------------------------------------


async def list_members(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    members = await d.run(d.portal.members, actor, _org(request))
    return _json({"members": [render.member(m) for m in members]})


async def create_user(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    doc = await json_body(request)
    info = await d.run(
        d.portal.create_user,
        actor,
        source_of(request),
        _org(request),
        field_str(doc, "username"),
        field_str(doc, "password"),
        field_str(doc, "role"),
    )
    return _json(render.user(info), status=201)


async def set_platform_admin(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    doc = await json_body(request)
    value = doc.get("platform_admin")
    if not isinstance(value, bool):
        raise InvalidInput('platform_admin must be true or false, e.g. {"platform_admin": true}')
    username = request.match_info["username"]
    await d.run(d.portal.set_platform_admin, actor, source_of(request), username, value)
    return _json({"username": username, "platform_admin": value})


async def set_role(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    doc = await json_body(request)
    member = await d.run(
        d.portal.grant_role,
        actor,
        source_of(request),
        _org(request),
        request.match_info["username"],
        field_str(doc, "role"),
    )
    return _json(render.member(member))


async def remove_member(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    await d.run(
        d.portal.revoke_role,
        actor,
        source_of(request),
        _org(request),
        request.match_info["username"],
    )
    return web.Response(status=204)


async def list_api_keys(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    keys = await d.run(d.portal.list_api_keys, actor, _org(request))
    return _json({"api_keys": [render.api_key(k) for k in keys]})


async def create_api_key(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    doc = await json_body(request)
    expires_text = field_str(doc, "expires_at", required=False)
    expires_at = None
    if expires_text is not None:
        try:
            expires_at = datetime.fromisoformat(expires_text.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(
                f"expires_at {expires_text!r} is not an ISO 8601 time such as 2030-01-31T00:00:00Z"
            ) from None
    new = await d.run(
        d.portal.create_api_key,
        actor,
        source_of(request),
        _org(request),
        field_str(doc, "name"),
        field_str(doc, "role"),
        expires_at=expires_at,
    )
    return _json({"key": new.key, "api_key": render.api_key(new.info)}, status=201)


async def revoke_api_key(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    info = await d.run(
        d.portal.revoke_api_key, actor, source_of(request), _org(request), request.match_info["key"]
    )
    return _json({"api_key": render.api_key(info)})


# -- the document -----------------------------------------------------------------------


async def openapi(request: web.Request) -> web.StreamResponse:
    return _json(document(ROUTES, server_url=None))


async def not_found(request: web.Request) -> web.StreamResponse:
    allowed = sorted({r.method for r in ROUTES if _path_pattern(r.path).fullmatch(request.path)})
    if allowed:
        raise web.HTTPMethodNotAllowed(
            request.method,
            allowed,
            text=f"{request.method} is not an operation on {request.path}; it allows"
            f" {', '.join(allowed)}",
        )
    raise web.HTTPNotFound(
        text=f"no API operation at {request.method} {request.path}; see {PREFIX}/openapi.json"
    )


def _path_pattern(path: str) -> re.Pattern[str]:
    parts = [
        "[^/]+" if p.startswith("{") and p.endswith("}") else re.escape(p) for p in path.split("/")
    ]
    return re.compile("/".join(parts))


_ORG_PATH = PREFIX + "/orgs/{org}"
_STAGE_PATH = _ORG_PATH + "/stages/{stage}"
_WRITE = (400, 401, 403, 404, 409, 503)

ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        PREFIX + "/openapi.json",
        openapi,
        "openapi",
        "This document",
        role="public",
        errors=(),
    ),
    ApiRoute(
        "POST",
        PREFIX + "/session",
        sign_in,
        "signIn",
        "Sign in with a password; sets the session cookie",
        role="public",
        body="SignIn",
        response="SessionInfo",
        errors=(401, 503),
    ),
    ApiRoute(
        "DELETE",
        PREFIX + "/session",
        sign_out,
        "signOut",
        "Sign out",
        role="user",
        status=204,
        errors=(401,),
    ),
    ApiRoute(
        "GET",
        PREFIX + "/me",
        whoami,
        "whoAmI",
        "Who the credentials stand for",
        role="user",
        response="SessionInfo",
        errors=(401, 503),
    ),
    ApiRoute(
        "GET",
        PREFIX + "/orgs",
        list_orgs,
        "listOrgs",
        "Organisations the caller has a role in",
        role="user",
        response="OrgList",
        errors=(401, 503),
    ),
    ApiRoute(
        "POST",
        PREFIX + "/orgs",
        create_org,
        "createOrg",
        "Create an organisation with its default stages (the caller becomes admin)",
        role="platform admin (a user, not an API key)",
        body="NewOrg",
        response="Org",
        status=201,
        errors=_WRITE,
    ),
    ApiRoute(
        "PUT",
        PREFIX + "/users/{username}/platform-admin",
        set_platform_admin,
        "setPlatformAdmin",
        "Give or take the platform admin role (who may create organisations)",
        role="platform admin (a user, not an API key)",
        body="PlatformAdmin",
        response="PlatformAdmin",
        errors=_WRITE,
    ),
    ApiRoute(
        "GET",
        _ORG_PATH + "/stages",
        list_stages,
        "listStages",
        "Stages and the state of their gateways",
        response="StageList",
    ),
    ApiRoute(
        "POST",
        _ORG_PATH + "/stages",
        add_stage,
        "addStage",
        "Add a stage",
        role="admin",
        body="NewStage",
        response="Stage",
        status=201,
        errors=_WRITE,
    ),
    ApiRoute(
        "GET",
        _STAGE_PATH,
        stage_status,
        "stageStatus",
        "Gateway status: state, address, live connectors, endpoints",
        response="Status",
    ),
    ApiRoute(
        "POST",
        _STAGE_PATH + "/activate",
        activate,
        "activate",
        "Activate the gateway; the first activation returns the token, once",
        role="admin",
        response="Activation",
        errors=_WRITE,
    ),
    ApiRoute(
        "POST",
        _STAGE_PATH + "/deactivate",
        deactivate,
        "deactivate",
        "Deactivate the gateway: its tunnels close within a second",
        role="admin",
        response="Deactivation",
        errors=_WRITE,
    ),
    ApiRoute(
        "PUT",
        _STAGE_PATH + "/allowlist",
        set_allowlist,
        "setAllowlist",
        "Replace the app networks (CIDRs) allowed to connect to this stage's endpoints",
        role="admin",
        body="Allowlist",
        response="Stage",
        errors=_WRITE,
    ),
    ApiRoute(
        "POST",
        _STAGE_PATH + "/renew",
        renew,
        "renewToken",
        "Issue a new token (shown once); the old one is refused from now on",
        role="admin",
        response="Renewal",
        errors=_WRITE,
    ),
    ApiRoute(
        "GET",
        _ORG_PATH + "/audit",
        audit_log,
        "auditLog",
        "Audit log, newest first",
        response="AuditLog",
        query=(
            ("limit", "integer", "at most this many entries (max 500)"),
            ("before", "integer", "entries older than this id"),
            ("stage", "string", "only entries about this stage"),
            ("actor", "string", "only entries whose actor contains this (any case)"),
            ("action", "string", "an action (gateway.activate) or its family (gateway)"),
            ("since", "string", "entries at or after this ISO 8601 time"),
            ("until", "string", "entries before this ISO 8601 time"),
        ),
    ),
    ApiRoute(
        "GET",
        _ORG_PATH + "/members",
        list_members,
        "listMembers",
        "Users with a role in the organisation",
        response="MemberList",
    ),
    ApiRoute(
        "POST",
        _ORG_PATH + "/users",
        create_user,
        "createUser",
        "Create a user with a role (a person only, not an API key)",
        role="admin",
        body="NewUser",
        response="User",
        status=201,
        errors=_WRITE,
    ),
    ApiRoute(
        "PUT",
        _ORG_PATH + "/members/{username}",
        set_role,
        "setRole",
        "Give an existing user a role in the organisation, or change it (a person only)",
        role="admin",
        body="NewRole",
        response="Member",
        errors=_WRITE,
    ),
    ApiRoute(
        "DELETE",
        _ORG_PATH + "/members/{username}",
        remove_member,
        "removeMember",
        "Remove a user's role in the organisation (a person only)",
        role="admin",
        status=204,
        errors=_WRITE,
    ),
    ApiRoute(
        "GET",
        _ORG_PATH + "/apikeys",
        list_api_keys,
        "listApiKeys",
        "API keys of the organisation, without secrets",
        role="admin",
        response="ApiKeyList",
    ),
    ApiRoute(
        "POST",
        _ORG_PATH + "/apikeys",
        create_api_key,
        "createApiKey",
        "Create an API key (shown once; a person only)",
        role="admin",
        body="NewApiKey",
        response="IssuedApiKey",
        status=201,
        errors=_WRITE,
    ),
    ApiRoute(
        "DELETE",
        _ORG_PATH + "/apikeys/{key}",
        revoke_api_key,
        "revokeApiKey",
        "Revoke an API key by its id (qk_...)",
        role="admin",
        response="RevokedApiKey",
        errors=_WRITE,
    ),
    *apicatalogue.ROUTES,
)
