"""The REST API: authentication, roles, problem objects and bad input."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from portalkit import CHEAP_HASHER, Api, api_client, eventually, running_up

from qanat.portal import Portal, PortalConfig
from qanat.portal.http import PortalHttp, build_app
from qanat.portal.http.api import ROUTES
from qanat.portal.http.sessions import Signer
from qanat.store import Store, StoreConfig, sqlite_url
from qanat.up import Up

DEV = "/orgs/acme/stages/Development"


async def _org(api: Api) -> None:
    await api.ok("POST", "/orgs", {"name": "acme"})


def _problem(status: int, doc: dict[str, object], code: int, slug: str) -> str:
    assert status == code, doc
    assert set(doc) >= {"type", "title", "status", "detail"}
    assert doc["status"] == code
    assert doc["type"] == f"urn:qanat:problem:{slug}"
    return str(doc["detail"])


async def _sign_in(session: aiohttp.ClientSession, up: Up, user: str, password: str) -> str:
    async with session.post(
        up.url + "/api/v1/session", json={"username": user, "password": password}
    ) as r:
        doc = await r.json()
        assert r.status == 200, doc
        return str(doc["csrf_token"])


def test_openapi_documents_every_route(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up, aiohttp.ClientSession() as session:
            async with session.get(up.url + "/api/v1/openapi.json") as r:
                assert r.status == 200
                doc = await r.json()
            assert doc["openapi"].startswith("3.1")
            assert up.http is not None
            served = set()
            for route in up.http.app.router.routes():
                path = route.resource.canonical if route.resource else ""
                if path.startswith("/api/v1/") and "{tail" not in path:
                    served.add((route.method.lower(), path))
            documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
            assert served - {("head", p) for _, p in served} <= documented
            assert len(documented) == len(ROUTES)
            for path, ops in doc["paths"].items():
                for op in ops.values():
                    for ref in re.findall(r"#/components/schemas/(\w+)", str(op)):
                        assert ref in doc["components"]["schemas"], (path, ref)

    asyncio.run(scenario())


def test_wrong_password_gives_no_hint_whether_the_user_exists(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up, api_client(up) as api:
            await _org(api)
            body = {"username": "alice", "password": "correct horse", "role": "viewer"}
            await api.ok("POST", "/orgs/acme/users", body)
            anonymous = Api(api.session, up.url, None)
            details = []
            for user in ("alice", "nobody"):
                status, doc = await anonymous.call(
                    "POST", "/session", {"username": user, "password": "wrong password"}
                )
                details.append(_problem(status, doc, 401, "unauthorized"))
            assert details[0] == details[1]
            assert "alice" not in details[0]
            # The sign-in page says the same, and sets no session.
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
                pages = []
                for user in ("alice", "nobody"):
                    async with browser.get(up.url + "/signin") as r:
                        token = re.search(r'name="csrf_token" value="([^"]+)"', await r.text())
                    assert token is not None
                    form = {"username": user, "password": "wrong pass", "csrf_token": token[1]}
                    async with browser.post(up.url + "/signin", data=form) as r:
                        assert r.status == 401
                        text = await r.text()
                        pages.append(re.search(r'role="alert">([^<]+)<', text))
                    assert "qanat_session" not in {c.key for c in browser.cookie_jar}
                assert pages[0] is not None
                assert pages[1] is not None
                assert pages[0][1] == pages[1][1]

    asyncio.run(scenario())


def test_expired_and_revoked_api_keys_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up, api_client(up) as api:
            await _org(api)
            soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
            short = await api.ok(
                "POST", "/orgs/acme/apikeys", {"name": "ci", "role": "admin", "expires_at": soon}
            )
            key = Api(api.session, up.url, short["key"])
            assert (await key.call("GET", "/orgs/acme/stages"))[0] == 200

            async def expired() -> bool:
                return (await key.call("GET", "/orgs/acme/stages"))[0] == 401

            await eventually(expired, 3, "the key expires")
            status, doc = await key.call("GET", "/orgs/acme/stages")
            assert "expired" in _problem(status, doc, 401, "unauthorized")

            other = await api.ok("POST", "/orgs/acme/apikeys", {"name": "old", "role": "viewer"})
            revoked = Api(api.session, up.url, other["key"])
            # X-API-Key works as well as Authorization: Bearer.
            status, _ = await revoked.call(
                "GET", "/orgs/acme/stages", headers={"X-API-Key": other["key"], "Authorization": ""}
            )
            assert status == 200
            gone = await api.ok("DELETE", f"/orgs/acme/apikeys/{other['api_key']['id']}")
            assert gone["api_key"]["state"] == "revoked"
            status, doc = await revoked.call("GET", "/orgs/acme/stages")
            assert "revoked" in _problem(status, doc, 401, "unauthorized")
            status, doc = await Api(api.session, up.url, "qk_nonsense").call("GET", "/orgs")
            assert "malformed" in _problem(status, doc, 401, "unauthorized")

    asyncio.run(scenario())


def test_a_viewer_can_never_change_a_gateway_or_see_a_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up, api_client(up) as api:
            await _org(api)
            token = (await api.ok("POST", DEV + "/activate"))["token"]
            await api.ok(
                "POST",
                "/orgs/acme/users",
                {"username": "val", "password": "viewer password", "role": "viewer"},
            )
            viewer_key = (
                await api.ok("POST", "/orgs/acme/apikeys", {"name": "dash", "role": "viewer"})
            )["key"]
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
                csrf = await _sign_in(browser, up, "val", "viewer password")
                for who in (
                    Api(api.session, up.url, viewer_key),
                    Api(browser, up.url, None),
                ):
                    headers = {"X-CSRF-Token": csrf} if who.key is None else {}
                    status, doc = await who.call("GET", DEV)
                    assert status == 200
                    assert token not in str(doc)
                    assert "token" not in doc
                    for action in ("activate", "deactivate", "renew"):
                        status, doc = await who.call("POST", f"{DEV}/{action}", headers=headers)
                        assert "viewer" in _problem(status, doc, 403, "forbidden")
                    status, doc = await who.call(
                        "POST",
                        "/orgs/acme/users",
                        {"username": "eve", "password": "0123456789", "role": "admin"},
                        headers=headers,
                    )
                    assert status == 403
                    status, doc = await who.call("GET", "/orgs/acme/apikeys")
                    assert status == 403
                    status, doc = await who.call(
                        "POST", "/orgs/acme/stages", {"name": "Staging"}, headers=headers
                    )
                    assert status == 403
            assert (await api.ok("GET", DEV))["status"] == "active"

    asyncio.run(scenario())


def test_session_changes_need_the_csrf_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up, api_client(up) as api:
            await _org(api)
            assert up.first_admin is not None
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
                csrf = await _sign_in(browser, up, "admin", up.first_admin.password)
                session_api = Api(browser, up.url, None)
                status, doc = await session_api.call("POST", DEV + "/activate")
                assert "CSRF" in _problem(status, doc, 403, "forbidden")
                status, doc = await session_api.call(
                    "POST", DEV + "/activate", headers={"X-CSRF-Token": "forged"}
                )
                assert status == 403
                status, doc = await session_api.call(
                    "POST", DEV + "/activate", headers={"X-CSRF-Token": csrf}
                )
                assert status == 200
                assert doc["token"]
                # A page form without its token is refused too.
                async with browser.post(up.url + DEV + "/deactivate", data={}) as r:
                    assert r.status == 403
                assert (await api.ok("GET", DEV))["status"] == "active"

    asyncio.run(scenario())


def test_renew_on_an_inactive_gateway_is_a_conflict(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up, api_client(up) as api:
            await _org(api)
            status, doc = await api.call("POST", DEV + "/renew")
            detail = _problem(status, doc, 409, "conflict")
            assert "inactive" in detail
            assert "activate" in detail
            await api.ok("POST", DEV + "/activate")
            await api.ok("POST", DEV + "/deactivate")
            status, doc = await api.call("POST", DEV + "/renew")
            assert status == 409

    asyncio.run(scenario())


def test_duplicate_names_are_conflicts(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up, api_client(up) as api:
            await _org(api)
            status, doc = await api.call("POST", "/orgs", {"name": "acme"})
            assert "acme" in _problem(status, doc, 409, "conflict")
            status, doc = await api.call("POST", "/orgs/acme/stages", {"name": "development"})
            assert "Development" in _problem(status, doc, 409, "conflict") or "development" in str(
                doc
            )
            await api.ok("POST", "/orgs/acme/stages", {"name": "Staging"})
            status, doc = await api.call("POST", "/orgs/acme/stages", {"name": "Staging"})
            assert status == 409
            stages = (await api.ok("GET", "/orgs/acme/stages"))["stages"]
            assert [s["name"] for s in stages].count("Staging") == 1

    asyncio.run(scenario())


def test_malformed_requests_are_rejected_clearly(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up, api_client(up) as api:
            auth = {"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"}
            url = up.url + "/api/v1/orgs"
            cases: list[tuple[bytes, int, str]] = [
                (b'{"name": "acme"', 400, "not valid JSON"),
                (b"\xff\xfe", 400, "UTF-8"),
                (b'["acme"]', 400, "JSON object"),
                (b"{}", 422, "'name' is required"),
                (b'{"name": 7}', 422, "must be a string"),
                (b'{"name": "Not A Name!"}', 422, "not valid"),
            ]
            for body, code, words in cases:
                async with api.session.post(url, data=body, headers=auth) as r:
                    doc = await r.json(content_type=None)
                    assert r.status == code, (body, doc)
                    assert r.content_type == "application/problem+json"
                    assert words in doc["detail"], (body, doc)
            form = {"Authorization": auth["Authorization"], "Content-Type": "text/plain"}
            async with api.session.post(url, data=b"name=acme", headers=form) as r:
                assert r.status == 400
                assert "application/json" in (await r.json(content_type=None))["detail"]
            status, doc = await api.call("GET", "/no/such/thing")
            assert "openapi.json" in _problem(status, doc, 404, "not-found")
            status, doc = await api.call("PUT", "/orgs")
            assert status == 405
            assert (await api.ok("GET", "/orgs"))["orgs"] == []

    asyncio.run(scenario())


def test_oversized_bodies_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up, api_client(up) as api:
            auth = {"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"}
            big = b'{"name": "' + b"a" * (70 * 1024) + b'"}'
            async with api.session.post(up.url + "/api/v1/orgs", data=big, headers=auth) as r:
                doc = await r.json(content_type=None)
                assert "limit" in _problem(r.status, doc, 413, "body-too-large")

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: streamed
                for _ in range(80):
                    yield b" " * 1024

            async with api.session.post(up.url + "/api/v1/orgs", data=chunks(), headers=auth) as r:
                assert r.status == 413
            assert (await api.ok("GET", "/orgs"))["orgs"] == []

    asyncio.run(scenario())


def test_a_locked_database_is_a_clear_503_and_nothing_is_written(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path, busy_timeout_s=0.3) as up, api_client(up) as api:
            await _org(api)
            holder = sqlite3.connect(tmp_path / "qanat.db", isolation_level=None)
            try:
                holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
                status, doc = await api.call("POST", DEV + "/activate")
                detail = _problem(status, doc, 503, "database-busy")
                assert "locked" in detail
                assert "nothing was written" in detail
                # Reads still work (WAL): the stage is as it was.
                stage = await api.ok("GET", DEV)
                assert stage["status"] == "inactive"
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            audit = (await api.ok("GET", "/orgs/acme/audit"))["entries"]
            assert [e["action"] for e in audit] == ["org.create"]
            assert (await api.ok("POST", DEV + "/activate"))["token"]

    asyncio.run(scenario())


def test_an_unreachable_database_is_a_clear_503(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = Store(StoreConfig(url=sqlite_url(tmp_path / "missing" / "dir")))
        portal = Portal(store, PortalConfig("http://127.0.0.1:1"), hasher=CHEAP_HASHER)
        http = PortalHttp(build_app(portal, Signer(os.urandom(32))))
        await http.start()
        try:
            host, port = await http.listen("127.0.0.1", 0)
            async with aiohttp.ClientSession() as session:
                api = Api(session, f"http://{host}:{port}", "qk_0123456789ab_" + "A" * 43)
                status, doc = await api.call("GET", "/orgs")
                detail = _problem(status, doc, 503, "database-unreachable")
                assert "cannot use database" in detail
                status, doc = await Api(session, api.base, None).call(
                    "POST", "/session", {"username": "admin", "password": "whatever1"}
                )
                assert status == 503
        finally:
            await http.close()
            store.close()

    asyncio.run(scenario())


def test_api_keys_act_inside_their_org_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up, api_client(up) as api:
            await _org(api)
            await api.ok("POST", "/orgs", {"name": "other"})
            key = (await api.ok("POST", "/orgs/acme/apikeys", {"name": "ci", "role": "admin"}))[
                "key"
            ]
            robot = Api(api.session, up.url, key)
            assert (await robot.ok("POST", DEV + "/activate"))["token"]
            status, doc = await robot.call("GET", "/orgs/other/stages")
            assert "no role" in _problem(status, doc, 404, "not-found")
            status, doc = await robot.call("POST", "/orgs", {"name": "mine"})
            assert "sign in as a user" in _problem(status, doc, 403, "forbidden")
            assert [o["name"] for o in (await robot.ok("GET", "/orgs"))["orgs"]] == ["acme"]

    asyncio.run(scenario())


def test_first_start_credentials_and_the_private_local_key(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up:
            assert up.first_admin is not None
            assert up.first_admin.username == "admin"
            password = up.first_admin.password
            mode = stat.S_IMODE(up.local_admin_path.stat().st_mode)
            assert mode == 0o600
            assert password not in up.local_admin_path.read_text()
            db = (tmp_path / "qanat.db").read_bytes() + (tmp_path / "qanat.db-wal").read_bytes()
            assert password.encode() not in db
            key = up.local_admin_path.read_text()
        async with (
            running_up(tmp_path) as up,
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session,
        ):
            assert up.first_admin is None  # never printed again
            assert (
                up.local_admin_path.read_text().split('"api_key"')[1] == key.split('"api_key"')[1]
            )
            assert await _sign_in(session, up, "admin", password)

    asyncio.run(scenario())


def test_endpoint_ports_bind_on_loopback_unless_configured(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path / "a") as up, api_client(up) as api:
            await _org(api)
            assert (await api.ok("GET", DEV))["stage"]["bind_host"] == "127.0.0.1"
            assert (await api.ok("GET", "/orgs/acme/stages/Test"))["stage"][
                "bind_host"
            ] == "127.0.0.2"
        async with (
            running_up(tmp_path / "b", endpoint_pool="10.20.0.0/16") as up,
            api_client(up) as api,
        ):
            await _org(api)
            assert (await api.ok("GET", DEV))["stage"]["bind_host"] == "10.20.0.1"

    asyncio.run(scenario())
