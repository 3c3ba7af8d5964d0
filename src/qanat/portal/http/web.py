"""The portal's pages: server-rendered HTML (Jinja2), a little JavaScript.

Pages::

    /signin                          sign in (CSRF-bound to a pre-session cookie)
    /orgs                            your organisations, their stages; create one
    /orgs/<org>/stages/<stage>       one tab per stage: the gateway toggle, the
                                     address, the token (once), renew, the
                                     connect command, live connectors/endpoints

Every form carries the session's CSRF token; every change is a POST that
answers with a redirect (post/redirect/get), except the two that issue a
token: their answer *is* the page showing it, so that the token is never
stored anywhere to be shown again. ``static/portal.js`` adds copy buttons,
the renew confirmation and the status refresh (it fetches the stage's JSON
status from the API every few seconds); everything works without it, minus
the live refresh.
"""

from __future__ import annotations

import shlex
import time
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from qanat.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    PortalError,
    TooManyAttempts,
    Unauthorized,
)
from qanat.portal.http import render
from qanat.portal.http.api import orgs_with_roles, set_session_cookie
from qanat.portal.http.context import deps, session_actor, session_of, source_of
from qanat.portal.http.sessions import CSRF_FIELD, LOGIN_COOKIE, SESSION_COOKIE, Session

STATIC_FILES = {
    "portal.css": "text/css",
    "portal.js": "text/javascript",
}


