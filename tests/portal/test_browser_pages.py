"""Every page of the portal in a real browser (Debian's Chromium via Playwright).

One walk through what the people around a stage do:

- the admin creates users (an operator, a viewer), changes a role, creates
  an API key (shown once) and revokes it, activates the stage;
- a connector named ``orders-1`` serves two ports;
- the operator describes one port with an OpenAPI upload (and is refused,
  with nothing stored, for an invalid document and for HTML);
- the viewer sees the catalogue (served, not described), opens the
  ``openapi`` view and downloads the document; apps send traffic and the
  traffic page shows it per endpoint and per connector;
- the audit log is filtered and paged;
- at 420 px every page fits (no horizontal overflow of the page body).

Timestamps are checked to be local time with the zone (the browser runs in
Europe/Berlin). Screenshots of each page go to ``$QANAT_SCREENSHOTS`` (a
directory; ``scripts/portal-screenshots.sh`` points it at docs/portal/).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from portalkit import SLOW, api_client, app_request, connector, echo_endpoint, running_up

from qanat.portal.http import PortalHttpSettings
from support.servers import free_port as _free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ORDERS_YAML = """\
openapi: 3.0.3
info:
  title: Orders API
  version: "1.4"
  description: Orders of the shop, for the apps of the Development stage.
servers:
  - url: https://orders.internal:8443/
paths:
  /orders:
    get:
      summary: List orders
      parameters:
        - {name: limit, in: query, schema: {type: integer}, description: at most this many}
      responses:
        "200": {description: the orders}
    post:
      summary: Create an order
      requestBody:
        content:
          application/json: {schema: {type: object}}
      responses:
        "201": {description: created}
        "422": {description: invalid order}
  /orders/{id}:
    get:
      summary: One order
      parameters:
        - {name: id, in: path, required: true, schema: {type: string}}
      responses:
        "200": {description: the order}
        "404": {description: no such order}
