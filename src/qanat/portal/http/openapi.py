"""The API's OpenAPI 3.1 document, built from the same table as the routes.

Every API route is declared once as an :class:`ApiRoute` (method, path,
handler and its documentation); :func:`add_routes` registers the handlers
with aiohttp and :func:`document` writes the OpenAPI document from the same
list, so the two cannot drift (a test checks that every route aiohttp serves
under ``/api/v1`` is documented). The schemas mirror :mod:`.render`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from qanat import __version__

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """One API operation.

    Attributes:
        role: who may call it: ``public``, ``user`` (any signed-in caller),
            ``viewer``, ``operator`` or ``admin`` of the organisation in the path.
        body: name of the request body schema, if any.
        response: name of the success response schema, if any.
        status: the success status code.
        errors: the error statuses this operation documents.
    """

    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    role: str = "viewer"
    body: str | None = None
    response: str | None = None
    status: int = 200
    errors: tuple[int, ...] = (401, 403, 404, 503)
    query: tuple[tuple[str, str, str], ...] = ()  # (name, type, description)
    #: Media types of the body and of the success response.
    media_types: tuple[str, ...] = ("application/json",)


def add_routes(app: web.Application, routes: Sequence[ApiRoute]) -> None:
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler, name=route.operation_id)


_STR = {"type": "string"}
_TIME = {"type": ["string", "null"], "format": "date-time"}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details; `detail` says what went wrong and what to do.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "examples": ["urn:qanat:problem:conflict"]},
            "title": _STR,
            "status": {"type": "integer"},
            "detail": _STR,
        },
    },
    "Org": {
        "type": "object",
        "required": ["name", "created_at", "stages"],
        "properties": {
            "name": _STR,
            "created_at": _TIME,
            "stages": {"type": "array", "items": _STR},
            "role": {"enum": ["admin", "operator", "viewer"], "description": "the caller's role"},
        },
    },
    "OrgList": {
        "type": "object",
        "properties": {"orgs": {"type": "array", "items": {"$ref": "#/components/schemas/Org"}}},
    },
    "NewOrg": {"type": "object", "required": ["name"], "properties": {"name": _STR}},
    "NewStage": {"type": "object", "required": ["name"], "properties": {"name": _STR}},
    "PlatformAdmin": {
        "type": "object",
        "required": ["platform_admin"],
        "properties": {
            "username": _STR,
            "platform_admin": {
                "type": "boolean",
                "description": "may create organisations (a role of the installation)",
            },
        },
    },
    "Allowlist": {
        "type": "object",
        "required": ["allow_cidrs"],
        "properties": {
            "allow_cidrs": {
                "type": "array",
                "items": _STR,
                "examples": [["10.1.0.0/16"]],
                "description": "app networks allowed to connect; [] admits nobody",
            }
        },
    },
    "Stage": {
        "type": "object",
        "properties": {
            "org": _STR,
            "name": _STR,
            "status": {"enum": ["active", "inactive"]},
            "address": {"type": ["string", "null"], "description": "null until activated"},
            "activated_at": _TIME,
            "token_issued_at": _TIME,
            "renewed_tokens": {"type": "integer"},
            "bind_host": _STR,
            "ports": {"type": "string", "examples": ["1024-65535"]},
            "allow_cidrs": {"type": "array", "items": _STR},
            "updated_at": _TIME,
        },
    },
    "StageList": {
        "type": "object",
        "properties": {
            "stages": {"type": "array", "items": {"$ref": "#/components/schemas/Stage"}}
        },
    },
    "Connector": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "the session (tunnel and node)"},
            "name": {"type": "string", "description": "the connector's --id"},
            "version": _STR,
            "source_address": _STR,
            "connected_since": _TIME,
            "last_seen_at": _TIME,
            "keepalive_rtt_ms": {"type": ["number", "null"]},
            "node": _STR,
            "endpoints": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": _STR, "port": {"type": "integer"}, "target": _STR},
                },
            },
        },
    },
    "Endpoint": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "examples": ["secure-gateway:8081"]},
            "port": {"type": "integer"},
            "connectors": {"type": "array", "items": _STR},
            "targets": {"type": "array", "items": _STR},
        },
    },
    "Status": {
        "type": "object",
        "properties": {
            "stage": {"$ref": "#/components/schemas/Stage"},
            "status": {"enum": ["active", "inactive"]},
            "address": {"type": ["string", "null"]},
            "connectors": {"type": "array", "items": {"$ref": "#/components/schemas/Connector"}},
            "endpoints": {"type": "array", "items": {"$ref": "#/components/schemas/Endpoint"}},
        },
    },
    "Activation": {
        "type": "object",
        "required": ["address", "status"],
        "properties": {
            "address": _STR,
            "token": {
                "type": "string",
                "description": "present on the first activation only; shown once",
            },
            "status": {"enum": ["active"]},
            "first": {"type": "boolean"},
            "changed": {"type": "boolean"},
            "stage": {"$ref": "#/components/schemas/Stage"},
        },
    },
    "Deactivation": {
        "type": "object",
        "properties": {
            "status": {"enum": ["inactive"]},
            "stage": {"$ref": "#/components/schemas/Stage"},
        },
    },
    "Renewal": {
        "type": "object",
        "required": ["token"],
        "properties": {
            "token": {"type": "string", "description": "the new token; shown once"},
            "address": _STR,
            "status": {"enum": ["active"]},
            "stage": {"$ref": "#/components/schemas/Stage"},
        },
    },
    "AuditEntry": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "at": _TIME,
            "actor": _STR,
            "action": _STR,
            "org": {"type": ["string", "null"]},
            "target": _STR,
            "source_address": _STR,
            "details": {"type": "object"},
        },
    },
    "AuditLog": {
        "type": "object",
        "properties": {
            "entries": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}}
        },
    },
    "Member": {
        "type": "object",
        "properties": {
            "username": _STR,
            "org": _STR,
            "role": {"enum": ["admin", "operator", "viewer"]},
        },
    },
    "MemberList": {
        "type": "object",
        "properties": {
            "members": {"type": "array", "items": {"$ref": "#/components/schemas/Member"}}
        },
    },
    "NewUser": {
        "type": "object",
        "required": ["username", "password", "role"],
        "properties": {
            "username": _STR,
            "password": {"type": "string", "minLength": 10},
            "role": {"enum": ["admin", "operator", "viewer"]},
        },
    },
    "User": {
        "type": "object",
        "properties": {
            "username": _STR,
            "created_at": _TIME,
            "roles": {"type": "array", "items": {"$ref": "#/components/schemas/Member"}},
        },
    },
    "ApiKey": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "examples": ["qk_0123abcd4567"]},
            "org": _STR,
            "name": _STR,
            "role": {"enum": ["admin", "operator", "viewer"]},
            "created_by": _STR,
            "created_at": _TIME,
            "expires_at": _TIME,
            "revoked_at": _TIME,
            "state": {"enum": ["valid", "expired", "revoked"]},
        },
    },
    "ApiKeyList": {
        "type": "object",
        "properties": {
            "api_keys": {"type": "array", "items": {"$ref": "#/components/schemas/ApiKey"}}
        },
    },
    "NewApiKey": {
        "type": "object",
        "required": ["name", "role"],
        "properties": {
            "name": _STR,
            "role": {"enum": ["admin", "operator", "viewer"]},
            "expires_at": {"type": "string", "format": "date-time"},
        },
    },
    "IssuedApiKey": {
        "type": "object",
        "properties": {
            "key": {"type": "string", "description": "the API key; shown once"},
            "api_key": {"$ref": "#/components/schemas/ApiKey"},
        },
    },
    "RevokedApiKey": {
        "type": "object",
        "properties": {"api_key": {"$ref": "#/components/schemas/ApiKey"}},
    },
    "NewRole": {
        "type": "object",
        "required": ["role"],
        "properties": {"role": {"enum": ["admin", "operator", "viewer"]}},
    },
    "CatalogueEntryInput": {
        "type": "object",
        "required": ["description"],
        "description": "Plain text only: descriptions or owners with HTML are refused (422).",
        "properties": {
            "description": {"type": "string", "maxLength": 500, "examples": ["Orders API"]},
            "owner": {"type": "string", "maxLength": 200, "examples": ["orders@example.com"]},
            "protocol": {"enum": ["tcp", "udp"], "default": "tcp"},
            "tls": {
                "type": "boolean",
                "default": False,
                "description": "the private side speaks TLS: apps use https://",
            },
            "openapi_url": {"type": ["string", "null"], "format": "uri"},
            "openapi_document": {
                "type": ["string", "null"],
                "description": "the OpenAPI document (JSON or YAML text); leave out to keep"
                " the stored one, null to remove it; over the limit: 413",
            },
        },
    },
    "CatalogueEntry": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "examples": ["secure-gateway:8081"]},
            "port": {"type": "integer"},
            "protocol": {"enum": ["tcp", "udp"]},
            "tls": {"type": "boolean"},
            "base_url": {"type": "string", "examples": ["https://secure-gateway:8081/"]},
            "description": _STR,
            "owner": _STR,
            "openapi_url": {"type": ["string", "null"]},
            "openapi_document": {
                "type": ["object", "null"],
                "properties": {
                    "format": {"enum": ["json", "yaml"]},
                    "title": _STR,
                    "download": _STR,
                },
            },
            "listed": {
                "type": "boolean",
                "description": "false: served by a connector but not described",
            },
            "served": {"type": "boolean"},
            "served_by": {"type": "array", "items": _STR},
            "connectors": {"type": "integer"},
            "targets": {"type": "array", "items": _STR},
            "updated_at": _TIME,
            "updated_by": _STR,
        },
    },
    "Catalogue": {
        "type": "object",
        "properties": {
            "stage": {"$ref": "#/components/schemas/Stage"},
            "endpoints": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/CatalogueEntry"},
            },
        },
    },
    "OpenApiDocument": {
        "type": "string",
        "description": "an OpenAPI 3.x or Swagger 2.0 document, JSON or YAML (size-limited)",
    },
    "TrafficRow": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "endpoints: secure-gateway:<port>"},
            "port": {"type": "integer"},
            "connector": {"type": "string", "description": "connectors: their --id"},
            "sessions": {"type": "string", "description": "connectors: tunnel and node"},
            "protocol": {"enum": ["tcp", "udp"]},
            "connections": {"type": "integer", "description": "TCP connections; UDP datagrams"},
            "failures": {"type": "integer"},
            "bytes": {"type": "integer"},
            "per_minute": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "Traffic": {
        "type": "object",
        "properties": {
            "stage": _STR,
            "minutes": {"type": "integer"},
            "since": _TIME,
            "endpoints": {"type": "array", "items": {"$ref": "#/components/schemas/TrafficRow"}},
            "connectors": {"type": "array", "items": {"$ref": "#/components/schemas/TrafficRow"}},
        },
    },
    "SignIn": {
        "type": "object",
        "required": ["username", "password"],
        "properties": {"username": _STR, "password": _STR},
    },
    "SessionInfo": {
        "type": "object",
        "properties": {
            "username": _STR,
            "kind": {"enum": ["user", "apikey"]},
            "csrf_token": {"type": "string", "description": "send as X-CSRF-Token"},
        },
    },
}

_ERROR_TEXT = {
    400: "malformed request (not JSON, not an object)",
    401: "no valid credentials (missing, wrong, expired or revoked)",
    403: "your role does not allow it (e.g. a viewer), or a missing CSRF token",
    404: "no such organisation (or no role in it), stage, user or key",
    409: "conflicts with the current state (duplicate name, inactive gateway)",
    413: "request body or OpenAPI document larger than its limit",
    422: "a value is malformed (name, role, password)",
    503: "the database is locked or unreachable; nothing was written; retry",
}


def _operation(route: ApiRoute) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "description": f"Who may call it: {route.role}.",
        "responses": {},
    }
    if route.role == "public":
        op["security"] = []
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_params(route.path)
    ]
    params += [
        {"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": d}
        for name, kind, d in route.query
    ]
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {
                t: {"schema": {"$ref": f"#/components/schemas/{route.body}"}}
                for t in route.media_types
            },
        }
    success: dict[str, Any] = {
        "description": {200: "OK", 201: "Created", 204: "Done"}.get(route.status, "OK")
    }
    if route.response is not None:
        types = route.media_types if route.response == "OpenApiDocument" else ("application/json",)
        success["content"] = {
            t: {"schema": {"$ref": f"#/components/schemas/{route.response}"}} for t in types
        }
    op["responses"][str(route.status)] = success
    errors = set(route.errors)
    if route.body is not None:
        errors |= {400, 413, 422}
    for code in sorted(errors):
        op["responses"][str(code)] = {
            "description": _ERROR_TEXT.get(code, "error"),
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
    return op


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def document(routes: Sequence[ApiRoute], server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "qanat portal API",
            "version": __version__,
            "description": (
                "Organisations, stages and the life of each stage's private gateway."
                " Errors are application/problem+json objects whose `detail` says"
                " what to do. Authenticate with an API key (Authorization: Bearer"
                " <key>, or X-API-Key) or a browser session; a session's changes"
                " need its X-CSRF-Token header."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "session": {"type": "apiKey", "in": "cookie", "name": "qanat_session"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}, {"session": []}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
