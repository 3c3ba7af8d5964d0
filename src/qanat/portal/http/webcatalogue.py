"""Pages of one stage beyond its gateway: the endpoint catalogue and traffic.

Pages::

    /orgs/<org>/stages/<stage>/endpoints               the catalogue; operators
                                                       also get the entry form
    /orgs/<org>/stages/<stage>/endpoints/<port>/openapi  the document, readable
    /orgs/<org>/stages/<stage>/traffic                 the last hour per endpoint
                                                       and per connector

The entry form is one multipart POST (fields and the optional file), so an
entry and its document are stored together or, on bad input, not at all:
the answer is then the same page with the message and the typed values.
Downloads go to the API's ``.../openapi`` (a session may GET the API).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from qanat.errors import Forbidden, InvalidInput, NotFound
from qanat.portal.http import render
from qanat.portal.http.apicatalogue import document_url, port_of
from qanat.portal.http.context import deps, session_actor, source_of
from qanat.portal.http.problems import classify
from qanat.portal.http.sessions import CSRF_FIELD, Session
from qanat.portal.http.web import _page, _require_session, _stage_url
from qanat.store import Role

_NOTICES = {
    "saved": "The endpoint's entry is saved.",
    "removed": "The entry is removed (the port itself is untouched).",
}


def _org_stage(request: web.Request) -> tuple[str, str]:
    return request.match_info["org"], request.match_info["stage"]


async def _stage_frame(
    request: web.Request, session: Session, org: str, stage: str
) -> dict[str, Any]:
    """What every stage page shows at the top: role, stage tabs, the section links."""
    d = deps(request)
    actor = session_actor(session)

    def load() -> dict[str, Any]:
        role = d.portal.role_of(actor, org)
        stages = d.portal.list_stages(actor, org)
        return {"role": role.value, "stages": [render.stage(s) for s in stages]}

    frame = await d.run(load)
    current = [s for s in frame["stages"] if s["name"].lower() == stage.lower()]
    if not current:
        raise NotFound(f"organisation {org!r} has no stage {stage!r}")
    frame.update(org=org, stage=current[0], stage_url=_stage_url(org, current[0]["name"]))
    return frame


async def catalogue_page(
    request: web.Request,
    *,
    error: str | None = None,
    status: int = 200,
    form: dict[str, str] | None = None,
) -> web.Response:
    d = deps(request)
    session = _require_session(request)
    org, stage = _org_stage(request)
    frame = await _stage_frame(request, session, org, stage)
    cat = await d.run(d.portal.catalogue, session_actor(session), org, stage)
    entries = [
        render.catalogue_entry(e, document_url(org, cat.stage.name, e.port)) for e in cat.entries
    ]
    can_write = Role(frame["role"]).rank >= Role.OPERATOR.rank
    editing = None
    edit = request.query.get("edit", "")
    if form is None and edit.isdigit():
        found = [e for e in entries if e["port"] == int(edit)]
        if found:
            editing = found[0]
            form = {
                "port": str(editing["port"]),
                "protocol": editing["protocol"],
                "tls": "yes" if editing["tls"] else "",
                "description": editing["description"],
                "owner": editing["owner"],
                "openapi_url": editing["openapi_url"] or "",
            }
    return _page(
        request,
        "catalogue.html",
        status=status,
        session=session,
        section="endpoints",
        entries=entries,
        can_write=can_write,
        editing=editing,
        form=form or {},
        error=error,
        notice=_NOTICES.get(request.query.get("done", "")),
        max_document_kib=d.portal.openapi_max_bytes // 1024,
        **frame,
    )


async def catalogue_get(request: web.Request) -> web.StreamResponse:
    return await catalogue_page(request)


async def catalogue_post(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    session = _require_session(request)
    org, stage = _org_stage(request)
    data = await request.post()
    if not d.signer.csrf_ok(session, _text(data.get(CSRF_FIELD))):
        raise Forbidden(
            "this form has expired or did not come from this portal (CSRF check failed);"
            " reload the page and try again"
        )
    form = {k: _text(data.get(k)) for k in ("port", "protocol", "tls", "description", "owner")}
    form["openapi_url"] = _text(data.get("openapi_url"))
    upload = data.get("openapi_file")
    document: Any = ...
    raw = getattr(upload, "file", None)
    if raw is not None:
        content = raw.read()
        if content:
            document = content
    if _text(data.get("remove_document")) == "yes" and document is ...:
        document = None
    kwargs: dict[str, Any] = {
        "description": form["description"],
        "owner": form["owner"],
        "protocol": form["protocol"] or "tcp",
        "tls": form["tls"] == "yes",
        "openapi_url": form["openapi_url"] or None,
    }
    if document is not ...:
        kwargs["openapi_document"] = document
    try:
        port = port_of(form["port"])
        await d.run(
            d.portal.set_endpoint,
            session_actor(session),
            source_of(request),
            org,
            stage,
            port,
            **kwargs,
        )
    except InvalidInput as exc:
        status = classify(exc)[0]
        return await catalogue_page(request, error=str(exc), status=status, form=form)
    raise web.HTTPSeeOther(_stage_url(org, stage) + "/endpoints?done=saved")


async def catalogue_remove(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    session = _require_session(request)
    org, stage = _org_stage(request)
    data = await request.post()
    if not d.signer.csrf_ok(session, _text(data.get(CSRF_FIELD))):
        raise Forbidden("this form has expired (CSRF check failed); reload the page")
    port = port_of(request.match_info["port"])
    await d.run(
        d.portal.remove_endpoint, session_actor(session), source_of(request), org, stage, port
    )
    raise web.HTTPSeeOther(_stage_url(org, stage) + "/endpoints?done=removed")


async def openapi_page(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    session = _require_session(request)
    org, stage = _org_stage(request)
    port = port_of(request.match_info["port"])
    frame = await _stage_frame(request, session, org, stage)
    actor = session_actor(session)

    def load() -> tuple[Any, Any]:
        return (
            d.portal.catalogue_entry(actor, org, stage, port),
            d.portal.openapi_summary(actor, org, stage, port),
        )

    entry, summary = await d.run(load)
    return _page(
        request,
        "openapi.html",
        session=session,
        section="endpoints",
        entry=render.catalogue_entry(entry, document_url(org, frame["stage"]["name"], port)),
        api=summary,
        **frame,
    )


async def traffic_page(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    session = _require_session(request)
    org, stage = _org_stage(request)
    frame = await _stage_frame(request, session, org, stage)
    info = await d.run(d.portal.traffic, session_actor(session), org, stage, minutes=60)
    return _page(
        request,
        "traffic.html",
        session=session,
        section="traffic",
        traffic=render.traffic(info),
        traffic_url=(
            f"/api/v1/orgs/{quote(org, safe='')}/stages/{quote(frame['stage']['name'], safe='')}"
            "/traffic"
        ),
        **frame,
    )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def add_routes(app: web.Application) -> None:
    stage = "/orgs/{org}/stages/{stage}"
    app.router.add_get(stage + "/endpoints", catalogue_get)
    app.router.add_post(stage + "/endpoints", catalogue_post)
    app.router.add_post(stage + "/endpoints/{port}/remove", catalogue_remove)
    app.router.add_get(stage + "/endpoints/{port}/openapi", openapi_page)
    app.router.add_get(stage + "/traffic", traffic_page)
