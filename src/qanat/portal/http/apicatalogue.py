"""The API of the endpoint catalogue and traffic (``.../stages/{stage}/endpoints``).

Entries are keyed by port. ``PUT .../endpoints/{port}`` takes JSON (the
document, if any, as the string ``openapi_document``); ``PUT
.../endpoints/{port}/openapi`` takes the document itself as the body (JSON
or YAML), for ``curl --data-binary @orders.yaml``. Downloads answer with the
document exactly as uploaded.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from qanat.errors import InvalidInput, TooLarge
from qanat.portal.http import render
from qanat.portal.http.context import api_actor, body_limit, deps, json_body, source_of
from qanat.portal.http.openapi import ApiRoute

PREFIX = "/api/v1"
STAGE_PATH = PREFIX + "/orgs/{org}/stages/{stage}"
_WRITE = (400, 401, 403, 404, 409, 413, 422, 503)
#: Content types accepted for a raw OpenAPI upload.
DOCUMENT_TYPES = (
    "application/json",
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
    "text/x-yaml",
    "text/plain",
    "application/octet-stream",
)


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.json_response(doc, status=status, headers={"Cache-Control": "no-store"})


def port_of(text: str) -> int:
    """A port from a path or form.

    Raises:
        InvalidInput: not a number from 1 to 65535.
    """
    value = text.strip()
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise InvalidInput(f"port {text[:20]!r} is not a number from 1 to 65535")
    return int(value)


def _where(request: web.Request) -> tuple[str, str, int]:
    m = request.match_info
    return m["org"], m["stage"], port_of(m.get("port", "0") or "0")


def document_url(org: str, stage: str, port: int) -> str:
    return (
        f"{PREFIX}/orgs/{quote(org, safe='')}/stages/{quote(stage, safe='')}"
        f"/endpoints/{port}/openapi"
    )


def entry_doc(org: str, stage: str, entry: Any) -> dict[str, Any]:
    return render.catalogue_entry(entry, document_url(org, stage, entry.port))


async def list_endpoints(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    org, stage = request.match_info["org"], request.match_info["stage"]
    cat = await d.run(d.portal.catalogue, actor, org, stage)
    return _json(
        {
            "stage": render.stage(cat.stage),
            "endpoints": [entry_doc(cat.stage.org, cat.stage.name, e) for e in cat.entries],
        }
    )


async def get_endpoint(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    org, stage, port = _where(request)
    entry = await d.run(d.portal.catalogue_entry, actor, org, stage, port)
    return _json(entry_doc(org, stage, entry))


def _optional_str(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"field {name!r} must be a string or null, not {type(value).__name__}")
    return value


async def set_endpoint(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    org, stage, port = _where(request)
    doc = await json_body(request)
    description = doc.get("description")
    if not isinstance(description, str):
        raise InvalidInput(
            "field 'description' is required (a string), e.g."
            ' {"description": "Orders API", "owner": "team-orders@example.com", "tls": true}'
        )
    tls = doc.get("tls", False)
    if not isinstance(tls, bool):
        raise InvalidInput("field 'tls' must be true or false")
    kwargs: dict[str, Any] = {
        "description": description,
        "owner": _optional_str(doc, "owner") or "",
        "protocol": _optional_str(doc, "protocol") or "tcp",
        "tls": tls,
        "openapi_url": _optional_str(doc, "openapi_url"),
    }
    if "openapi_document" in doc:
        kwargs["openapi_document"] = _optional_str(doc, "openapi_document")
    entry = await d.run(
        d.portal.set_endpoint, actor, source_of(request), org, stage, port, **kwargs
    )
    return _json(entry_doc(org, stage, entry))


async def remove_endpoint(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    org, stage, port = _where(request)
    await d.run(d.portal.remove_endpoint, actor, source_of(request), org, stage, port)
    return web.Response(status=204)


async def download_openapi(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    org, stage, port = _where(request)
    found = await d.run(d.portal.openapi_file, actor, org, stage, port)
    return openapi_response(stage, found)


def openapi_response(stage: str, found: Any) -> web.Response:
    """The stored document as a download named ``<stage>-<port>-openapi.<ext>``."""
    ext = "json" if found.format == "json" else "yaml"
    safe_stage = "".join(c if c.isalnum() or c in "-_" else "-" for c in stage)
    filename = f"{safe_stage}-{found.port}-openapi.{ext}"
    return web.Response(
        body=found.text.encode("utf-8"),
        content_type=found.media_type,
        charset="utf-8",
        headers={
            "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )


async def upload_openapi(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    org, stage, port = _where(request)
    if request.content_type not in DOCUMENT_TYPES:
        raise InvalidInput(
            f"Content-Type {request.content_type!r} is not a document type; send the file"
            " with Content-Type: application/yaml or application/json"
        )
    raw = await request.read()
    limit = body_limit(request)
    if len(raw) > limit:
        raise TooLarge(f"request body of {len(raw)} bytes is over the limit of {limit} bytes")
    entry = await d.run(
        d.portal.set_openapi_document, actor, source_of(request), org, stage, port, raw
    )
    return _json(entry_doc(org, stage, entry))


async def stage_traffic(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    actor = await api_actor(request)
    try:
        minutes = int(request.query.get("minutes", "60"))
    except ValueError:
        raise InvalidInput("query parameter 'minutes' must be an integer (1-120)") from None
    info = await d.run(
        d.portal.traffic,
        actor,
        request.match_info["org"],
        request.match_info["stage"],
        minutes=minutes,
    )
    return _json(render.traffic(info))


ENDPOINT_PATH = STAGE_PATH + "/endpoints/{port}"

ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        STAGE_PATH + "/endpoints",
        list_endpoints,
        "listEndpoints",
        "The stage's endpoint catalogue, merged with what connectors serve right now",
        response="Catalogue",
    ),
    ApiRoute(
        "GET",
        ENDPOINT_PATH,
        get_endpoint,
        "getEndpoint",
        "One endpoint: its entry (if any) and who serves it",
        response="CatalogueEntry",
    ),
    ApiRoute(
        "PUT",
        ENDPOINT_PATH,
        set_endpoint,
        "setEndpoint",
        "Describe secure-gateway:<port> (create or replace the entry)",
        role="operator",
        body="CatalogueEntryInput",
        response="CatalogueEntry",
        errors=_WRITE,
    ),
    ApiRoute(
        "DELETE",
        ENDPOINT_PATH,
        remove_endpoint,
        "removeEndpoint",
        "Delete the entry of a port (the port itself is untouched)",
        role="operator",
        status=204,
        errors=_WRITE,
    ),
    ApiRoute(
        "GET",
        ENDPOINT_PATH + "/openapi",
        download_openapi,
        "downloadOpenApi",
        "The endpoint's OpenAPI document, exactly as uploaded (JSON or YAML)",
        response="OpenApiDocument",
        media_types=("application/yaml", "application/json"),
    ),
    ApiRoute(
        "PUT",
        ENDPOINT_PATH + "/openapi",
        upload_openapi,
        "uploadOpenApi",
        "Replace the OpenAPI document of an existing entry (the body is the document)",
        role="operator",
        body="OpenApiDocument",
        response="CatalogueEntry",
        errors=_WRITE,
        media_types=("application/yaml", "application/json"),
    ),
    ApiRoute(
        "GET",
        STAGE_PATH + "/traffic",
        stage_traffic,
        "stageTraffic",
        "Connections, failures and bytes per endpoint and connector, per minute",
        response="Traffic",
        query=(("minutes", "integer", "the window, 1-120 minutes (default 60)"),),
    ),
)