def _page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    d = deps(request)
    session = context.get("session")
    if isinstance(session, Session):
        context.setdefault("csrf_token", d.signer.csrf_token(session))
    html = d.templates.get_template(template).render(**context)
    return web.Response(
        text=html,
        status=status,
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


def _require_session(request: web.Request) -> Session:
    session = session_of(request)
    if session is None:
        raise web.HTTPSeeOther("/signin?next=" + quote(request.path_qs, safe=""))
    return session


async def _form(request: web.Request, session: Session) -> dict[str, str]:
    d = deps(request)
    data = await request.post()
    form = {k: v for k, v in data.items() if isinstance(v, str)}
    if not d.signer.csrf_ok(session, form.get(CSRF_FIELD)):
        raise Forbidden(
            "this form has expired or did not come from this portal (CSRF check failed);"
            " reload the page and try again"
        )
    return form


def _stage_url(org: str, stage: str) -> str:
    return f"/orgs/{quote(org, safe='')}/stages/{quote(stage, safe='')}"


# -- sign in ----------------------------------------------------------------------


async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/orgs" if session_of(request) else "/signin")


def _signin_page(
    request: web.Request, error: str | None = None, status: int = 200, username: str = ""
) -> web.Response:
    d = deps(request)
    nonce = d.signer.login_nonce()
    response = _page(
        request,
        "signin.html",
        status=status,
        error=error,
        username=username,
        login_token=d.signer.login_token(nonce),
        next=request.query.get("next", ""),
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=3600,
        path="/signin",
        httponly=True,
        samesite="Strict",
        secure=d.settings.secure_cookies,
    )
    return response


async def signin_form(request: web.Request) -> web.StreamResponse:
    if session_of(request) is not None:
        raise web.HTTPSeeOther("/orgs")
    return _signin_page(request)


async def signin(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    data = await request.post()
    form = {k: v for k, v in data.items() if isinstance(v, str)}
    username = form.get("username", "")
    if not d.signer.login_ok(request.cookies.get(LOGIN_COOKIE), form.get(CSRF_FIELD)):
        return _signin_page(
            request,
            "the sign-in form expired or did not come from this portal; please try again",
            status=403,
            username=username,
        )
    try:
        actor = await d.sign_in(username, form.get("password", ""), source_of(request))
    except Unauthorized as exc:
        return _signin_page(request, str(exc), status=401, username=username)
    except TooManyAttempts as exc:
        return _signin_page(request, str(exc), status=429, username=username)
    assert actor.user_id is not None
    cookie, _ = d.signer.issue(actor.user_id, actor.name)
    target = same_origin_path(request.query.get("next") or form.get("next") or "")
    response = web.HTTPSeeOther(target)
    set_session_cookie(request, response, cookie)
    response.del_cookie(LOGIN_COOKIE, path="/signin")
    raise response


def same_origin_path(target: str, default: str = "/orgs") -> str:
    """``target`` if it is a path on this portal, else ``default``.

    Browsers drop tabs and newlines from URLs and read ``\\`` as ``/``, so
    ``/\t/evil.example`` would become ``//evil.example`` (another site):
    only printable characters without a backslash, one leading slash, no
    scheme and no host are accepted.
    """
    if (
        not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or not target.isprintable()
        or any(c.isspace() for c in target)
    ):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


async def signout(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    session = _require_session(request)
    await _form(request, session)
    await d.run(d.portal.end_sessions, session.user_id, time.time())
    response = web.HTTPSeeOther("/signin")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


# -- organisations ---------------------------------------------------------------------


async def orgs_page(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    session = _require_session(request)
    actor = session_actor(session)

    def load() -> list[dict[str, Any]]:
        orgs = orgs_with_roles(d.portal, actor)
        for org in orgs:
            org["stage_infos"] = [render.stage(s) for s in d.portal.list_stages(actor, org["name"])]
        return orgs

    orgs = await d.run(load)
    return _page(request, "orgs.html", session=session, orgs=orgs, error=None)


async def create_org(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    session = _require_session(request)
    form = await _form(request, session)
    actor = session_actor(session)
    try:
        info = await d.run(d.portal.create_org, actor, source_of(request), form.get("name", ""))
    except (InvalidInput, PortalError) as exc:
        orgs = await d.run(orgs_with_roles, d.portal, actor)
        for org in orgs:
            org["stage_infos"] = []
        return _page(request, "orgs.html", status=422, session=session, orgs=orgs, error=str(exc))
    raise web.HTTPSeeOther(_stage_url(info.name, info.stages[0]) if info.stages else "/orgs")


async def org_page(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    session = _require_session(request)
    stages = await d.run(d.portal.list_stages, session_actor(session), request.match_info["org"])
    if not stages:
        raise web.HTTPSeeOther("/orgs")
    raise web.HTTPSeeOther(_stage_url(stages[0].org, stages[0].name))


# -- one stage -----------------------------------------------------------------------


async def _stage_page(
    request: web.Request,
    session: Session,
    org: str,
    stage: str,
    *,
    token: str | None = None,
    reveal_reason: str = "",
    notice: str | None = None,
) -> web.Response:
    d = deps(request)
    actor = session_actor(session)

    def load() -> dict[str, Any]:
        role = d.portal.role_of(actor, org)
        stages = d.portal.list_stages(actor, org)
        status = d.portal.status(actor, org, stage)
        audit = [
            render.audit(e)
            for e in d.portal.audit_log(actor, org, limit=200)
            if e.target == status.stage.key
        ][:10]
        return {
            "role": role.value,
            "stages": [render.stage(s) for s in stages],
            "gw": render.status(status),
            "audit": audit,
        }

    data = await d.run(load)
    gw = data["gw"]
    address = gw["address"] or "<address>"
    ca_file = d.settings.connector_ca_file
    tls_ca = f"--tls-ca {shlex.quote(ca_file)} " if ca_file else ""
    command = (
        f'qanat connect {tls_ca}--header "token: {token or "<token>"}" {address}'
        " R:<port>:<host>:<port>"
    )
    return _page(
        request,
        "stage.html",
        session=session,
        org=org,
        stage=gw["stage"],
        token=token,
        reveal_reason=reveal_reason,
        notice=notice or _NOTICES.get(request.query.get("done", "")),
        command=command,
        status_url=f"/api/v1/orgs/{quote(org, safe='')}/stages/{quote(stage, safe='')}",
        refresh_ms=int(d.settings.refresh_s * 1000),
        stage_url=_stage_url(org, stage),
        ca_file=ca_file,
        section="gateway",
        **data,
    )


_NOTICES = {
    "activated": "The gateway is active again: same address and token as before.",
    "deactivated": "The gateway is inactive: its tunnels are closed and connectors are refused.",
}


async def stage_page(request: web.Request) -> web.StreamResponse:
    session = _require_session(request)
    return await _stage_page(
        request, session, request.match_info["org"], request.match_info["stage"]
    )


async def stage_action(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    session = _require_session(request)
    form = await _form(request, session)
    org, stage, action = (request.match_info[k] for k in ("org", "stage", "action"))
    actor = session_actor(session)
    source = source_of(request)
    if action == "activate":
        result = await d.run(d.portal.activate, actor, source, org, stage)
        if result.token is not None:
            return await _stage_page(
                request, session, org, stage, token=result.token, reveal_reason="activation"
            )
        raise web.HTTPSeeOther(_stage_url(org, stage) + "?done=activated")
    if action == "deactivate":
        await d.run(d.portal.deactivate, actor, source, org, stage)
        raise web.HTTPSeeOther(_stage_url(org, stage) + "?done=deactivated")
    if action == "renew":
        if form.get("confirm") != "yes":
            raise InvalidInput(
                "renewing the token needs confirmation: tick the box that says running"
                " connectors with the old token will be refused on their next retry"
            )
        issued = await d.run(d.portal.renew_token, actor, source, org, stage)
        return await _stage_page(
            request, session, org, stage, token=issued.token, reveal_reason="renewal"
        )
    raise NotFound(f"no stage action {action!r}; use activate, deactivate or renew")


# -- static files ------------------------------------------------------------------------


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    ctype = STATIC_FILES.get(name)
    if ctype is None:
        raise web.HTTPNotFound()
    body = resources.files("qanat.portal.http").joinpath("static", name).read_bytes()
    return web.Response(
        body=body, content_type=ctype, headers={"Cache-Control": "public, max-age=300"}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", root)
    app.router.add_get("/signin", signin_form)
    app.router.add_post("/signin", signin)
    app.router.add_post("/signout", signout)
    app.router.add_get("/orgs", orgs_page)
    app.router.add_post("/orgs", create_org)
    app.router.add_get("/orgs/{org}", org_page)
    app.router.add_get("/orgs/{org}/stages/{stage}", stage_page)
    app.router.add_post("/orgs/{org}/stages/{stage}/{action}", stage_action)
    app.router.add_get("/static/{name}", static)
