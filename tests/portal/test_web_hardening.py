"""The portal's web and API doors under hostile input (qanat up, real HTTP).

Each case is one observed attack: an open redirect after sign-in, 500s with
tracebacks for unauthenticated garbage, sessions that outlive sign-out and a
password change, missing HSTS, a version in the ``Server`` header, and a
fuzz pass over every route of the OpenAPI document that must see no 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from portalkit import local_key, running_up

from qanat.tls import server_context
from qanat.up import Up
from support.timing import scaled
from support.tlscerts import make_tls

PASSWORD = "a long enough password"


def _browser() -> aiohttp.ClientSession:
    # Keeps cookies of an IP address host (127.0.0.1), as a browser does.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _signin_form(session: aiohttp.ClientSession, up: Up) -> str:
    async with session.get(up.url + "/signin") as r:
        page = await r.text()
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


async def _user(up: Up, name: str = "erin") -> None:
    async with aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Bearer {local_key(up)}"}
        async with s.post(up.url + "/api/v1/orgs", json={"name": "acme"}, headers=headers) as r:
            assert r.status in (201, 409), await r.text()
        body = {"username": name, "password": PASSWORD, "role": "viewer"}
        async with s.post(up.url + "/api/v1/orgs/acme/users", json=body, headers=headers) as r:
            assert r.status == 201, await r.text()


@pytest.mark.parametrize(
    "target",
    [
        "/\t/evil.example",
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "/\n/evil.example",
        "/%0a",
        " //evil.example",
        "/\x00/evil.example",
    ],
)
def test_sign_in_redirects_only_to_same_origin_paths(tmp_path: Path, target: str) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up:
            await _user(up)
            async with _browser() as session:
                token = await _signin_form(session, up)
                form = {
                    "username": "erin",
                    "password": PASSWORD,
                    "csrf_token": token,
                    "next": target,
                }
                async with session.post(up.url + "/signin", data=form, allow_redirects=False) as r:
                    assert r.status == 303
                    location = r.headers["Location"]
            assert location.startswith("/"), location
            assert not location.startswith("//"), location
            assert "evil.example" not in location or location == target, location
            assert urllib.parse.urlsplit(location.replace("\t", "")).netloc == ""

    asyncio.run(scenario())


def test_a_same_origin_next_is_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up:
            await _user(up)
            async with _browser() as session:
                token = await _signin_form(session, up)
                form = {
                    "username": "erin",
                    "password": PASSWORD,
                    "csrf_token": token,
                    "next": "/orgs/acme?tab=stages",
                }
                async with session.post(up.url + "/signin", data=form, allow_redirects=False) as r:
                    assert r.headers["Location"] == "/orgs/acme?tab=stages"

    asyncio.run(scenario())


def test_garbage_from_anonymous_clients_is_a_4xx_problem_with_one_short_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up, _browser() as session:
            await _signin_form(session, up)
            form = {"username": "x", "password": "y", "csrf_token": "é"}
            async with session.post(up.url + "/signin", data=form) as r:
                assert r.status == 403, await r.text()
            async with session.post(
                up.url + "/api/v1/session",
                data=b"[" * 60_000,
                headers={"Content-Type": "application/json"},
            ) as r:
                assert r.status == 400
                assert r.content_type == "application/problem+json"
                doc = await r.json()
                assert "too deeply" in doc["detail"]

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_sign_out_and_password_change_end_sessions(tmp_path: Path) -> None:
    async def me(cookie: str, up: Up) -> int:
        async with (
            aiohttp.ClientSession() as fresh,
            fresh.get(up.url + "/api/v1/me", headers={"Cookie": cookie}) as r,
        ):
            return r.status

    async def sign_in(up: Up) -> tuple[str, str]:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                up.url + "/api/v1/session", json={"username": "erin", "password": PASSWORD}
            ) as r,
        ):
            assert r.status == 200
            cookie = r.headers["Set-Cookie"].split(";", 1)[0]
            return cookie, (await r.json())["csrf_token"]

    async def scenario() -> None:
        async with running_up(tmp_path) as up:
            await _user(up)
            cookie, csrf = await sign_in(up)
            other, _ = await sign_in(up)  # the same user in another browser
            assert await me(cookie, up) == 200
            async with (
                aiohttp.ClientSession() as s,
                s.delete(
                    up.url + "/api/v1/session", headers={"Cookie": cookie, "X-CSRF-Token": csrf}
                ) as r,
            ):
                assert r.status == 204
            # The copied cookie is worthless now, in every browser.
            assert await me(cookie, up) == 401
            assert await me(other, up) == 401
            # A new sign-in works; a password change ends it again.
            cookie, _ = await sign_in(up)
            assert await me(cookie, up) == 200
            assert up.portal is not None
            actor = await asyncio.to_thread(
                up.portal.authenticate_password, "erin", PASSWORD, "test"
            )
            await asyncio.to_thread(
                up.portal.change_password, actor, "test", PASSWORD, PASSWORD + " changed"
            )
            assert await me(cookie, up) == 401

    asyncio.run(scenario())


def test_hsts_on_https_and_no_version_in_the_server_header(tmp_path: Path) -> None:
    tls = make_tls(tmp_path, ("127.0.0.1",))

    async def heads(url: str, ctx: ssl.SSLContext | None) -> list[dict[str, str]]:
        got = []
        async with aiohttp.ClientSession() as session:
            for path in ("/signin", "/", "/nope", "/api/v1/orgs", "/api/v1/openapi.json"):
                async with session.get(url + path, ssl=ctx, allow_redirects=False) as r:
                    got.append(dict(r.headers))
        return got

    async def scenario() -> None:
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        async with running_up(
            tmp_path / "tls-up", ssl_context=server_context(tls.cert, tls.key)
        ) as up:
            for headers in await heads(up.url, ctx):
                assert headers.get("Strict-Transport-Security", "").startswith("max-age=")
                assert headers.get("Server", "qanat") == "qanat", headers
        async with running_up(tmp_path / "plain-up") as up:
            for headers in await heads(up.url, None):
                assert "Strict-Transport-Security" not in headers
                assert headers.get("Server", "qanat") == "qanat", headers

    asyncio.run(scenario())


# -- fuzzing every route of the OpenAPI document ------------------------------------


@contextlib.contextmanager
def up_in_thread(data_dir: Path) -> Iterator[Up]:
    """``qanat up`` in its own thread and event loop, so hypothesis drives it sync."""
    ready: list[Up] = []
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        async with running_up(data_dir) as up:
            ready.append(up)
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(scaled(30)), "qanat up did not start"
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(scaled(30))
        loop.close()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "name",
        "username",
        "password",
        "role",
        "allow_cidrs",
        "expires_in_days",
        "current",
        "new",
        "key",
        "ports",
        "bind_host",
    ]
)
BODIES = st.one_of(
    JSON.map(lambda doc: json.dumps(doc).encode()),
    st.dictionaries(FIELDS, JSON, max_size=4).map(lambda doc: json.dumps(doc).encode()),
    st.binary(max_size=200),
    st.sampled_from([b"[" * 5000, b"{" * 5000, b'{"name": "\xff"}', b'{"a":' * 3000]),
)
SEGMENTS = st.one_of(
    st.sampled_from(["acme", "Development", "nobody", "qk_x", "%2e%2e", "é"]),
    st.text(min_size=1, max_size=20),
)


def test_random_bodies_to_every_documented_route_see_no_5xx(tmp_path: Path) -> None:
    with up_in_thread(tmp_path) as up:
        key = local_key(up)
        with urllib.request.urlopen(up.url + "/api/v1/openapi.json", timeout=10) as r:
            doc = json.loads(r.read())
        routes = [(m.upper(), p) for p, ops in doc["paths"].items() for m in ops]
        assert len(routes) > 10
        seen: list[tuple[str, str, int]] = []

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            derandomize=True,
        )
        @given(
            route=st.sampled_from(routes),
            segments=st.lists(SEGMENTS, min_size=4, max_size=4),
            body=BODIES,
            authenticated=st.sampled_from([True, True, True, False]),
            ctype=st.sampled_from(
                ["application/json"] * 4 + ["text/plain", "application/x-www-form-urlencoded"]
            ),
        )
        def one(
            route: tuple[str, str],
            segments: list[str],
            body: bytes,
            authenticated: bool,
            ctype: str,
        ) -> None:
            method, path = route
            names = iter(segments)
            path = re.sub(r"\{[^}]+\}", lambda _: urllib.parse.quote(next(names), safe=""), path)
            request = urllib.request.Request(
                up.url + path, data=body if method != "GET" else None, method=method
            )
            request.add_header("Content-Type", ctype)
            if authenticated:
                request.add_header("Authorization", f"Bearer {key}")
            try:
                with urllib.request.urlopen(request, timeout=scaled(10)) as answer:
                    status = answer.status
            except urllib.error.HTTPError as error:
                status = error.code
                error.read()
            seen.append((method, path, status))
            assert status < 500, (method, path, body[:200], status)

        one()
        assert len({p for _, p, _ in seen}) > 5