"""
LOCAL_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (CET|CEST|GMT\+1|GMT\+2)$")


def _need(reason: str) -> None:
    if os.environ.get("CI") == "true" or os.geteuid() == 0:
        pytest.fail(f"{reason}; `make system-deps` installs it (CI and root never skip this)")
    pytest.skip(f"{reason}; not root, so `make system-deps` could not install it")


class Shots:
    """Screenshots of the pages, when $QANAT_SCREENSHOTS names a directory."""

    def __init__(self) -> None:
        where = os.environ.get("QANAT_SCREENSHOTS", "")
        self.dir = Path(where) if where else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    async def take(self, page: Any, name: str, *, full: bool = False) -> None:
        if self.dir is not None:
            await page.screenshot(path=str(self.dir / f"{name}.png"), full_page=full)


@pytest.mark.slow
def test_every_page_walked_by_admin_operator_and_viewer(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        _need("Debian's chromium is not installed")
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        _need("the playwright Python package is not installed")
        raise
    timeout_ms = 10_000 * SLOW
    shots = Shots()
    spec = tmp_path / "orders.yaml"
    spec.write_text(ORDERS_YAML)
    bad_spec = tmp_path / "collection.json"
    bad_spec.write_text('{"info": {"name": "a Postman collection"}, "item": []}')

    async def scenario() -> None:
        served_port, other_port = _free_port(), _free_port()
        http = PortalHttpSettings(refresh_s=0.5)
        async with (
            running_up(tmp_path / "up", http=http, report_refresh_s=0.2) as up,
            echo_endpoint() as orders,
            echo_endpoint() as other,
            async_playwright() as pw,
        ):
            assert up.first_admin is not None
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            context = await browser.new_context(
                viewport={"width": 1100, "height": 820}, timezone_id="Europe/Berlin"
            )
            page = await context.new_page()
            page.set_default_timeout(timeout_ms)
            page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            base = up.url
            members = base + "/orgs/acme/members"
            stage = base + "/orgs/acme/stages/Development"

            async def sign_in(user: str, password: str) -> None:
                await page.goto(base + "/signin")
                await page.fill("input[name=username]", user)
                await page.fill("input[name=password]", password)
                await page.click("button[type=submit]")
                await expect(page.locator("h1")).to_have_text("Organisations")

            async def sign_out() -> None:
                await page.click("header button:has-text('Sign out')")
                await expect(page.locator("h1")).to_have_text("Sign in")

            try:
                # -- the admin: organisation, users, roles, an API key ---------------------
                await sign_in("admin", up.first_admin.password)
                await page.fill("input[name=name]", "acme")
                await page.click("button:has-text('Create')")
                await expect(page.locator("#state")).to_have_text("Inactive")
                await page.click("nav.sections a:has-text('Users & keys')")
                for user, role in (("olga", "operator"), ("vera", "operator")):
                    await page.fill("#new-user input[name=username]", user)
                    await page.fill("#new-user input[name=password]", f"{user} password 123")
                    await page.select_option("#new-user select[name=role]", role)
                    await page.click("#new-user button[type=submit]")
                    await expect(page.locator("[role=status]")).to_contain_text("user is created")
                vera = page.locator("tr[data-user=vera]")
                await vera.locator("select[name=role]").select_option("viewer")
                await vera.locator("button:has-text('Change')").click()
                await expect(page.locator("[role=status]")).to_contain_text("role is changed")
                await expect(page.locator("tr[data-user=vera] select[name=role]")).to_have_value(
                    "viewer"
                )
                await page.fill("#new-key-form input[name=name]", "ci deploy")
                await page.select_option("#new-key-form select[name=role]", "operator")
                await page.click("#new-key-form button[type=submit]")
                key = (await page.locator("#key").inner_text()).strip()
                assert key.startswith("qk_")
                await expect(page.locator("#new-key")).to_contain_text("shown only this once")
                await shots.take(page, "members")
                await page.reload()
                assert await page.locator("#key").count() == 0
                row = page.locator("#apikeys tbody tr").first
                await expect(row).to_contain_text("valid")
                await row.locator("button:has-text('Revoke')").click()
                await expect(page.locator("#apikeys tbody tr").first).to_contain_text("revoked")
                async with api_client(up, key) as revoked:
                    status, _ = await revoked.call("GET", "/orgs/acme/stages")
                    assert status == 401

                # -- the gateway, and a connector named by --id --------------------------------
                await page.goto(stage)
                await page.click("#toggle")
                token = (await page.locator("#token").inner_text()).strip()
                address = (await page.locator("#address").inner_text()).strip()
                remotes = (
                    f"R:{served_port}:127.0.0.1:{orders}",
                    f"R:{other_port}:127.0.0.1:{other}",
                )
                async with connector(address, token, *remotes, connector_id="orders-1"):
                    await page.goto(stage)
                    rows = page.locator("#connectors tr:not(.empty)")
                    await expect(rows).to_have_count(1)
                    await expect(rows.first.locator("strong")).to_have_text("orders-1")
                    await expect(rows.first).to_contain_text("@test-node#")
                    since = (await rows.first.locator("time").inner_text()).strip()
                    assert LOCAL_TIME.match(since), since
                    await expect(rows.first).to_contain_text(" ms")
                    await shots.take(page, "stage")
                    await sign_out()

                    # -- the operator describes an endpoint, with its OpenAPI file -----------
                    await sign_in("olga", "olga password 123")
                    await page.goto(stage + "/endpoints")
                    await expect(page.locator("#catalogue")).to_contain_text(
                        f"secure-gateway:{served_port}"
                    )
                    unlisted = page.locator(f"tr[data-port='{served_port}']")
                    await expect(unlisted).to_contain_text("not described")
                    await unlisted.locator("a:has-text('Describe')").click()
                    await expect(page.locator("input[name=port]")).to_have_value(str(served_port))
                    # Refused, nothing stored: an invalid document, then HTML.
                    await page.fill("textarea[name=description]", "Orders API (REST)")
                    await page.set_input_files("input[name=openapi_file]", str(bad_spec))
                    await page.click("#save-entry")
                    await expect(page.locator("#form-error")).to_contain_text(
                        "not an OpenAPI document"
                    )
                    await expect(page.locator(f"tr[data-port='{served_port}']")).to_contain_text(
                        "not described"
                    )
                    await page.fill("textarea[name=description]", "<b>Orders</b>")
                    await page.click("#save-entry")
                    await expect(page.locator("#form-error")).to_contain_text("contains HTML")
                    await page.fill("textarea[name=description]", "Orders API (REST)")
                    await page.fill("input[name=owner]", "team-orders@example.com")
                    await page.set_input_files("input[name=openapi_file]", str(spec))
                    await page.click("#save-entry")
                    await expect(page.locator("[role=status]")).to_contain_text("entry is saved")
                    entry = page.locator(f"tr[data-port='{served_port}']")
                    await expect(entry).to_contain_text("Orders API (REST)")
                    await expect(entry).to_contain_text("served · 1 connector")
                    await expect(entry).to_contain_text("orders-1")
                    await expect(entry).to_contain_text("Orders API 1.4 (YAML)")
                    await shots.take(page, "endpoints-operator", full=True)
                    await sign_out()

                    # -- the viewer reads, downloads, sends traffic -----------------------------
                    await sign_in("vera", "vera password 123")
                    await page.goto(stage + "/endpoints")
                    assert await page.locator("#entry-form").count() == 0
                    entry = page.locator(f"tr[data-port='{served_port}']")
                    await expect(entry.locator("code").nth(1)).to_have_text(
                        f"http://secure-gateway:{served_port}/"
                    )
                    await expect(page.locator(f"tr[data-port='{other_port}']")).to_contain_text(
                        "not described"
                    )
                    await shots.take(page, "endpoints", full=True)
                    async with page.expect_download() as download_info:
                        await entry.locator("a.download-doc").click()
                    download = await download_info.value
                    saved = tmp_path / "downloaded.yaml"
                    await download.save_as(str(saved))
                    assert saved.read_text() == ORDERS_YAML
                    assert download.suggested_filename == f"Development-{served_port}-openapi.yaml"
                    await entry.locator("a.view-doc").click()
                    await expect(page.locator("#api-title")).to_contain_text("Orders API")
                    await expect(page.locator(".operation")).to_have_count(3)
                    await expect(page.locator(".operation").nth(2)).to_contain_text(
                        "GET /orders/{id}"
                    )
                    await expect(page.locator("main")).to_contain_text("404 no such order")
                    await shots.take(page, "openapi", full=True)

                    for i in range(4):
                        assert await app_request(served_port, f"order {i}") == f"echo: order {i}"
                    await page.goto(stage + "/traffic")
                    endpoints = page.locator("#traffic-endpoints")
                    for _ in range(int(40 * SLOW)):
                        if f"secure-gateway:{served_port}" in await endpoints.inner_text():
                            break
                        await asyncio.sleep(0.25)
                        await page.reload()
                    await expect(endpoints).to_contain_text(f"secure-gateway:{served_port}")
                    row = endpoints.locator("tbody tr").first
                    await expect(row.locator("td").nth(1)).to_have_text(re.compile(r"^[1-4]$"))
                    await expect(page.locator("#traffic-connectors")).to_contain_text("orders-1")
                    await expect(page.locator("#traffic-connectors")).to_contain_text("tunnel ")
                    assert await page.locator("svg.spark").count() >= 2
                    await shots.take(page, "traffic")

                # -- the audit log: filters and paging -------------------------------------------
                async with api_client(up) as admin_api:
                    for _ in range(30):  # each activation is audited, changed or not
                        await admin_api.ok("POST", "/orgs/acme/stages/Test/activate")
                        await admin_api.ok("POST", "/orgs/acme/stages/Test/deactivate")
                await page.goto(base + "/orgs/acme/audit")
                audit = page.locator("#audit tbody tr")
                await expect(audit).to_have_count(50)
                first_time = (await audit.first.locator("time").inner_text()).strip()
                assert LOCAL_TIME.match(first_time), first_time
                await page.click("#older")
                await expect(page.locator("#newest")).to_be_visible()
                older_ids = [
                    int(i) for i in await audit.evaluate_all("rows => rows.map(r => r.dataset.id)")
                ]
                assert older_ids == sorted(older_ids, reverse=True)
                await page.goto(base + "/orgs/acme/audit")
                await page.select_option("select[name=stage]", "Development")
                await page.fill("input[name=action]", "endpoint")
                await page.click("#audit-filters button[type=submit]")
                await expect(audit).to_have_count(1)
                await expect(audit.first).to_contain_text("endpoint.set")
                await expect(audit.first).to_contain_text("user:olga")
                await page.fill("input[name=action]", "")
                await page.fill("input[name=actor]", "vera")
                await page.select_option("select[name=stage]", "")
                await page.click("#audit-filters button[type=submit]")
                await expect(page.locator("#audit")).to_contain_text("No entry matches.")
                await page.fill("input[name=actor]", "")
                await page.fill("input[name=until]", "2001-01-01T00:00:00")
                await page.click("#audit-filters button[type=submit]")
                await expect(page.locator("#audit")).to_contain_text("No entry matches.")
                await page.goto(base + "/orgs/acme/audit?action=role")
                await expect(audit.first).to_contain_text("role.grant")
                await shots.take(page, "audit")

                # -- 420 px: every page fits ------------------------------------------------------
                await page.set_viewport_size({"width": 420, "height": 860})
                for url in (
                    base + "/orgs",
                    stage,
                    stage + "/endpoints",
                    stage + f"/endpoints/{served_port}/openapi",
                    stage + "/traffic",
                    members,
                    base + "/orgs/acme/audit",
                ):
                    await page.goto(url)
                    width = await page.evaluate("document.documentElement.scrollWidth")
                    assert width <= 420, (url, width)
                    header = await page.evaluate(
                        "document.querySelector('header').scrollWidth"
                        " <= document.querySelector('header').clientWidth"
                    )
                    assert header, url
                await page.goto(stage + "/endpoints")
                await shots.take(page, "narrow-endpoints")
            finally:
                await browser.close()

    asyncio.run(scenario())
