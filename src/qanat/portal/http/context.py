"""What every request handler shares: who is asking, the body, the service.

The portal service and its store are synchronous (SQLAlchemy, scrypt), and
in ``qanat up`` the same event loop carries the connectors' tunnels. So no
handler calls the service directly: :meth:`Deps.run` runs each call in a
worker thread and the loop only ever waits for it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jinja2
from aiohttp import web

from qanat.errors import Forbidden, InvalidInput, TooLarge, Unauthorized
from qanat.portal.access import Actor, ActorKind
from qanat.portal.http.problems import BadRequest
from qanat.portal.http.sessions import CSRF_HEADER, SESSION_COOKIE, Session, Signer
from qanat.portal.localadmin import LocalAdmin
from qanat.portal.service import Portal
from qanat.portal.signin import SignInGuard, SignInLimits
from qanat.wire.forwarded import Network, client_address, parse_networks

T = TypeVar("T")

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class PortalHttpSettings:
    """The HTTP side's limits and switches.

    Attributes:
        max_body_bytes: largest request body accepted (JSON or form).
        max_upload_bytes: largest body of an endpoint catalogue request (they
            carry OpenAPI documents; the document itself is limited by
            ``PortalConfig.openapi_max_bytes``).
        secure_cookies: mark cookies ``Secure`` (set when served over HTTPS).
        session_ttl_s: how long a browser sign-in lasts.
        refresh_s: how often the stage page re-reads its status.
        connector_ca_file: the development certificate connectors must trust
            (``--tls-ca`` in the page's connect command); "" for a real one.
        signin: sign-in throttling and the hashing pool's bounds.
        trusted_proxy_cidrs: reverse proxies whose X-Forwarded-For names the
            client (the gateway's ``--trusted-proxy``).
    """

    max_body_bytes: int = 64 * 1024
    max_upload_bytes: int = 2 * 1024 * 1024
    secure_cookies: bool = False
    session_ttl_s: float = 12 * 3600
    refresh_s: float = 3.0
    connector_ca_file: str = ""
    signin: SignInLimits = field(default_factory=SignInLimits)
    trusted_proxy_cidrs: tuple[str, ...] = ()


@dataclass(slots=True)
class Deps:
    """The portal service and what the HTTP layer adds to it."""

    portal: Portal
    signer: Signer
    settings: PortalHttpSettings
    templates: jinja2.Environment
    local_admin: LocalAdmin | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    guard: SignInGuard | None = None
    trusted: tuple[Network, ...] = ()

    def __post_init__(self) -> None:
        if self.guard is None:
            self.guard = SignInGuard(self.settings.signin)
        self.trusted = parse_networks(self.settings.trusted_proxy_cidrs)

    async def sign_in(self, username: str, password: str, source: str) -> Actor:
        """Check a password: throttled per name and source, on the hashing pool.

        Raises:
            TooManyAttempts: throttled, or too many sign-ins in progress.
            Unauthorized: wrong name or password.
        """
        guard = self.guard
        assert guard is not None
        guard.check(username, source)
        try:
            actor = await guard.pool.run(
                self.portal.authenticate_password, username, password, source
            )
        except Unauthorized:
            guard.failed(username, source)
            raise
        guard.succeeded(source)
        return actor

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking service call in a worker thread."""
        return await asyncio.to_thread(fn, *args, **kwargs)


DEPS: web.AppKey[Deps] = web.AppKey("qanat_deps", Deps)


def deps(request: web.Request) -> Deps:
    return request.app[DEPS]


def source_of(request: web.Request) -> str:
    """The client's address for the audit log and the sign-in throttle: the
    peer's, or behind a trusted proxy the client it names (X-Forwarded-For)."""
    peer = request.remote or "unknown"
    trusted = deps(request).trusted
    if trusted:
        peer = client_address(peer, request.headers.getall("X-Forwarded-For", []), trusted)
    return peer[:64]


SESSION_KEY: web.RequestKey[Session | None] = web.RequestKey("qanat_session", Session)


async def check_session(request: web.Request) -> Session | None:
    """The request's session if its cookie is genuine, unexpired and not revoked
    (signed out, password changed); read once per request (see app.py)."""
    d = deps(request)
    session = d.signer.read(request.cookies.get(SESSION_COOKIE))
    if session is not None and not await d.run(
        d.portal.session_valid, session.user_id, session.issued_at
    ):
        session = None
    return session


def session_of(request: web.Request) -> Session | None:
    """The session :func:`check_session` found for this request."""
    return request.get(SESSION_KEY)


def _presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = request.headers.get("X-API-Key", "").strip()
    return key or None


async def api_actor(request: web.Request) -> Actor:
    """Who is calling the API: an API key, the local admin key, or a session.

    A session may change something only with its CSRF token in the
    ``X-CSRF-Token`` header.

    Raises:
        Unauthorized: no credentials, or not valid ones.
        Forbidden: a session's unsafe request without a valid CSRF token.
    """
    d = deps(request)
    key = _presented_key(request)
    if key is not None:
        if d.local_admin is not None and d.local_admin.matches(key):
            return await d.run(d.portal.user_actor, d.local_admin.username)
        return await d.run(d.portal.authenticate_api_key, key, source_of(request))
    session = session_of(request)
    if session is None:
        raise Unauthorized(
            "not signed in: send an API key as 'Authorization: Bearer <key>' or"
            " 'X-API-Key: <key>', or sign in to the portal first"
        )
    if request.method in UNSAFE_METHODS and not d.signer.csrf_ok(
        session, request.headers.get(CSRF_HEADER)
    ):
        raise Forbidden(
            f"missing or wrong {CSRF_HEADER} header: a signed-in page must send the token"
            " from its <meta name='csrf-token'>; scripts should use an API key instead"
        )
    return session_actor(session)


def session_actor(session: Session) -> Actor:
    return Actor(ActorKind.USER, session.username, session.user_id)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (size-limited by the application).

    Raises:
        BadRequest: not JSON, or not an object.
        web.HTTPRequestEntityTooLarge: over the body limit (answered 413).
    """
    ctype = request.content_type
    known = ctype in ("application/json", "application/octet-stream") or ctype.endswith("+json")
    if request.body_exists and not known:
        raise BadRequest(
            f"request body has Content-Type {ctype!r}; send JSON with"
            " 'Content-Type: application/json'"
        )
    raw = await request.read()
    limit = body_limit(request)
    if len(raw) > limit:
        raise TooLarge(f"request body of {len(raw)} bytes is over the limit of {limit} bytes")
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 text; send a JSON object") from None
    except RecursionError:
        raise BadRequest(
            "request body nests arrays or objects too deeply; send a flat JSON object"
        ) from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column"
            f' {exc.colno}; send a JSON object such as {{"name": "acme"}}'
        ) from None
    if not isinstance(doc, dict):
        raise BadRequest(
            f'request body must be a JSON object, not {type(doc).__name__}; e.g. {{"name": "acme"}}'
        )
    return doc


def is_upload(request: web.Request) -> bool:
    """Whether the request may carry an OpenAPI document (catalogue routes)."""
    return "/endpoints" in request.path and request.method in UNSAFE_METHODS


def body_limit(request: web.Request) -> int:
    settings = deps(request).settings
    return settings.max_upload_bytes if is_upload(request) else settings.max_body_bytes


def field_str(doc: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    """A string field of a JSON body.

    Raises:
        InvalidInput: missing (when required) or not a string.
    """
    value = doc.get(name)
    if value is None:
        if required:
            raise InvalidInput(f"field {name!r} is required (a string)")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"field {name!r} must be a string, not {type(value).__name__}")
    return value
