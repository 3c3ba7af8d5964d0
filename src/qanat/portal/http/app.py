"""The aiohttp application and how it is served.

Two ways to serve it, one object (:class:`PortalHttp`):

- inside ``qanat up`` / a gateway: ``protocol_factory`` is given to the
  gateway as its ``http_fallback``; the front door reads the first request
  line, sees it is not a tunnel and hands the connection over;
- alone (``qanat portal``): ``protocol_factory`` is served behind the same
  door (:func:`qanat.gateway.gated.serve_http_door`: head and idle
  deadlines, connection caps); :meth:`PortalHttp.listen` opens a plain
  aiohttp socket without that door (tests).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import jinja2
from aiohttp import web

from qanat.errors import QanatError, Unauthorized
from qanat.portal.http import api, problems, webadmin, webcatalogue
from qanat.portal.http import web as pages
from qanat.portal.http.context import (
    DEPS,
    SESSION_KEY,
    Deps,
    PortalHttpSettings,
    body_limit,
    check_session,
)
from qanat.portal.http.filters import FILTERS
from qanat.portal.http.openapi import add_routes
from qanat.portal.http.sessions import Signer
from qanat.portal.localadmin import LocalAdmin
from qanat.portal.service import Portal

log = logging.getLogger("qanat.portal.http")

#: One year, without includeSubDomains (the gateway's name may share a domain).
HSTS_MAX_AGE_S = 365 * 24 * 3600

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def _is_api(request: web.Request) -> bool:
    return request.path.startswith(api.PREFIX + "/") or request.path == api.PREFIX


def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    d = request.app[DEPS]
    html = d.templates.get_template("error.html").render(status=status, message=message)
    return web.Response(
        text=html, status=status, content_type="text/html", headers={"Cache-Control": "no-store"}
    )


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    api_request = _is_api(request)
    limit = body_limit(request)
    if request.content_length is not None and request.content_length > limit:
        detail = (
            f"request body of {request.content_length} bytes is over the limit of {limit}"
            " bytes; send less"
        )
        return problems.problem(413, detail) if api_request else _error_page(request, 413, detail)
    try:
        request[SESSION_KEY] = await check_session(request)
        response = await handler(request)
    except QanatError as exc:
        if api_request:
            response = problems.from_error(exc)
        elif isinstance(exc, Unauthorized):
            raise web.HTTPSeeOther("/signin") from None
        else:
            status = problems.classify(exc)[0]
            response = _error_page(request, status, str(exc))
    except web.HTTPRequestEntityTooLarge:
        detail = f"request body is over the limit of {limit} bytes; send less"
        response = (
            problems.problem(413, detail) if api_request else _error_page(request, 413, detail)
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            _secure_headers(request, exc)
            raise
        if api_request:
            text = exc.text or ""
            if not text or text.startswith(str(exc.status)):
                text = f"{exc.reason}: {request.method} {request.path}"
            response = problems.problem(exc.status, text)
        else:
            response = _error_page(request, exc.status, exc.reason)
    except (UnicodeError, ValueError, TypeError, RecursionError) as exc:
        # Malformed input that reached a library (form decoding, cookies...):
        # the client's fault, one short line, no traceback.
        log.warning(
            "portal: %s %s: bad request (%s: %s)",
            request.method,
            request.path,
            type(exc).__name__,
            str(exc)[:200],
        )
        detail = "the request could not be read (malformed encoding or structure); fix it"
        response = (
            problems.problem(400, detail) if api_request else _error_page(request, 400, detail)
        )
    except Exception:
        log.exception("portal: %s %s failed", request.method, request.path)
        detail = "the portal failed unexpectedly; the error is in its log"
        response = (
            problems.problem(500, detail) if api_request else _error_page(request, 500, detail)
        )
    _secure_headers(request, response)
    return response


def _secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    if request.app[DEPS].settings.secure_cookies:
        # Served over HTTPS (directly or behind the TLS-terminating proxy).
        headers.setdefault("Strict-Transport-Security", f"max-age={HSTS_MAX_AGE_S}")
    headers["Server"] = "qanat"
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("Content-Security-Policy", _CSP)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("qanat.portal.http", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env


def build_app(
    portal: Portal,
    signer: Signer,
    *,
    settings: PortalHttpSettings | None = None,
    local_admin: LocalAdmin | None = None,
) -> web.Application:
    """The portal's aiohttp application (API, OpenAPI document, pages)."""
    settings = settings or PortalHttpSettings()
    app = web.Application(
        middlewares=[_errors],
        client_max_size=max(settings.max_body_bytes, settings.max_upload_bytes),
    )
    app[DEPS] = Deps(
        portal=portal,
        signer=signer,
        settings=settings,
        templates=_templates(),
        local_admin=local_admin,
    )
    app.on_cleanup.append(_close_hashing_pool)
    add_routes(app, api.ROUTES)
    app.router.add_route("*", api.PREFIX + "/{tail:.*}", api.not_found)
    # Before pages.add_routes: its POST .../stages/{stage}/{action} would match.
    webcatalogue.add_routes(app)
    webadmin.add_routes(app)
    pages.add_routes(app)
    return app


async def _close_hashing_pool(app: web.Application) -> None:
    guard = app[DEPS].guard
    if guard is not None:
        guard.pool.close()


def set_local_admin(app: web.Application, local_admin: LocalAdmin | None) -> None:
    """Accept (another) local admin key from now on."""
    app[DEPS].local_admin = local_admin


class PortalHttp:
    """Runs the application: inside the gateway's front door, or on its own port."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._site: web.TCPSite | None = None

    async def start(self) -> None:
        await self._runner.setup()

    def protocol_factory(self) -> Callable[[], object]:
        """The ``asyncio.Protocol`` factory for the gateway's ``http_fallback``."""
        server = self._runner.server
        assert server is not None, "call start() first"
        return server

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Serve on a socket of its own; returns the bound address."""
        self._site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await self._site.start()
        server = self._site._server  # aiohttp keeps the asyncio server private
        sockets = getattr(server, "sockets", None)
        assert sockets, "the site has no listening socket"
        sockname = sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def close(self) -> None:
        """Close every connection (finishing requests in flight, bounded)."""
        await self._runner.cleanup()
