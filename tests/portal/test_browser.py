"""End to end in a real browser: Debian's headless Chromium driven by Playwright.

Sign in, create an organisation, activate its Development stage, read the
token from the page, run a connector with it, and watch the connector and
its endpoint appear on the page without a reload. Then renew the token
through the confirmation. A screenshot of the stage page is left in
``$QANAT_SCREENSHOT`` (default /tmp/i3-stage.png) for a person to look at.

Chromium comes from ``make system-deps`` (Debian's ``chromium``); Playwright
never downloads a browser here. Without Chromium the test skips, saying why,
unless it runs as root or in CI, where it must run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from portalkit import SLOW, app_request, connector, echo_endpoint, running_up

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


def _need(reason: str) -> None:
    if os.environ.get("CI") == "true" or os.geteuid() == 0:
        pytest.fail(f"{reason}; `make system-deps` installs it (CI and root never skip this)")
    pytest.skip(f"{reason}; not root, so `make system-deps` could not install it")


@pytest.mark.slow
def test_sign_in_activate_connect_and_see_the_connector(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        _need("Debian's chromium is not installed")
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        _need("the playwright Python package is not installed")
        raise
    screenshot = Path(os.environ.get("QANAT_SCREENSHOT", "/tmp/i3-stage.png"))
    timeout_ms = 10_000 * SLOW

    async def scenario() -> None:
        app_port = _free_port()
        http = PortalHttpSettings(refresh_s=0.5)
        async with (
            running_up(tmp_path, http=http) as up,
            echo_endpoint() as ep_port,
            async_playwright() as pw,
        ):
            assert up.first_admin is not None
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1200, "height": 900})
                page.set_default_timeout(timeout_ms)
                await page.goto(up.url + "/")
                await page.fill("input[name=username]", "admin")
                await page.fill("input[name=password]", "not the password")
                await page.click("button[type=submit]")
                await expect(page.locator("[role=alert]")).to_contain_text("wrong username")
                await page.fill("input[name=password]", up.first_admin.password)
                await page.click("button[type=submit]")
                await expect(page.locator("h1")).to_have_text("Organisations")

                await page.fill("input[name=name]", "acme")
                await page.click("button:has-text('Create')")
                await expect(page.locator("#state")).to_have_text("Inactive")
                await expect(page.locator(".tab.current")).to_contain_text("Development")

                await page.click("#toggle")
                await expect(page.locator("#state")).to_have_text("Active")
                token = (await page.locator("#token").inner_text()).strip()
                address = (await page.locator("#address").inner_text()).strip()
                assert len(token) >= 40
                assert address.startswith(up.url + "/sg_")
                await expect(page.locator(".token-box")).to_contain_text("cannot be shown again")
                command = await page.locator("#command").inner_text()
                assert f'--header "token: {token}" {address}' in command

                remote = f"R:{app_port}:127.0.0.1:{ep_port}"
                async with connector(address, token, remote):
                    rows = page.locator("#connectors tr:not(.empty)")
                    await expect(rows).to_have_count(1, timeout=timeout_ms)
                    await expect(rows.first).to_contain_text("qanat-")
                    await expect(rows.first).to_contain_text("127.0.0.1:")
                    await expect(page.locator("#endpoints")).to_contain_text(
                        f"secure-gateway:{app_port}"
                    )
                    await expect(rows.first).to_contain_text(" ms", timeout=timeout_ms)
                    assert await app_request(app_port, "via browser") == "echo: via browser"
                    await page.screenshot(path=str(screenshot), full_page=True)

                    # Renew, through the confirmation: a new token is shown once.
                    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
                    await page.click("summary")
                    await page.check("input[name=confirm]")
                    await page.click("#renew")
                    await expect(page.locator(".token-box")).to_contain_text("renewal")
                    renewed = (await page.locator("#token").inner_text()).strip()
                    assert renewed != token
                    # The page never shows a token again after a reload.
                    await page.reload()
                    assert await page.locator("#token").count() == 0
            finally:
                await browser.close()

    asyncio.run(scenario())
