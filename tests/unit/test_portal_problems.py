"""Unit tests: qanat errors map to the documented problem statuses."""

from __future__ import annotations

import json

import pytest

from qanat.errors import (
    Conflict,
    DatabaseBusy,
    DatabaseUnreachable,
    Forbidden,
    InvalidInput,
    NotFound,
    QanatError,
    Unauthorized,
)
from qanat.portal.http.problems import BadRequest, from_error


@pytest.mark.parametrize(
    ("error", "status", "slug"),
    [
        (NotFound("no org"), 404, "not-found"),
        (Conflict("dup"), 409, "conflict"),
        (Forbidden("viewer"), 403, "forbidden"),
        (Unauthorized("bad key"), 401, "unauthorized"),
        (InvalidInput("bad name"), 422, "invalid-input"),
        (BadRequest("not json"), 400, "malformed-request"),
        (DatabaseBusy("locked"), 503, "database-busy"),
        (DatabaseUnreachable("gone"), 503, "database-unreachable"),
    ],
)
def test_problem_objects(error: QanatError, status: int, slug: str) -> None:
    response = from_error(error)
    assert response.status == status
    assert response.content_type == "application/problem+json"
    assert response.body is not None
    doc = json.loads(bytes(response.body))  # type: ignore[arg-type]
    assert doc == {
        "type": f"urn:qanat:problem:{slug}",
        "title": doc["title"],
        "status": status,
        "detail": str(error),
    }
    if status == 401:
        assert "Bearer" in response.headers["WWW-Authenticate"]
    if status == 503:
        assert response.headers["Retry-After"]
