"""The endpoint catalogue, traffic, member roles and audit filters over the API.

Every bad input named in issue 15 is here: an oversized or invalid OpenAPI
document, HTML in a description, a port of another stage: each a clear 4xx,
and nothing stored (the entry list and the audit log are unchanged).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
from portalkit import Api, api_client, app_request, connector, echo_endpoint, eventually, running_up

from qanat.portal import Actor
from qanat.up import Up

DEV = "/orgs/acme/stages/Development"
ORDERS_YAML = """\
openapi: 3.0.3
info:
  title: Orders API
  version: "1.4"
  description: Orders of the shop.
paths:
  /orders:
    get:
      summary: List orders
      parameters:
        - name: limit
          in: query
          schema: {type: integer}
      responses:
        "200": {description: the orders}
    post:
      summary: Create an order
      requestBody:
        content:
          application/json: {schema: {type: object}}
      responses:
        "201": {description: created}
"""


async def _setup(api: Api) -> None:
    await api.ok("POST", "/orgs", {"name": "acme"})


async def _user_key(api: Api, username: str, role: str) -> str:
    """An API key with ``role`` (keys act with their role, like a user would)."""
    doc = await api.ok("POST", "/orgs/acme/apikeys", {"name": username, "role": role})
    return str(doc["key"])


async def _entries(api: Api, stage: str = DEV) -> list[dict[str, Any]]:
    return list((await api.ok("GET", stage + "/endpoints"))["endpoints"])


async def _audit_ids(api: Api) -> list[int]:
    return [e["id"] for e in (await api.ok("GET", "/orgs/acme/audit?limit=500"))["entries"]]


def _run(tmp_path: Path, scenario: Any) -> None:
    async def main() -> None:
        async with running_up(tmp_path) as up, api_client(up) as admin:
            await _setup(admin)
            await scenario(up, admin)

    asyncio.run(main())


def test_operator_describes_an_endpoint_and_a_viewer_downloads_its_document(
    tmp_path: Path,
) -> None:
    async def scenario(up: Up, admin: Api) -> None:
        operator = Api(admin.session, up.url, await _user_key(admin, "ops", "operator"))
        viewer = Api(admin.session, up.url, await _user_key(admin, "dev", "viewer"))
        body = {
            "description": "Orders API (REST)",
            "owner": "team-orders@example.com",
            "tls": True,
            "openapi_document": ORDERS_YAML,
        }
        status, doc = await viewer.call("PUT", DEV + "/endpoints/8081", body)
        assert status == 403, doc
        assert "operator" in doc["detail"]
        entry = await operator.ok("PUT", DEV + "/endpoints/8081", body)
        assert entry["base_url"] == "https://secure-gateway:8081/"
        assert entry["openapi_document"]["format"] == "yaml"
        assert entry["openapi_document"]["title"] == "Orders API 1.4"
        assert (entry["listed"], entry["served"], entry["connectors"]) == (True, False, 0)

        [listed] = await _entries(viewer)
        assert listed["description"] == "Orders API (REST)"
        async with viewer.session.get(
            up.url + listed["openapi_document"]["download"],
            headers={"Authorization": f"Bearer {viewer.key}"},
        ) as r:
            assert r.status == 200
            assert r.content_type == "application/yaml"
            assert "Development-8081-openapi.yaml" in r.headers["Content-Disposition"]
            assert await r.text() == ORDERS_YAML

        # A metadata update keeps the stored document; null removes it.
        kept = await operator.ok("PUT", DEV + "/endpoints/8081", {"description": "Orders v2"})
        assert kept["openapi_document"] is not None
        assert kept["tls"] is False
        removed = await operator.ok(
            "PUT", DEV + "/endpoints/8081", {"description": "Orders v2", "openapi_document": None}
        )
        assert removed["openapi_document"] is None

        # The raw upload route takes the file itself.
        async with operator.session.put(
            up.url + "/api/v1" + DEV + "/endpoints/8081/openapi",
            data=b'{"openapi": "3.1.0", "info": {"title": "J", "version": "1"}, "paths": {}}',
            headers={"Authorization": f"Bearer {operator.key}", "Content-Type": "application/json"},
        ) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["openapi_document"]["format"] == "json"

        actions = [
            (e["action"], e["actor"], e["details"].get("port"))
            for e in (await admin.ok("GET", "/orgs/acme/audit?action=endpoint"))["entries"]
        ]
        assert [a for a, _, _ in actions] == [
            "endpoint.document",
            "endpoint.set",
            "endpoint.set",
            "endpoint.set",
        ]
        assert {p for _, _, p in actions} == {8081}
        assert all(actor.startswith("apikey:") for _, actor, _ in actions)

        status, _ = await viewer.call("DELETE", DEV + "/endpoints/8081")
        assert status == 403
        await operator.call("DELETE", DEV + "/endpoints/8081")
        assert await _entries(viewer) == []

    _run(tmp_path, scenario)


def test_bad_documents_and_descriptions_are_refused_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    async def scenario(up: Up, admin: Api) -> None:
        assert up.portal is not None
        limit = up.portal.openapi_max_bytes
        padding = "x" * (limit + 1 - len(ORDERS_YAML) + 20)
        oversized = ORDERS_YAML + f"  /pad:\n    description: {padding}\n"
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"openapi_document": oversized}, 413, "openapi_max_bytes"),
            ({"openapi_document": "openapi: [unclosed"}, 422, "neither JSON nor valid YAML"),
            (
                {"openapi_document": '{"info": {"title": "x", "version": "1"}, "paths": {}}'},
                422,
                "is not an OpenAPI document",
            ),
            (
                {"openapi_document": "openapi: 3.0.0\ninfo: {title: t, version: 1}\n"},
                422,
                "has no 'paths' object",
            ),
            ({"openapi_document": "a: &x [1]\nb: *x\n"}, 422, "anchors or aliases"),
            ({"description": "<script>alert(1)</script>"}, 422, "contains HTML"),
            ({"description": "Orders", "owner": '<a href="x">me</a>'}, 422, "contains HTML"),
            ({"description": "Orders &amp; more"}, 422, "contains HTML"),
            ({"description": ""}, 422, "is empty"),
            ({"openapi_url": "javascript:alert(1)"}, 422, "http(s) URL"),
        ]
        before = await _audit_ids(admin)
        for extra, code, words in cases:
            body = {"description": "Orders API"} | extra
            status, doc = await admin.call("PUT", DEV + "/endpoints/8081", body)
            assert status == code, (extra.keys(), doc)
            assert words in doc["detail"], doc["detail"]
        # A raw upload of a document that is not one.
        async with admin.session.put(
            up.url + "/api/v1" + DEV + "/endpoints/8081/openapi",
            data=b"just text",
            headers={"Authorization": f"Bearer {admin.key}", "Content-Type": "text/plain"},
        ) as r:
            assert r.status == 422
            assert "not an object" in (await r.json())["detail"]
        assert await _entries(admin) == []
        assert await _audit_ids(admin) == before

    _run(tmp_path, scenario)


def test_a_port_of_another_stage_is_refused(tmp_path: Path) -> None:
    async def scenario(up: Up, admin: Api) -> None:
        assert up.portal is not None
        system = Actor.system("test")
        for stage, ports in (("Development", (20000, 20099)), ("Test", (20100, 20199))):
            await asyncio.to_thread(
                up.portal.configure_gateway, system, "cli", "acme", stage, ports=ports
            )
        before = await _audit_ids(admin)
        status, doc = await admin.call(
            "PUT", DEV + "/endpoints/20150", {"description": "Test's orders"}
        )
        assert status == 422, doc
        assert "outside the port range 20000-20099" in doc["detail"]
        assert await _entries(admin) == []
        assert await _audit_ids(admin) == before
        ok = await admin.ok(
            "PUT", "/orgs/acme/stages/Test/endpoints/20150", {"description": "Test's orders"}
        )
        assert ok["name"] == "secure-gateway:20150"
        assert await _entries(admin) == []  # Development still has none

    _run(tmp_path, scenario)


def test_served_ports_merge_with_entries_and_traffic_is_counted(tmp_path: Path) -> None:
    async def scenario(up: Up, admin: Api) -> None:
        act = await admin.ok("POST", DEV + "/activate")
        async with echo_endpoint() as target, echo_endpoint() as other:
            served, undocumented = await _two_ports(up)
            await admin.ok(
                "PUT", DEV + f"/endpoints/{served}", {"description": "Orders", "tls": False}
            )
            await admin.ok("PUT", DEV + "/endpoints/21999", {"description": "not running"})
            remotes = (f"R:{served}:127.0.0.1:{target}", f"R:{undocumented}:127.0.0.1:{other}")
            async with connector(act["address"], act["token"], *remotes, connector_id="orders-1"):

                async def both_served() -> bool:
                    entries = {e["port"]: e for e in await _entries(admin)}
                    return (
                        served in entries
                        and entries[served]["served"]
                        and (undocumented in entries)
                    )

                await eventually(both_served, 10, "the connector's ports in the catalogue")
                entries = {e["port"]: e for e in await _entries(admin)}
                assert entries[served]["served_by"] == ["orders-1"]
                assert entries[served]["base_url"] == f"http://secure-gateway:{served}/"
                assert entries[undocumented]["listed"] is False
                assert entries[21999]["served"] is False
                for i in range(3):
                    assert await app_request(served, f"n{i}") == f"echo: n{i}"

                async def counted() -> bool:
                    doc = await admin.ok("GET", DEV + "/traffic")
                    ep = {e["port"]: e for e in doc["endpoints"]}
                    conns = {c["connector"]: c for c in doc["connectors"]}
                    return (
                        ep.get(served, {}).get("connections", 0) >= 3
                        and ep[served]["bytes"] > 0
                        and conns.get("orders-1", {}).get("connections", 0) >= 3
                    )

                await eventually(counted, 15, "three connections in the traffic")
                doc = await admin.ok("GET", DEV + "/traffic?minutes=5")
                assert len(doc["endpoints"][0]["per_minute"]) == 5
                [conn] = doc["connectors"]
                assert conn["sessions"].startswith("tunnel ")
                status = await admin.ok("GET", DEV)
                assert status["connectors"][0]["name"] == "orders-1"

    _run(tmp_path, scenario)


async def _two_ports(up: Up) -> tuple[int, int]:
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
    return ports[0], ports[1]


def test_roles_change_and_members_are_removed(tmp_path: Path) -> None:
    async def scenario(up: Up, admin: Api) -> None:
        body = {"username": "olga", "password": "correct horse battery", "role": "viewer"}
        await admin.ok("POST", "/orgs/acme/users", body)
        member = await admin.ok("PUT", "/orgs/acme/members/olga", {"role": "operator"})
        assert member["role"] == "operator"
        members = {
            m["username"]: m["role"]
            for m in (await admin.ok("GET", "/orgs/acme/members"))["members"]
        }
        assert members["olga"] == "operator"
        status, doc = await admin.call("PUT", "/orgs/acme/members/olga", {"role": "owner"})
        assert status == 422
        assert "operator" in doc["detail"]
        status, _ = await admin.call("DELETE", "/orgs/acme/members/olga")
        assert status == 204
        members = {m["username"] for m in (await admin.ok("GET", "/orgs/acme/members"))["members"]}
        assert "olga" not in members
        status, doc = await admin.call("DELETE", "/orgs/acme/members/admin")
        assert status == 409
        assert "last admin" in doc["detail"]

    _run(tmp_path, scenario)


def test_audit_log_filters_by_stage_actor_action_and_time(tmp_path: Path) -> None:
    async def scenario(up: Up, admin: Api) -> None:
        await admin.ok("POST", DEV + "/activate")
        await admin.ok("POST", "/orgs/acme/stages/Test/activate")
        key = await _user_key(admin, "robot", "admin")
        robot = Api(admin.session, up.url, key)
        await robot.ok("POST", "/orgs/acme/stages/Test/deactivate")

        async def entries(query: str) -> list[dict[str, Any]]:
            return list((await admin.ok("GET", "/orgs/acme/audit?" + query))["entries"])

        test = await entries("stage=test")  # any case
        assert {e["target"] for e in test} == {"acme/Test"}
        assert [e["action"] for e in test] == ["gateway.deactivate", "gateway.activate"]
        by_robot = await entries("actor=APIKEY:")
        assert [e["action"] for e in by_robot] == ["gateway.deactivate"]
        gateway = await entries("action=gateway")
        assert len(gateway) == 3
        assert await entries("action=gateway.activate&stage=Development") == [
            e for e in gateway if e["target"] == "acme/Development"
        ]
        newest = gateway[0]["at"]
        recent = await entries(f"since={newest}&action=gateway")
        assert gateway[0] in recent
        assert all(e["at"] >= newest for e in recent)
        assert len(await entries("since=2000-01-01T00:00:00%2B01:00&action=gateway")) == 3
        assert await entries("until=2000-01-01T00:00:00Z") == []
        page = await entries("limit=2")
        older = await entries(f"limit=2&before={page[-1]['id']}")
        assert older[0]["id"] < page[-1]["id"]
        status, doc = await admin.call("GET", "/orgs/acme/audit?since=yesterday")
        assert status == 422
        assert "ISO 8601" in doc["detail"]
        status, doc = await admin.call("GET", "/orgs/acme/audit?stage=Nowhere")
        assert status == 404

    _run(tmp_path, scenario)


def test_a_large_but_allowed_document_passes_the_body_limit(tmp_path: Path) -> None:
    async def scenario(up: Up, admin: Api) -> None:
        big = ORDERS_YAML + "  /big:\n    description: " + "y" * 200_000 + "\n"
        entry = await admin.ok(
            "PUT", DEV + "/endpoints/8081", {"description": "Big", "openapi_document": big}
        )
        assert entry["openapi_document"]["format"] == "yaml"
        # Other routes keep the small body limit.
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                up.url + "/api/v1/orgs",
                data=b"{" + b" " * 100_000 + b"}",
                headers={
                    "Authorization": f"Bearer {admin.key}",
                    "Content-Type": "application/json",
                },
            ) as r,
        ):
            assert r.status == 413

    _run(tmp_path, scenario)


def test_connect_command_trusts_the_development_certificate(tmp_path: Path) -> None:
    async def command_on_page(up: Up) -> str:
        async with api_client(up) as admin:
            await _setup(admin)
            await admin.ok("POST", DEV + "/activate")
        assert up.first_admin is not None
        body = {"username": "admin", "password": up.first_admin.password}
        jar = aiohttp.CookieJar(unsafe=True)  # the portal is at an IP address
        async with aiohttp.ClientSession(cookie_jar=jar) as browser:
            async with browser.post(up.url + "/api/v1/session", json=body) as r:
                assert r.status == 200
            async with browser.get(up.url + "/orgs/acme/stages/Development") as r:
                html = await r.text()
        start = html.index('id="command">') + len('id="command">')
        return html[start : html.index("</code>", start)]

    async def scenario() -> None:
        ca = tmp_path / "tls" / "dev-cert.pem"
        async with running_up(tmp_path / "dev", ca_file=str(ca)) as up:
            assert (await command_on_page(up)).startswith(f"qanat connect --tls-ca {ca} --header")
        async with running_up(tmp_path / "plain") as up:
            command = await command_on_page(up)
            assert command.startswith("qanat connect --header")
            assert "--tls-ca" not in command

    asyncio.run(scenario())


def test_a_connector_describes_its_own_endpoints(tmp_path: Path) -> None:
    from qanat.wire.describe import Declaration

    big = ORDERS_YAML + "  /big:\n    description: " + "z" * 40_000 + "\n"  # several pieces

    async def scenario(up: Up, admin: Api) -> None:
        act = await admin.ok("POST", DEV + "/activate")
        first, second, third = (_free_port() for _ in range(3))
        await admin.ok("PUT", DEV + f"/endpoints/{second}", {"description": "by a person"})
        declarations = (
            Declaration(first, "Orders API (declared)", big),
            Declaration(second, "the connector's words"),
            Declaration(third, "<b>markup</b>"),
        )
        remotes = [f"R:{p}:127.0.0.1:9" for p in (first, second, third)]
        async with connector(
            act["address"], act["token"], *remotes, connector_id="orders-1",
            declarations=declarations,
        ):  # fmt: skip

            async def declared() -> bool:
                entries = {e["port"]: e for e in await _entries(admin)}
                return entries.get(first, {}).get("listed", False) and entries[third]["served"]

            await eventually(declared, 10, "the declared entry in the catalogue")
        entries = {e["port"]: e for e in await _entries(admin)}
        assert entries[first]["description"] == "Orders API (declared)"
        assert entries[first]["updated_by"] == "connector:orders-1"
        assert entries[first]["openapi_document"]["title"] == "Orders API 1.4"
        async with admin.session.get(
            up.url + entries[first]["openapi_document"]["download"],
            headers={"Authorization": f"Bearer {admin.key}"},
        ) as r:
            assert await r.text() == big
        assert entries[second]["description"] == "by a person"  # never overridden
        # Refused (HTML): nothing stored (it may still show as served, not listed,
        # until the gateway's report of the closed tunnel is written).
        assert not entries.get(third, {}).get("listed", False)
        audit = (await admin.ok("GET", "/orgs/acme/audit?action=endpoint.declare"))["entries"]
        assert [(e["actor"], e["details"]["port"]) for e in audit] == [
            ("connector:orders-1", first)
        ]

        # Reconnecting with the same description changes nothing and is not
        # audited; the pieces go in order, so once the later (fixed) one is
        # in, the repeated one was handled.
        again = (declarations[0], Declaration(third, "now plain text"))
        async with connector(
            act["address"], act["token"], *remotes, connector_id="orders-1",
            declarations=again,
        ):  # fmt: skip

            async def fixed() -> bool:
                entries = {e["port"]: e for e in await _entries(admin)}
                return entries.get(third, {}).get("description") == "now plain text"

            await eventually(fixed, 10, "the corrected declaration")
        audit = (await admin.ok("GET", "/orgs/acme/audit?action=endpoint.declare"))["entries"]
        assert [e["details"]["port"] for e in audit] == [third, first]

    _run(tmp_path, scenario)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
