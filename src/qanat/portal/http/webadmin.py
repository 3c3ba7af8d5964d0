"""Organisation pages: users and API keys, and the audit log.

Pages::

    /orgs/<org>/members      users and their roles (change, remove, create),
                             API keys (create, shown once; revoke) for admins
    /orgs/<org>/audit        the whole organisation's audit log, newest first,
                             filtered by stage, actor, action and time, paged
                             by id (``before=<id>``)

A new API key is shown only in the answer to the POST that created it (the
page then rewrites its URL, as for tokens), never again.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from qanat.errors import Forbidden, InvalidInput, PortalError
from qanat.portal.http import render
from qanat.portal.http.api import audit_query
from qanat.portal.http.context import deps, session_actor, source_of
from qanat.portal.http.problems import classify
from qanat.portal.http.sessions import Session
from qanat.portal.http.web import _form, _page, _require_session
from qanat.store import Role, utc_now

AUDIT_PAGE = 50
_NOTICES = {
    "created": "The user is created.",
    "role": "The role is changed.",
    "removed": "The user no longer has a role in this organisation.",
    "revoked": "The API key is revoked: it is refused from now on.",
}
ACTION_FAMILIES = ("org", "stage", "gateway", "endpoint", "user", "role", "apikey")


def _org_url(org: str, page: str) -> str:
    return f"/orgs/{quote(org, safe='')}/{page}"


async def _org_frame(request: web.Request, session: Session, org: str) -> dict[str, Any]:
    d = deps(request)
    actor = session_actor(session)

    def load() -> dict[str, Any]:
        role = d.portal.role_of(actor, org)
        stages = [render.stage(s) for s in d.portal.list_stages(actor, org)]
        return {"role": role.value, "stages": stages}

    frame = await d.run(load)
    frame["org"] = org
    return frame


# -- users and API keys ---------------------------------------------------------


async def members_page(
    request: web.Request,
    *,
    error: str | None = None,
    status: int = 200,
    new_key: dict[str, Any] | None = None,
    notice: str | None = None,
) -> web.Response:
    d = deps(request)
    session = _require_session(request)
    org = request.match_info["org"]
    frame = await _org_frame(request, session, org)
    actor = session_actor(session)
    is_admin = frame["role"] == Role.ADMIN.value

    def load() -> dict[str, Any]:
        members = [render.member(m) for m in d.portal.members(actor, org)]
        keys = [render.api_key(k) for k in d.portal.list_api_keys(actor, org)] if is_admin else []
        return {"members": members, "keys": keys}

    data = await d.run(load)
    return _page(
        request,
        "members.html",
        status=status,
        session=session,
        section="members",
        is_admin=is_admin,
        roles=[r.value for r in (Role.VIEWER, Role.OPERATOR, Role.ADMIN)],
        error=error,
        new_key=new_key,
        page_url=_org_url(org, "members"),
        notice=notice or _NOTICES.get(request.query.get("done", "")),
        **data,
        **frame,
    )


async def members_get(request: web.Request) -> web.StreamResponse:
    return await members_page(request)


async def _members_change(request: web.Request, change: Any, done: str) -> web.StreamResponse:
    try:
        await change()
    except (InvalidInput, PortalError) as exc:
        if isinstance(exc, Forbidden):
            raise
        return await members_page(request, error=str(exc), status=classify(exc)[0])
    raise web.HTTPSeeOther(_org_url(request.match_info["org"], "members") + f"?done={done}")


async def create_user(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    session = _require_session(request)
    form = await _form(request, session)
    org = request.match_info["org"]

    async def change() -> None:
        await d.run(
            d.portal.create_user,
            session_actor(session),
            source_of(request),
            org,
            form.get("username", ""),
            form.get("password", ""),
            form.get("role", "viewer"),
        )

    return await _members_change(request, change, "created")


async def set_role(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    session = _require_session(request)
    form = await _form(request, session)
    org, username = request.match_info["org"], request.match_info["username"]

    async def change() -> None:
        await d.run(
            d.portal.grant_role,
            session_actor(session),
            source_of(request),
            org,
            username,
            form.get("role", ""),
        )

    return await _members_change(request, change, "role")


async def remove_member(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    session = _require_session(request)
    await _form(request, session)
    org, username = request.match_info["org"], request.match_info["username"]

    async def change() -> None:
        await d.run(d.portal.revoke_role, session_actor(session), source_of(request), org, username)

    return await _members_change(request, change, "removed")


async def create_api_key(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    session = _require_session(request)
    form = await _form(request, session)
    org = request.match_info["org"]
    days = form.get("expires_in_days", "").strip()
    try:
        expires_at = None
        if days:
            try:
                expires_at = utc_now() + timedelta(days=float(days))
            except (ValueError, OverflowError):
                raise InvalidInput(f"expiry {days!r} is not a number of days") from None
        new = await d.run(
            d.portal.create_api_key,
            session_actor(session),
            source_of(request),
            org,
            form.get("name", ""),
            form.get("role", "viewer"),
            expires_at=expires_at,
        )
    except InvalidInput as exc:
        return await members_page(request, error=str(exc), status=classify(exc)[0])
    return await members_page(
        request, new_key={"key": new.key, "api_key": render.api_key(new.info)}
    )


async def revoke_api_key(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    session = _require_session(request)
    await _form(request, session)
    org, key = request.match_info["org"], request.match_info["key"]
    await d.run(d.portal.revoke_api_key, session_actor(session), source_of(request), org, key)
    raise web.HTTPSeeOther(_org_url(org, "members") + "?done=revoked")


# -- audit log ----------------------------------------------------------------------


async def audit_page(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    session = _require_session(request)
    org = request.match_info["org"]
    frame = await _org_frame(request, session, org)
    query = dict(request.query)
    query["since"] = _with_offset(query.get("since", ""), query.get("tz", ""))
    query["until"] = _with_offset(query.get("until", ""), query.get("tz", ""))
    query["limit"] = str(AUDIT_PAGE)
    error = None
    entries: list[dict[str, Any]] = []
    status = 200
    try:
        limit, before_id, where = audit_query(query, org)
        records = await d.run(
            d.portal.audit_log,
            session_actor(session),
            org,
            limit=limit + 1,
            before_id=before_id,
            where=where,
        )
        entries = [render.audit(e) for e in records[:limit]]
        more = len(records) > limit
    except InvalidInput as exc:
        error, status, more = str(exc), classify(exc)[0], False
    filters = {k: request.query.get(k, "") for k in ("stage", "actor", "action", "since", "until")}
    kept = {k: v for k, v in filters.items() if v}
    if request.query.get("tz") and (kept.get("since") or kept.get("until")):
        kept["tz"] = request.query["tz"]
    older = None
    if more and entries:
        older = _org_url(org, "audit") + "?" + urlencode({**kept, "before": entries[-1]["id"]})
    return _page(
        request,
        "audit.html",
        status=status,
        session=session,
        section="audit",
        entries=entries,
        filters=filters,
        families=ACTION_FAMILIES,
        older=older,
        newest=_org_url(org, "audit") + ("?" + urlencode(kept) if kept else ""),
        paged=bool(request.query.get("before")),
        error=error,
        **frame,
    )


def _with_offset(value: str, tz: str) -> str:
    """A ``datetime-local`` value plus the browser's offset (``tz`` minutes west of UTC)."""
    text = value.strip()
    if not text or not tz.strip().lstrip("-").isdigit() or "+" in text or text.endswith("Z"):
        return text
    minutes = -int(tz)
    sign = "+" if minutes >= 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"{text}{sign}{hours:02d}:{mins:02d}"


def add_routes(app: web.Application) -> None:
    app.router.add_get("/orgs/{org}/members", members_get)
    app.router.add_post("/orgs/{org}/members", create_user)
    app.router.add_post("/orgs/{org}/members/{username}/role", set_role)
    app.router.add_post("/orgs/{org}/members/{username}/remove", remove_member)
    app.router.add_post("/orgs/{org}/apikeys", create_api_key)
    app.router.add_post("/orgs/{org}/apikeys/{key}/revoke", revoke_api_key)
    app.router.add_get("/orgs/{org}/audit", audit_page)
