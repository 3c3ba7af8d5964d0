"""The portal over HTTP: the REST API, its OpenAPI document and the web pages.

How it works::

    app.py        build_app(): the aiohttp application, its middleware (errors
                  as problem objects or error pages, body limit, security
                  headers) and PortalHttp, which runs it inside the gateway's
                  front door or on its own listener
    context.py    who is asking (API key, local admin key, session + CSRF),
                  JSON bodies, and Deps.run(): every service call in a thread
    api.py        /api/v1 handlers and the route table
    openapi.py    the OpenAPI document, written from that same table
    render.py     JSON shapes of the service's results (stable keys)
    problems.py   exceptions -> RFC 9457 problem objects
    sessions.py   signed session cookies and CSRF tokens
    web.py        the pages (templates/*.html, static/portal.css|js)
    webcatalogue.py  a stage's endpoint catalogue, OpenAPI view, traffic
    webadmin.py   users and API keys, the organisation's audit log
    apicatalogue.py  /api/v1/.../endpoints and .../traffic
    filters.py    Jinja filters: one timestamp format, bytes, sparklines

This package is the only importer of aiohttp and Jinja2. aiohttp is used at
its lowest level: ``runner.server`` is an ``asyncio.Protocol`` factory, which
is exactly what the gateway's front door hands a non-tunnel connection to,
so pages, API and tunnels share one listen address without a proxy.
"""

from qanat.portal.http.app import PortalHttp, build_app, set_local_admin
from qanat.portal.http.context import PortalHttpSettings

__all__ = ["PortalHttp", "PortalHttpSettings", "build_app", "set_local_admin"]
