"""Errors as JSON problem objects (RFC 9457, formerly 7807).

Every refusal of the API is ``application/problem+json`` with ``type``,
``title``, ``status`` and ``detail``; ``detail`` is the message of the
:mod:`qanat.errors` exception, which names the thing and the fix. The
mapping from exceptions to statuses is this one table.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from qanat.errors import (
    Conflict,
    DatabaseBusy,
    DatabaseUnreachable,
    Forbidden,
    InvalidInput,
    MigrationError,
    NotFound,
    QanatError,
    StoreError,
    TooLarge,
    TooManyAttempts,
    Unauthorized,
)

PROBLEM_TYPE = "application/problem+json"


class BadRequest(InvalidInput):
    """The request itself is malformed (not JSON, not an object): HTTP 400."""


# (exception, HTTP status, problem slug, title); the first match wins.
_TABLE: tuple[tuple[type[QanatError], int, str, str], ...] = (
    (BadRequest, 400, "malformed-request", "Malformed request"),
    (TooManyAttempts, 429, "too-many-attempts", "Too many attempts"),
    (NotFound, 404, "not-found", "Not found"),
    (Conflict, 409, "conflict", "Conflict with the current state"),
    (Forbidden, 403, "forbidden", "Not allowed for your role"),
    (Unauthorized, 401, "unauthorized", "Not signed in or credentials not valid"),
    (TooLarge, 413, "too-large", "Larger than the limit"),
    (InvalidInput, 422, "invalid-input", "Invalid input"),
    (DatabaseBusy, 503, "database-busy", "Database busy"),
    (DatabaseUnreachable, 503, "database-unreachable", "Database unreachable"),
    (MigrationError, 503, "database-schema", "Database schema not ready"),
    (StoreError, 503, "database-error", "Database error"),
)

_TITLES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Not signed in or credentials not valid"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("body-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("invalid-input", "Invalid input"),
    429: ("too-many-attempts", "Too many attempts"),
    500: ("internal-error", "Internal error"),
    503: ("unavailable", "Service unavailable"),
}


def problem_type(slug: str) -> str:
    """The ``type`` URI of a problem; documented in the OpenAPI document."""
    return f"urn:qanat:problem:{slug}"


def problem(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    """A problem response."""
    default_slug, default_title = _TITLES.get(status, ("error", "Error"))
    body: dict[str, Any] = {
        "type": problem_type(slug or default_slug),
        "title": title or default_title,
        "status": status,
        "detail": detail,
    }
    if extra:
        body.update(extra)
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=PROBLEM_TYPE,
        headers=headers,
    )


def classify(exc: QanatError) -> tuple[int, str, str]:
    """(status, slug, title) of a qanat error; 500 for anything unexpected."""
    for kind, status, slug, title in _TABLE:
        if isinstance(exc, kind):
            return status, slug, title
    return 400, "bad-request", "Bad request"


def from_error(exc: QanatError) -> web.Response:
    """The problem response for a qanat error."""
    status, slug, title = classify(exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="qanat"'
    if status == 503:
        headers["Retry-After"] = "2"
    if isinstance(exc, TooManyAttempts):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return problem(status, str(exc), slug=slug, title=title, headers=headers)
